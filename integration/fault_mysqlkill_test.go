package integration

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	mathrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// privateMySQLUser creates a MySQL account of the test's own, with every
// privilege on the test database, and drops it at the end. Connections
// opened as it are the test's and no one else's, so the test may kill them.
func privateMySQLUser(t *testing.T, root *sql.DB) string {
	t.Helper()
	cfg, err := mysql.ParseDSN(mysqlDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	user := "faults_" + hex.EncodeToString(b[:])
	if _, err := root.Exec(fmt.Sprintf("CREATE USER '%s'@'%%'", user)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := root.Exec(fmt.Sprintf("DROP USER '%s'@'%%'", user)); err != nil {
			t.Errorf("drop user %s: %v", user, err)
		}
	})
	if _, err := root.Exec(fmt.Sprintf("GRANT ALL PRIVILEGES ON `%s`.* TO '%s'@'%%'", cfg.DBName, user)); err != nil {
		t.Fatal(err)
	}
	return user
}

// counter is an in-process stats hash for faultPipeline.
type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func newCounter() *counter { return &counter{m: map[string]int{}} }

func (c *counter) count(field string, n int64) {
	c.mu.Lock()
	c.m[field] += int(n)
	c.mu.Unlock()
}

func (c *counter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// runConsumers runs p as n consumers named c0… in this process until the
// returned stop is called; stop returns Run's errors.
func runConsumers(p safesync.Pipeline[order], rdb rueidis.Client, w *faultWorkload, n int) (stop func() []error) {
	ctx, cancel := context.WithCancel(context.Background())
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Run(ctx, rdb, faultStreamConfig(w.stream, w.group, fmt.Sprintf("c%d", i)))
		}()
	}
	var once sync.Once
	return func() []error {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
		return errs
	}
}

// Three consumers apply 2,000 entries exactly once while, from a side
// connection, the test KILLs their MySQL connections at random: idle in the
// pool, in the middle of a transaction, or during COMMIT. A transaction
// whose connection dies before COMMIT rolls back and is retried; one whose
// COMMIT outcome is unknown is left pending, reclaimed, and found applied.
func TestFaultMySQLConnectionKillsApplyEveryEntryExactlyOnce(t *testing.T) {
	root := openMySQL(t, nil)
	rdb := openRedis(t)
	w := newFaultWorkload(t, root, rdb)
	user := privateMySQLUser(t, root)
	db := openMySQL(t, func(c *mysql.Config) { c.User, c.Passwd = user, "" })
	const entries = 2000
	w.publish(t, 1, entries, randomMalformed(1, entries, 5))

	stats := newCounter()
	p := faultPipeline(w, db, w.applied, 2*time.Millisecond, 0, stats.count)
	stop := runConsumers(p, rdb, w, 3)
	defer stop()

	side := sideConn(t)
	ctx := context.Background()
	// The kills begin once entries are being applied: a consumer whose
	// start (preparing the exactly-once insert) failed would stop.
	if err := pollUntil(time.Minute, "entries applied", func() (bool, error) {
		applied, _, _, err := w.progress(ctx)
		return applied > 0, err
	}); err != nil {
		t.Fatal(err)
	}
	kills := 0
	start := time.Now()
	deadline := start.Add(3 * time.Minute)
	for !w.done(ctx) && time.Now().Before(deadline) {
		time.Sleep(time.Duration(20+mathrand.IntN(80)) * time.Millisecond)
		ids, err := safesync.Select[int64](ctx, side, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND DB = DATABASE() AND ID <> CONNECTION_ID()", user)
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) == 0 {
			continue
		}
		id := ids[mathrand.IntN(len(ids))]
		if _, err := side.ExecContext(ctx, fmt.Sprintf("KILL %d", id)); err != nil {
			if mysqlErrorNumber(err) == 1094 { // unknown thread: it ended by itself
				continue
			}
			t.Fatal(err)
		}
		kills++
	}
	w.waitDone(t, time.Minute)
	elapsed := time.Since(start)
	for _, err := range stop() {
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	w.check(t)
	s := stats.snapshot()
	t.Logf("%d connections killed; done in %v; handler calls %d for %d entries; %d entries committed without re-running; stats %s",
		kills, elapsed.Round(time.Millisecond), s[statCalls], len(w.good), s[statSkipped], mapString(s))
	if kills < 20 {
		t.Errorf("only %d connections were killed; want at least 20", kills)
	}
	if s[statRetry+safesync.ReasonConnection] == 0 {
		t.Errorf("no attempt was retried for a lost connection: the kills interrupted no transaction (%s)", mapString(s))
	}
}

// Regression: a connection lost while WithTx ran BEGIN (the reply to START
// TRANSACTION never came) was returned as a plain error that
// DefaultClassifier did not retry, although fn had not run and nothing could
// have been committed. It is now retried (reason connection) and the work
// is applied once.
func TestFaultConnectionLostDuringBeginIsRetried(t *testing.T) {
	direct := openMySQL(t, nil)
	table := itemsTable(t, direct, 1)
	cfg, err := mysql.ParseDSN(mysqlDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := startMySQLProxy(t, cfg.Addr)
	viaProxy := openMySQL(t, func(c *mysql.Config) { c.Addr = proxy.addr() })

	var calls int
	var reasons []string
	policy := safesync.Constant(10 * time.Millisecond).WithMaxAttempts(5).WithMetrics(nil).
		WithOnRetry(func(e safesync.RetryEvent) { reasons = append(reasons, e.Reason) })
	proxy.loseReplyTo(isQuery("START TRANSACTION"))
	_, err = safesync.Retry(policy, safesync.WithTx(viaProxy, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		calls++
		_, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id = 1")
		return err
	}), safesync.WithMetrics(nil)))(context.Background())
	if err != nil {
		t.Fatalf("err = %v; a connection lost during BEGIN must be retried", err)
	}
	if proxy.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d replies, want 1", proxy.cuts.Load())
	}
	if calls != 1 || len(reasons) != 1 || reasons[0] != safesync.ReasonConnection {
		t.Fatalf("fn ran %d times, retry reasons %v; want 1 run after one connection retry", calls, reasons)
	}
	if got := amountOf(t, direct, table, 1); got != 1 {
		t.Fatalf("amount = %d, want 1", got)
	}
}
