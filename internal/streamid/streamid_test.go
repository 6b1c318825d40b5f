package streamid

import (
	"math"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want ID
		ok   bool
	}{
		{"0-0", ID{0, 0}, true},
		{"1700000000000-12", ID{1700000000000, 12}, true},
		{"18446744073709551615-18446744073709551615", ID{math.MaxUint64, math.MaxUint64}, true},
		{"18446744073709551616-0", ID{}, false},
		{"12", ID{}, false},
		{"-1", ID{}, false},
		{"1-", ID{}, false},
		{"1-x", ID{}, false},
		{"+1-2", ID{}, false},
		{"", ID{}, false},
	} {
		got, ok := Parse(tc.id)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Parse(%q) = %v, %v; want %v, %v", tc.id, got, ok, tc.want, tc.ok)
		}
	}
}

func TestOrderAndNext(t *testing.T) {
	a, b := ID{5, math.MaxUint64}, ID{6, 0}
	if !a.Less(b) || b.Less(a) || a.Less(a) {
		t.Errorf("Less: %v < %v should hold, and not the reverse or a < a", a, b)
	}
	if a.Compare(b) != -1 || b.Compare(a) != 1 || a.Compare(a) != 0 {
		t.Errorf("Compare(%v, %v) = %d, reverse %d, self %d", a, b, a.Compare(b), b.Compare(a), a.Compare(a))
	}
	if n, ok := a.Next(); !ok || n != b {
		t.Errorf("%v.Next() = %v, %v; want %v", a, n, ok, b)
	}
	if _, ok := Max.Next(); ok {
		t.Error("Max has a next")
	}
}
