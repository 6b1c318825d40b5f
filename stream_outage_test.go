package safesync_test

// Issue 12, on the embedded Redis: outages are not poison. Only an entry's
// own failures count towards MaxDeliveries, kept in Redis beside the
// stream; crashes of the process during an entry's handler count too.
// integration/ proves the same against real servers cut and stopped.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// A Readiness tells a readiness probe whether the consumers and pipelines
// given it consume or are paused by an outage; it is an http.Handler.
func ExampleReadiness() {
	srv, err := safesynctest.StartRedis()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	client, err := srv.Client()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ready := safesync.NewReadiness()
	mux := http.NewServeMux()
	mux.Handle("/readyz", ready) // answers 503 while a consumer is paused

	consumer, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: "orders", Group: "billing", Consumer: "worker-1",
		Readiness: ready, // pipelines take it the same way, in their StreamConfig
	}, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	go func() { _ = consumer.Run(ctx, func(context.Context, safesync.Message[Order]) error { return nil }) }()

	probe := httptest.NewRecorder()
	mux.ServeHTTP(probe, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	fmt.Println(probe.Code, strings.TrimSpace(probe.Body.String()))
	// Output: 200 ok
}

// A handler whose own dependency is down says so with Outage: the entry
// stays pending without the failure counting towards MaxDeliveries, and is
// handled once the dependency is back.
func ExampleOutage() {
	srv, err := safesynctest.StartRedis()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	client, err := srv.Client()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := safesync.PublishJSON(ctx, client, "orders", Order{ID: 1, Amount: 10}); err != nil {
		log.Fatal(err)
	}

	consumer, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: "orders", Group: "billing", Consumer: "worker-1",
		MaxDeliveries: 1, ClaimIdle: 10 * time.Millisecond, ClaimInterval: 10 * time.Millisecond,
	}, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	calls := 0
	err = consumer.Run(ctx, func(ctx context.Context, msg safesync.Message[Order]) error {
		if calls++; calls <= 3 {
			return safesync.Outage(errors.New("payments API unavailable"))
		}
		fmt.Printf("order %d charged on attempt %d; own failures before: %d\n", msg.Value.ID, calls, msg.Failures)
		cancel()
		return nil
	})
	fmt.Println("Run:", err)
	// Output:
	// order 1 charged on attempt 4; own failures before: 0
	// Run: <nil>
}

// failuresKey is where the consumer of defectConfig keeps the failure
// records of "orders" for "workers".
const failuresKey = "{orders}:safesync:failures:workers"

// Failures that are not the entry's own (a refused connection, a lost
// one, a conflict outlasting the retries, Outage) never dead-letter it,
// however often they repeat; the entry is handled once they stop.
func TestOutageFailuresNeverCountTowardsMaxDeliveries(t *testing.T) {
	for name, cause := range map[string]error{
		"connection refused": fmt.Errorf("safesync: acquire connection: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}),
		"connection lost":    fmt.Errorf("exec: %w", mysql.ErrInvalidConn),
		"MySQL read-only":    &mysql.MySQLError{Number: 1290, Message: "read-only"},
		"retries exhausted":  &safesync.RetryError{Attempts: 10, Exhausted: true, Err: &safesync.ConflictError{Table: "accounts"}},
		"Outage":             safesync.Outage(errors.New("payments API down")),
		"commit unknown":     &safesync.CommitUnknownError{Err: errors.New("EOF")},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client := safesynctest.NewRedis(t)
			m, reg := safesynctest.NewMetrics(t)
			cfg := defectConfig(m)
			cfg.MaxDeliveries, cfg.ClaimIdle, cfg.ClaimInterval = 2, 20*time.Millisecond, 10*time.Millisecond
			id := safesynctest.PublishJSON(t, client, "orders", item{N: 1})
			const failing = 5 // more than MaxDeliveries
			var calls atomic.Int64
			var lastFailures atomic.Int64
			c := mustConsumer(t, client, cfg)
			err := runUntil(t, func(ctx context.Context) error {
				return c.Run(ctx, func(_ context.Context, msg safesync.Message[item]) error {
					lastFailures.Store(msg.Failures)
					if calls.Add(1) <= failing {
						return cause
					}
					return nil
				})
			}, func() bool {
				return calls.Load() > failing && len(safesynctest.Pending(t, client, "orders", "workers")) == 0
			})
			if err != nil {
				t.Fatal(err)
			}
			if dead := safesynctest.DeadLetters(t, client, "orders:dead"); len(dead) != 0 {
				t.Fatalf("dead letters %+v after %d failures that were not the entry's own, want none", dead, failing)
			}
			if lastFailures.Load() != 0 {
				t.Errorf("the entry was handed over with Failures = %d, want 0", lastFailures.Load())
			}
			kind := safesync.FailureInfrastructure
			if name == "retries exhausted" {
				kind = safesync.FailureContention
			}
			if n := safesynctest.MetricValue(t, reg, "coti_safesync_queue_handler_failures_total", map[string]string{"kind": kind}); n != failing {
				t.Errorf("handler_failures_total{kind=%s} = %v, want %d", kind, n, failing)
			}
			if left := hashLen(t, client, failuresKey); left != 0 {
				t.Errorf("%d fields left in the failure records of %s once it was acknowledged", left, id)
			}
		})
	}
}

