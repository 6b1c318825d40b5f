package safesync

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// keyChecker walks a JSON document alongside the Go type it was decoded
// into and checks each object key against the struct field it fills: two
// keys may not fill one field, and with exact set a key must name its field
// exactly. It follows encoding/json's rules for field names (json tag name,
// else Go name; embedded structs promote their fields; "-" skips).
type keyChecker struct {
	exact bool
	// names and folded are the JSON names, as written and lower-cased, of
	// every field of every struct type a T can hold: a document whose keys
	// all are one of names, or match no name even when case is ignored,
	// cannot fill a field under another spelling, and is not walked.
	names, folded map[string]bool
	// few lists names when there are at most maxFewNames: comparing a key
	// with each costs less than hashing it.
	few []string
}

// maxFewNames is the most names keyChecker compares one by one.
const maxFewNames = 8

// jsonField is one field of a struct as encoding/json names it.
type jsonField struct {
	name   string       // the JSON key it answers to
	goName string       // for messages
	typ    reflect.Type // its type
}

var (
	jsonFieldCache  sync.Map // reflect.Type -> []jsonField
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decodesItself reports a type whose JSON encoding/json hands to the type
// itself: its keys, if any, are not field names.
func decodesItself(t reflect.Type) bool {
	return t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
		t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler)
}

// newKeyChecker returns the checker for documents decoded into a t, or nil
// when a t holds no struct whose keys could be checked (map[string]any, say).
func newKeyChecker(t reflect.Type, exact bool) *keyChecker {
	c := &keyChecker{exact: exact, names: map[string]bool{}, folded: map[string]bool{}}
	c.collect(t, map[reflect.Type]bool{})
	if len(c.names) == 0 {
		return nil
	}
	if len(c.names) <= maxFewNames {
		for name := range c.names {
			c.few = append(c.few, name)
		}
	}
	return c
}

// isName reports whether key is one of the names as written.
func (c *keyChecker) isName(key []byte) bool {
	if c.few == nil {
		return c.names[string(key)]
	}
	for _, name := range c.few {
		if string(key) == name {
			return true
		}
	}
	return false
}

// collect adds the field names of every struct type values of t can hold.
func (c *keyChecker) collect(t reflect.Type, seen map[reflect.Type]bool) {
	if t == nil || seen[t] || decodesItself(t) {
		return
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
		c.collect(t.Elem(), seen)
	case reflect.Struct:
		for _, f := range jsonFieldsOf(t) {
			c.names[f.name] = true
			c.folded[strings.ToLower(f.name)] = true
			c.collect(f.typ, seen)
		}
	}
}

// walk walks data, which json.Unmarshal accepted into a t, checking every
// key.
func (c *keyChecker) walk(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return c.value(dec, t)
}

// value walks one JSON value that decodes into a t (nil: not checked).
func (c *keyChecker) value(dec *json.Decoder, t reflect.Type) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil // a scalar
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && decodesItself(t) {
		t = nil
	}
	if delim == '[' {
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for dec.More() {
			if err := c.value(dec, elem); err != nil {
				return err
			}
		}
		_, err := dec.Token()
		return err
	}
	var fields []jsonField
	var elem reflect.Type
	switch {
	case t == nil:
	case t.Kind() == reflect.Struct:
		fields = jsonFieldsOf(t)
	case t.Kind() == reflect.Map:
		elem = t.Elem()
	}
	filledBy := map[string]string{} // field's JSON name -> the key that filled it
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		next := elem
		if t != nil && t.Kind() == reflect.Struct {
			f, exact, found := matchJSONField(fields, key)
			next = nil
			if found {
				if !exact && c.exact {
					return fmt.Errorf("key %q matches field %s of %v (key %q) only when case is ignored, and ExactKeys is set", key, f.goName, t, f.name)
				}
				if prev, dup := filledBy[f.name]; dup && prev != key {
					return fmt.Errorf("keys %q and %q both fill field %s of %v; a Python consumer reads one and encoding/json keeps the other", prev, key, f.goName, t)
				}
				filledBy[f.name] = key
				next = f.typ
			}
		}
		if err := c.value(dec, next); err != nil {
			return err
		}
	}
	_, err = dec.Token()
	return err
}

// mayMisspell reports whether valid JSON data has an object key that could
// fill a field under another spelling than the field's own: one that is no
// field name as written but is one when case is ignored, or one with an
// escape (not read here). Other documents need no walk. JSON's decoder
// finds the same in its one pass over the text (scanJSONText); this is
// the reference it is tested against.
func (c *keyChecker) mayMisspell(data []byte) bool {
	for i := 0; i < len(data); i++ {
		if data[i] != '"' {
			continue
		}
		start, escaped := i+1, false
		for i = start; i < len(data); i++ {
			if c := data[i]; c == '"' {
				break
			} else if c == '\\' {
				escaped = true
				i++
			}
		}
		if i >= len(data) {
			return false // not valid JSON: json.Unmarshal refused it already
		}
		key := data[start:i]
		j := i + 1
		for j < len(data) && (data[j] == ' ' || data[j] == '\t' || data[j] == '\n' || data[j] == '\r') {
			j++
		}
		if j == len(data) || data[j] != ':' {
			continue // a string value, not a key
		}
		if escaped || c.foldsOnto(key) {
			return true
		}
	}
	return false
}

// foldsOnto reports whether key, without escapes, is no field name as
// written but is one when case is ignored.
func (c *keyChecker) foldsOnto(key []byte) bool {
	return !c.isName(key) && c.folded[strings.ToLower(string(key))]
}

// matchJSONField finds the field key fills: an exact match first, else one
// equal under Unicode case folding, as encoding/json does.
func matchJSONField(fields []jsonField, key string) (f jsonField, exact, found bool) {
	for _, f := range fields {
		if f.name == key {
			return f, true, true
		}
	}
	for _, f := range fields {
		if strings.EqualFold(f.name, key) {
			return f, false, true
		}
	}
	return jsonField{}, false, false
}

// jsonFieldsOf lists the fields of struct type t under their JSON names.
func jsonFieldsOf(t reflect.Type) []jsonField {
	if v, ok := jsonFieldCache.Load(t); ok {
		return v.([]jsonField)
	}
	var out []jsonField
	collectJSONFields(t, map[reflect.Type]bool{t: true}, &out)
	v, _ := jsonFieldCache.LoadOrStore(t, out)
	return v.([]jsonField)
}

func collectJSONFields(t reflect.Type, visiting map[reflect.Type]bool, out *[]jsonField) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				if !visiting[et] {
					visiting[et] = true
					collectJSONFields(et, visiting, out)
					delete(visiting, et)
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		*out = append(*out, jsonField{name: name, goName: f.Name, typ: f.Type})
	}
}
