package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// Fault-injection tests (TestFault*): real MariaDB and Redis, processes
// killed, servers restarted, connections killed, handlers outliving their
// claim. Each ends with the same exact check, faultWorkload.check: every
// well-formed entry's effect applied exactly once, nothing pending, the
// malformed entries, and only they, dead-lettered.

// faultAccounts is how many account rows the effects spread over.
const faultAccounts = 10

// faultWorkload is the tables and stream of one fault test, and what was
// published to the stream.
type faultWorkload struct {
	db       *sql.DB
	rdb      rueidis.Client
	accounts string // id, balance
	effects  string // one row per applied entry: order_id, entry_id
	applied  string // the exactly-once table
	stream   string
	group    string

	mu        sync.Mutex
	good      map[string]order // entry id -> value, for well-formed entries
	malformed map[string]bool  // entry ids that cannot be decoded
}

func newFaultWorkload(t *testing.T, db *sql.DB, rdb rueidis.Client) *faultWorkload {
	t.Helper()
	w := &faultWorkload{db: db, rdb: rdb, group: "workers", good: map[string]order{}, malformed: map[string]bool{}}
	w.accounts = createTable(t, db, "acct", "CREATE TABLE %s (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB")
	var values []string
	for i := 1; i <= faultAccounts; i++ {
		values = append(values, fmt.Sprintf("(%d, 0)", i))
	}
	if _, err := db.Exec("INSERT INTO `" + w.accounts + "` (id, balance) VALUES " + strings.Join(values, ", ")); err != nil {
		t.Fatal(err)
	}
	// No unique key on order_id: a duplicate effect must show as a
	// second row, not as an error that hides it.
	w.effects = createTable(t, db, "eff", "CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, order_id BIGINT NOT NULL, entry_id VARBINARY(64) NOT NULL, KEY (order_id)) ENGINE=InnoDB")
	w.applied = dedupeTable(t, db)
	w.stream = "{" + uniqueName(t, "s") + "}"
	if err := rdb.Do(context.Background(), rdb.B().XgroupCreate().Key(w.stream).Group(w.group).Id("0").Mkstream().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The client may belong to a server the test has stopped; a fresh
		// client would not find the keys either, so failure is ignored.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rdb.Do(ctx, rdb.B().Del().Key(w.stream, w.deadStream()).Build()).Error()
	})
	return w
}

func (w *faultWorkload) deadStream() string { return w.stream + safesync.DeadLetterSuffix }

// apply is the handler's effect: one effects row and a balance increment,
// both in the pipeline's transaction.
func (w *faultWorkload) apply(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
	if _, err := tx.ExecContext(ctx, "INSERT INTO `"+w.effects+"` (order_id, entry_id) VALUES (?, ?)", msg.Value.OrderID, msg.ID); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, "UPDATE `"+w.accounts+"` SET balance = balance + ? WHERE id = ?", msg.Value.Amount, msg.Value.AccountID)
	return err
}

// faultOrder is the well-formed entry number i (from 1).
func faultOrder(i int) order {
	return order{OrderID: int64(i), AccountID: int64(i%faultAccounts + 1), Amount: int64(i%7 + 1)}
}

// publish adds n entries numbered from first; the entries whose number is
// in malformed carry a data field that is not JSON.
func (w *faultWorkload) publish(t *testing.T, first, n int, malformed map[int]bool) {
	t.Helper()
	ctx := context.Background()
	for i := first; i < first+n; i++ {
		if malformed[i] {
			id, err := safesync.Publish(ctx, w.rdb, w.stream, map[string]string{"data": fmt.Sprintf(`{"order_id": %d, "amount": `, i)})
			if err != nil {
				t.Fatal(err)
			}
			w.mu.Lock()
			w.malformed[id] = true
			w.mu.Unlock()
			continue
		}
		o := faultOrder(i)
		id, err := safesync.PublishJSON(ctx, w.rdb, w.stream, o)
		if err != nil {
			t.Fatal(err)
		}
		w.mu.Lock()
		w.good[id] = o
		w.mu.Unlock()
	}
}