// An entry's own failures are counted in Redis: a second consumer, after
// the first stopped, finds the count, and the failure that reaches
// MaxDeliveries dead-letters the entry with the handler's last error, the
// counts, the times of the first and the last failure, and the consumer.
func TestOwnFailuresAreCountedAcrossConsumersAndDeadLetterWithTheirStory(t *testing.T) {
	client := safesynctest.NewRedis(t)
	cfg := defectConfig(nil)
	cfg.MaxDeliveries = 2
	id := safesynctest.PublishJSON(t, client, "orders", item{N: 1})
	first := mustConsumer(t, client, cfg)
	var calls atomic.Int64
	err := runUntil(t, func(ctx context.Context) error {
		return first.Run(ctx, func(context.Context, safesync.Message[item]) error {
			calls.Add(1)
			return errors.New("insufficient funds")
		})
	}, func() bool { return calls.Load() == 1 && hashLen(t, client, failuresKey) > 0 })
	if err != nil {
		t.Fatal(err)
	}
	if safesync.KeySlot(failuresKey) != safesync.KeySlot("orders") {
		t.Fatal("the failure records are not in the stream's slot")
	}
	time.Sleep(30 * time.Millisecond)
	cfg.Consumer, cfg.ClaimIdle, cfg.ClaimInterval = "w2", 20*time.Millisecond, 10*time.Millisecond
	second := mustConsumer(t, client, cfg)
	var seen safesync.Message[item]
	err = runUntil(t, func(ctx context.Context) error {
		return second.ClaimStale(ctx, func(_ context.Context, msg safesync.Message[item]) error {
			seen = msg
			return errors.New("account closed")
		})
	}, func() bool { return len(safesynctest.DeadLetters(t, client, "orders:dead")) == 1 })
	if err != nil {
		t.Fatal(err)
	}
	if seen.Failures != 1 || seen.Deliveries != 2 {
		t.Errorf("the second consumer got Failures %d, Deliveries %d; want 1 and 2", seen.Failures, seen.Deliveries)
	}
	d := safesynctest.DeadLetters(t, client, "orders:dead")[0]
	if d.OriginalID != id || d.Reason != safesync.DeadLetterMaxDeliveries || d.Error != "account closed" ||
		d.Failures != 2 || d.Deliveries != 2 || d.Consumer != "w2" || d.FirstFail.IsZero() || !d.LastFail.After(d.FirstFail) {
		t.Fatalf("dead letter %+v; want %s, max_deliveries, the last error, 2 failures and deliveries, consumer w2, first before last failure", d, id)
	}
	if n := hashLen(t, client, failuresKey); n != 0 {
		t.Fatalf("%d fields left in the failure records after the dead letter", n)
	}
}

