package safesync_test

import (
	"testing"

	"github.com/safesync-go/safesync"
)

type accountID uint16

// String must play no part in the key: only the value does.
func (a accountID) String() string { return "account" }

type region string

func TestOrderKeyGivesEqualKeysEqualStringsAndOthersOthers(t *testing.T) {
	msg := func(v int) safesync.Message[int] { return safesync.Message[int]{Value: v} }
	cases := []struct {
		name string
		key  func(safesync.Message[int]) string
		want []string // keys of messages 7, -7 and 300
	}{
		{"int64", safesync.OrderKey(func(m safesync.Message[int]) int64 { return int64(m.Value) }), []string{"7", "-7", "300"}},
		{"int", safesync.OrderKey(func(m safesync.Message[int]) int { return m.Value }), []string{"7", "-7", "300"}},
		{"int8 wraps as Go converts", safesync.OrderKey(func(m safesync.Message[int]) int8 { return int8(m.Value) }), []string{"7", "-7", "44"}},
		{"uint64", safesync.OrderKey(func(m safesync.Message[int]) uint64 { return uint64(m.Value) }), []string{"7", "18446744073709551609", "300"}},
		{"a named unsigned type with a String method", safesync.OrderKey(func(m safesync.Message[int]) accountID { return accountID(m.Value) }), []string{"7", "65529", "300"}},
		{"string", safesync.OrderKey(func(m safesync.Message[int]) string { return map[int]string{7: "a", -7: "b", 300: "c"}[m.Value] }), []string{"a", "b", "c"}},
		{"a named string type", safesync.OrderKey(func(m safesync.Message[int]) region {
			return region(map[int]string{7: "eu", -7: "us", 300: "ap"}[m.Value])
		}), []string{"eu", "us", "ap"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i, v := range []int{7, -7, 300} {
				if got := c.key(msg(v)); got != c.want[i] {
					t.Errorf("key of %d = %q, want %q", v, got, c.want[i])
				}
			}
		})
	}
}

func TestOrderKeyOfNilPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("OrderKey(nil) did not panic")
		}
	}()
	safesync.OrderKey[int, int64](nil)
}
