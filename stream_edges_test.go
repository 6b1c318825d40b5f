package safesync_test

// Regression tests for the stream defects an outside acceptance run found
// (issue 11), on the embedded Redis; integration/ checks the cases that
// need a real server (ACL refusals, failing acknowledgements).

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// runners are the three ways to run a consumer, plus a pipeline, each
// returning Run's error.
func runners(t *testing.T, client rueidis.Client, cfg safesync.StreamConfig) map[string]func(ctx context.Context) error {
	t.Helper()
	ok := func(context.Context, safesync.Message[item]) error { return nil }
	// The pipeline never reaches its database in these tests: nothing is
	// handled. sql.Open connects lazily.
	db, err := sql.Open("mysql", "root@tcp(127.0.0.1:1)/none")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return map[string]func(ctx context.Context) error{
		"Run": func(ctx context.Context) error { return mustConsumer(t, client, cfg).Run(ctx, ok) },
		"RunBatch": func(ctx context.Context) error {
			return mustConsumer(t, client, cfg).RunBatch(ctx, 10, func(context.Context, []safesync.Message[item]) error { return nil })
		},
		"ClaimStale": func(ctx context.Context) error { return mustConsumer(t, client, cfg).ClaimStale(ctx, ok) },
		"Pipeline.Run": func(ctx context.Context) error {
			return safesync.Stream(safesync.JSON[item]()).
				Handle(func(context.Context, *safesync.Tx, safesync.Message[item]) error { return nil }).
				AckAfter(safesync.Commit(db)).Run(ctx, client, cfg)
		},
		"Pipeline.Run, HandleBatch": func(ctx context.Context) error {
			return safesync.Stream(safesync.JSON[item]()).
				HandleBatch(func(context.Context, *safesync.Tx, []safesync.Message[item]) error { return nil }).
				AckAfter(safesync.Commit(db)).Run(ctx, client, cfg)
		},
	}
}

// Issue 11, item 1: a stream key (or dead-letter key) of another type ended
// Run only when its ctx ended: the Redis error was wrapped, and the retry
// decision did not see through the wrapping. It must end Run at once, with
// an error naming the key, its type and the command.
func TestRunEndsAtOnceWhenAKeyHoldsAnotherType(t *testing.T) {
	for _, tc := range []struct {
		name    string
		key     string // set to a string
		edit    func(*safesync.StreamConfig)
		mention []string
	}{
		{"stream", "orders", nil, []string{`"orders"`, "string", "XGROUP CREATE"}},
		{"dead-letter stream", "orders:dead", nil, []string{`"orders:dead"`, "string", "XADD"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := safesynctest.NewRedis(t)
			if err := client.Do(context.Background(), client.B().Set().Key(tc.key).Value("x").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			cfg := defectConfig(nil)
			for name, run := range runners(t, client, cfg) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				start := time.Now()
				err := run(ctx)
				cancel()
				if err == nil {
					t.Errorf("%s returned nil after %v, want an error", name, time.Since(start).Round(time.Millisecond))
					continue
				}
				if took := time.Since(start); took > time.Second {
					t.Errorf("%s took %v to fail, want at once", name, took.Round(time.Millisecond))
				}
				if !errors.Is(err, safesync.ErrWrongType) {
					t.Errorf("%s: %v does not match ErrWrongType", name, err)
				}
				for _, m := range tc.mention {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("%s: error %q does not mention %s", name, err, m)
					}
				}
			}
		})
	}
}

// countingClient counts the commands sent through it, by name.
type countingClient struct {
	rueidis.Client
	mu     sync.Mutex
	counts map[string]int
}

func newCountingClient(c rueidis.Client) *countingClient {
	return &countingClient{Client: c, counts: map[string]int{}}
}

func (c *countingClient) note(cmds ...rueidis.Completed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		if parts := cmd.Commands(); len(parts) > 0 {
			c.counts[strings.ToUpper(parts[0])]++
		}
	}
}