// Nothing extra on the happy path: entries delivered once and handled
// never touch the failure records.
func TestFailureRecordsCostNothingOnTheHappyPath(t *testing.T) {
	base := safesynctest.NewRedis(t)
	client := newKeyWatcher(base, failuresKey)
	for i := range 50 {
		safesynctest.PublishJSON(t, base, "orders", item{N: i})
	}
	cfg := defectConfig(nil)
	cfg.Concurrency = 4
	c := mustConsumer(t, client, cfg)
	var n atomic.Int64
	err := runUntil(t, func(ctx context.Context) error {
		return c.Run(ctx, func(context.Context, safesync.Message[item]) error { n.Add(1); return nil })
	}, func() bool { return n.Load() == 50 && len(safesynctest.Pending(t, base, "orders", "workers")) == 0 })
	if err != nil {
		t.Fatal(err)
	}
	if got := client.touched(); got != 0 {
		t.Fatalf("%d commands touched the failure records while 50 entries were handled once each", got)
	}
}

// A process that ends while the handler runs alone on an entry (os.Exit,
// a fatal error, the OOM killer) leaves the attempt's marker; the entry's
// next delivery counts it as one failure of kind crash, and the crash that
// reaches MaxDeliveries dead-letters the entry instead of running it again.
func TestACrashDuringTheHandlerCountsAsAFailure(t *testing.T) {
	for _, tc := range []struct {
		name       string
		before     int64 // failures recorded before the crash
		dead       bool
		wantCalled bool
	}{
		{"first crash", 0, false, true},
		{"crash reaching MaxDeliveries", 1, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := safesynctest.NewRedis(t)
			m, reg := safesynctest.NewMetrics(t)
			cfg := defectConfig(m)
			cfg.MaxDeliveries = 2
			id := safesynctest.PublishJSON(t, client, "orders", item{N: 1})
			// The crashed process read the entry, and began an attempt alone.
			crashed := cfg
			crashed.Consumer = "ghost"
			if _, err := mustConsumer(t, client, crashed).Read(context.Background()); err != nil {
				t.Fatal(err)
			}
			started := time.Now().Add(-time.Second)
			setHash(t, client, failuresKey, id+":attempt", fmt.Sprintf("1 0123456789abcdef %d ghost", started.UnixMilli()))
			if tc.before > 0 {
				setHash(t, client, failuresKey, id+":n", fmt.Sprint(tc.before))
				setHash(t, client, failuresKey, id+":first", fmt.Sprint(started.Add(-time.Minute).UnixMilli()))
			}
			time.Sleep(30 * time.Millisecond)
			cfg.ClaimIdle, cfg.ClaimInterval = 20*time.Millisecond, 10*time.Millisecond
			c := mustConsumer(t, client, cfg)
			var seen atomic.Int64
			seen.Store(-1)
			err := runUntil(t, func(ctx context.Context) error {
				return c.Run(ctx, func(_ context.Context, msg safesync.Message[item]) error {
					seen.Store(msg.Failures)
					return nil
				})
			}, func() bool { return len(safesynctest.Pending(t, client, "orders", "workers")) == 0 })
			if err != nil {
				t.Fatal(err)
			}
			if n := safesynctest.MetricValue(t, reg, "coti_safesync_queue_handler_failures_total", map[string]string{"kind": safesync.FailureCrash}); n != 1 {
				t.Errorf("handler_failures_total{kind=crash} = %v, want 1", n)
			}
			dead := safesynctest.DeadLetters(t, client, "orders:dead")
			if !tc.dead {
				if seen.Load() != 1 || len(dead) != 0 {
					t.Fatalf("handler saw Failures %d, %d dead letters; want the crash counted (1) and the entry handled", seen.Load(), len(dead))
				}
				return
			}
			if seen.Load() != -1 || len(dead) != 1 {
				t.Fatalf("handler ran (Failures %d), %d dead letters; want the entry dead-lettered without running", seen.Load(), len(dead))
			}
			d := dead[0]
			if d.Reason != safesync.DeadLetterMaxDeliveries || d.Failures != 2 || !strings.Contains(d.Error, "crash") ||
				!strings.Contains(d.Error, `"ghost"`) || !d.FirstFail.Before(d.LastFail) {
				t.Fatalf("dead letter %+v; want max_deliveries after 2 failures, a crash of ghost's process", d)
			}
		})
	}
}