// randomMalformed picks k distinct entry numbers in [first, first+n).
func randomMalformed(first, n, k int) map[int]bool {
	out := map[int]bool{}
	for len(out) < k {
		out[first+rand.IntN(n)] = true
	}
	return out
}

// progress reports how many entries are applied, pending and dead-lettered,
// without failing: the servers may be down while it is asked.
func (w *faultWorkload) progress(ctx context.Context) (applied, pending, dead int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM `"+w.applied+"`").Scan(&applied); err != nil {
		return 0, 0, 0, err
	}
	pending, err = xpendingCount(ctx, w.rdb, w.stream, w.group)
	if err != nil {
		return 0, 0, 0, err
	}
	dead, err = w.rdb.Do(ctx, w.rdb.B().Xlen().Key(w.deadStream()).Build()).AsInt64()
	return applied, pending, dead, err
}

// done reports whether every entry has been applied or dead-lettered and
// nothing is pending.
func (w *faultWorkload) done(ctx context.Context) bool {
	applied, pending, dead, err := w.progress(ctx)
	w.mu.Lock()
	defer w.mu.Unlock()
	return err == nil && applied == int64(len(w.good)) && pending == 0 && dead >= int64(len(w.malformed))
}

// waitDone polls done until it holds, failing the test after timeout.
func (w *faultWorkload) waitDone(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !w.done(context.Background()) {
		if time.Now().After(deadline) {
			applied, pending, dead, err := w.progress(context.Background())
			t.Fatalf("not done within %v: %d of %d applied, %d pending, %d of %d dead-lettered (%v)",
				timeout, applied, len(w.good), pending, dead, len(w.malformed), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// xpendingCount is the count of XPENDING's summary form.
func xpendingCount(ctx context.Context, rdb rueidis.Client, stream, group string) (int64, error) {
	summary, err := rdb.Do(ctx, rdb.B().Xpending().Key(stream).Group(group).Build()).ToArray()
	if err != nil {
		return 0, err
	}
	if len(summary) == 0 {
		return 0, fmt.Errorf("XPENDING returned an empty summary")
	}
	return summary[0].AsInt64()
}

// check asserts the exact end state: each well-formed entry applied once
// (one effects row, one exactly-once row, balances equal to the sums of
// their amounts), no entry pending, the stream intact, and the dead-letter
// stream holding each malformed entry exactly once, for reason decode.
func (w *faultWorkload) check(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	w.mu.Lock()
	defer w.mu.Unlock()

	type effectRow struct {
		OrderID int64  `db:"order_id"`
		EntryID string `db:"entry_id"`
	}
	rows, err := safesync.Select[effectRow](ctx, w.db, "SELECT order_id, entry_id FROM `"+w.effects+"`")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range rows {
		seen[r.EntryID]++
		if o, ok := w.good[r.EntryID]; !ok || o.OrderID != r.OrderID {
			t.Errorf("effect row for entry %s, order %d: not a well-formed entry published as that order", r.EntryID, r.OrderID)
		}
	}
	var dup []string
	for id, n := range seen {
		if n > 1 {
			dup = append(dup, fmt.Sprintf("%s×%d", id, n))
		}
	}
	if len(rows) != len(w.good) || len(seen) != len(w.good) || len(dup) > 0 {
		slices.Sort(dup)
		t.Errorf("effects: %d rows for %d distinct entries, want %d of each; duplicated: %v", len(rows), len(seen), len(w.good), dup)
	}

	want := map[int64]int64{}
	for _, o := range w.good {
		want[o.AccountID] += o.Amount
	}
	type account struct {
		ID      int64 `db:"id"`
		Balance int64 `db:"balance"`
	}
	accts, err := safesync.Select[account](ctx, w.db, "SELECT id, balance FROM `"+w.accounts+"` ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range accts {
		if a.Balance != want[a.ID] {
			t.Errorf("account %d: balance %d, want %d", a.ID, a.Balance, want[a.ID])
		}
	}
	if n := countRows(t, w.db, w.applied); n != int64(len(w.good)) {
		t.Errorf("exactly-once table: %d rows, want %d", n, len(w.good))
	}

	if p := safesynctest.Pending(t, w.rdb, w.stream, w.group); len(p) != 0 {
		t.Errorf("%d entries still pending, first %+v", len(p), p[0])
	}
	if n, err := xpendingCount(ctx, w.rdb, w.stream, w.group); err != nil || n != 0 {
		t.Errorf("XPENDING count = %d, %v; want 0", n, err)
	}
	if n := len(safesynctest.Entries(t, w.rdb, w.stream)); n != len(w.good)+len(w.malformed) {
		t.Errorf("stream holds %d entries, want %d", n, len(w.good)+len(w.malformed))
	}

	deadSeen := map[string]int{}
	for _, d := range safesynctest.DeadLetters(t, w.rdb, w.deadStream()) {
		deadSeen[d.OriginalID]++
		if !w.malformed[d.OriginalID] {
			t.Errorf("dead letter %s for entry %s (reason %s, %s): not a malformed entry", d.ID, d.OriginalID, d.Reason, d.Error)
		}
		if d.Reason != safesync.DeadLetterDecode {
			t.Errorf("dead letter for %s has reason %q, want %q", d.OriginalID, d.Reason, safesync.DeadLetterDecode)
		}
	}
	for id := range w.malformed {
		if deadSeen[id] != 1 {
			t.Errorf("malformed entry %s is in the dead-letter stream %d times, want once", id, deadSeen[id])
		}
	}
}

// faultStreamConfig is the consumer configuration of the fault tests: short
// reads and a short ClaimIdle so that entries left behind come back soon,
// and MaxDeliveries high enough that no well-formed entry is dead-lettered
// for having been redelivered by the faults.
func faultStreamConfig(stream, group, consumer string) safesync.StreamConfig {
	m, _ := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	return safesync.StreamConfig{
		Stream: stream, Group: group, Consumer: consumer,
		Block: 100 * time.Millisecond, Count: 16, Concurrency: 2,
		ClaimIdle: time.Second, ClaimInterval: 200 * time.Millisecond,
		MaxDeliveries: 50, ShutdownGrace: 5 * time.Second,
		Metrics: m,
	}
}

// retryCounts counts retried attempts by reason, and attempts that failed
// without a retry (the entry then stays pending for reclaim) by kind.
type retryCounts struct {
	mu      sync.Mutex
	retried map[string]int
	gaveUp  map[string]int
}

func newRetryCounts() *retryCounts {
	return &retryCounts{retried: map[string]int{}, gaveUp: map[string]int{}}
}

// policy returns the pipelines' retry policy, counting into c.
func (c *retryCounts) policy() safesync.RetryPolicy {
	return safesync.Exponential(5*time.Millisecond, 200*time.Millisecond).WithMaxAttempts(20).WithMetrics(nil).
		WithClassifier(func(err error) (string, bool) {
			reason, retry := safesync.DefaultClassifier(err)
			if !retry {
				c.mu.Lock()
				c.gaveUp[errorKind(err)]++
				c.mu.Unlock()
			}
			return reason, retry
		}).
		WithOnRetry(func(e safesync.RetryEvent) {
			c.mu.Lock()
			c.retried[e.Reason]++
			c.mu.Unlock()
		})
}

func (c *retryCounts) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("retried %v, not retried %v", c.retried, c.gaveUp)
}

func (c *retryCounts) retriedFor(reason string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retried[reason]
}

// errorKind names an error for the counts.
func errorKind(err error) string {
	switch {
	case err == nil:
		return "none"
	case errors.Is(err, safesync.ErrCommitUnknown):
		return "commit_unknown"
	case errors.Is(err, safesync.ErrAfterCommit):
		return "after_commit"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "ctx"
	}
	return "other"
}

// mapString formats a count map in key order.
func mapString(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Itoa(m[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// mysqlErrorNumber returns the MySQL error number in err's chain, or 0.
func mysqlErrorNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}
