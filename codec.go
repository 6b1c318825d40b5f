package safesync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"unicode/utf8"
)

// DataField is the one stream entry field of the wire format shared with
// the Python original: its value is a UTF-8 JSON object.
const DataField = "data"

// Decoder turns the raw fields of a stream entry into a T. It must be safe
// for concurrent use. An error makes the entry undecodable: the consumer
// moves it to the dead-letter stream on its first delivery (reason
// DeadLetterDecode) and goes on with the others.
type Decoder[T any] func(fields map[string]string) (T, error)

// ErrDecode is matched by every error a consumer reports for an entry its
// Decoder rejected (a *DecodeError), and by the errors JSON's decoder
// returns.
var ErrDecode = errors.New("safesync: cannot decode stream entry")

// DecodeError reports an entry that could not be decoded.
type DecodeError struct {
	Stream, ID string
	Err        error // what the Decoder returned
}

// Error implements error.
func (e *DecodeError) Error() string {
	return fmt.Sprintf("safesync: cannot decode entry %s of stream %q: %v", e.ID, e.Stream, e.Err)
}

// Unwrap returns the Decoder's error.
func (e *DecodeError) Unwrap() error { return e.Err }

// Is reports whether target is ErrDecode.
func (e *DecodeError) Is(target error) bool { return target == ErrDecode }

// JSON returns the Decoder of the original's wire format: the entry's field
// "data" holds a UTF-8 encoded JSON object, which is unmarshalled into a T
// with encoding/json. Other fields are ignored.
//
// It reads what Python's json.dumps writes, including \u escapes and
// surrogate pairs. It rejects, with an error matching ErrDecode: a missing
// data field, invalid UTF-8, a lone surrogate escape (json.dumps writes
// "\ud800" for a str holding one; encoding/json would turn it into U+FFFD
// and change the text silently), JSON that is not an object (an array, a
// string, null…), trailing data, and the NaN, Infinity and -Infinity that
// json.dumps emits by default, which are not JSON. Numbers too large for
// T's fields are errors too, as in encoding/json.
//
// Object keys are matched to struct fields as encoding/json does: the
// field's json tag name, else its Go name, exactly if a key matches exactly,
// else ignoring case, so {"SEQ": 9} fills a field tagged json:"seq" and a
// Python producer's "amount" fills an untagged field Amount. An object with
// two keys for one field ({"seq": 1, "SEQ": 9}), where a Python consumer
// reads one and encoding/json would keep the other, is rejected. With
// ExactKeys, keys must match exactly. Keys of maps are data and are never
// matched; nor are the insides of values whose type decodes itself
// (json.Unmarshaler, such as time.Time and json.RawMessage).
func JSON[T any](opts ...JSONOption) Decoder[T] {
	var cfg jsonConfig
	for _, o := range opts {
		o(&cfg)
	}
	keys := newKeyChecker(reflect.TypeFor[T](), cfg.exactKeys)
	return func(fields map[string]string) (T, error) {
		v, data, misspell, err := decodeJSON[T](fields, keys)
		if err != nil || !misspell {
			return v, err
		}
		if err := keys.walk(data, reflect.TypeFor[T]()); err != nil {
			var zero T
			return zero, fmt.Errorf("%w: %w", ErrDecode, err)
		}
		return v, nil
	}
}

// JSONOption configures JSON.
type JSONOption func(*jsonConfig)

type jsonConfig struct {
	exactKeys bool
}

// ExactKeys makes JSON match object keys to struct fields exactly, as a
// Python consumer's data["seq"] does: a key that names a field only when
// case is ignored ({"SEQ": 9} for a field tagged json:"seq", or "amount"
// for an untagged field Amount) makes the entry undecodable. Tag every
// field with the producer's key when using it.
func ExactKeys() JSONOption { return func(c *jsonConfig) { c.exactKeys = true } }

