package safesynctest

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

// RunPartitionConformance checks partitioned streams against a server:
// every entry handled once over all partitions, with per-partition
// metrics; per-key order with 8 partitions and 8 handlers; dead letters
// kept in their partition's slot; a consumer that joins and leaves, whose
// pending entries the other reclaims. Cases use logical streams of their
// own, deleted when they end.
func RunPartitionConformance(t *testing.T, target StreamTarget) {
	s := &suite{target: target}
	for _, c := range partitionCases {
		t.Run(c.name, func(t *testing.T) { c.run(t, s) })
	}
}

var partitionCases = []conformanceCase{
	{name: "EveryEntryOnceAcrossPartitions", run: partitionsEveryEntryOnce},
	{name: "PerKeyOrderWith8PartitionsAndConcurrency8", run: partitionsPerKeyOrder},
	{name: "DeadLettersStayInTheirPartition", run: partitionsDeadLetters},
	{name: "ConsumerJoinsAndLeavesNothingLost", run: partitionsJoinLeave},
}

// newPartitions returns a fresh logical stream of n partitions whose keys
// and dead-letter keys are deleted when t ends, one DEL per partition
// (each partition is its own slot).
func (e *env) newPartitions(n int) safesync.Partitions {
	e.t.Helper()
	var b [4]byte
	_, _ = crand.Read(b[:])
	name := strings.TrimSuffix(strings.TrimPrefix(e.stream, "safesync-conformance:{"), "}")
	p, err := safesync.NewPartitions("safesync-partitions:"+name+"-"+hex.EncodeToString(b[:]), n)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, k := range p.Streams() {
			_ = e.client.Do(ctx, e.client.B().Del().Key(k, k+safesync.DeadLetterSuffix).Build()).Error()
		}
	})
	return p
}

