package integration

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// event is what the outbox tests publish.
type event struct {
	Key   string `json:"key"`
	Seq   int64  `json:"seq"`
	Event string `json:"event"` // unique per event
}

// outboxSetup is a uniquely named outbox table and stream on the real
// servers, removed at the end.
type outboxSetup struct {
	db     *sql.DB
	rdb    rueidis.Client
	table  string
	stream string
	lock   string // the relays' leader lock
	reg    *prometheus.Registry
	m      *safesync.Metrics
}

func newOutboxSetup(t *testing.T) *outboxSetup {
	t.Helper()
	s := &outboxSetup{db: openMySQL(t, nil), rdb: openRedis(t), reg: prometheus.NewRegistry()}
	s.table = outboxTable(t, s.db)
	s.stream = "{" + uniqueName(t, "ob") + "}"
	s.lock = uniqueLockName()
	deleteKeysAtEnd(t, s.rdb, s.stream)
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: s.reg})
	if err != nil {
		t.Fatal(err)
	}
	s.m = m
	return s
}

// outboxTable creates a uniquely named outbox table, dropped at the end.
func outboxTable(t testing.TB, db *sql.DB) string {
	t.Helper()
	table := uniqueName(t, "outbox")
	if err := safesync.CreateOutboxTable(context.Background(), db, table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE IF EXISTS `" + table + "`") })
	return table
}

// deleteKeysAtEnd deletes Redis keys when the test ends.
func deleteKeysAtEnd(t testing.TB, rdb rueidis.Client, keys ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, k := range keys {
			_ = rdb.Do(ctx, rdb.B().Del().Key(k).Build()).Error()
		}
	})
}

// config returns a relay configuration of s's outbox with fast polling.
func (s *outboxSetup) config() safesync.RelayConfig {
	return safesync.RelayConfig{Table: s.table, LockName: s.lock, Metrics: s.m, PollMax: 50 * time.Millisecond, StatsInterval: 100 * time.Millisecond}
}

// uniqueLockName returns an advisory lock name no other test uses.
func uniqueLockName() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "safesync_test_outbox_" + hex.EncodeToString(b[:])
}

// runRelay runs a relay with cfg until the test ends or stop is called;
// stop returns Run's error.
func runRelay(t testing.TB, db *sql.DB, rdb rueidis.Client, cfg safesync.RelayConfig) (*safesync.Relay, func() error) {
	t.Helper()
	r, err := safesync.NewRelay(db, rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("Run did not return 30 s after its ctx was cancelled")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return r, stop
}

// publish commits one transaction that publishes evs to w, or rolls it
// back when rollback is true.
func publish(t testing.TB, db *sql.DB, w safesync.OutboxWriter[event], rollback bool, evs ...event) {
	t.Helper()
	errRollback := errors.New("rolled back on purpose")
	_, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		if err := w.Publish(ctx, tx, evs...); err != nil {
			return err
		}
		if rollback {
			return errRollback
		}
		return nil
	}), safesync.WithMetrics(nil))(context.Background())
	if rollback && !errors.Is(err, errRollback) || !rollback && err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// waitEntries waits until stream holds at least n entries and returns