func (c *countingClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.note(cmd)
	return c.Client.Do(ctx, cmd)
}

func (c *countingClient) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	c.note(cmds...)
	return c.Client.DoMulti(ctx, cmds...)
}

// count returns how many commands named name were sent.
func (c *countingClient) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[name]
}

// Issue 11, item 2: with a ctx that ends by deadline, Run returned
// "context deadline exceeded" in most runs (rueidis reports the socket
// deadline it derives from ctx before ctx.Err() is set), and within the
// last 150 ms before the deadline it spun on non-blocking reads. A ctx that
// ended, by cancel or deadline, makes every Run return nil.
func TestRunReturnsNilWhenItsCtxEndsByDeadline(t *testing.T) {
	const runs = 100
	for _, block := range []time.Duration{0, 20 * time.Millisecond} {
		client := safesynctest.NewRedis(t)
		for i := range 5 {
			safesynctest.PublishJSON(t, client, "orders", item{N: i})
		}
		for name := range runners(t, client, defectConfig(nil)) {
			t.Run(fmt.Sprintf("%s/Block=%v", name, block), func(t *testing.T) {
				t.Parallel()
				cfg := defectConfig(nil)
				cfg.Consumer = name // parallel runs do not share a consumer name
				cfg.Block, cfg.ClaimIdle, cfg.ClaimInterval = block, 10*time.Millisecond, 5*time.Millisecond
				run := runners(t, client, cfg)[name]
				failed := 0
				for i := range runs {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(2+i%30)*time.Millisecond)
					err := run(ctx)
					cancel()
					if err != nil {
						if failed++; failed <= 3 {
							t.Errorf("run %d: %v", i, err)
						}
					}
				}
				if failed > 0 {
					t.Errorf("%d of %d runs returned an error, want 0", failed, runs)
				}
			})
		}
	}
}

// Issue 11, item 2, the spin: near its ctx's deadline, Run waits for it
// instead of sending non-blocking reads in a loop.
func TestRunDoesNotSpinNearItsDeadline(t *testing.T) {
	client := newCountingClient(safesynctest.NewRedis(t))
	cfg := defectConfig(nil) // Block 100ms
	for name, run := range runners(t, client, cfg) {
		before := client.count("XREADGROUP")
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		if err := run(ctx); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		cancel()
		// Own pending, then new entries: one non-blocking and then
		// blocking reads of 100 ms, the last one cut short.
		if n := client.count("XREADGROUP") - before; n > 8 {
			t.Errorf("%s sent %d reads in 400 ms with Block 100ms, want at most 8", name, n)
		}
	}
}

// slowAckClient delays every round trip that carries an XACK.
type slowAckClient struct {
	rueidis.Client
	delay time.Duration
}

func hasXack(cmds ...rueidis.Completed) bool {
	for _, cmd := range cmds {
		if parts := cmd.Commands(); len(parts) > 0 && strings.EqualFold(parts[0], "XACK") {
			return true
		}
	}
	return false
}

func (c *slowAckClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	if hasXack(cmd) {
		time.Sleep(c.delay)
	}
	return c.Client.Do(ctx, cmd)
}

func (c *slowAckClient) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	if hasXack(cmds...) {
		time.Sleep(c.delay)
	}
	return c.Client.DoMulti(ctx, cmds...)
}

