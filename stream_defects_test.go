package safesync_test

// Regression tests for the known stream defects of the original Python
// framework (numbers 5 to 8 of its list of known defects), each named for
// its defect, on the embedded Redis. The conformance suite checks the same
// behaviour on a real server.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

type item struct {
	N int `json:"n"`
}

func defectConfig(m *safesync.Metrics) safesync.StreamConfig {
	return safesync.StreamConfig{
		Stream: "orders", Group: "workers", Consumer: "w1",
		Block: 100 * time.Millisecond, ClaimIdle: time.Hour, ClaimInterval: time.Hour,
		Metrics: m,
	}
}

// runUntil runs loop until done reports true, then cancels it and returns
// its error.
func runUntil(t *testing.T, loop func(ctx context.Context) error, done func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- loop(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !done() {
		select {
		case err := <-errc:
			t.Fatalf("consumer returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	return <-errc
}

// Defect 5: one malformed entry made its whole batch fail and be reclaimed
// forever; there was no delivery limit and no dead-letter stream.
func TestDefect5PoisonEntryIsDeadLetteredAndItsBatchMatesAreHandled(t *testing.T) {
	client := safesynctest.NewRedis(t)
	good1 := safesynctest.PublishJSON(t, client, "orders", item{N: 1})
	bad := safesynctest.Publish(t, client, "orders", map[string]string{"data": "{not json"})
	good2 := safesynctest.PublishJSON(t, client, "orders", item{N: 2})
	c, err := safesync.NewConsumer(client, defectConfig(nil), safesync.JSON[item]())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var batches [][]string
	err = runUntil(t, func(ctx context.Context) error {
		return c.RunBatch(ctx, 10, func(ctx context.Context, msgs []safesync.Message[item]) error {
			var ids []string
			for _, m := range msgs {
				ids = append(ids, m.ID)
			}
			mu.Lock()
			batches = append(batches, ids)
			mu.Unlock()
			return c.Ack(ctx, msgs...)
		})
	}, func() bool { mu.Lock(); defer mu.Unlock(); return len(batches) > 0 })
	if err != nil {
		t.Fatal(err)
	}
	if len(batches) != 1 || !slices.Equal(batches[0], []string{good1, good2}) {
		t.Fatalf("batches %v, want one batch of the two good entries", batches)
	}
	dead := safesynctest.DeadLetters(t, client, "orders:dead")
	if len(dead) != 1 || dead[0].OriginalID != bad || dead[0].Reason != safesync.DeadLetterDecode || dead[0].Deliveries != 1 {
		t.Fatalf("dead letters %+v, want the malformed entry, on its first delivery", dead)
	}
	if p := safesynctest.Pending(t, client, "orders", "workers"); len(p) != 0 {
		t.Fatalf("pending %+v, want nothing left to be reclaimed", p)
	}
}

// Defect 5, the delivery limit: an entry whose handler always fails is
// dead-lettered after MaxDeliveries instead of looping forever.
func TestDefect5FailingEntryStopsAtMaxDeliveries(t *testing.T) {
	client := safesynctest.NewRedis(t)
	id := safesynctest.PublishJSON(t, client, "orders", item{N: 1})
	cfg := defectConfig(nil)
	cfg.MaxDeliveries, cfg.ClaimIdle, cfg.ClaimInterval = 3, 20*time.Millisecond, 10*time.Millisecond
	c, err := safesync.NewConsumer(client, cfg, safesync.JSON[item]())
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	err = runUntil(t, func(ctx context.Context) error {
		return c.Run(ctx, func(context.Context, safesync.Message[item]) error {
			calls.Add(1)
			return errors.New("downstream unavailable")
		})
	}, func() bool { return len(safesynctest.DeadLetters(t, client, "orders:dead")) > 0 })
	if err != nil {
		t.Fatal(err)
	}
	dead := safesynctest.DeadLetters(t, client, "orders:dead")
	if calls.Load() != 3 || len(dead) != 1 || dead[0].OriginalID != id || dead[0].Reason != safesync.DeadLetterMaxDeliveries {
		t.Fatalf("%d calls, dead letters %+v; want 3 calls, then the entry dead-lettered for max_deliveries", calls.Load(), dead)
	}
}

// Defect 6: reclaim looked only at the oldest N pending entries, so stale
// entries behind N busy ones starved.
func TestDefect6ReclaimReachesStaleEntriesBehindBusyOnes(t *testing.T) {
	client := safesynctest.NewRedis(t)
	ctx := context.Background()
	var ids []string
	for i := range 60 {
		ids = append(ids, safesynctest.PublishJSON(t, client, "orders", item{N: i}))
	}
	cfg := defectConfig(nil)
	cfg.Consumer, cfg.Count = "busy", 100
	if msgs, err := mustConsumer(t, client, cfg).Read(ctx); err != nil || len(msgs) != 60 {
		t.Fatalf("read %d, %v", len(msgs), err)
	}
	time.Sleep(250 * time.Millisecond)
	// The oldest 50 are being worked on (idle time reset); the last 10 are stale.
	if err := client.Do(ctx, client.B().Xclaim().Key("orders").Group("workers").Consumer("busy").MinIdleTime("0").
		Id(ids[:50]...).Justid().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	cfg.Consumer, cfg.ClaimIdle, cfg.Concurrency = "rescuer", 200*time.Millisecond, 2 // claims 2 at a time
	c := mustConsumer(t, client, cfg)
	var mu sync.Mutex
	var got []string
	err := runUntil(t, func(ctx context.Context) error {
		return c.ClaimStale(ctx, func(_ context.Context, m safesync.Message[item]) error {
			mu.Lock()
			got = append(got, m.ID)
			mu.Unlock()
			return nil
		})
	}, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 10 })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got) // compare as sets
	want := slices.Clone(ids[50:])
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("reclaimed %v, want the 10 stale entries behind the 50 busy ones %v", got, want)
	}
}

// Defect 6, restarts: a restarted consumer never re-read its own pending
// entries.
func TestDefect6RestartedConsumerReReadsItsOwnPendingEntries(t *testing.T) {
	client := safesynctest.NewRedis(t)
	ctx := context.Background()
	first := safesynctest.PublishJSON(t, client, "orders", item{N: 1})
	cfg := defectConfig(nil)
	if _, err := mustConsumer(t, client, cfg).Next(ctx); err != nil { // then the worker crashed
		t.Fatal(err)
	}
	second := safesynctest.PublishJSON(t, client, "orders", item{N: 2})
	restarted := mustConsumer(t, client, cfg)
	var got []string
	for range 2 {
		m, err := restarted.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.ID)
	}
	if !slices.Equal(got, []string{first, second}) {
		t.Fatalf("restarted consumer read %v, want its own pending %s first, then %s", got, first, second)
	}
}

// Defect 7: stop waited out the blocking read.
func TestDefect7StopInterruptsTheBlockingRead(t *testing.T) {
	client := safesynctest.NewRedis(t)
	cfg := defectConfig(nil)
	cfg.Block = 5 * time.Second
	c := mustConsumer(t, client, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- c.Run(ctx, func(context.Context, safesync.Message[item]) error { return nil })
	}()
	time.Sleep(300 * time.Millisecond) // Run is now in a 5s blocking read
	start := time.Now()
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took >= 200*time.Millisecond {
		t.Fatalf("Run took %v to return after cancel during a 5s block, want < 200ms", took)
	}
}

// Defect 7, reclaim: the reclaim loop slept even after a full batch.
func TestDefect7FullClaimBatchIsFollowedWithoutSleeping(t *testing.T) {
	client := safesynctest.NewRedis(t)
	for i := range 30 {
		safesynctest.PublishJSON(t, client, "orders", item{N: i})
	}
	cfg := defectConfig(nil)
	cfg.Consumer, cfg.Count = "crashed", 100
	if msgs, err := mustConsumer(t, client, cfg).Read(context.Background()); err != nil || len(msgs) != 30 {
		t.Fatalf("read %d, %v", len(msgs), err)
	}
	time.Sleep(60 * time.Millisecond)
	cfg.Consumer, cfg.ClaimIdle, cfg.Concurrency = "rescuer", 50*time.Millisecond, 3 // ClaimInterval: 1h
	c := mustConsumer(t, client, cfg)
	var n atomic.Int64
	err := runUntil(t, func(ctx context.Context) error {
		return c.ClaimStale(ctx, func(context.Context, safesync.Message[item]) error { n.Add(1); return nil })
	}, func() bool { return n.Load() >= 30 }) // with a sleep after each full claim of 3: an hour
	if err != nil {
		t.Fatal(err)
	}
}

// Defect 8, stream part: read latency included the time spent blocked,
// failures were not counted, and only the global registry could be used.
func TestDefect8StreamMetricsAreMeasuredCountedAndInjected(t *testing.T) {
	client := safesynctest.NewRedis(t)
	reg := prometheus.NewRegistry()
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg, Namespace: "defect8"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		safesynctest.PublishJSON(t, client, "orders", item{N: i})
	}
	cfg := defectConfig(m)
	cfg.Block = 300 * time.Millisecond
	c := mustConsumer(t, client, cfg)
	var n atomic.Int64
	err = runUntil(t, func(ctx context.Context) error {
		return c.Run(ctx, func(_ context.Context, msg safesync.Message[item]) error {
			defer n.Add(1)
			if msg.Value.N == 1 {
				panic("bug")
			}
			time.Sleep(20 * time.Millisecond)
			return nil
		})
	}, func() bool {
		if n.Load() < 3 {
			return false
		}
		time.Sleep(700 * time.Millisecond) // two idle 300ms blocking reads
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Ack(ctx, safesync.Message[item]{ID: "1-0", Stream: "orders", Group: "workers"}); err == nil {
		t.Fatal("Ack with a cancelled ctx returned nil")
	}

	get := func(name string) (value, sum float64) {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == name {
				for _, mt := range f.GetMetric() {
					switch {
					case mt.Counter != nil:
						value += mt.Counter.GetValue()
					case mt.Histogram != nil:
						value += float64(mt.Histogram.GetSampleCount())
						sum += mt.Histogram.GetSampleSum()
					}
				}
			}
		}
		return value, sum
	}
	if reads, sum := get("defect8_queue_read_latency_seconds"); reads < 1 || sum >= 0.3 {
		t.Errorf("read latency: %v samples summing to %vs; want the reads that returned entries, without blocked time", reads, sum)
	}
	if calls, sum := get("defect8_queue_handler_latency_seconds"); calls != 3 || sum < 0.04 || sum >= 0.3 {
		t.Errorf("handler latency: %v samples summing to %vs; want 3 handlers, two of 20ms", calls, sum)
	}
	for name, want := range map[string]float64{
		"defect8_queue_messages_read_total":  3,
		"defect8_queue_messages_ack_total":   2,
		"defect8_queue_handler_panics_total": 1,
		"defect8_queue_ack_failures_total":   1,
	} {
		if got, _ := get(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "defect8_queue_messages_read_total" {
			t.Error("injected metrics also landed in the global registry")
		}
	}
}

func mustConsumer(t *testing.T, client rueidis.Client, cfg safesync.StreamConfig) *safesync.Consumer[item] {
	t.Helper()
	c, err := safesync.NewConsumer(client, cfg, safesync.JSON[item]())
	if err != nil {
		t.Fatal(fmt.Errorf("NewConsumer: %w", err))
	}
	return c
}
