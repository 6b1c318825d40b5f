package safesynctest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/safesync-go/safesync"
)

var conformanceCases = []conformanceCase{
	{name: "GroupCreationTwiceIsFine", run: groupCreationTwice},
	{name: "PublishReadAckRoundTrip", run: publishReadAck},
	{name: "PublishTrimsWithMaxLen", run: publishMaxLen},
	{name: "ReadRespectsCount", run: readRespectsCount},
	{name: "OwnPendingReReadRespectsCount", run: ownPendingRespectsCount,
		differs: "XREADGROUP with an id other than > ignores COUNT and returns every pending entry"},
	{name: "BlockTiming", run: blockTiming},
	{name: "OwnPendingFirstOnRestart", run: ownPendingFirst},
	{name: "CompetingConsumersNeverShareAnEntry", run: competingConsumers},
	{name: "ReclaimRespectsIdleTime", run: reclaimRespectsIdle},
	{name: "ReclaimReachesEntriesBeyondTheFirstThousand", run: reclaimBeyondThousand},
	{name: "FullClaimBatchIsFollowedAtOnce", run: fullClaimBatchFollowed},
	{name: "ReclaimAcknowledgesDeletedEntries", run: reclaimDeleted,
		differs: "XAUTOCLAIM neither reports entries deleted from the stream nor removes them from the pending list"},
	{name: "MaxDeliveriesDeadLetters", run: maxDeliveries},
	{name: "DecodeErrorDeadLettersOnFirstDeliveryAndSparesBatchMates", run: decodeErrors},
	{name: "DecodeErrorInRunBatchSparesBatchMates", run: decodeErrorsBatch},
	{name: "PermanentErrorDeadLettersAtOnce", run: permanentError},
	{name: "DeadLetterMovesAndAcknowledges", run: deadLetterMove},
	{name: "PanicIsRecoveredCountedAndNotAcked", run: panicRecovered},
	{name: "AckFailureIsCountedAndReturned", run: ackFailure},
	{name: "StopDuringBlockingReadReturnsWithin200ms", run: stopDuringBlock},
	{name: "ShutdownAcksExactlyTheFinishedHandlers", run: shutdownAcksFinished},
	{name: "PerKeyOrderingUnderConcurrency8", run: perKeyOrdering},
	{name: "PerKeyOrderingAcrossBatches", run: perKeyOrderingBatches},
	{name: "RunBatchHandlerOwnsAcknowledgement", run: runBatchOwnsAck},
	{name: "ReadLatencyExcludesBlocking", run: readLatency},
	{name: "PendingGauges", run: pendingGauges},
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

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

func reclaimRespectsIdle(t *testing.T, s *suite) {
	e := s.newEnv(t)
	id := e.publish(1, 1)[0]
	delivered := time.Now()
	if _, err := e.consumer(e.config("crashed")).Next(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	cfg := e.config("rescuer")
	cfg.ClaimIdle, cfg.ClaimInterval = time.Second, 20*time.Millisecond
	var handledAt atomic.Int64
	var rec recorder
	c := e.consumer(cfg)
	r := start(func(ctx context.Context) error {
		return c.ClaimStale(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			handledAt.CompareAndSwap(0, time.Now().UnixNano())
			rec.add(m)
			return nil
		})
	})
	waitFor(t, 10*time.Second, "the stale entry to be reclaimed", func() bool { return rec.len() > 0 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if idle := time.Duration(handledAt.Load() - delivered.UnixNano()); idle < time.Second {
		t.Fatalf("entry reclaimed %v after its delivery, before ClaimIdle (1s)", idle)
	}
	if m := rec.msgs[0]; rec.len() != 1 || m.ID != id || m.Deliveries != 2 {
		t.Fatalf("reclaimed %+v, want entry %s once with 2 deliveries", rec.msgs, id)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending after reclaim = %v", p)
	}
}

func reclaimBeyondThousand(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ctx := ctxFor(t, 30*time.Second)
	ids := e.publish(1, 1100)
	cfg := e.config("busy")
	cfg.Count = 2000
	if msgs, err := e.consumer(cfg).Read(ctx); err != nil || len(msgs) != 1100 {
		t.Fatalf("read %d, %v", len(msgs), err)
	}
	const idle = time.Second
	time.Sleep(idle + 100*time.Millisecond)
	// The first 1000 pending entries are being worked on again (XCLAIM to
	// the same consumer resets their idle time); only the last 100 are
	// stale. A reclaim that looks at the oldest N pending entries only
	// never reaches them.
	err := e.client.Do(ctx, e.client.B().Xclaim().Key(e.stream).Group("workers").Consumer("busy").MinIdleTime("0").
		Id(ids[:1000]...).Justid().Build()).Error()
	if err != nil {
		t.Fatal(err)
	}
	cfg = e.config("rescuer")
	cfg.ClaimIdle, cfg.Concurrency = idle, 10
	var rec recorder
	c := e.consumer(cfg)
	h := rec.handler(nil)
	r := start(func(ctx context.Context) error { return c.ClaimStale(ctx, h) })
	waitFor(t, idle/2, "the 100 stale entries behind 1000 busy ones to be reclaimed", func() bool { return rec.len() >= 100 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	got := rec.ids()
	slices.SortFunc(got, compareIDs)
	if !slices.Equal(got, ids[1000:]) {
		t.Fatalf("reclaimed %d entries, want exactly the last 100 (%s…%s)", len(got), ids[1000], ids[1099])
	}
	busy := 0
	for _, p := range Pending(t, e.client, e.stream, "workers") {
		if p.Consumer == "busy" {
			busy++
		}
	}
	if busy != 1000 {
		t.Fatalf("%d entries left with the busy consumer, want 1000", busy)
	}
}

func fullClaimBatchFollowed(t *testing.T, s *suite) {
	e := s.newEnv(t)
	e.publish(1, 50)
	cfg := e.config("crashed")
	if msgs, err := e.consumer(cfg).Read(ctxFor(t, 5*time.Second)); err != nil || len(msgs) != 50 {
		t.Fatalf("read %d, %v", len(msgs), err)
	}
	time.Sleep(150 * time.Millisecond)
	cfg = e.config("rescuer")
	cfg.ClaimIdle, cfg.Concurrency = 100*time.Millisecond, 5 // ClaimInterval stays 1h
	var rec recorder
	c := e.consumer(cfg)
	h := rec.handler(nil)
	r := start(func(ctx context.Context) error { return c.ClaimStale(ctx, h) })
	// Each claim takes at most 5 (the free slots); waiting ClaimInterval
	// after a full claim would leave 45 entries for an hour.
	waitFor(t, 10*time.Second, "50 stale entries reclaimed in one scan, 5 at a time", func() bool { return rec.len() >= 50 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if claimed := e.metric("coti_safesync_queue_messages_claimed_total", map[string]string{"stream": e.stream}); claimed != 50 {
		t.Fatalf("messages_claimed_total = %v, want 50", claimed)
	}
}

func reclaimDeleted(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ctx := ctxFor(t, 10*time.Second)
	ids := e.publish(1, 2)
	if msgs, err := e.consumer(e.config("crashed")).Read(ctx); err != nil || len(msgs) != 2 {
		t.Fatalf("read %d, %v", len(msgs), err)
	}
	if err := e.client.Do(ctx, e.client.B().Xdel().Key(e.stream).Id(ids[0]).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	cfg := e.config("rescuer")
	cfg.ClaimIdle, cfg.ClaimInterval = 100*time.Millisecond, 20*time.Millisecond
	var rec recorder
	c := e.consumer(cfg)
	h := rec.handler(nil)
	r := start(func(ctx context.Context) error { return c.ClaimStale(ctx, h) })
	waitFor(t, 10*time.Second, "the live entry reclaimed and the deleted one gone from the pending list", func() bool {
		return rec.len() == 1 && len(pendingIDs(t, e.client, e.stream)) == 0
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := rec.ids(); !slices.Equal(got, ids[1:]) {
		t.Fatalf("handled %v, want only the live entry %s", got, ids[1])
	}
}

func maxDeliveries(t *testing.T, s *suite) {
	e := s.newEnv(t)
	id := e.publish(1, 1)[0]
	cfg := e.config("c1")
	cfg.MaxDeliveries = 2
	cfg.ClaimIdle, cfg.ClaimInterval = 50*time.Millisecond, 20*time.Millisecond
	var rec recorder
	c := e.consumer(cfg)
	h := rec.handler(errTemporary)
	r := start(func(ctx context.Context) error { return c.Run(ctx, h) })
	dead := e.stream + safesync.DeadLetterSuffix
	waitFor(t, 10*time.Second, "the failing entry dead-lettered", func() bool { return len(DeadLetters(t, e.client, dead)) > 0 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 2 {
		t.Fatalf("handler called %d times, want MaxDeliveries = 2", rec.len())
	}
	dl := DeadLetters(t, e.client, dead)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	d := dl[0]
	if d.OriginalID != id || d.Stream != e.stream || d.Group != "workers" || d.Reason != safesync.DeadLetterMaxDeliveries ||
		d.Deliveries != 3 || d.Fields[safesync.DataField] != `{"order_id":1,"amount":5}` {
		t.Fatalf("dead letter = %+v, want entry %s, reason max_deliveries, 3 deliveries, original fields", d, id)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending after dead-lettering = %v", p)
	}
	if n := e.metric("coti_safesync_queue_dead_lettered_total", map[string]string{"reason": safesync.DeadLetterMaxDeliveries}); n != 1 {
		t.Fatalf("dead_lettered_total{reason=max_deliveries} = %v", n)
	}
}

// publishMixed publishes two good entries among four that cannot be
// decoded, and returns the good ids and the bad ones.
func publishMixed(t *testing.T, e *env) (good, bad []string) {
	for i, fields := range []map[string]string{
		{safesync.DataField: `{"order_id": 1, "amount": 5}`},
		{safesync.DataField: `not json`},
		{safesync.DataField: `[1, 2]`},
		{safesync.DataField: `{"order_id": 2, "amount": 5}`},
		{safesync.DataField: `{"order_id": NaN, "amount": Infinity}`},
		{"payload": `{"order_id": 3}`},
	} {
		id := Publish(t, e.client, e.stream, fields)
		if i == 0 || i == 3 {
			good = append(good, id)
		} else {
			bad = append(bad, id)
		}
	}
	return good, bad
}

func checkDecodeDeadLetters(t *testing.T, e *env, bad []string) {
	t.Helper()
	dl := DeadLetters(t, e.client, e.stream+safesync.DeadLetterSuffix)
	var got []string
	for _, d := range dl {
		got = append(got, d.OriginalID)
		if d.Reason != safesync.DeadLetterDecode || d.Deliveries != 1 || d.Error == "" {
			t.Errorf("dead letter %+v, want reason decode on the first delivery, with the error", d)
		}
	}
	if !slices.Equal(got, bad) {
		t.Fatalf("dead-lettered %v, want the undecodable %v", got, bad)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending = %v, want none", p)
	}
}

func decodeErrors(t *testing.T, s *suite) {
	e := s.newEnv(t)
	good, bad := publishMixed(t, e)
	var rec recorder
	c := e.consumer(e.config("c1"))
	h := rec.handler(nil)
	r := start(func(ctx context.Context) error { return c.Run(ctx, h) })
	waitFor(t, 10*time.Second, "good entries handled and bad ones dead-lettered", func() bool {
		return rec.len() >= 2 && len(DeadLetters(t, e.client, e.stream+safesync.DeadLetterSuffix)) >= len(bad)
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := rec.ids(); !slices.Equal(got, good) {
		t.Fatalf("handled %v, want the decodable %v", got, good)
	}
	checkDecodeDeadLetters(t, e, bad)
}

func decodeErrorsBatch(t *testing.T, s *suite) {
	e := s.newEnv(t)
	good, bad := publishMixed(t, e)
	var mu sync.Mutex
	var batches [][]string
	c := e.consumer(e.config("c1"))
	r := start(func(ctx context.Context) error {
		return c.RunBatch(ctx, 10, func(ctx context.Context, msgs []safesync.Message[order]) error {
			var ids []string
			for _, m := range msgs {
				ids = append(ids, m.ID)
			}
			mu.Lock()
			batches = append(batches, ids)
			mu.Unlock()
			return c.Ack(ctx, msgs...)
		})
	})
	waitFor(t, 10*time.Second, "the batch handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(batches) > 0
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if len(batches) != 1 || !slices.Equal(batches[0], good) {
		t.Fatalf("batches %v, want one batch of the decodable entries %v", batches, good)
	}
	checkDecodeDeadLetters(t, e, bad)
}

func permanentError(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 3)
	var rec recorder
	c := e.consumer(e.config("c1"))
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			rec.add(m)
			if m.Value.OrderID == 2 {
				return fmt.Errorf("order 2: %w", safesync.Permanent(errors.New("amount exceeds limit")))
			}
			return nil
		})
	})
	dead := e.stream + safesync.DeadLetterSuffix
	waitFor(t, 10*time.Second, "3 entries handled, one dead-lettered", func() bool {
		return rec.len() >= 3 && len(DeadLetters(t, e.client, dead)) >= 1
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	dl := DeadLetters(t, e.client, dead)
	if len(dl) != 1 || dl[0].OriginalID != ids[1] || dl[0].Reason != safesync.DeadLetterHandler || dl[0].Deliveries != 1 ||
		!strings.Contains(dl[0].Error, "amount exceeds limit") {
		t.Fatalf("dead letters = %+v, want entry %s with reason handler and the error", dl, ids[1])
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 || rec.len() != 3 {
		t.Fatalf("pending = %v after %d calls, want none after 3", p, rec.len())
	}
}

func deadLetterMove(t *testing.T, s *suite) {
	e := s.newEnv(t)
	id := e.publish(1, 1)[0]
	ctx := ctxFor(t, 10*time.Second)
	c := e.consumer(e.config("c1"))
	m, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeadLetter(ctx, m, "manual"); err != nil {
		t.Fatal(err)
	}
	dl := DeadLetters(t, e.client, c.Config().DeadLetterStream)
	if len(dl) != 1 || dl[0].OriginalID != id || dl[0].Reason != "manual" || dl[0].Fields[safesync.DataField] != m.Fields[safesync.DataField] {
		t.Fatalf("dead letters = %+v", dl)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending after DeadLetter = %v", p)
	}
}

func panicRecovered(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 3)
	var rec recorder
	c := e.consumer(e.config("c1"))
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			rec.add(m)
			if m.Value.OrderID == 2 {
				panic("handler bug")
			}
			return nil
		})
	})
	waitFor(t, 10*time.Second, "3 entries handled", func() bool { return rec.len() >= 3 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if p := pendingIDs(t, e.client, e.stream); !slices.Equal(p, ids[1:2]) {
		t.Fatalf("pending = %v, want only the entry whose handler panicked, %s", p, ids[1])
	}
	if n := e.metric("coti_safesync_queue_handler_panics_total", nil); n != 1 {
		t.Fatalf("handler_panics_total = %v, want 1", n)
	}
}

func ackFailure(t *testing.T, s *suite) {
	e := s.newEnv(t)
	id := e.publish(1, 1)[0]
	ctx := ctxFor(t, 10*time.Second)
	m, err := e.consumer(e.config("c1")).Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := e.consumer(e.config("c1"))
	gone, cancel := context.WithCancel(ctx)
	cancel() // the acknowledgement cannot be sent
	if err := c.Ack(gone, m); err == nil {
		t.Fatal("Ack that could not be sent returned nil")
	}
	if n := e.metric("coti_safesync_queue_ack_failures_total", map[string]string{"stream": e.stream}); n != 1 {
		t.Fatalf("ack_failures_total = %v, want 1", n)
	}
	if p := pendingIDs(t, e.client, e.stream); !slices.Equal(p, []string{id}) {
		t.Fatalf("pending = %v, want the entry whose ack failed", p)
	}
}

func stopDuringBlock(t *testing.T, s *suite) {
	e := s.newEnv(t)
	e.publish(1, 1)
	client := s.target.NewClient(t)
	// Goroutines the client and server have now are not ours; the client's
	// later ones end when it is closed below.
	before := goleak.IgnoreCurrent()
	cfg := e.config("c1")
	cfg.Block = 5 * time.Second
	c, err := safesync.NewConsumer(client, cfg, safesync.JSON[order]())
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 1)
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(context.Context, safesync.Message[order]) error {
			handled <- struct{}{}
			return nil
		})
	})
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("entry not handled")
	}
	time.Sleep(300 * time.Millisecond) // the next read now blocks for 5s
	begin := time.Now()
	err = r.stop(t)
	if took := time.Since(begin); took >= 200*time.Millisecond {
		t.Fatalf("Run returned %v after cancel during a 5s blocking read, want < 200ms", took)
	}
	if err != nil {
		t.Fatal(err)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending = %v, want the handled entry acknowledged", p)
	}
	client.Close()
	goleak.VerifyNone(t, before)
}

func shutdownAcksFinished(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 10)
	cfg := e.config("c1")
	cfg.Concurrency, cfg.Count, cfg.ShutdownGrace = 3, 10, time.Second
	release := make(chan struct{})
	started := make(chan int, 10)
	var calls sync.Map
	c := e.consumer(cfg)
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			calls.Store(m.Value.OrderID, true)
			started <- m.Value.OrderID
			switch m.Value.OrderID {
			case 1:
				return nil // finishes at once
			case 3:
				<-ctx.Done() // still running when the grace period ends
				return ctx.Err()
			default:
				<-release // finishes within the grace period
				return nil
			}
		})
	})
	// 1 finishes, freeing its slot for 4; then 2, 3 and 4 hold all three.
	got := map[int]bool{}
	for len(got) < 4 {
		select {
		case id := <-started:
			got[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("handlers started: %v, want 1 to 4", got)
		}
	}
	r.cancel()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	var handled []int
	calls.Range(func(k, _ any) bool { handled = append(handled, k.(int)); return true })
	slices.Sort(handled)
	if !slices.Equal(handled, []int{1, 2, 3, 4}) {
		t.Fatalf("handlers ran for orders %v, want 1-4 only: nothing starts after cancel", handled)
	}
	want := append([]string{ids[2]}, ids[4:]...) // 3 failed at the grace deadline, 5-10 never started
	if p := pendingIDs(t, e.client, e.stream); !slices.Equal(p, want) {
		t.Fatalf("pending = %v, want %v: exactly the finished 1, 2, 4 acknowledged", p, want)
	}
}

// publishKeyed publishes n orders whose keys cycle pseudo-randomly through 5
// values, and returns them by key in stream order.
func publishKeyed(t *testing.T, e *env, n int) map[string][]int {
	rng := rand.New(rand.NewPCG(1, 2))
	byKey := map[string][]int{}
	for i := range n {
		k := "k" + strconv.Itoa(rng.IntN(5))
		fields, _ := safesync.EncodeJSON(order{OrderID: i, Key: k})
		Publish(t, e.client, e.stream, fields)
		byKey[k] = append(byKey[k], i)
	}
	return byKey
}

// orderChecker records, per key, the order entries ran in and whether two
// ever overlapped.
type orderChecker struct {
	mu         sync.Mutex
	active     map[string]bool
	seen       map[string][]int
	running    int
	maxRunning int
	overlaps   int
	total      int
}

func newOrderChecker() *orderChecker {
	return &orderChecker{active: map[string]bool{}, seen: map[string][]int{}}
}

func (o *orderChecker) enter(msgs []safesync.Message[order]) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range msgs {
		if o.active[m.Value.Key] {
			o.overlaps++
		}
	}
	for _, m := range msgs {
		o.active[m.Value.Key] = true
		o.seen[m.Value.Key] = append(o.seen[m.Value.Key], m.Value.OrderID)
	}
	o.running++
	o.maxRunning = max(o.maxRunning, o.running)
}

