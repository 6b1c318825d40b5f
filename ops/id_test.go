package ops

import (
	"math"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

func TestEntryIDsParseOrderAndStep(t *testing.T) {
	for _, tc := range []struct {
		in, next string
		ok       bool
	}{
		{"1700000000000-0", "1700000000000-1", true},
		{"5-18446744073709551615", "6-0", true},
		{"0-0", "0-1", true},
		{"1700000000000", "", false},
		{"a-1", "", false},
		{"", "", false},
	} {
		id, ok := parseID(tc.in)
		if ok != tc.ok {
			t.Fatalf("parseID(%q) ok = %v, want %v", tc.in, ok, tc.ok)
		}
		if !ok {
			continue
		}
		if id.String() != tc.in {
			t.Errorf("parseID(%q).String() = %q", tc.in, id)
		}
		n, _ := id.Next()
		if n.String() != tc.next || !id.Less(n) {
			t.Errorf("%s.Next() = %s, want %s, after it", tc.in, n, tc.next)
		}
	}
	if _, ok := (entryID{MS: math.MaxUint64, Seq: math.MaxUint64}).Next(); ok {
		t.Error("the largest id has a next")
	}
	if got := idTime("1700000000123-4"); !got.Equal(time.UnixMilli(1700000000123)) {
		t.Errorf("idTime = %v", got)
	}
}

func TestCursorsRoundTripAndResumeInIDThenKeyOrder(t *testing.T) {
	p := position{id: entryID{MS: 10, Seq: 2}, key: "orders:{1.0}"}
	got, err := parseCursor(p.String())
	if err != nil || *got != p {
		t.Fatalf("parseCursor(%q) = %v, %v", p.String(), got, err)
	}
	for _, bad := range []string{"10-2", "@k", "x@k", "10-2@"} {
		if _, err := parseCursor(bad); err == nil {
			t.Errorf("parseCursor(%q) accepted", bad)
		}
	}
	// A key after the cursor's may still hold its id; the others go on after it.
	if s, _ := p.startFor("orders:{2.0}"); s != "10-2" {
		t.Errorf("startFor a later key = %s, want 10-2", s)
	}
	if s, _ := p.startFor("orders:{0.0}"); s != "10-3" {
		t.Errorf("startFor an earlier key = %s, want 10-3", s)
	}
	if s, _ := p.startFor(p.key); s != "10-3" {
		t.Errorf("startFor its own key = %s, want 10-3", s)
	}
	var start *position
	if s, _ := start.startFor("k"); s != "-" {
		t.Errorf("no cursor starts at %s, want -", s)
	}
}

func TestPartitionKeysAreRecognisedOnlyWhenSafesyncWouldNameThem(t *testing.T) {
	p, err := safesync.NewPartitions("pay.ments", 5)
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Len() {
		for _, suffix := range []string{"", safesync.DeadLetterSuffix} {
			pk, ok := parsePartitionKey(p.Stream(i) + suffix)
			if !ok || pk.name != "pay.ments" || pk.index != i || pk.dead != (suffix != "") {
				t.Errorf("parsePartitionKey(%q) = %+v, %v", p.Stream(i)+suffix, pk, ok)
			}
		}
	}
	for _, k := range []string{"orders", "orders:{0.999}", "orders:{x.0}", "orders:{0.0}:other", "a{b}:{0.0}", "orders:dead"} {
		if _, ok := parsePartitionKey(k); ok && k != p.Stream(0) {
			t.Errorf("parsePartitionKey(%q) recognised a partition", k)
		}
	}
}