// decodeJSON decodes the data field of fields into a T. It returns the
// field's bytes, and whether keys, when not nil, must walk them: an
// object key may fill a field under another spelling (see
// keyChecker.mayMisspell).
func decodeJSON[T any](fields map[string]string, keys *keyChecker) (T, []byte, bool, error) {
	var v T
	data, ok := fields[DataField]
	if !ok {
		return v, nil, false, fmt.Errorf("%w: no %q field", ErrDecode, DataField)
	}
	b := []byte(data)
	text := scanJSONText(b, keys)
	if text.nonASCII && !utf8.Valid(b) {
		return v, nil, false, fmt.Errorf("%w: %q field is not valid UTF-8", ErrDecode, DataField)
	}
	if !isJSONObject(b) {
		return v, nil, false, fmt.Errorf("%w: %q field is not a JSON object", ErrDecode, DataField)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, nil, false, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	if text.uEscape {
		if err := findLoneSurrogate(b); err != nil {
			var zero T
			return zero, nil, false, fmt.Errorf("%w: %w", ErrDecode, err)
		}
	}
	return v, b, text.misspell, nil
}

// jsonText is what one pass over a JSON text finds, so that the checks
// around json.Unmarshal run only where they can find something.
type jsonText struct {
	nonASCII bool // a byte of 0x80 or above: check the text is UTF-8
	uEscape  bool // a \u escape: look for lone surrogates
	misspell bool // an object key may fill a field under another spelling
}

// jsonStop marks the bytes a scan of JSON text stops at: quotes,
// backslashes and the bytes of 0x80 and above.
var jsonStop = func() (stop [256]bool) {
	stop['"'], stop['\\'] = true, true
	for c := 0x80; c < len(stop); c++ {
		stop[c] = true
	}
	return stop
}()

// scanJSONText reads b once. With keys, it also reports an object key
// that keys.mayMisspell would; b need not be valid JSON, but only for
// valid JSON is the report exact (for other text, nonASCII may be set
// where there is none, and json.Unmarshal refuses the text anyway).
func scanJSONText(b []byte, keys *keyChecker) (x jsonText) {
	n := len(b)
	for i := 0; i < n; i++ {
		c := b[i]
		if !jsonStop[c] {
			continue
		}
		if c != '"' {
			x.nonASCII = x.nonASCII || c >= 0x80
			continue
		}
		start, escaped := i+1, false
		for i = start; i < n; i++ {
			c := b[i]
			if !jsonStop[c] {
				continue
			}
			if c == '"' {
				break
			}
			if c == '\\' {
				escaped = true
				if i+1 < n {
					next := b[i+1]
					x.uEscape = x.uEscape || next == 'u'
					x.nonASCII = x.nonASCII || next >= 0x80
				}
				i++
				continue
			}
			x.nonASCII = true
		}
		if i >= n {
			x.nonASCII = true // a string that does not end: let the UTF-8 check see all
			return x
		}
		if keys == nil || x.misspell {
			continue
		}
		j := i + 1
		for j < n && (b[j] == ' ' || b[j] == '\t' || b[j] == '\n' || b[j] == '\r') {
			j++
		}
		if j < n && b[j] == ':' && (escaped || keys.foldsOnto(b[start:i])) {
			x.misspell = true
		}
	}
	return x
}

// findLoneSurrogate reports a \u escape of a UTF-16 surrogate (U+D800 to
// U+DFFF) that is not half of a high-low pair, in b, which is valid JSON.
func findLoneSurrogate(b []byte) error {
	if !bytes.Contains(b, []byte(`\u`)) {
		return nil
	}
	inString := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			inString = !inString
		case c == '\\' && inString:
			if b[i+1] != 'u' {
				i++ // a one-character escape, \" and \\ among them
				continue
			}
			r := hex4(b[i+2 : i+6])
			switch {
			case r >= 0xDC00 && r <= 0xDFFF:
				return fmt.Errorf("lone surrogate escape \\u%04x at byte %d (a low surrogate without a high one before it)", r, i)
			case r >= 0xD800 && r <= 0xDBFF:
				if i+12 > len(b) || b[i+6] != '\\' || b[i+7] != 'u' {
					return fmt.Errorf("lone surrogate escape \\u%04x at byte %d (a high surrogate not followed by a low one)", r, i)
				}
				if low := hex4(b[i+8 : i+12]); low < 0xDC00 || low > 0xDFFF {
					return fmt.Errorf("lone surrogate escape \\u%04x at byte %d (a high surrogate not followed by a low one)", r, i)
				}
				i += 11
			default:
				i += 5
			}
		}
	}
	return nil
}

// hex4 reads four hexadecimal digits, which valid JSON guarantees after \u.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		}
	}
	return r
}

// isJSONObject reports whether b, past leading JSON whitespace, starts an
// object. json.Unmarshal checks the rest.
func isJSONObject(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
		case '{':
			return true
		default:
			return false
		}
	}
	return false
}

// EncodeJSON writes v in the original's wire format: one field, "data",
// holding v marshalled by encoding/json. v must marshal to a JSON object (a
// struct, a map, or a json.RawMessage holding an object); anything else is
// an error, since consumers of the wire format expect an object. JSON
// decodes what it writes.
func EncodeJSON[T any](v T) (map[string]string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("safesync: encode JSON: %w", err)
	}
	if !isJSONObject(b) {
		return nil, fmt.Errorf("safesync: encode JSON: %T does not marshal to a JSON object", v)
	}
	return map[string]string{DataField: string(b)}, nil
}