func (o *orderChecker) leave(msgs []safesync.Message[order]) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range msgs {
		o.active[m.Value.Key] = false
	}
	o.running--
	o.total += len(msgs)
}

func (o *orderChecker) done() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.total
}

func (o *orderChecker) check(t *testing.T, want map[string][]int) {
	t.Helper()
	if o.overlaps > 0 {
		t.Errorf("%d times an entry ran while another of its key was running", o.overlaps)
	}
	for k, ids := range want {
		if !slices.Equal(o.seen[k], ids) {
			t.Errorf("key %s ran %v, want stream order %v", k, o.seen[k], ids)
		}
	}
	if o.maxRunning < 2 {
		t.Errorf("at most %d handlers ran at once; the test needs concurrency to mean anything", o.maxRunning)
	}
}

func byKey(m safesync.Message[order]) string { return m.Value.Key }

func perKeyOrdering(t *testing.T, s *suite) {
	e := s.newEnv(t)
	want := publishKeyed(t, e, 400)
	cfg := e.config("c1")
	cfg.Concurrency, cfg.Count = 8, 50
	oc := newOrderChecker()
	c := e.consumer(cfg, safesync.OrderBy(byKey))
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			one := []safesync.Message[order]{m}
			oc.enter(one)
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
			oc.leave(one)
			return nil
		})
	})
	waitFor(t, 30*time.Second, "400 entries handled", func() bool { return oc.done() >= 400 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	oc.check(t, want)
}

func perKeyOrderingBatches(t *testing.T, s *suite) {
	e := s.newEnv(t)
	want := publishKeyed(t, e, 400)
	cfg := e.config("c1")
	cfg.Concurrency = 8
	oc := newOrderChecker()
	c := e.consumer(cfg, safesync.OrderBy(byKey))
	r := start(func(ctx context.Context) error {
		return c.RunBatch(ctx, 3, func(ctx context.Context, msgs []safesync.Message[order]) error {
			oc.enter(msgs)
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
			oc.leave(msgs)
			return c.Ack(ctx, msgs...)
		})
	})
	waitFor(t, 30*time.Second, "400 entries handled", func() bool { return oc.done() >= 400 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	oc.check(t, want)
}

func runBatchOwnsAck(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 9)
	var handled atomic.Int64
	c := e.consumer(e.config("c1"))
	r := start(func(ctx context.Context) error {
		return c.RunBatch(ctx, 3, func(ctx context.Context, msgs []safesync.Message[order]) error {
			defer handled.Add(int64(len(msgs)))
			if len(msgs) > 3 {
				return fmt.Errorf("batch of %d, want at most 3", len(msgs))
			}
			switch msgs[0].Value.OrderID {
			case 1: // acknowledges the even orders only
				var even []safesync.Message[order]
				for _, m := range msgs {
					if m.Value.OrderID%2 == 0 {
						even = append(even, m)
					}
				}
				return c.Ack(ctx, even...)
			case 4: // acknowledges the first, then fails permanently
				if err := c.Ack(ctx, msgs[0]); err != nil {
					return err
				}
				return safesync.Permanent(errors.New("batch rejected"))
			default: // fails: nothing acknowledged
				return errTemporary
			}
		})
	})
	waitFor(t, 10*time.Second, "9 entries handled", func() bool { return handled.Load() >= 9 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if p, want := pendingIDs(t, e.client, e.stream), []string{ids[0], ids[2], ids[6], ids[7], ids[8]}; !slices.Equal(p, want) {
		t.Fatalf("pending = %v, want %v", p, want)
	}
	var dead []string
	for _, d := range DeadLetters(t, e.client, e.stream+safesync.DeadLetterSuffix) {
		dead = append(dead, d.OriginalID)
	}
	if !slices.Equal(dead, ids[4:6]) {
		t.Fatalf("dead-lettered %v, want the two entries of the rejected batch its handler did not acknowledge, %v", dead, ids[4:6])
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

func pendingGauges(t *testing.T, s *suite) {
	e := s.newEnv(t)
	e.publish(1, 3)
	if msgs, err := e.consumer(e.config("crashed")).Read(ctxFor(t, 5*time.Second)); err != nil || len(msgs) != 3 {
		t.Fatalf("read %d, %v", len(msgs), err)
	}
	time.Sleep(200 * time.Millisecond)
	cfg := e.config("watcher")
	cfg.ClaimInterval = 20 * time.Millisecond // ClaimIdle stays 1h: nothing is claimed
	c := e.consumer(cfg)
	r := start(func(ctx context.Context) error {
		return c.ClaimStale(ctx, func(context.Context, safesync.Message[order]) error { return nil })
	})
	labels := map[string]string{"stream": e.stream, "group": "workers"}
	waitFor(t, 10*time.Second, "pending gauges refreshed", func() bool {
		return e.metric("coti_safesync_queue_pending_entries", labels) == 3 &&
			e.metric("coti_safesync_queue_oldest_pending_age_seconds", labels) >= 0.2
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

// compareIDs orders stream entry ids numerically.
func compareIDs(a, b string) int {
	parse := func(id string) (ms, seq uint64) {
		l, r, _ := strings.Cut(id, "-")
		ms, _ = strconv.ParseUint(l, 10, 64)
		seq, _ = strconv.ParseUint(r, 10, 64)
		return ms, seq
	}
	am, as := parse(a)
	bm, bs := parse(b)
	if am != bm {
		return cmp.Compare(am, bm)
	}
	return cmp.Compare(as, bs)
}
