package safesync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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
// data field, invalid UTF-8, JSON that is not an object (an array, a
// string, null…), trailing data, and the NaN, Infinity and -Infinity that
// json.dumps emits by default, which are not JSON. Numbers too large for
// T's fields are errors too, as in encoding/json.
func JSON[T any]() Decoder[T] {
	return decodeJSON[T]
}

func decodeJSON[T any](fields map[string]string) (T, error) {
	var v T
	data, ok := fields[DataField]
	if !ok {
		return v, fmt.Errorf("%w: no %q field", ErrDecode, DataField)
	}
	if !utf8.ValidString(data) {
		return v, fmt.Errorf("%w: %q field is not valid UTF-8", ErrDecode, DataField)
	}
	b := []byte(data)
	if !isJSONObject(b) {
		return v, fmt.Errorf("%w: %q field is not a JSON object", ErrDecode, DataField)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return v, nil
}

// isJSONObject reports whether b, past leading JSON whitespace, starts an
// object. json.Unmarshal checks the rest.
func isJSONObject(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
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
