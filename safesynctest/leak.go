package safesynctest

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"time"
)

// goroutineSet is a snapshot of the goroutines alive at one moment, by id.
type goroutineSet map[string]string // id → its stack

// goroutines returns the goroutines alive now, other than the caller.
func goroutines() goroutineSet {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	set := goroutineSet{}
	for i, g := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 {
			continue // the caller's own
		}
		header, _, _ := strings.Cut(string(g), "\n")
		id, _, _ := strings.Cut(strings.TrimPrefix(header, "goroutine "), " ")
		set[id] = string(g)
	}
	return set
}

// verifyNoNewGoroutines fails the test if goroutines that were not in
// before are still alive after up to 5 s, listing their stacks.
func verifyNoNewGoroutines(tb testing.TB, before goroutineSet) {
	tb.Helper()
	var leaked []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		leaked = leaked[:0]
		for id, stack := range goroutines() {
			if _, old := before[id]; !old && !strings.Contains(stack, "testing.tRunner") {
				leaked = append(leaked, stack)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(leaked) > 0 {
		tb.Errorf("safesynctest: %d goroutines outlived the run:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
}