func (e *env) partitionedConsumer(p safesync.Partitions, cfg safesync.StreamConfig, opts ...safesync.ConsumerOption[order]) *safesync.PartitionedConsumer[order] {
	e.t.Helper()
	cfg.Stream = ""
	c, err := safesync.NewPartitionedConsumer(e.client, p, cfg, safesync.JSON[order](), opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// publishPartitioned publishes n orders numbered from first, keyed by
// nkeys keys chosen pseudo-randomly, one after another, and returns the
// order ids by key in publish order and the entry count by partition.
func (e *env) publishPartitioned(p safesync.Partitions, first, n, nkeys int) (keys map[string][]int, perPart []int) {
	e.t.Helper()
	rng := rand.New(rand.NewPCG(uint64(first), 7))
	keys, perPart = map[string][]int{}, make([]int, p.Len())
	for i := range n {
		o := order{OrderID: first + i, Amount: 5, Key: "key-" + strconv.Itoa(rng.IntN(nkeys))}
		_, part, err := safesync.PublishPartitionedJSON(context.Background(), e.client, p, o, keyOf)
		if err != nil {
			e.t.Fatal(err)
		}
		keys[o.Key] = append(keys[o.Key], o.OrderID)
		perPart[part]++
	}
	return keys, perPart
}

// nothingPending fails the test when an entry of any partition is still
// pending.
func (e *env) nothingPending(p safesync.Partitions) {
	e.t.Helper()
	for i, k := range p.Streams() {
		if ids := pendingIDs(e.t, e.client, k); len(ids) > 0 {
			e.t.Errorf("partition %d (%s) still has %d pending entries: %v", i, k, len(ids), ids)
		}
	}
}

// onceLog records which order ids a handler finished, to check that each
// finished exactly once.
type onceLog struct {
	mu   sync.Mutex
	done map[int]int
	n    int
}

func newOnceLog() *onceLog { return &onceLog{done: map[int]int{}} }

func (l *onceLog) add(id int) {
	l.mu.Lock()
	l.done[id]++
	l.n++
	l.mu.Unlock()
}

func (l *onceLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// check fails the test unless ids first to first+n-1 finished exactly
// once each, and nothing else did.
func (l *onceLog) check(t *testing.T, first, n int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var missing, twice []int
	for id := first; id < first+n; id++ {
		switch l.done[id] {
		case 0:
			missing = append(missing, id)
		case 1:
		default:
			twice = append(twice, id)
		}
	}
	if len(missing) > 0 || len(twice) > 0 || len(l.done) != n {
		t.Errorf("of %d entries, %d never finished (%v), %d finished more than once (%v), %d distinct finished",
			n, len(missing), missing, len(twice), twice, len(l.done))
	}
}

func partitionsEveryEntryOnce(t *testing.T, s *suite) {
	e := s.newEnv(t)
	p := e.newPartitions(4)
	_, perPart := e.publishPartitioned(p, 0, 300, 40)
	for i, n := range perPart {
		if n == 0 {
			t.Fatalf("partition %d got no entry of 300 over 40 keys: %v", i, perPart)
		}
	}
	cfg := e.config("c1")
	cfg.Concurrency = 4
	c := e.partitionedConsumer(p, cfg)
	log := newOnceLog()
	streams := map[string]int{}
	var mu sync.Mutex
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			if want := p.Stream(p.For(m.Value.Key)); m.Stream != want {
				t.Errorf("order %d of key %s came from %s, want %s", m.Value.OrderID, m.Value.Key, m.Stream, want)
			}
			mu.Lock()
			streams[m.Stream]++
			mu.Unlock()
			log.add(m.Value.OrderID)
			return nil
		})
	})
	waitFor(t, 30*time.Second, "300 entries handled", func() bool { return log.count() >= 300 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	log.check(t, 0, 300)
	e.nothingPending(p)
	for i, n := range perPart {
		labels := map[string]string{"stream": p.Name(), "partition": strconv.Itoa(i)}
		if got := e.metric("coti_safesync_queue_partition_messages_ack_total", labels); got != float64(n) {
			t.Errorf("partition %d: partition_messages_ack_total %v, want %d", i, got, n)
		}
		if got := e.metric("coti_safesync_queue_messages_ack_total", map[string]string{"stream": p.Stream(i)}); got != float64(n) {
			t.Errorf("partition %d: messages_ack_total{stream=%s} %v, want %d", i, p.Stream(i), got, n)
		}
		if streams[p.Stream(i)] != n {
			t.Errorf("partition %d: handled %d entries, want %d", i, streams[p.Stream(i)], n)
		}
	}
}

// keyOf is the key function publishers use.
func keyOf(o order) string { return o.Key }

func partitionsPerKeyOrder(t *testing.T, s *suite) {
	e := s.newEnv(t)
	p := e.newPartitions(8)
	want, perPart := e.publishPartitioned(p, 0, 800, 64)
	for i, n := range perPart {
		if n == 0 {
			t.Fatalf("partition %d got no entry of 800 over 64 keys: %v", i, perPart)
		}
	}
	cfg := e.config("c1")
	cfg.Concurrency, cfg.Count = 8, 20
	oc := newOrderChecker()
	c := e.partitionedConsumer(p, cfg, safesync.OrderBy(byKey))
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			one := []safesync.Message[order]{m}
			oc.enter(one)
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			oc.leave(one)
			return nil
		})
	})
	waitFor(t, 60*time.Second, "800 entries handled", func() bool { return oc.done() >= 800 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if oc.done() != 800 {
		t.Errorf("%d handler calls, want 800", oc.done())
	}
	oc.check(t, want)
	e.nothingPending(p)
}

func partitionsDeadLetters(t *testing.T, s *suite) {
	e := s.newEnv(t)
	p := e.newPartitions(3)
	_, perPart := e.publishPartitioned(p, 0, 60, 12)
	cfg := e.config("c1")
	cfg.Concurrency = 3
	c := e.partitionedConsumer(p, cfg)
	log := newOnceLog()
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			log.add(m.Value.OrderID)
			if m.Value.OrderID%2 == 1 {
				return safesync.Permanent(errors.New("odd orders are refused"))
			}
			return nil
		})
	})
	waitFor(t, 30*time.Second, "60 entries handled", func() bool { return log.count() >= 60 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	log.check(t, 0, 60)
	e.nothingPending(p)
	var dead int
	for i, k := range p.Streams() {
		if cfg := c.Config(i); cfg.DeadLetterStream != k+safesync.DeadLetterSuffix || safesync.KeySlot(cfg.DeadLetterStream) != safesync.KeySlot(k) {
			t.Errorf("partition %d: dead-letter stream %q (slot %d) is not %q in slot %d",
				i, cfg.DeadLetterStream, safesync.KeySlot(cfg.DeadLetterStream), k+safesync.DeadLetterSuffix, safesync.KeySlot(k))
		}
		for _, d := range DeadLetters(t, e.client, k+safesync.DeadLetterSuffix) {
			dead++
			if d.Stream != k || d.Reason != safesync.DeadLetterHandler {
				t.Errorf("dead letter %+v in %s: from %q with reason %q, want from %q, reason %q", d, k, d.Stream, d.Reason, k, safesync.DeadLetterHandler)
			}
		}
	}
	if dead != 30 {
		t.Errorf("%d dead letters over %d partitions (%v published), want the 30 odd orders", dead, p.Len(), perPart)
	}
}

// A second consumer joins a running one and later leaves, cancelled while
// its handlers hold entries they then fail, and with entries it read but
// did not start; the first reclaims them. Every entry finishes exactly
// once and nothing stays pending.
func partitionsJoinLeave(t *testing.T, s *suite) {
	e := s.newEnv(t)
	p := e.newPartitions(4)
	const n = 400
	e.publishPartitioned(p, 0, n/2, 40)
	cfgA := e.config("a")
	cfgA.Concurrency, cfgA.Count = 4, 10
	cfgA.ClaimIdle, cfgA.ClaimInterval = time.Second, 100*time.Millisecond
	cfgB := cfgA
	cfgB.Consumer = "b"
	log := newOnceLog()
	slow := func(ctx context.Context, m safesync.Message[order]) error {
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		log.add(m.Value.OrderID)
		return nil
	}
	a := e.partitionedConsumer(p, cfgA)
	ra := start(func(ctx context.Context) error { return a.Run(ctx, slow) })

	// b handles 20 entries; every later call holds its entry until b is
	// told to leave, then fails, leaving the entry pending under b.
	leaving := make(chan struct{})
	var bMu sync.Mutex
	var bHandled, bHeld int
	b := e.partitionedConsumer(p, cfgB)
	rb := start(func(ctx context.Context) error {
		return b.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			bMu.Lock()
			if bHandled < 20 {
				bHandled++
				bMu.Unlock()
				return slow(ctx, m)
			}
			bHeld++
			bMu.Unlock()
			<-leaving
			return errTemporary
		})
	})
	e.publishPartitioned(p, n/2, n/4, 40)
	waitFor(t, 30*time.Second, "b to hold an entry in each of its 4 handlers", func() bool {
		bMu.Lock()
		defer bMu.Unlock()
		return bHeld >= cfgB.Concurrency
	})
	close(leaving)
	if err := rb.stop(t); err != nil {
		t.Fatal(err)
	}
	e.publishPartitioned(p, n/2+n/4, n/4, 40)
	waitFor(t, 60*time.Second, "every entry handled", func() bool { return log.count() >= n })
	if err := ra.stop(t); err != nil {
		t.Fatal(err)
	}
	log.check(t, 0, n)
	e.nothingPending(p)
	var claimed float64
	for _, k := range p.Streams() {
		claimed += e.metric("coti_safesync_queue_messages_claimed_total", map[string]string{"stream": k})
	}
	if claimed < float64(bHeld) {
		t.Errorf("a claimed %v entries, fewer than the %d b failed on leaving", claimed, bHeld)
	}
	t.Logf("b handled %d entries and failed %d on leaving; a claimed %v", bHandled, bHeld, claimed)
}