// Issue 11, item 4: after a handler returned nil and before its
// acknowledgement went out, a reclaim scan of the same consumer claimed the
// entry again and ran it a second time. An entry this consumer holds, read
// and not yet acknowledged or released, is never handed to a handler again
// by it, whatever ClaimIdle is.
func TestConsumerNeverRunsAnEntryItStillHoldsTwice(t *testing.T) {
	for _, tc := range []struct {
		name        string
		concurrency int
		work        time.Duration
		claimStale  bool
	}{
		{"ClaimStale, Concurrency 2", 2, 50 * time.Millisecond, true},
		{"Run, Concurrency 2", 2, 100 * time.Millisecond, false},
		{"Run, Concurrency 1", 1, 100 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := safesynctest.NewRedis(t)
			const n = 6
			for i := range n {
				safesynctest.PublishJSON(t, base, "orders", item{N: i})
			}
			cfg := defectConfig(nil)
			if tc.claimStale { // another consumer read them and died
				cfg.Consumer, cfg.Count = "crashed", n
				if msgs, err := mustConsumer(t, base, cfg).Read(context.Background()); err != nil || len(msgs) != n {
					t.Fatalf("read %d, %v", len(msgs), err)
				}
				time.Sleep(60 * time.Millisecond)
				cfg.Consumer = "rescuer"
			}
			cfg.Concurrency, cfg.ClaimIdle, cfg.ClaimInterval = tc.concurrency, 50*time.Millisecond, 20*time.Millisecond
			c := mustConsumer(t, &slowAckClient{Client: base, delay: 300 * time.Millisecond}, cfg)
			var mu sync.Mutex
			calls := map[string][]int64{} // id -> Deliveries seen by each call
			h := func(_ context.Context, m safesync.Message[item]) error {
				mu.Lock()
				calls[m.ID] = append(calls[m.ID], m.Deliveries)
				mu.Unlock()
				time.Sleep(tc.work)
				return nil
			}
			err := runUntil(t, func(ctx context.Context) error {
				if tc.claimStale {
					return c.ClaimStale(ctx, h)
				}
				return c.Run(ctx, h)
			}, func() bool {
				mu.Lock()
				handled := len(calls)
				mu.Unlock()
				return handled == n && len(safesynctest.Pending(t, base, "orders", "workers")) == 0
			})
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(calls) != n {
				t.Fatalf("%d entries handled, want %d", len(calls), n)
			}
			for id, ds := range calls {
				if len(ds) != 1 {
					t.Errorf("entry %s handled %d times (deliveries %v), want once", id, len(ds), ds)
				}
			}
		})
	}
}

