package safesync

import (
	"strconv"
	"testing"
)

// The bookkeeping keys of a consumer (its name's lease, its entries'
// failure records) are in its stream's cluster slot, whatever the stream's
// name, so that one script or MULTI may touch both.
func TestAuxKeyIsInTheStreamsSlot(t *testing.T) {
	for _, stream := range []string{
		"orders", "orders:{3}", "{orders}", "a{b", "a}b", "a{}b", "}", "{}", "{", "x{}{y}", "", "naïve",
	} {
		key := auxKey(stream, "failures:workers")
		if KeySlot(key) != KeySlot(stream) {
			t.Errorf("auxKey(%q) = %q in slot %d, the stream is in slot %d", stream, key, KeySlot(key), KeySlot(stream))
		}
		if auxKey(stream, "a") == auxKey(stream, "b") || auxKey(stream, "a") == auxKey(stream+"x", "a") {
			t.Errorf("auxKey(%q, …) does not tell names or streams apart", stream)
		}
	}
}

// Every slot has a decimal tag, found within a short search.
func TestSlotTagReachesEverySlot(t *testing.T) {
	seen := make([]bool, clusterSlots)
	left := clusterSlots
	k := 0
	for ; left > 0 && k < 1_000_000; k++ {
		if s := KeySlot(strconv.Itoa(k)); !seen[s] {
			seen[s] = true
			left--
		}
	}
	if left > 0 {
		t.Fatalf("%d slots have no decimal tag below %d", left, k)
	}
}