// them.
func waitEntries(t testing.TB, rdb rueidis.Client, stream string, n int, timeout time.Duration) []rueidis.XRangeEntry {
	t.Helper()
	var xs []rueidis.XRangeEntry
	err := pollUntil(timeout, fmt.Sprintf("%d entries in %s", n, stream), func() (bool, error) {
		var err error
		xs, err = rdb.Do(context.Background(), rdb.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
		return len(xs) >= n, err
	})
	if err != nil {
		t.Fatalf("%v (have %d)", err, len(xs))
	}
	return xs
}

// decodeEvents decodes entries written by the relay.
func decodeEvents(t testing.TB, xs []rueidis.XRangeEntry) []event {
	t.Helper()
	out := make([]event, len(xs))
	for i, x := range xs {
		if err := json.Unmarshal([]byte(x.FieldValues[safesync.DataField]), &out[i]); err != nil {
			t.Fatalf("entry %s: %v", x.ID, err)
		}
	}
	return out
}

func TestOutboxRelaysCommittedEventsInOrderAndNothingRolledBack(t *testing.T) {
	s := newOutboxSetup(t)
	w := safesync.ToOutbox[event](s.table, s.stream)
	for i := 1; i <= 30; i++ {
		e := event{Key: "k", Seq: int64(i), Event: strconv.Itoa(i)}
		publish(t, s.db, w, i%5 == 0, e) // every fifth rolls back
	}
	publish(t, s.db, w, false, event{Key: "k", Seq: 31, Event: "31"}, event{Key: "k", Seq: 32, Event: "32"})
	_, stop := runRelay(t, s.db, s.rdb, s.config())

	waitEntries(t, s.rdb, s.stream, 26, 10*time.Second)
	time.Sleep(200 * time.Millisecond) // nothing more may come
	xs := safesynctest.Entries(t, s.rdb, s.stream)
	evs := decodeEvents(t, xs)
	var want []int64
	for i := int64(1); i <= 32; i++ {
		if i%5 != 0 || i > 30 {
			want = append(want, i)
		}
	}
	if len(evs) != len(want) {
		t.Fatalf("%d entries, want %d", len(evs), len(want))
	}
	origins := map[string]bool{}
	for i, e := range evs {
		if e.Seq != want[i] {
			t.Fatalf("entry %d is event %d, want %d (entries in id order, none rolled back)", i, e.Seq, want[i])
		}
		f := xs[i].FieldValues
		if f[safesync.OriginFieldStream] != safesync.OutboxOriginPrefix+s.table || f[safesync.OriginFieldID] == "" {
			t.Fatalf("entry %d fields %v: want the origin fields of the outbox", i, f)
		}
		if len(f) != 3 {
			t.Fatalf("entry %d has fields %v, want data and the two origin fields", i, f)
		}
		origins[f[safesync.OriginFieldID]] = true
	}
	if len(origins) != len(evs) {
		t.Fatalf("%d distinct origins for %d entries", len(origins), len(evs))
	}
	if n := countRows(t, s.db, s.table); n != 0 {
		t.Fatalf("%d rows left in the outbox, want 0 (relayed rows are deleted)", n)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if v := safesynctest.MetricValue(t, s.reg, "coti_safesync_outbox_relayed_total", map[string]string{"outbox": s.table}); v != float64(len(want)) {
		t.Errorf("relayed_total = %v, want %d", v, len(want))
	}
}

func TestOutboxKeepRelayedMarksRowsAndPruneOutboxDeletesThem(t *testing.T) {
	s := newOutboxSetup(t)
	w := safesync.ToOutbox[event](s.table, s.stream)
	publish(t, s.db, w, false, event{Seq: 1}, event{Seq: 2}, event{Seq: 3})
	cfg := s.config()
	cfg.KeepRelayed = true
	_, stop := runRelay(t, s.db, s.rdb, cfg)
	waitEntries(t, s.rdb, s.stream, 3, 10*time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	marked, err := safesync.Get[int64](ctx, s.db, "SELECT COUNT(*) FROM `"+s.table+"` WHERE relayed_at IS NOT NULL")
	if err != nil || marked != 3 {
		t.Fatalf("marked rows = %d, %v; want 3", marked, err)
	}
	publish(t, s.db, w, false, event{Seq: 4}) // not relayed: the relay stopped
	if _, err := s.db.Exec("UPDATE `" + s.table + "` SET relayed_at = UTC_TIMESTAMP(6) - INTERVAL 2 HOUR WHERE relayed_at IS NOT NULL AND id < (SELECT m FROM (SELECT MAX(id) AS m FROM `" + s.table + "` WHERE relayed_at IS NOT NULL) x)"); err != nil {
		t.Fatal(err)
	}
	n, err := safesync.PruneOutbox(ctx, s.db, s.table, time.Hour)
	if err != nil || n != 2 {
		t.Fatalf("PruneOutbox = %d, %v; want 2 (rows relayed over an hour ago)", n, err)
	}
	if left := countRows(t, s.db, s.table); left != 2 {
		t.Fatalf("%d rows left, want 2: one relayed recently and one not relayed", left)
	}
}

// A row that commits after rows with higher ids were relayed is relayed
// when it commits: the relay keeps no high-water mark.
func TestOutboxRelaysARowThatCommitsLateWithALowerID(t *testing.T) {
	s := newOutboxSetup(t)
	w := safesync.ToOutbox[event](s.table, s.stream)
	_, _ = runRelay(t, s.db, s.rdb, s.config())

	inserted := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := safesync.WithTx(s.db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			if err := w.Publish(ctx, tx, event{Event: "late"}); err != nil {
				return err
			}
			close(inserted)
			<-release
			return nil
		}))(context.Background())
		done <- err
	}()
	<-inserted
	publish(t, s.db, w, false, event{Event: "early"})
	xs := waitEntries(t, s.rdb, s.stream, 1, 10*time.Second)
	if evs := decodeEvents(t, xs); len(evs) != 1 || evs[0].Event != "early" {
		t.Fatalf("entries %v, want only the committed event", evs)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	xs = waitEntries(t, s.rdb, s.stream, 2, 10*time.Second)
	if evs := decodeEvents(t, xs); len(evs) != 2 || evs[1].Event != "late" {
		t.Fatalf("entries %v, want the late event after the early one", evs)
	}
	ids, err := safesync.Select[string](context.Background(), s.db, "SELECT id FROM `"+s.table+"`")
	if err != nil || len(ids) != 0 {
		t.Fatalf("rows left %v, %v", ids, err)
	}
	if a, b := originRow(t, xs[0]), originRow(t, xs[1]); a < b {
		t.Fatalf("the late event's row id %d is not lower than the early one's %d: the test did not set up a late commit", b, a)
	}
}

// originRow returns the outbox row id in an entry's origin.
func originRow(t testing.TB, x rueidis.XRangeEntry) int64 {
	t.Helper()
	origin := x.FieldValues[safesync.OriginFieldID]
	var id, nonce int64
	if _, err := fmt.Sscanf(origin, "%d.%x", &id, &nonce); err != nil {
		t.Fatalf("origin id %q: %v", origin, err)
	}
	return id
}

// With polling effectively off, an event still reaches its stream at once:
// the commit wakes the relay in the same process.
func TestOutboxRelayIsWokenByACommitInItsProcess(t *testing.T) {
	s := newOutboxSetup(t)
	w := safesync.ToOutbox[event](s.table, s.stream)
	cfg := s.config()
	cfg.PollMin, cfg.PollMax = time.Hour, time.Hour
	r, _ := runRelay(t, s.db, s.rdb, cfg)
	if err := pollUntil(10*time.Second, "leading", func() (bool, error) { return r.Leading(), nil }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the relay's first read found nothing; it now sleeps for an hour
	for i := range 3 {
		publish(t, s.db, w, false, event{Seq: int64(i)})
		waitEntries(t, s.rdb, s.stream, i+1, 10*time.Second)
	}
}

func TestOutboxMaxLenTrimsTheStream(t *testing.T) {
	s := newOutboxSetup(t)
	w := safesync.ToOutbox[event](s.table, s.stream)
	for i := range 10 {
		evs := make([]event, 100)
		for j := range evs {
			evs[j] = event{Seq: int64(i*100 + j)}
		}
		publish(t, s.db, w, false, evs...)
	}
	cfg := s.config()
	cfg.MaxLen, cfg.BatchSize = 100, 50
	_, stop := runRelay(t, s.db, s.rdb, cfg)
	if err := pollUntil(20*time.Second, "outbox empty", func() (bool, error) { return countRows(t, s.db, s.table) == 0, nil }); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	n, err := s.rdb.Do(context.Background(), s.rdb.B().Xlen().Key(s.stream).Build()).AsInt64()
	if err != nil || n < 100 || n >= 1000 {
		t.Fatalf("XLEN = %d, %v; want about 100 (approximate trimming), not all 1000", n, err)
	}
	xs := safesynctest.Entries(t, s.rdb, s.stream)
	if last := decodeEvents(t, xs[len(xs)-1:]); last[0].Seq != 999 {
		t.Fatalf("last entry is event %d, want 999", last[0].Seq)
	}
}

// Events of a partitioned stream go to the partition of their key, each
// key's in order.
func TestOutboxPartitionedEventsGoToTheirKeysPartitionInOrder(t *testing.T) {
	s := newOutboxSetup(t)
	p, err := safesync.NewPartitions(uniqueName(t, "obp"), 4)
	if err != nil {
		t.Fatal(err)
	}
	deleteKeysAtEnd(t, s.rdb, p.Streams()...)
	w := safesync.ToOutboxPartitioned(s.table, p, func(e event) string { return e.Key })
	const keys, perKey = 12, 20
	for i := range perKey {
		var evs []event
		for k := range keys {
			evs = append(evs, event{Key: "key" + strconv.Itoa(k), Seq: int64(i)})
		}
		publish(t, s.db, w, false, evs...)
	}
	_, stop := runRelay(t, s.db, s.rdb, s.config())
	if err := pollUntil(20*time.Second, "outbox empty", func() (bool, error) { return countRows(t, s.db, s.table) == 0, nil }); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkPartitionedOrder(t, s.rdb, p, keys*perKey)
}

// checkPartitionedOrder checks that the partitions of p hold total
// events, each in its key's partition, each key's in Seq order from 0.
func checkPartitionedOrder(t testing.TB, rdb rueidis.Client, p safesync.Partitions, total int) {
	t.Helper()
	next := map[string]int64{}
	n := 0
	for i, stream := range p.Streams() {
		for _, e := range decodeEvents(t, safesynctest.Entries(t, rdb, stream)) {
			n++
			if got := p.For(e.Key); got != i {
				t.Fatalf("event of key %s in partition %d, want %d", e.Key, i, got)
			}
			if e.Seq != next[e.Key] {
				t.Fatalf("key %s: event %d after %d", e.Key, e.Seq, next[e.Key]-1)
			}
			next[e.Key]++
		}
	}
	if n != total {
		t.Fatalf("%d entries in the partitions, want %d", n, total)
	}
}

// Of two relays, one leads; when its lock connection is killed, the other
// takes over and the first steps down.
func TestOutboxOneRelayLeadsAndAStandbyTakesOverWhenItsConnectionIsKilled(t *testing.T) {
	s := newOutboxSetup(t)
	w := safesync.ToOutbox[event](s.table, s.stream)
	cfg := s.config()
	a, _ := runRelay(t, s.db, s.rdb, cfg)
	if err := pollUntil(10*time.Second, "a leads", func() (bool, error) { return a.Leading(), nil }); err != nil {
		t.Fatal(err)
	}
	b, _ := runRelay(t, s.db, s.rdb, cfg)
	publish(t, s.db, w, false, event{Seq: 1})
	waitEntries(t, s.rdb, s.stream, 1, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if !a.Leading() || b.Leading() {
		t.Fatalf("a leads: %v, b leads: %v; want only a", a.Leading(), b.Leading())
	}

	side := sideConn(t)
	ctx := context.Background()
	holder, err := safesync.Get[int64](ctx, side, "SELECT IS_USED_LOCK(?)", s.lock)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if _, err := side.ExecContext(ctx, fmt.Sprintf("KILL %d", holder)); err != nil {
		t.Fatal(err)
	}
	if err := pollUntil(10*time.Second, "b leads", func() (bool, error) { return b.Leading(), nil }); err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	if err := pollUntil(10*time.Second, "a steps down", func() (bool, error) { return !a.Leading(), nil }); err != nil {
		t.Fatal(err)
	}
	publish(t, s.db, w, false, event{Seq: 2})
	xs := waitEntries(t, s.rdb, s.stream, 2, 10*time.Second)
	if evs := decodeEvents(t, xs); evs[1].Seq != 2 {
		t.Fatalf("entries %v", evs)
	}
	t.Logf("the standby led %v after the leader's connection was killed", took.Round(time.Millisecond))
}

// The relay stops between adding a batch and deleting its rows (its
// connection is killed there), so it adds the batch again; a pipeline with
// Once applies each event once.
func TestOutboxEventsRelayedTwiceAreAppliedOnceByOnce(t *testing.T) {
	s := newOutboxSetup(t)
	w := safesync.ToOutbox[event](s.table, s.stream)
	const n = 20
	var evs []event
	for i := range n {
		evs = append(evs, event{Key: "k", Seq: int64(i), Event: strconv.Itoa(i)})
	}
	publish(t, s.db, w, false, evs...)

	side := sideConn(t)
	var kills atomic.Int64
	cfg := s.config()
	cfg.AfterXADD = func(ctx context.Context, _ []safesync.RelayedEvent) {
		if kills.Load() > 0 {
			return
		}
		holders, err := safesync.Select[int64](ctx, side, "SELECT IS_USED_LOCK(?)", s.lock)
		if err != nil || len(holders) != 1 {
			t.Errorf("lock holder: %v, %v", holders, err)
			return
		}
		if _, err := side.ExecContext(ctx, fmt.Sprintf("KILL %d", holders[0])); err != nil {
			t.Error(err)
		}
		kills.Add(1)
	}
	_, stop := runRelay(t, s.db, s.rdb, cfg)
	if err := pollUntil(20*time.Second, "outbox empty", func() (bool, error) { return countRows(t, s.db, s.table) == 0, nil }); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	xs := safesynctest.Entries(t, s.rdb, s.stream)
	if len(xs) != 2*n {
		t.Fatalf("%d entries, want %d: the batch added twice", len(xs), 2*n)
	}

	effects := createTable(t, s.db, "eff", "CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, event VARCHAR(64) NOT NULL) ENGINE=InnoDB")
	applied := dedupeTable(t, s.db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var committed atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- safesync.Stream(safesync.JSON[event]()).
			Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[event]) error {
				_, err := tx.ExecContext(ctx, "INSERT INTO `"+effects+"` (event) VALUES (?)", msg.Value.Event)
				return err
			}).
			AckAfter(safesync.Commit(s.db, safesync.WithMetrics(nil))).
			Once(applied).
			Batch(8).
			AfterCommit(func(_ context.Context, msgs []safesync.Message[event]) { committed.Add(int64(len(msgs))) }).
			Run(ctx, s.rdb, safesync.StreamConfig{Stream: s.stream, Group: "g", Consumer: "c", Block: 50 * time.Millisecond, Metrics: s.m})
	}()
	if err := pollUntil(20*time.Second, "entries applied", func() (bool, error) { return committed.Load() == 2*n, nil }); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, err := safesync.Select[string](context.Background(), s.db, "SELECT event FROM `"+effects+"` ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("%d effects for %d events: %v", len(got), n, got)
	}
	for i, e := range got {
		if e != strconv.Itoa(i) {
			t.Fatalf("effect %d is event %s, want %d (in order, once each)", i, e, i)
		}
	}
}

// A stream whose adds fail (its key holds a string) does not hold up the
// others: its rows wait, in order, counted in the backlog gauges and the
// error counter, and go once the key is fixed.
func TestOutboxAFailingStreamWaitsInOrderWithoutHoldingUpTheOthers(t *testing.T) {
	s := newOutboxSetup(t)
	broken := "{" + uniqueName(t, "obx") + "}"
	deleteKeysAtEnd(t, s.rdb, broken)
	ctx := context.Background()
	if err := s.rdb.Do(ctx, s.rdb.B().Set().Key(broken).Value("not a stream").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	good := safesync.ToOutbox[event](s.table, s.stream)
	bad := safesync.ToOutbox[event](s.table, broken)
	for i := range 10 {
		publish(t, s.db, bad, false, event{Seq: int64(i)})
		publish(t, s.db, good, false, event{Seq: int64(i)})
	}
	_, stop := runRelay(t, s.db, s.rdb, s.config())
	waitEntries(t, s.rdb, s.stream, 10, 10*time.Second)
	labels := map[string]string{"outbox": s.table}
	if err := pollUntil(10*time.Second, "backlog gauge", func() (bool, error) {
		return safesynctest.MetricValue(t, s.reg, "coti_safesync_outbox_backlog_rows", labels) == 10, nil
	}); err != nil {
		t.Fatal(err)
	}
	if age := safesynctest.MetricValue(t, s.reg, "coti_safesync_outbox_oldest_unrelayed_age_seconds", labels); age <= 0 {
		t.Errorf("oldest unrelayed age = %v, want positive", age)
	}
	if n := safesynctest.MetricValue(t, s.reg, "coti_safesync_outbox_relay_errors_total", map[string]string{"outbox": s.table, "stage": "xadd"}); n == 0 {
		t.Error("no xadd error counted")
	}
	publish(t, s.db, good, false, event{Seq: 10})
	waitEntries(t, s.rdb, s.stream, 11, 10*time.Second)

	if err := s.rdb.Do(ctx, s.rdb.B().Del().Key(broken).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	xs := waitEntries(t, s.rdb, broken, 10, 20*time.Second)
	for i, e := range decodeEvents(t, xs) {
		if e.Seq != int64(i) {
			t.Fatalf("entry %d of the fixed stream is event %d: out of order", i, e.Seq)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s.db, s.table); n != 0 {
		t.Fatalf("%d rows left", n)
	}
}

func TestOutboxRelayRunFailsWhenItsTableDoesNotExist(t *testing.T) {
	db := openMySQL(t, nil)
	r, err := safesync.NewRelay(db, openRedis(t), safesync.RelayConfig{Table: uniqueName(t, "missing"), LockName: uniqueLockName(), Metrics: nil})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = r.Run(ctx)
	if err == nil || ctx.Err() != nil || mysqlErrorNumber(err) != 1146 {
		t.Fatalf("Run = %v (ctx %v); want MySQL error 1146 at once", err, ctx.Err())
	}
	if r.Leading() {
		t.Fatal("still leading after Run returned")
	}
}

// A DSN with autocommit=0 would keep a relay's reads in one snapshot and
// its deletes uncommitted; the relay's connection sets autocommit on.
func TestOutboxRelayCommitsItsDeletesWhenTheDSNTurnsAutocommitOff(t *testing.T) {
	s := newOutboxSetup(t)
	off := openMySQL(t, func(c *mysql.Config) {
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		c.Params["autocommit"] = "0"
	})
	w := safesync.ToOutbox[event](s.table, s.stream)
	_, stop := runRelay(t, off, s.rdb, s.config())
	for i := range 3 {
		publish(t, s.db, w, false, event{Seq: int64(i)})
		waitEntries(t, s.rdb, s.stream, i+1, 10*time.Second)
	}
	if err := pollUntil(10*time.Second, "outbox empty", func() (bool, error) { return countRows(t, s.db, s.table) == 0, nil }); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
