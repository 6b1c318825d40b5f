package safesync

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// runScheduler admits n entries in random chunks, as a reader and a
// reclaimer would, waits for every unit to run, and returns what ran in
// which order per key, and the most units that ran at once.
func runScheduler(t *testing.T, n, concurrency, size, keys int, ordered bool) (perKey map[string][]int, maxRunning int) {
	t.Helper()
	slots, err := newSlots(concurrency)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	var order *orderer
	if ordered {
		order = newOrderer()
	}
	ctx := context.Background()
	s := newScheduler[int](ctx, slots, concurrency, size*2, order)
	var mu sync.Mutex
	perKey = map[string][]int{}
	active := map[string]bool{}
	var running, ran atomic.Int64
	var acked atomic.Int64
	s.flushAcks = func(_ int, ids []string, refs []heldRef) {
		acked.Add(int64(len(ids)))
		s.settle(refs)
	}
	s.work = func(w *worker[int], u *unit[int]) {
		r := running.Add(1)
		mu.Lock()
		maxRunning = max(maxRunning, int(r))
		for _, m := range u.msgs {
			if k := m.Fields["key"]; ordered && active[k] {
				t.Errorf("key %s ran in two units at once", k)
			}
		}
		for _, m := range u.msgs {
			k := m.Fields["key"]
			active[k] = true
			perKey[k] = append(perKey[k], m.Value)
		}
		mu.Unlock()
		if rand.IntN(4) == 0 {
			time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		}
		mu.Lock()
		for _, m := range u.msgs {
			active[m.Fields["key"]] = false
		}
		mu.Unlock()
		running.Add(-1)
		for i := range u.msgs {
			w.ack(s, u, i)
		}
		ran.Add(int64(len(u.msgs)))
	}
	key := func(m Message[int]) string { return m.Fields["key"] }
	for i := 0; i < n; {
		if !s.waitToRead(ctx) {
			t.Fatal("waitToRead returned false")
		}
		chunk := min(n-i, 1+rand.IntN(3*size))
		msgs := make([]Message[int], chunk)
		for j := range msgs {
			msgs[j] = Message[int]{ID: strconv.Itoa(i + j), Value: i + j, Fields: map[string]string{"key": "k" + strconv.Itoa(rand.IntN(keys))}}
		}
		s.admit(msgs, size, key, true, nil, 0)
		i += chunk
	}
	deadline := time.Now().Add(20 * time.Second)
	for ran.Load() < int64(n) || acked.Load() < int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("after 20s %d of %d entries ran and %d were acknowledged: the scheduler stalled", ran.Load(), n, acked.Load())
		}
		time.Sleep(time.Millisecond)
	}
	s.stop()
	s.workers.Wait()
	return perKey, maxRunning
}

func TestSchedulerRunsEveryEntryOnceWithoutStalling(t *testing.T) {
	for _, tc := range []struct{ concurrency, size, keys int }{
		{1, 1, 3}, {1, 10, 3}, {4, 1, 2}, {8, 1, 50}, {8, 5, 4}, {3, 7, 1},
	} {
		for _, ordered := range []bool{false, true} {
			t.Run(fmt.Sprintf("concurrency %d size %d keys %d ordered %v", tc.concurrency, tc.size, tc.keys, ordered), func(t *testing.T) {
				perKey, maxRunning := runScheduler(t, 3000, tc.concurrency, tc.size, tc.keys, ordered)
				total := 0
				for k, seq := range perKey {
					total += len(seq)
					if !ordered {
						continue
					}
					for i := 1; i < len(seq); i++ {
						if seq[i] < seq[i-1] {
							t.Fatalf("key %s ran %d after %d", k, seq[i], seq[i-1])
						}
					}
				}
				if total != 3000 {
					t.Fatalf("%d entries ran, want 3000", total)
				}
				if maxRunning > tc.concurrency {
					t.Fatalf("%d units ran at once, Concurrency is %d", maxRunning, tc.concurrency)
				}
			})
		}
	}
}

