package safesync

import (
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// scanKeys is a type whose field names differ in case from their keys.
type scanKeys struct {
	Seq    int    `json:"seq"`
	Amount int    // "Amount"
	Name   string `json:"Name"`
	Inner  struct {
		Code string `json:"code"`
	} `json:"inner"`
}

// FuzzJSONTextScan: the one pass JSON's decoder makes over an entry's text
// finds whatever the checks it stands in for would: invalid UTF-8, a lone
// surrogate escape, a key that may fill a field under another spelling.
func FuzzJSONTextScan(f *testing.F) {
	for _, seed := range []string{
		`{"seq": 1, "amount": 5, "Name": "x", "inner": {"CODE": "a"}}`,
		`{"SEQ": 1}`,
		`{"s\u0065q": 1}`,
		`{"note": "\\u00e9 \ud83d\ude00", "Amount": 2}`,
		`{"a": "\ud800"}`,
		"{\"s\": \"\xff\"}",
		`{"k": "v" , "seq" : 3}`,
		`["seq", {"Seq": 1}]`,
		`{"unterminated`,
	} {
		f.Add(seed)
	}
	keys := newKeyChecker(reflect.TypeFor[scanKeys](), false)
	f.Fuzz(func(t *testing.T, data string) {
		b := []byte(data)
		x := scanJSONText(b, keys)
		if !utf8.Valid(b) && !x.nonASCII {
			t.Fatalf("%q: invalid UTF-8 not seen", data)
		}
		if !json.Valid(b) {
			return
		}
		if err := findLoneSurrogate(b); err != nil && !x.uEscape {
			t.Fatalf("%q: %v, but no \\u escape seen", data, err)
		}
		if want := keys.mayMisspell(b); x.misspell != want {
			t.Fatalf("%q: the scan reports a key that may fill a field under another spelling: %v, want %v", data, x.misspell, want)
		}
	})
}
