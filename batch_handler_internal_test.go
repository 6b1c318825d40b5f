package safesync

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestNamedEntriesFindsEveryFailEntryInTheErrorTree(t *testing.T) {
	msgs := []Message[int]{{ID: "1-0"}, {ID: "2-0"}, {ID: "3-0"}, {ID: "4-0"}}
	boom := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want []int
	}{
		{"no FailEntry names nothing", boom, nil},
		{"FailEntry as returned", FailEntry(msgs[2], boom), []int{2}},
		{"FailEntry wrapped", fmt.Errorf("apply: %w", FailEntry(msgs[1], boom)), []int{1}},
		{"FailEntry inside Permanent", Permanent(FailEntry(msgs[3], boom)), []int{3}},
		{"several joined, each once", errors.Join(FailEntry(msgs[0], boom), FailEntry(msgs[3], boom), FailEntry(msgs[0], boom)), []int{0, 3}},
		{"an id not in the batch names nothing", FailEntry(Message[int]{ID: "9-0"}, boom), nil},
		{"FailEntry of nil is nil", FailEntry(msgs[0], nil), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := namedEntries(tt.err, msgs); !slices.Equal(got, tt.want) {
				t.Fatalf("namedEntries = %v, want %v", got, tt.want)
			}
		})
	}
	if e := FailEntry(msgs[0], boom); e.Error() != "boom" || !errors.Is(e, boom) {
		t.Fatalf("FailEntry's text %q, want the error's own; Is(boom) = %v", e.Error(), errors.Is(e, boom))
	}
}

func TestSplitBatchSetsNamedEntriesAsideElseHalves(t *testing.T) {
	part := []int{10, 11, 12, 13, 14}
	tests := []struct {
		name  string
		named []int // indices into part
		want  [][]int
	}{
		{"none named: two halves, the first first", nil, [][]int{{10, 11}, {12, 13, 14}}},
		{"one named: the rest, then it alone", []int{2}, [][]int{{10, 11, 13, 14}, {12}}},
		{"two named: the rest, then each alone", []int{4, 0}, [][]int{{11, 12, 13}, {10}, {14}}},
		{"all named: each alone", []int{0, 1, 2, 3, 4}, [][]int{{10}, {11}, {12}, {13}, {14}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := splitBatch(part, tt.named)
			if !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Fatalf("splitBatch = %v, want %v", got, tt.want)
			}
		})
	}
	// Halving a batch of two or more always makes progress.
	for n := 2; n <= 100; n++ {
		halves := splitBatch(make([]int, n), nil)
		if len(halves[0]) == 0 || len(halves[1]) == 0 || len(halves[0])+len(halves[1]) != n {
			t.Fatalf("halves of %d: %d and %d", n, len(halves[0]), len(halves[1]))
		}
	}
}