func TestSchedulerStopStartsNothingMore(t *testing.T) {
	slots, err := newSlots(1)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	s := newScheduler[int](context.Background(), slots, 1, 10, nil)
	release := make(chan struct{})
	var ran atomic.Int64
	s.flushAcks = func(int, []string, []heldRef) {}
	s.work = func(w *worker[int], u *unit[int]) {
		ran.Add(1)
		<-release
	}
	msgs := make([]Message[int], 5)
	for i := range msgs {
		msgs[i] = Message[int]{ID: strconv.Itoa(i)}
	}
	s.admit(msgs, 1, nil, true, nil, 0)
	for ran.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	s.stop()
	close(release)
	s.workers.Wait()
	if ran.Load() != 1 {
		t.Fatalf("%d units ran, want only the one running when the scheduler stopped", ran.Load())
	}
	if n := s.admit(msgs, 1, nil, true, nil, 0); n != 0 {
		t.Fatalf("admit after stop queued %d entries", n)
	}
}

// An inline reader runs what it reads itself while reclaim admits units
// from another goroutine: still one unit at a time, nothing lost.
func TestSchedulerInlineReaderSharesItsSlotWithReclaim(t *testing.T) {
	slots, err := newSlots(1)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	ctx := context.Background()
	s := newScheduler[int](ctx, slots, 1, 10, nil)
	var running, maxRunning, ran atomic.Int64
	var acked atomic.Int64
	s.flushAcks = func(_ int, ids []string, refs []heldRef) {
		acked.Add(int64(len(ids)))
		s.settle(refs)
	}
	s.work = func(w *worker[int], u *unit[int]) {
		r := running.Add(1)
		for m := maxRunning.Load(); r > m && !maxRunning.CompareAndSwap(m, r); m = maxRunning.Load() {
		}
		if rand.IntN(8) == 0 {
			time.Sleep(50 * time.Microsecond)
		}
		running.Add(-1)
		ran.Add(1)
		w.ack(s, u, 0)
	}
	batch := func(from, n int) []Message[int] {
		msgs := make([]Message[int], n)
		for i := range msgs {
			msgs[i] = Message[int]{ID: strconv.Itoa(from + i)}
		}
		return msgs
	}
	done := make(chan struct{})
	go func() { // reclaim
		defer close(done)
		for i := 0; i < 2000; i += 5 {
			if s.waitFreeSlots(ctx) == 0 {
				t.Error("waitFreeSlots returned 0")
				return
			}
			s.admit(batch(100000+i, 5), 1, nil, true, nil, 0)
		}
	}()
	var w worker[int]
	var units []unit[int]
	for i := 0; i < 5000; i += 10 { // the inline reader
		s.waitToRead(ctx)
		s.admit(batch(i, 10), 1, nil, false, &units, 0)
		s.runHere(ctx, &w)
	}
	w.flush(s)
	<-done
	deadline := time.Now().Add(20 * time.Second)
	for ran.Load() < 7000 || acked.Load() < 7000 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 7000 units ran, %d acknowledged: stalled", ran.Load(), acked.Load())
		}
		time.Sleep(time.Millisecond)
	}
	s.stop()
	s.workers.Wait()
	if maxRunning.Load() != 1 {
		t.Fatalf("%d units ran at once with Concurrency 1", maxRunning.Load())
	}
}

