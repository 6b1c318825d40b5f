package safesynctest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

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
	before := goroutines()
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
	verifyNoNewGoroutines(t, before)
}

func shutdownAcksFinished(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 10)
	client := s.target.NewClient(t)
	before := goroutines()
	cfg := e.config("c1")
	cfg.Concurrency, cfg.Count, cfg.ShutdownGrace = 3, 10, time.Second
	release := make(chan struct{})
	started := make(chan int, 10)
	var calls sync.Map
	c, err := safesync.NewConsumer(client, cfg, safesync.JSON[order]())
	if err != nil {
		t.Fatal(err)
	}
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
	client.Close()
	verifyNoNewGoroutines(t, before)
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

// With Concurrency 1 the reader runs handlers itself: the same rules hold.
func shutdownInline(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 5)
	client := s.target.NewClient(t)
	before := goroutines()
	cfg := e.config("c1")
	cfg.ShutdownGrace = 300 * time.Millisecond
	c, err := safesync.NewConsumer(client, cfg, safesync.JSON[order]())
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan struct{})
	var calls atomic.Int64
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			calls.Add(1)
			if m.Value.OrderID == 2 {
				close(second)
				<-ctx.Done() // ignores the stop until its own ctx ends, ShutdownGrace later
				return ctx.Err()
			}
			return nil
		})
	})
	select {
	case <-second:
	case <-time.After(10 * time.Second):
		t.Fatal("second entry not handled")
	}
	begin := time.Now()
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < 300*time.Millisecond {
		t.Fatalf("Run returned %v after cancel, before ShutdownGrace (300ms) let the handler run", took)
	}
	client.Close()
	verifyNoNewGoroutines(t, before)
	if calls.Load() != 2 {
		t.Fatalf("%d handler calls, want 2: nothing starts after cancel", calls.Load())
	}
	if p := pendingIDs(t, e.client, e.stream); !slices.Equal(p, ids[1:]) {
		t.Fatalf("pending = %v, want all but the first, the only one that finished", p)
	}
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

// A group removed while Run is running (destroyed, or lost in a failover
// before its creation reached the replica) ends Run with an error; the
// next Run on the same Consumer creates it again from StartID and handles
// the stream's entries, the old ones again too.
func groupLostWhileRunning(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(0, 3)
	c := e.consumer(e.config("c1"))
	var rec recorder
	r := start(func(ctx context.Context) error { return c.Run(ctx, rec.handler(nil)) })
	waitFor(t, 10*time.Second, "3 entries handled", func() bool { return rec.len() >= 3 })
	waitFor(t, 10*time.Second, "3 entries acknowledged", func() bool { return len(pendingIDs(t, e.client, e.stream)) == 0 })
	if err := e.client.Do(context.Background(), e.client.B().XgroupDestroy().Key(e.stream).Group("workers").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, e.publish(3, 2)...) // wakes a blocked read, if the removal did not
	select {
	case err := <-r.done:
		if err == nil {
			t.Fatal("Run returned nil after its group was removed; want an error")
		}
		t.Logf("Run returned: %v", err)
	case <-time.After(10 * time.Second):
		r.stop(t)
		t.Fatal("Run still running 10s after its group was removed")
	}
	var again recorder
	r = start(func(ctx context.Context) error { return c.Run(ctx, again.handler(nil)) })
	waitFor(t, 10*time.Second, "the 5 entries handled by the second Run", func() bool { return again.len() >= 5 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := again.ids(); !slices.Equal(got, ids) {
		t.Fatalf("second Run handled %v, want every entry of the stream from StartID 0: %v", got, ids)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("entries still pending: %v", p)
	}
}
