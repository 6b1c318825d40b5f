package safesynctest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

func groupCreationTwice(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 2) // the stream exists before any group does
	first := e.consumer(e.config("c1"))
	msgs, err := first.Read(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, m.ID)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("group starting at 0 read %v, want the entries published before it, %v", got, ids)
	}
	// A second Consumer creates the same group again: BUSYGROUP is fine.
	if msgs, err := e.consumer(e.config("c2")).Read(ctxFor(t, 5*time.Second)); err != nil || len(msgs) != 0 {
		t.Fatalf("Read with the group already there = %d entries, %v; want none and no error", len(msgs), err)
	}

	cfg := e.config("c2")
	cfg.Group, cfg.StartID = "late", "$"
	late := e.consumer(cfg)
	if msgs, err := late.Read(ctxFor(t, 5*time.Second)); err != nil || len(msgs) != 0 {
		t.Fatalf("group starting at $ read %d entries, %v; want none", len(msgs), err)
	}
	newID := e.publish(3, 1)[0]
	msgs, err = late.Read(ctxFor(t, 5*time.Second))
	if err != nil || len(msgs) != 1 || msgs[0].ID != newID {
		t.Fatalf("group starting at $ read %v, %v; want only %s", msgs, err, newID)
	}
}

func publishReadAck(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ctx := ctxFor(t, 10*time.Second)
	want := order{OrderID: 7, Amount: 5}
	id, err := safesync.PublishJSON(ctx, e.client, e.stream, want)
	if err != nil {
		t.Fatal(err)
	}
	entries := Entries(t, e.client, e.stream)
	if len(entries) != 1 || len(entries[0].FieldValues) != 1 || entries[0].FieldValues[safesync.DataField] != `{"order_id":7,"amount":5}` {
		t.Fatalf("published entry = %+v, want one field data holding the JSON object", entries)
	}

	c := e.consumer(e.config("c1"))
	msg, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if msg.ID != id || msg.Stream != e.stream || msg.Group != "workers" || msg.Value != want || msg.Deliveries != 1 ||
		msg.Fields[safesync.DataField] != `{"order_id":7,"amount":5}` {
		t.Fatalf("Next = %+v, want entry %s with value %+v delivered once", msg, id, want)
	}
	if p := pendingIDs(t, e.client, e.stream); !slices.Equal(p, []string{id}) {
		t.Fatalf("pending before Ack = %v, want [%s]", p, id)
	}
	if err := c.Ack(ctx, msg); err != nil {
		t.Fatal(err)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending after Ack = %v, want none", p)
	}
	labels := map[string]string{"stream": e.stream}
	if r, a := e.metric("coti_safesync_queue_messages_read_total", labels), e.metric("coti_safesync_queue_messages_ack_total", labels); r != 1 || a != 1 {
		t.Fatalf("read_total = %v, ack_total = %v; want 1 and 1", r, a)
	}
}