// Two partitions may hold entries with equal ids: both run, and each
// acknowledgement goes to its own partition.
func TestSchedulerKeepsEqualIDsOfTwoPartitionsApart(t *testing.T) {
	slots, err := newSlots(2)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	s := newScheduler[int](context.Background(), slots, 2, 10, nil)
	var mu sync.Mutex
	acked := map[int][]string{}
	s.flushAcks = func(part int, ids []string, _ []heldRef) {
		mu.Lock()
		acked[part] = append(acked[part], ids...)
		mu.Unlock()
	}
	var ran atomic.Int64
	s.work = func(w *worker[int], u *unit[int]) {
		ran.Add(1)
		w.ack(s, u, 0)
	}
	if n := s.admit([]Message[int]{{ID: "1-0", part: 0}}, 1, nil, true, nil, 0); n != 1 {
		t.Fatalf("partition 0: admitted %d, want 1", n)
	}
	if n := s.admit([]Message[int]{{ID: "1-0", part: 1}}, 1, nil, true, nil, 0); n != 1 {
		t.Fatalf("partition 1: admitted %d entries with the id of a held entry of partition 0, want 1", n)
	}
	s.workers.Wait()
	if ran.Load() != 2 {
		t.Fatalf("%d units ran, want 2", ran.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(acked[0], []string{"1-0"}) || !slices.Equal(acked[1], []string{"1-0"}) {
		t.Fatalf("acknowledged %v, want 1-0 in each of partitions 0 and 1", acked)
	}
}

// An inline reader takes its acknowledgements for its next read: those of
// one read are not handed to the acknowledger because the acknowledgements
// of an earlier read, already taken, had waited ackFlushAfter. Sent on
// their own they cost a round trip each, and beside the reads they made
// rueidis pipeline the connection through goroutines from then on.
func TestInlineReaderKeepsTheAcknowledgementsOfEachReadForTheNext(t *testing.T) {
	s := &scheduler[int]{}
	var handed []string
	s.flushAcks = func(_ int, ids []string, _ []heldRef) { handed = append(handed, ids...) }
	var w worker[int]
	start := time.Now()
	for read := range 5 {
		if ids, _ := w.take(0); read > 0 && len(ids) != 3 {
			t.Fatalf("read %d: took %v, want the previous read's 3 ids", read, ids)
		}
		for i := range 3 {
			u := &unit[int]{msgs: []Message[int]{{ID: fmt.Sprintf("%d-%d", read, i)}}}
			w.ack(s, u, 0)
			// Each read is handled within a millisecond, and the reads
			// follow each other for longer than ackFlushAfter.
			w.flushIfDue(s, start.Add(time.Duration(read)*ackFlushAfter+time.Duration(i)*time.Millisecond/4))
		}
	}
	if len(handed) > 0 {
		t.Fatalf("ids %v handed to the acknowledger, want every read's taken by the next read", handed)
	}
	// A read whose own acknowledgements waited ackFlushAfter still hands
	// them over.
	w.ack(s, &unit[int]{msgs: []Message[int]{{ID: "5-0"}}}, 0)
	w.flushIfDue(s, start.Add(10*ackFlushAfter))
	w.flushIfDue(s, start.Add(11*ackFlushAfter))
	if len(handed) != 4 {
		t.Fatalf("handed %v, want the 3 of the last read and 5-0 once they waited ackFlushAfter", handed)
	}
	// The inline reader sends those itself (direct), not through the
	// acknowledgers: no XACK goes out beside its reads.
	var sent []string
	w.direct = func(_ int, ids []string, _ []heldRef) { sent = append(sent, ids...) }
	w.ack(s, &unit[int]{msgs: []Message[int]{{ID: "6-0"}}}, 0)
	w.flushIfDue(s, start.Add(12*ackFlushAfter))
	w.flushIfDue(s, start.Add(13*ackFlushAfter))
	if len(handed) != 4 || !slices.Equal(sent, []string{"6-0"}) {
		t.Fatalf("handed %v and sent %v directly, want 6-0 sent directly", handed, sent)
	}
}

// msgsOf returns entries of stream part with ids, in that order.
func msgsOf(part int, ids ...string) []Message[int] {
	msgs := make([]Message[int], len(ids))
	for i, id := range ids {
		msgs[i] = Message[int]{ID: id, part: part}
	}
	return msgs
}

// The in-flight set: an entry held (waiting, running, or handed over for
// acknowledgement) is dropped from every claim or re-read that returns
// it, however its ids compare with those admitted before; one left
// pending by its handler is admitted again; one acknowledged while a
// claim was in flight is dropped from that claim; and the records of
// entries settled long ago, reused for a later read, are not touched by
// what still refers to them.
func TestSchedulerNeverAdmitsAnEntryItHoldsAgain(t *testing.T) {
	slots, err := newSlots(1)
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	ctx := context.Background()
	s := newScheduler[int](ctx, slots, 1, 1000, nil)
	s.flushAcks = func(int, []string, []heldRef) { t.Error("acknowledgements handed over") }
	var ran []string
	var w worker[int]
	s.work = func(w *worker[int], u *unit[int]) {
		ran = append(ran, u.msgs[0].ID)
		if u.msgs[0].ID != "5-3" || slices.Index(ran, "5-3") < len(ran)-1 {
			w.ack(s, u, 0) // 5-3's handler fails the first time: it stays pending
		}
	}
	admit := func(what string, msgs []Message[int], want ...string) {
		t.Helper()
		read := s.readStarted()
		s.admit(msgs, 1, nil, false, nil, read)
		s.readDone(read)
		var got []string
		for _, u := range s.ready[s.head:] {
			got = append(got, u.msgs[0].ID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: queued %v, want %v", what, got, want)
		}
		if !s.paused && !s.runHere(ctx, &w) {
			t.Fatalf("%s: units left", what)
		}
	}
	s.paused = true // nothing runs until resume: admitted entries wait, held
	admit("a read of new entries", msgsOf(0, "5-0", "5-1", "5-2", "5-3", "5-4", "5-5", "5-6", "5-7", "5-8", "5-9"),
		"5-0", "5-1", "5-2", "5-3", "5-4", "5-5", "5-6", "5-7", "5-8", "5-9")
	admit("a claim of entries waiting to start", msgsOf(0, "1-0", "5-2", "5-7", "9-0"), "5-0", "5-1", "5-2", "5-3", "5-4", "5-5", "5-6", "5-7", "5-8", "5-9", "1-0", "9-0")
	admit("a read after the group was moved back (XGROUP SETID)", msgsOf(0, "5-5", "5-6", "9-1"),
		"5-0", "5-1", "5-2", "5-3", "5-4", "5-5", "5-6", "5-7", "5-8", "5-9", "1-0", "9-0", "9-1")
	admit("another stream's entries", msgsOf(1, "9-9"),
		"5-0", "5-1", "5-2", "5-3", "5-4", "5-5", "5-6", "5-7", "5-8", "5-9", "1-0", "9-0", "9-1", "9-9")
	admit("a claim on another stream of an id held on the first", msgsOf(1, "5-1"),
		"5-0", "5-1", "5-2", "5-3", "5-4", "5-5", "5-6", "5-7", "5-8", "5-9", "1-0", "9-0", "9-1", "9-9", "5-1")
	s.mu.Lock()
	s.paused = false // resume, without starting workers: runHere runs them
	s.mu.Unlock()
	if !s.runHere(ctx, &w) {
		t.Fatal("units left")
	}
	if len(ran) != 15 {
		t.Fatalf("ran %v, want the 15 entries once each", ran)
	}
	admit("a claim of entries handled, waiting for their XACK, and of one left pending", msgsOf(0, "5-3", "5-4", "9-0"), "5-3")
	ids, refs := w.take(0)
	ids = append(ids, w.acks[1]...)
	refs = append(refs, w.refs[1]...)
	if len(ids) != 15 {
		t.Fatalf("acknowledgements %v buffered, want the 15 entries, 5-3 the second time", ids)
	}
	read := s.readStarted() // a claim in flight while the XACK succeeds
	s.settle(refs)
	s.admit(msgsOf(0, "5-4", "5-8"), 1, nil, false, nil, read)
	s.readDone(read)
	if s.readyLen() != 0 || s.running != 0 {
		t.Fatal("a claim sent before the XACK of its entries handed them over again")
	}
	// Every record of those reads is forgotten: the next read reuses one.
	// Refs to the old entries must not reach the new ones.
	s.paused = true
	admit("a later read", msgsOf(0, "10-0", "10-1", "10-2"), "10-0", "10-1", "10-2")
	s.settle(refs)
	s.release(refs)
	admit("a claim of the later read's entries", msgsOf(0, "10-0", "10-1", "10-2"), "10-0", "10-1", "10-2")
}
