package safesynctest

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

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

// orderedHandler records each entry's run in oc, taking up to maxSleep.
func orderedHandler(oc *orderChecker, maxSleep time.Duration) safesync.Handler[order] {
	return func(ctx context.Context, m safesync.Message[order]) error {
		one := []safesync.Message[order]{m}
		oc.enter(one)
		time.Sleep(rand.N(maxSleep))
		oc.leave(one)
		return nil
	}
}

func perKeyOrdering(t *testing.T, s *suite) {
	e := s.newEnv(t)
	want := publishKeyed(t, e, 400)
	cfg := e.config("c1")
	cfg.Concurrency, cfg.Count = 8, 50
	oc := newOrderChecker()
	c := e.consumer(cfg, safesync.OrderBy(byKey))
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, orderedHandler(oc, 500*time.Microsecond))
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

// perKeyOrderingUnderReclaim: with OrderBy and Concurrency 4, entries of a
// key run one at a time in stream order, each once, while the consumer's
// own reclaim scans claim the entries waiting behind their keys (idle
// longer than ClaimIdle) again.
func perKeyOrderingUnderReclaim(t *testing.T, s *suite) {
	e := s.newEnv(t)
	want := publishKeyed(t, e, 200)
	cfg := e.config("c1")
	cfg.Concurrency, cfg.Count = 4, 25
	cfg.ClaimIdle, cfg.ClaimInterval = 20*time.Millisecond, 5*time.Millisecond
	oc := newOrderChecker()
	c := e.consumer(cfg, safesync.OrderBy(byKey))
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, orderedHandler(oc, 3*time.Millisecond))
	})
	waitFor(t, 30*time.Second, "200 entries handled and acknowledged", func() bool {
		return oc.done() >= 200 && len(pendingIDs(t, e.client, e.stream)) == 0
	})
	time.Sleep(50 * time.Millisecond) // claims in flight come back
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	oc.check(t, want) // also: no entry ran twice
	if claimed := e.metric("coti_safesync_queue_messages_claimed_total", nil); claimed == 0 {
		t.Errorf("no entry was claimed: the case needs claims of entries waiting behind their keys to mean anything")
	}
}
