// Package streamid parses and orders Redis stream entry ids, for the
// consumer's in-flight set, the operations package and the conformance
// suite.
package streamid

import (
	"cmp"
	"math"
	"strconv"
	"strings"
)

// ID is a stream entry id: milliseconds and sequence number.
type ID struct{ MS, Seq uint64 }

// Max is above every id Redis generates.
var Max = ID{math.MaxUint64, math.MaxUint64}

// Parse parses a complete entry id as Redis writes it ("1700000000000-3").
func Parse(s string) (ID, bool) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return ID{}, false
	}
	m, err1 := strconv.ParseUint(ms, 10, 64)
	q, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return ID{}, false
	}
	return ID{m, q}, true
}

// Less reports whether a comes before b in a stream.
func (a ID) Less(b ID) bool {
	return a.MS < b.MS || a.MS == b.MS && a.Seq < b.Seq
}

// Compare orders a and b as a stream does: -1, 0 or +1.
func (a ID) Compare(b ID) int {
	if c := cmp.Compare(a.MS, b.MS); c != 0 {
		return c
	}
	return cmp.Compare(a.Seq, b.Seq)
}

func (a ID) String() string {
	return strconv.FormatUint(a.MS, 10) + "-" + strconv.FormatUint(a.Seq, 10)
}

// Next returns the smallest id after a, and false when a is Max.
func (a ID) Next() (ID, bool) {
	switch {
	case a.Seq < math.MaxUint64:
		return ID{a.MS, a.Seq + 1}, true
	case a.MS < math.MaxUint64:
		return ID{a.MS + 1, 0}, true
	}
	return ID{}, false
}
