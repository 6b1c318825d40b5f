package safesync_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/safesync-go/safesync"
)

type payment struct {
	OrderID  int64             `json:"order_id"`
	Amount   float64           `json:"amount"`
	Customer string            `json:"customer"`
	Tags     []string          `json:"tags"`
	Meta     map[string]string `json:"meta"`
}

func TestJSONDecodesWhatPythonJSONDumpsWrites(t *testing.T) {
	// Each input is the exact output of Python 3's json.dumps for the
	// commented value, with its default settings unless said otherwise.
	for _, tc := range []struct {
		name, data string
		want       payment
	}{
		{"default separators", `{"order_id": 1, "amount": 5}`, payment{OrderID: 1, Amount: 5}},
		{"compact separators=(',', ':')", `{"order_id":1,"amount":5}`, payment{OrderID: 1, Amount: 5}},
		{"float", `{"order_id": 2, "amount": 5.25}`, payment{OrderID: 2, Amount: 5.25}},
		{"exponent", `{"order_id": 3, "amount": 1e-07}`, payment{OrderID: 3, Amount: 1e-07}},
		{"ensure_ascii escapes", `{"order_id": 4, "customer": "Jos\u00e9 \ud83d\ude00"}`, payment{OrderID: 4, Customer: "José 😀"}},
		{"ensure_ascii=False", `{"order_id": 5, "customer": "José 😀"}`, payment{OrderID: 5, Customer: "José 😀"}},
		{"null, lists, nested objects", `{"order_id": 6, "tags": ["a", "b"], "meta": {"k": "v"}, "customer": null}`,
			payment{OrderID: 6, Tags: []string{"a", "b"}, Meta: map[string]string{"k": "v"}}},
		{"indent=2", "{\n  \"order_id\": 7,\n  \"amount\": 1\n}", payment{OrderID: 7, Amount: 1}},
		{"unknown keys are ignored", `{"order_id": 8, "extra": [1, 2, {"x": true}]}`, payment{OrderID: 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := safesync.JSON[payment]()(map[string]string{"data": tc.data})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestJSONRejectsWhatIsNotAJSONObjectInData(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields map[string]string
	}{
		{"NaN, as json.dumps writes float('nan')", map[string]string{"data": `{"order_id": 1, "amount": NaN}`}},
		{"Infinity", map[string]string{"data": `{"amount": Infinity}`}},
		{"-Infinity", map[string]string{"data": `{"amount": -Infinity}`}},
		{"an array", map[string]string{"data": `[1, 2]`}},
		{"a string", map[string]string{"data": `"order"`}},
		{"null", map[string]string{"data": `null`}},
		{"a number", map[string]string{"data": `1`}},
		{"empty", map[string]string{"data": ``}},
		{"trailing data", map[string]string{"data": `{"order_id": 1} {}`}},
		{"truncated", map[string]string{"data": `{"order_id": 1`}},
		{"invalid UTF-8", map[string]string{"data": "{\"customer\": \"\xff\xfe\"}"}},
		{"no data field", map[string]string{"payload": `{"order_id": 1}`}},
		{"number too large for int64", map[string]string{"data": `{"order_id": 92233720368547758070}`}},
		{"wrong type", map[string]string{"data": `{"order_id": "one"}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := safesync.JSON[payment]()(tc.fields)
			if !errors.Is(err, safesync.ErrDecode) {
				t.Fatalf("error = %v, want one matching ErrDecode", err)
			}
		})
	}
}

func TestEncodeJSONWritesOneDataFieldHoldingAnObject(t *testing.T) {
	fields, err := safesync.EncodeJSON(payment{OrderID: 1, Amount: 5, Customer: "José"})
	if err != nil {
		t.Fatal(err)
	}
	if len(fields) != 1 {
		t.Fatalf("fields = %v, want only data", fields)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(fields["data"]), &obj); err != nil || obj["customer"] != "José" {
		t.Fatalf("data = %q (%v), want a JSON object", fields["data"], err)
	}
	back, err := safesync.JSON[payment]()(fields)
	if err != nil || back.OrderID != 1 || back.Customer != "José" {
		t.Fatalf("round trip = %+v, %v", back, err)
	}
	for _, v := range []any{1, "x", []int{1}, nil} {
		if _, err := safesync.EncodeJSON(v); err == nil {
			t.Errorf("EncodeJSON(%#v) = nil error, want one: the wire format holds an object", v)
		}
	}
	if _, err := safesync.EncodeJSON(map[string]float64{"x": nanValue()}); err == nil {
		t.Error("EncodeJSON of NaN = nil error")
	}
}

func nanValue() float64 {
	zero := 0.0
	return zero / zero
}

func TestDecodeErrorMatchesErrDecode(t *testing.T) {
	err := error(&safesync.DecodeError{Stream: "orders", ID: "1-0", Err: errors.New("bad")})
	if !errors.Is(err, safesync.ErrDecode) || err.Error() == "" {
		t.Fatalf("DecodeError %v does not match ErrDecode", err)
	}
}

// FuzzJSONCodec decodes arbitrary data fields: the decoder must never
// panic, must accept only JSON objects, and what it accepts must survive a
// round trip through EncodeJSON.
func FuzzJSONCodec(f *testing.F) {
	for _, seed := range []string{
		`{"order_id": 1, "amount": 5}`,
		`{"a": NaN}`,
		`[1]`,
		`{"s": "\ud800"}`,
		"{\"s\": \"\xff\"}",
		`{}`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data string) {
		v, err := safesync.JSON[map[string]any]()(map[string]string{"data": data})
		if err != nil {
			if !errors.Is(err, safesync.ErrDecode) {
				t.Fatalf("error %v does not match ErrDecode", err)
			}
			return
		}
		if v == nil {
			t.Fatalf("%q decoded without error to a nil map: not an object", data)
		}
		fields, err := safesync.EncodeJSON(v)
		if err != nil {
			t.Fatalf("decoded %q but cannot encode it back: %v", data, err)
		}
		again, err := safesync.JSON[map[string]any]()(fields)
		if err != nil || !reflect.DeepEqual(again, v) {
			t.Fatalf("round trip of %q: %v, %v; want %v", data, again, err, v)
		}
		if _, err := safesync.JSON[payment]()(map[string]string{"data": data}); err != nil && !errors.Is(err, safesync.ErrDecode) {
			t.Fatalf("typed decode error %v does not match ErrDecode", err)
		}
	})
}

// Regression (issue 11, item 14): a lone surrogate escape, which Python's
// json.dumps writes for a str holding one, was decoded into U+FFFD
// silently, changing the text. It is a decode error, like invalid UTF-8:
// the entry goes to the dead-letter stream with its fields unchanged.
func TestJSONRejectsALoneSurrogateEscape(t *testing.T) {
	for _, data := range []string{
		`{"customer": "a\ud800b"}`,
		`{"customer": "\udc00"}`,
		`{"customer": "\ud83d"}`,
		`{"customer": "\ud83d\u0041"}`,
		`{"customer": "\ud83d\\ude00"}`,
		`{"tags": ["ok", "\udfff"]}`,
		`{"meta": {"\ud800": "key"}}`,
	} {
		_, err := safesync.JSON[payment]()(map[string]string{"data": data})
		if !errors.Is(err, safesync.ErrDecode) || !strings.Contains(err.Error(), "surrogate") {
			t.Errorf("%s: err = %v; want ErrDecode naming the lone surrogate", data, err)
		}
	}
	for data, want := range map[string]string{
		`{"customer": "\ud83d\ude00"}`: "😀",
		`{"customer": "\\ud800"}`:      `\ud800`, // an escaped backslash, then text
		`{"customer": "\u00e9\\"}`:     `é\`,
	} {
		got, err := safesync.JSON[payment]()(map[string]string{"data": data})
		if err != nil || got.Customer != want {
			t.Errorf("%s: %q, %v; want %q", data, got.Customer, err, want)
		}
	}
}

type sequenced struct {
	Seq   int64 `json:"seq"`
	Note  string
	Inner struct {
		Level int `json:"level"`
	} `json:"inner"`
}

// Regression (issue 11, item 14): keys match struct fields as in
// encoding/json, an exact match first, else ignoring case ({"SEQ": 9}
// fills Seq, and a Python producer's "note" fills the untagged Note). What
// was silently wrong: an object with two keys for one field ("seq" and
// "SEQ"), of which Python reads one and encoding/json kept the other, is a
// decode error. ExactKeys makes keys match exactly, as a Python consumer's
// data["seq"] does.
func TestJSONKeyMatching(t *testing.T) {
	decode := func(data string, opts ...safesync.JSONOption) (sequenced, error) {
		return safesync.JSON[sequenced](opts...)(map[string]string{"data": data})
	}
	if v, err := decode(`{"SEQ": 9, "note": "n", "inner": {"LEVEL": 2}}`); err != nil || v.Seq != 9 || v.Note != "n" || v.Inner.Level != 2 {
		t.Fatalf("case-insensitive default: %+v, %v", v, err)
	}
	for _, data := range []string{
		`{"seq": 1, "SEQ": 9}`,
		`{"Seq": 9, "seq": 1}`,
		`{"inner": {"level": 1, "Level": 2}}`,
		`{"Note": "a", "note": "b"}`,
		`{"s\u0065q": 1, "SEQ": 9}`,
	} {
		_, err := decode(data)
		if !errors.Is(err, safesync.ErrDecode) || !strings.Contains(err.Error(), "both") {
			t.Errorf("%s: err = %v; want ErrDecode: two keys for one field", data, err)
		}
	}
	if v, err := decode(`{"seq": 1, "other": {"SEQ": 2, "seq": 3}}`); err != nil || v.Seq != 1 {
		t.Errorf("keys inside a value no field takes are not matched: %+v, %v", v, err)
	}
	if v, err := decode(`{"seq": 1, "seq": 2}`); err != nil || v.Seq != 2 {
		t.Errorf("a key repeated exactly: %+v, %v; want the last value, as Python's json.loads", v, err)
	}

	if v, err := decode(`{"seq": 9, "Note": "n", "inner": {"level": 2}, "other": {"SEQ": 1}}`, safesync.ExactKeys()); err != nil || v.Seq != 9 || v.Note != "n" || v.Inner.Level != 2 {
		t.Fatalf("ExactKeys with exact keys: %+v, %v", v, err)
	}
	for _, data := range []string{`{"SEQ": 9}`, `{"note": "n"}`, `{"inner": {"Level": 2}}`} {
		_, err := decode(data, safesync.ExactKeys())
		if !errors.Is(err, safesync.ErrDecode) || !strings.Contains(err.Error(), "case") {
			t.Errorf("ExactKeys, %s: err = %v; want ErrDecode: the key matches a field only when case is ignored", data, err)
		}
	}
	if m, err := safesync.JSON[map[string]int](safesync.ExactKeys())(map[string]string{"data": `{"a": 1, "A": 2}`}); err != nil || len(m) != 2 {
		t.Errorf("map keys are data, never matched: %v, %v", m, err)
	}
}