func publishMaxLen(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ctx := ctxFor(t, 10*time.Second)
	for i := range 1000 {
		if _, err := safesync.PublishJSON(ctx, e.client, e.stream, order{OrderID: i}, safesync.MaxLen(10)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := e.client.Do(ctx, e.client.B().Xlen().Key(e.stream).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	// Approximate trimming removes whole nodes (100 entries by default).
	if n < 10 || n > 250 {
		t.Fatalf("XLEN after 1000 entries with MaxLen(10) = %d, want about 10 (at most a node more)", n)
	}
}

func readRespectsCount(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 10)
	cfg := e.config("c1")
	cfg.Count = 3
	c := e.consumer(cfg)
	var sizes []int
	var got []string
	for range 5 {
		msgs, err := c.Read(ctxFor(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(msgs))
		for _, m := range msgs {
			got = append(got, m.ID)
		}
		if len(sizes) == 1 {
			if p := pendingIDs(t, e.client, e.stream); len(p) != 3 {
				t.Fatalf("after one read with Count 3, %d entries were delivered, want 3", len(p))
			}
		}
	}
	if !slices.Equal(sizes, []int{3, 3, 3, 1, 0}) || !slices.Equal(got, ids) {
		t.Fatalf("reads with Count 3 of 10 entries returned %v entries (%v), want [3 3 3 1 0] in order", sizes, got)
	}
}

func ownPendingRespectsCount(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 10)
	first := e.consumer(e.config("c1"))
	if msgs, err := first.Read(ctxFor(t, 5*time.Second)); err != nil || len(msgs) != 10 {
		t.Fatalf("first read = %d entries, %v", len(msgs), err)
	}
	cfg := e.config("c1")
	cfg.Count = 4
	restarted := e.consumer(cfg)
	var sizes []int
	var got []string
	for range 4 {
		msgs, err := restarted.Read(ctxFor(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(msgs))
		for _, m := range msgs {
			got = append(got, m.ID)
		}
	}
	if !slices.Equal(sizes, []int{4, 4, 2, 0}) || !slices.Equal(got, ids) {
		t.Fatalf("re-reading 10 pending entries with Count 4 returned %v (%v), want [4 4 2 0] in order", sizes, got)
	}
}

func blockTiming(t *testing.T, s *suite) {
	e := s.newEnv(t)
	cfg := e.config("c1")
	cfg.Block = 300 * time.Millisecond
	c := e.consumer(cfg)
	if _, err := c.Read(ctxFor(t, 5*time.Second)); err != nil { // creates the group
		t.Fatal(err)
	}

	begin := time.Now()
	msgs, err := c.Read(ctxFor(t, 5*time.Second))
	waited := time.Since(begin)
	if err != nil || len(msgs) != 0 {
		t.Fatalf("Read of an empty stream = %d entries, %v", len(msgs), err)
	}
	if waited < 290*time.Millisecond || waited > 300*time.Millisecond+2*time.Second {
		t.Fatalf("Read of an empty stream with Block 300ms returned after %v", waited)
	}

	cfg.Block = 5 * time.Second
	c = e.consumer(cfg)
	go func() {
		time.Sleep(100 * time.Millisecond)
		e.publish(1, 1)
	}()
	begin = time.Now()
	msgs, err = c.Read(ctxFor(t, 10*time.Second))
	if woke := time.Since(begin); err != nil || len(msgs) != 1 || woke > 2500*time.Millisecond {
		t.Fatalf("Read blocking 5s returned %d entries, %v, after %v; want the entry published at 100ms, well before 5s", len(msgs), err, woke)
	}

	// A ctx deadline shorter than Block shortens the block, instead of
	// cutting the read off with an error.
	begin = time.Now()
	msgs, err = c.Read(ctxFor(t, 250*time.Millisecond))
	if took := time.Since(begin); err != nil || len(msgs) != 0 || took > 2*time.Second {
		t.Fatalf("Read with a 250ms deadline and Block 5s = %d entries, %v, after %v; want none and no error, before the deadline", len(msgs), err, took)
	}
}

func ownPendingFirst(t *testing.T, s *suite) {
	e := s.newEnv(t)
	old := e.publish(1, 3)
	ctx := ctxFor(t, 10*time.Second)
	crashed := e.consumer(e.config("c1"))
	for range 3 {
		if _, err := crashed.Next(ctx); err != nil { // handled, never acknowledged
			t.Fatal(err)
		}
	}
	fresh := e.publish(4, 2)

	restarted := e.consumer(e.config("c1"))
	var got []string
	var deliveries []int64
	for range 5 {
		m, err := restarted.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.ID)
		deliveries = append(deliveries, m.Deliveries)
		if err := restarted.Ack(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if want := append(slices.Clone(old), fresh...); !slices.Equal(got, want) {
		t.Fatalf("restarted consumer read %v, want its own pending %v first, then %v", got, old, fresh)
	}
	if !slices.Equal(deliveries, []int64{2, 2, 2, 1, 1}) {
		t.Fatalf("delivery counts = %v, want [2 2 2 1 1]", deliveries)
	}
}

func competingConsumers(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 300)
	var recs [3]recorder
	var runs []*running
	for i := range recs {
		cfg := e.config(fmt.Sprintf("c%d", i))
		cfg.Count, cfg.Concurrency = 10, 2
		c := e.consumer(cfg)
		h := recs[i].handler(nil)
		runs = append(runs, start(func(ctx context.Context) error { return c.Run(ctx, h) }))
	}
	total := func() int { return recs[0].len() + recs[1].len() + recs[2].len() }
	waitFor(t, 20*time.Second, "300 entries handled", func() bool { return total() >= 300 })
	for _, r := range runs {
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	for i := range recs {
		for _, id := range recs[i].ids() {
			seen[id]++
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("entry %s handled %d times, want once", id, seen[id])
		}
	}
	if total() != 300 {
		t.Errorf("%d handler calls for 300 entries", total())
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Errorf("%d entries still pending", len(p))
	}
}

func readLatency(t *testing.T, s *suite) {
	e := s.newEnv(t)
	e.publish(1, 5)
	cfg := e.config("c1")
	cfg.Count, cfg.Block = 2, 300*time.Millisecond
	c := e.consumer(cfg)
	var sizes []int
	for range 4 {
		msgs, err := c.Read(ctxFor(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(msgs))
	}
	if !slices.Equal(sizes, []int{2, 2, 1, 0}) {
		t.Fatalf("reads returned %v entries", sizes)
	}
	n, sum := e.metricSum("coti_safesync_queue_read_latency_seconds", map[string]string{"stream": e.stream})
	if n != 3 || sum >= 0.3 {
		t.Fatalf("read_latency_seconds has %v samples summing to %vs; want the 3 reads that returned entries, without the 300ms blocking read", n, sum)
	}
}