// Issue 11, item 5: two processes given one consumer name shared one
// pending list silently, each re-reading what the other was handling. A
// consumer takes a lease on its name while it runs: a second one of the
// same name fails at start once it has seen the first renew its lease.
func TestTwoLiveConsumersOfOneNameTheSecondFailsAtStart(t *testing.T) {
	client := safesynctest.NewRedis(t)
	cfg := defectConfig(nil)
	ok := func(context.Context, safesync.Message[item]) error { return nil }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	handled := make(chan struct{}, 1)
	safesynctest.PublishJSON(t, client, "orders", item{N: 1})
	go func() {
		first <- mustConsumer(t, client, cfg).Run(ctx, func(context.Context, safesync.Message[item]) error {
			select {
			case handled <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	<-handled // the first one runs
	start := time.Now()
	err := mustConsumer(t, client, cfg).Run(ctx, ok)
	if !errors.Is(err, safesync.ErrConsumerNameInUse) || !strings.Contains(err.Error(), `"w1"`) {
		t.Fatalf("second Run = %v, want ErrConsumerNameInUse naming w1", err)
	}
	if took := time.Since(start); took > 6*time.Second {
		t.Errorf("the second Run took %v to fail", took)
	}
	// A pipeline of the same name is refused too; another name is not.
	other := cfg
	other.Consumer = "w2"
	otherCtx, otherCancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer otherCancel()
	if err := mustConsumer(t, client, other).Run(otherCtx, ok); err != nil {
		t.Fatalf("Run of another name = %v", err)
	}
	cancel()
	if err := <-first; err != nil {
		t.Fatalf("first Run = %v", err)
	}
	// Once the first stopped, the name is free at once.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	start = time.Now()
	if err := mustConsumer(t, client, cfg).Run(ctx2, ok); err != nil || time.Since(start) > time.Second {
		t.Fatalf("Run after the first stopped = %v after %v", err, time.Since(start))
	}
}

// The lease of a process that died without stopping runs out: a consumer
// started under its name waits for that, then runs.
func TestConsumerNameLeasedByADeadProcessIsTakenOverWhenItRunsOut(t *testing.T) {
	client := safesynctest.NewRedis(t)
	cfg := defectConfig(nil)
	// What a killed process leaves: its lease, no longer renewed (it would
	// also expire on a real server; the embedded one keeps it).
	lease := "{orders}:safesync:consumer:workers:w1"
	if err := client.Do(context.Background(), client.B().Set().Key(lease).Value("dead-token 7").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if slot := safesync.KeySlot(lease); slot != safesync.KeySlot("orders") {
		t.Fatalf("lease key in slot %d, stream in %d", slot, safesync.KeySlot("orders"))
	}
	id := safesynctest.PublishJSON(t, client, "orders", item{N: 1})
	start := time.Now()
	var got atomic.Value
	err := runUntil(t, func(ctx context.Context) error {
		return mustConsumer(t, client, cfg).Run(ctx, func(_ context.Context, m safesync.Message[item]) error {
			got.Store(m.ID)
			return nil
		})
	}, func() bool { return got.Load() != nil })
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 3*time.Second || got.Load() != id {
		t.Fatalf("handled %v after %v; want %s once the dead lease went unrenewed for 4 s", got.Load(), took, id)
	}
}

// Issue 13, item 5: log lines repeated stream= and group= (the consumer's
// logger carries them, and the dead-letter line added them again).
func TestLogLinesNameStreamAndGroupOnce(t *testing.T) {
	client := safesynctest.NewRedis(t)
	var buf bytes.Buffer
	var mu sync.Mutex
	cfg := defectConfig(nil)
	cfg.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	safesynctest.Publish(t, client, "orders", map[string]string{"data": "{not json"})
	safesynctest.PublishJSON(t, client, "orders", item{N: 1})
	safesynctest.PublishJSON(t, client, "orders", item{N: 2})
	c := mustConsumer(t, client, cfg)
	err := runUntil(t, func(ctx context.Context) error {
		return c.Run(ctx, func(_ context.Context, m safesync.Message[item]) error {
			switch m.Value.N {
			case 1:
				return safesync.Permanent(errors.New("refused"))
			case 2:
				return errors.New("not yet")
			}
			return nil
		})
	}, func() bool { return len(safesynctest.DeadLetters(t, client, "orders:dead")) == 2 })
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 2 {
		t.Fatalf("%d log lines, want at least the two dead letters:\n%s", len(lines), buf.String())
	}
	for _, line := range lines {
		for _, key := range []string{" stream=", " group=", " consumer="} {
			if n := strings.Count(line, key); n != 1 {
				t.Errorf("%q appears %d times in %s", key, n, line)
			}
		}
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// lateClient delays the sending of XACKs by ackDelay, and the replies of
// pipelines that look the delivery counts of claimed entries up (XPENDING
// of one entry) by replyDelay: the commands run on the server at once,
// their answers come late.
type lateClient struct {
	rueidis.Client
	ackDelay, replyDelay time.Duration
}

func (c *lateClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	if hasXack(cmd) {
		time.Sleep(c.ackDelay)
	}
	return c.Client.Do(ctx, cmd)
}

func (c *lateClient) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	if hasXack(cmds...) {
		time.Sleep(c.ackDelay)
	}
	late := false // looked at before sending: rueidis recycles commands once sent
	for _, cmd := range cmds {
		// XPENDING key group start end count, for one entry (not the
		// pending gauges' XPENDING … - + 1)
		if parts := cmd.Commands(); len(parts) >= 6 && strings.EqualFold(parts[0], "XPENDING") && parts[3] != "-" {
			late = true
		}
	}
	res := c.Client.DoMulti(ctx, cmds...)
	if late {
		time.Sleep(c.replyDelay)
	}
	return res
}

// Issue 11, item 4, the narrow case: a claim that ran on Redis before this
// consumer's XACK of an entry, but whose answer arrived after the XACK's,
// handed the entry over again once its XACK had been sent. The entry is
// settled: a read or claim sent before its XACK drops it.
func TestConsumerNeverRunsAnEntryAgainThatItAcknowledgedDuringAClaim(t *testing.T) {
	base := safesynctest.NewRedis(t)
	const n = 1
	safesynctest.PublishJSON(t, base, "orders", item{N: 1})
	cfg := defectConfig(nil)
	cfg.Consumer = "crashed"
	if msgs, err := mustConsumer(t, base, cfg).Read(context.Background()); err != nil || len(msgs) != n {
		t.Fatalf("read %d, %v", len(msgs), err)
	}
	time.Sleep(60 * time.Millisecond)
	// The entry is claimed and handled; while its XACK is on its way, the
	// next scan claims it again (it has been idle longer than ClaimIdle),
	// and the answer of that claim comes after the XACK's.
	cfg.Consumer, cfg.Concurrency, cfg.ClaimIdle, cfg.ClaimInterval = "rescuer", 2, 50*time.Millisecond, 10*time.Millisecond
	c := mustConsumer(t, &lateClient{Client: base, ackDelay: 100 * time.Millisecond, replyDelay: 300 * time.Millisecond}, cfg)
	var mu sync.Mutex
	calls := map[string]int{}
	err := runUntil(t, func(ctx context.Context) error {
		return c.ClaimStale(ctx, func(_ context.Context, m safesync.Message[item]) error {
			mu.Lock()
			calls[m.ID]++
			mu.Unlock()
			return nil
		})
	}, func() bool {
		mu.Lock()
		handled := len(calls)
		mu.Unlock()
		if handled < n || len(safesynctest.Pending(t, base, "orders", "workers")) > 0 {
			return false
		}
		time.Sleep(700 * time.Millisecond) // claims in flight come back
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, k := range calls {
		if k != 1 {
			t.Errorf("entry %s handled %d times, want once", id, k)
		}
	}
}

// The acknowledgement of an entry whose handler took a while is handed
// over at once, not held back until the worker (or, with Concurrency 1,
// the reader) has handled the rest of its read: entries otherwise went idle
// past ClaimIdle while done, and were claimed and run again elsewhere.
func TestAcknowledgementsOfSlowHandlersAreNotHeldBack(t *testing.T) {
	for _, concurrency := range []int{1, 2} {
		t.Run(fmt.Sprintf("Concurrency %d", concurrency), func(t *testing.T) {
			client := safesynctest.NewRedis(t)
			for i := range 40 {
				safesynctest.PublishJSON(t, client, "orders", item{N: i})
			}
			cfg := defectConfig(nil)
			cfg.Concurrency = concurrency
			c := mustConsumer(t, client, cfg)
			var handled atomic.Int64
			var worst atomic.Int64 // most entries pending beyond those in flight, seen after 10 were handled
			err := runUntil(t, func(ctx context.Context) error {
				return c.Run(ctx, func(context.Context, safesync.Message[item]) error {
					if n := handled.Load(); n >= 10 && n < 30 {
						left := int64(len(safesynctest.Pending(t, client, "orders", "workers"))) - (40 - n)
						worst.Store(max(worst.Load(), left))
					}
					time.Sleep(20 * time.Millisecond)
					handled.Add(1)
					return nil
				})
			}, func() bool {
				return handled.Load() == 40 && len(safesynctest.Pending(t, client, "orders", "workers")) == 0
			})
			if err != nil {
				t.Fatal(err)
			}
			// Handled but not yet acknowledged: the last one or two, whose
			// XACK is on its way.
			if w := worst.Load(); w > int64(concurrency)+2 {
				t.Fatalf("up to %d handled entries were still unacknowledged while the rest of the read was handled", w)
			}
		})
	}
}
