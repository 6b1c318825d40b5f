package safesynctest

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/internal/streamid"
)

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
	const idle = 2 * time.Second
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
	x, _ := streamid.Parse(a)
	y, _ := streamid.Parse(b)
	return x.Compare(y)
}

// inFlightNeverRunTwice: while entries run (longer than ClaimIdle), wait
// to start, or wait for their XACK, the consumer's own reclaim scans claim
// them again from the pending list; the consumer drops them, and runs
// every entry once. The last entry runs longest, alone at the end, with
// slots free for the claims.
func inFlightNeverRunTwice(t *testing.T, s *suite) {
	e := s.newEnv(t)
	const n = 40
	e.publish(1, n)
	cfg := e.config("c1")
	cfg.Concurrency, cfg.Count = 4, 4
	cfg.ClaimIdle, cfg.ClaimInterval = 20*time.Millisecond, 5*time.Millisecond
	var mu sync.Mutex
	calls := map[string][]int64{} // id -> the Deliveries of each call
	c := e.consumer(cfg)
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			mu.Lock()
			calls[m.ID] = append(calls[m.ID], m.Deliveries)
			mu.Unlock()
			if m.Value.OrderID == n {
				time.Sleep(300 * time.Millisecond) // 15 times ClaimIdle
			} else {
				time.Sleep(5 * time.Millisecond)
			}
			return nil
		})
	})
	waitFor(t, 30*time.Second, "every entry handled and acknowledged", func() bool {
		mu.Lock()
		handled := len(calls)
		mu.Unlock()
		return handled == n && len(pendingIDs(t, e.client, e.stream)) == 0
	})
	time.Sleep(50 * time.Millisecond) // claims in flight come back
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, ds := range calls {
		if len(ds) != 1 {
			t.Errorf("entry %s handled %d times (deliveries %v), want once", id, len(ds), ds)
		}
	}
	if claimed := e.metric("coti_safesync_queue_messages_claimed_total", nil); claimed == 0 {
		t.Errorf("no entry was claimed: the case needs claims of entries in flight to mean anything")
	}
}
