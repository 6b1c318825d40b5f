package safesync

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
)

// benchOrder is the payload of the drain benchmarks (bench/streamdrain).
type benchOrder struct {
	OrderID int64  `json:"order_id"`
	Amount  int64  `json:"amount"`
	Note    string `json:"note"`
}

// benchRead returns a read of n entries as rueidis parses them, with ids
// following from.
func benchRead(from, n int) rawEntries {
	xs := make([]rueidis.XRangeEntry, n)
	for i := range xs {
		b, _ := json.Marshal(benchOrder{OrderID: int64(from + i), Amount: 5, Note: "bench"})
		xs[i] = rueidis.XRangeEntry{ID: fmt.Sprintf("1700000000000-%d", from+i), FieldValues: map[string]string{DataField: string(b)}}
	}
	return rawEntries{xs: xs}
}

// benchEngine builds what Run builds around its reader, for the inline
// case (Concurrency 1), without Redis: the handler slots, the scheduler,
// metrics, the outage detector.
func benchEngine(b *testing.B) (*engine[benchOrder], *enginePart) {
	b.Helper()
	m, err := NewMetrics(MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	cfg := StreamConfig{Stream: "orders", Group: "g", Consumer: "c", Metrics: m}.withDefaults()
	core := newStreamCore(nil, cfg)
	c := &Consumer[benchOrder]{core: core, parts: []*streamCore{core}, decode: JSON[benchOrder]()}
	slots, err := newSlots(1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(slots.Close)
	ctx := context.Background()
	e := &engine[benchOrder]{
		c: c, core: core, unitSize: 1, readCount: cfg.Count, inline: true,
		runCtx: ctx, handlerCtx: ctx,
		outage: newOutage(core.log, "bench", nil, nil),
	}
	e.sched = newScheduler[benchOrder](ctx, slots, 1, cfg.Count, nil)
	p := &enginePart{index: 0, core: core}
	e.parts = []*enginePart{p}
	h := func(context.Context, Message[benchOrder]) error { return nil }
	e.sched.work = func(w *worker[benchOrder], u *unit[benchOrder]) { e.handleOne(w, u, h) }
	e.sched.flushAcks = func(_ int, _ []string, refs []heldRef) { e.sched.settle(refs) }
	return e, p
}

// Both benchmarks' ops are reads of 100 entries: allocs/op and B/op are
// per read.

// BenchmarkRunInline is what Run's inline reader does per entry between
// two reads, the round trip aside: decode (JSON), admit, run a no-op
// handler with its metrics, hand the id over for acknowledgement, settle
// it once acknowledged. Compare it with BenchmarkRawDecode, what a raw
// rueidis loop does per entry.
func BenchmarkRunInline(b *testing.B) {
	const count = 100
	e, p := benchEngine(b)
	reads := make([]rawEntries, 64)
	for i := range reads {
		reads[i] = benchRead(i*count, count)
	}
	ctx := context.Background()
	var w worker[benchOrder]
	var msgs []Message[benchOrder]
	var units []unit[benchOrder]
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i%len(reads) == 0 {
			// The reads come round again, with the same ids: as for a
			// new stream, nothing is recorded of them.
			e.sched.maxID = e.sched.maxID[:0]
		}
		ids, acked := w.take(p.index)
		read := e.sched.readStarted()
		e.sched.settle(acked)
		w.reuse(p.index, ids, acked)
		msgs = e.prepare(ctx, p, reads[i%len(reads)], msgs, nil)
		e.sched.admit(msgs, e.unitSize, e.c.key, false, &units, read)
		e.sched.readDone(read)
		if !e.sched.runHere(ctx, &w) {
			b.Fatal("runHere left units")
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*count), "ns/entry")
}

// BenchmarkRawDecode is the per-entry work of a raw rueidis loop between
// two reads: json.Unmarshal of each entry, its id gathered for one XACK.
func BenchmarkRawDecode(b *testing.B) {
	const count = 100
	reads := make([]rawEntries, 64)
	for i := range reads {
		reads[i] = benchRead(i*count, count)
	}
	ids := make([]string, 0, count)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ids = ids[:0]
		for _, x := range reads[i%len(reads)].xs {
			var o benchOrder
			if err := json.Unmarshal([]byte(x.FieldValues["data"]), &o); err != nil {
				b.Fatal(err)
			}
			ids = append(ids, x.ID)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*count), "ns/entry")
}