// An entry whose earlier attempt never ended, in a process that ran other
// handlers beside it, is a crash suspect: it runs alone, with no other
// handler of the process running, so that a crash during it is its own.
func TestACrashSuspectRunsAlone(t *testing.T) {
	client := safesynctest.NewRedis(t)
	cfg := defectConfig(nil)
	cfg.Consumer, cfg.Count = "ghost", 100
	var ids []string
	for i := range 20 {
		ids = append(ids, safesynctest.PublishJSON(t, client, "orders", item{N: i}))
	}
	if _, err := mustConsumer(t, client, cfg).Read(context.Background()); err != nil {
		t.Fatal(err)
	}
	suspect := ids[7]
	setHash(t, client, failuresKey, suspect+":attempt", fmt.Sprintf("0 0123456789abcdef %d ghost", time.Now().UnixMilli()))
	time.Sleep(30 * time.Millisecond)
	cfg.Consumer, cfg.Concurrency, cfg.ClaimIdle, cfg.ClaimInterval = "w1", 4, 20*time.Millisecond, 10*time.Millisecond
	c := mustConsumer(t, client, cfg)
	var running, maxBeside atomic.Int64
	var marker atomic.Value
	var done atomic.Int64
	err := runUntil(t, func(ctx context.Context) error {
		return c.Run(ctx, func(_ context.Context, msg safesync.Message[item]) error {
			defer done.Add(1)
			n := running.Add(1)
			defer running.Add(-1)
			if msg.ID == suspect {
				v, _ := client.Do(context.Background(), client.B().Hget().Key(failuresKey).Field(suspect+":attempt").Build()).ToString()
				marker.Store(v)
				maxBeside.Store(n - 1)
				time.Sleep(50 * time.Millisecond)
				maxBeside.Store(max(maxBeside.Load(), running.Load()-1))
				return nil
			}
			time.Sleep(10 * time.Millisecond)
			return nil
		})
	}, func() bool {
		return done.Load() >= 20 && len(safesynctest.Pending(t, client, "orders", "workers")) == 0
	})
	if err != nil {
		t.Fatal(err)
	}
	if maxBeside.Load() != 0 {
		t.Fatalf("%d other handlers ran beside the crash suspect, want none", maxBeside.Load())
	}
	if m, _ := marker.Load().(string); !strings.HasPrefix(m, "1 ") {
		t.Fatalf("the suspect's attempt marker = %q, want one that counts a crash (isolated)", m)
	}
}

func hashLen(t *testing.T, client rueidis.Client, key string) int64 {
	t.Helper()
	n, err := client.Do(context.Background(), client.B().Hlen().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func setHash(t *testing.T, client rueidis.Client, key, field, value string) {
	t.Helper()
	if err := client.Do(context.Background(), client.B().Hset().Key(key).FieldValue().FieldValue(field, value).Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

// keyWatcher counts the commands that name one key.
type keyWatcher struct {
	rueidis.Client
	key string
	mu  sync.Mutex
	n   int
}

func newKeyWatcher(c rueidis.Client, key string) *keyWatcher { return &keyWatcher{Client: c, key: key} }

func (k *keyWatcher) note(cmds ...rueidis.Completed) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, cmd := range cmds {
		for _, part := range cmd.Commands() {
			if part == k.key {
				k.n++
				break
			}
		}
	}
}

func (k *keyWatcher) touched() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

func (k *keyWatcher) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	k.note(cmd)
	return k.Client.Do(ctx, cmd)
}

func (k *keyWatcher) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	k.note(cmds...)
	return k.Client.DoMulti(ctx, cmds...)
}
