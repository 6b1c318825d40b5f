package safesync

import (
	"context"
	"testing"
	"time"
)

// With no Tracer set, the stream side's tracing costs no allocation: the
// handler's span, the ack spans and the read's are all skipped after one
// pointer load.
func TestStreamTracingOffAllocatesNothing(t *testing.T) {
	prev := SetTracer(nil)
	defer SetTracer(prev)
	u := &unit[int]{msgs: []Message[int]{{ID: "1-0", Fields: map[string]string{"data": "1"}}}}
	idx := []int{0}
	ids := []string{"1-0"}
	cfg := &StreamConfig{Stream: "orders", Group: "g", Consumer: "c"}
	var spans entrySpans
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		c, span := traceUnit(ctx, cfg, u, idx)
		if span != nil || c != ctx {
			t.Fatal("traceUnit started a span with tracing off")
		}
		spans.acked(cfg, ids, time.Time{}, nil)
		if tr := activeTracer(); tr != nil {
			t.Fatal("a Tracer is set")
		}
	})
	if allocs != 0 {
		t.Errorf("stream tracing with no Tracer allocated %v times per entry, want 0", allocs)
	}
}
