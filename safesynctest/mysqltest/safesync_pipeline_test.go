package mysqltest_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

type order struct {
	OrderID   int64 `json:"order_id"`
	AccountID int64 `json:"account_id"`
	Amount    int64 `json:"amount"`
}

// pipelineEnv is an embedded MySQL with accounts 1..3 at balance 0 and a
// dedupe table, an embedded Redis, and private metrics.
type pipelineEnv struct {
	db      *sql.DB
	rdb     rueidis.Client
	metrics *safesync.Metrics
	reg     *prometheus.Registry
	cfg     safesync.StreamConfig
}

func newPipelineEnv(t *testing.T) *pipelineEnv {
	t.Helper()
	e := &pipelineEnv{db: mysqltest.New(t), rdb: safesynctest.NewRedis(t)}
	e.metrics, e.reg = safesynctest.NewMetrics(t)
	mustExec(t, e.db, "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 0)")
	mustExec(t, e.db, "INSERT INTO accounts (id, balance) VALUES (1, 0), (2, 0), (3, 0)")
	if err := safesync.CreateDedupeTable(context.Background(), e.db, "applied"); err != nil {
		t.Fatal(err)
	}
	e.cfg = safesync.StreamConfig{
		Stream: "orders", Group: "workers", Consumer: "w1",
		Block: 50 * time.Millisecond, ClaimIdle: 200 * time.Millisecond, ClaimInterval: 50 * time.Millisecond,
		MaxDeliveries: 3, Metrics: e.metrics,
	}
	return e
}

func (e *pipelineEnv) publish(t *testing.T, orders ...order) []string {
	ids := make([]string, len(orders))
	for i, o := range orders {
		ids[i] = safesynctest.PublishJSON(t, e.rdb, e.cfg.Stream, o)
	}
	return ids
}

// applyOrder adds the order's amount to its account.
func applyOrder(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
	_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", msg.Value.Amount, msg.Value.AccountID)
	return err
}

// run runs p until done reports true (or 10 s pass), then stops it and
// checks that Run returned nil.
func (e *pipelineEnv) run(t *testing.T, p safesync.Pipeline[order], done func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() { result <- p.Run(ctx, e.rdb, e.cfg) }()
	deadline := time.Now().Add(10 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			cancel()
			<-result
			t.Fatal("the pipeline did not finish within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-result; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func (e *pipelineEnv) pending(t *testing.T) int {
	return len(safesynctest.Pending(t, e.rdb, e.cfg.Stream, e.cfg.Group))
}

func (e *pipelineEnv) balances(t *testing.T) []int64 {
	t.Helper()
	b, err := safesync.Select[int64](context.Background(), e.db, "SELECT balance FROM accounts ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPipelineAcknowledgesOnlyAfterCommit(t *testing.T) {
	e := newPipelineEnv(t)
	ids := e.publish(t, order{1, 1, 5}, order{2, 2, 7}, order{3, 1, 1})
	var mu sync.Mutex
	var committed []string
	var stillPendingAtCommit atomic.Int64
	p := safesync.Stream(safesync.JSON[order]()).Handle(applyOrder).AckAfter(safesync.Commit(e.db, safesync.WithMetrics(e.metrics))).
		AfterCommit(func(ctx context.Context, msgs []safesync.Message[order]) {
			pending := safesynctest.Pending(t, e.rdb, e.cfg.Stream, e.cfg.Group)
			mu.Lock()
			defer mu.Unlock()
			for _, m := range msgs {
				committed = append(committed, m.ID)
				if slices.ContainsFunc(pending, func(p safesynctest.PendingEntry) bool { return p.ID == m.ID }) {
					stillPendingAtCommit.Add(1)
				}
			}
		})
	e.run(t, p, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(committed) == 3 && e.pending(t) == 0
	})
	if got := e.balances(t); !slices.Equal(got, []int64{6, 7, 0}) {
		t.Fatalf("balances = %v, want [6 7 0]", got)
	}
	if n := stillPendingAtCommit.Load(); n != 3 {
		t.Fatalf("%d of 3 entries were still pending right after their COMMIT; the ack must come after it", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if slices.Sort(committed); !slices.Equal(committed, ids) {
		t.Fatalf("committed %v, want %v", committed, ids)
	}
}

func TestPipelineHandlerErrorLeavesTheEntryPendingUntilItSucceeds(t *testing.T) {
	e := newPipelineEnv(t)
	ids := e.publish(t, order{1, 1, 5}, order{2, 2, 7})
	var failures atomic.Int64
	var rowAtFailure atomic.Int64
	handler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if err := applyOrder(ctx, tx, msg); err != nil {
			return err
		}
		if msg.ID == ids[1] && failures.Add(1) <= 1 {
			b, err := safesync.Get[int64](ctx, tx, "SELECT balance FROM accounts WHERE id = 2")
			rowAtFailure.Store(b)
			return errors.Join(err, errors.New("downstream unavailable"))
		}
		return nil
	}
	p := safesync.Stream(safesync.JSON[order]()).Handle(handler).AckAfter(safesync.Commit(e.db))
	// First pass: the second entry fails and stays pending, its update
	// rolled back.
	e.run(t, p, func() bool { return failures.Load() >= 1 && e.pending(t) == 1 })
	if got := e.balances(t); !slices.Equal(got, []int64{5, 0, 0}) || rowAtFailure.Load() != 7 {
		t.Fatalf("after the failure balances = %v (inside the failed tx: %d); want [5 0 0]", got, rowAtFailure.Load())
	}
	// Second pass: reclaim delivers it again and it succeeds, once.
	e.run(t, p, func() bool { return e.pending(t) == 0 })
	if got := e.balances(t); !slices.Equal(got, []int64{5, 7, 0}) {
		t.Fatalf("balances = %v, want [5 7 0]: the retried entry applied exactly once", got)
	}
}

func TestPipelinePanicRollsBackLeavesPendingAndIsCounted(t *testing.T) {
	e := newPipelineEnv(t)
	ids := e.publish(t, order{1, 1, 5}, order{2, 3, 9})
	var panicked atomic.Bool
	handler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if err := applyOrder(ctx, tx, msg); err != nil {
			return err
		}
		if msg.ID == ids[1] {
			panicked.Store(true)
			panic("handler bug")
		}
		return nil
	}
	p := safesync.Stream(safesync.JSON[order]()).Handle(handler).AckAfter(safesync.Commit(e.db))
	e.run(t, p, func() bool {
		return panicked.Load() && safesynctest.MetricValue(t, e.reg, "coti_safesync_queue_handler_panics_total", nil) >= 1
	})
	if got := e.balances(t); !slices.Equal(got, []int64{5, 0, 0}) {
		t.Fatalf("balances = %v, want [5 0 0]: the panicking entry rolled back", got)
	}
	pending := safesynctest.Pending(t, e.rdb, e.cfg.Stream, e.cfg.Group)
	if len(pending) != 1 || pending[0].ID != ids[1] {
		t.Fatalf("pending = %+v, want only %s", pending, ids[1])
	}
}

func TestPipelineOnceAcknowledgesAnAppliedEntryWithoutRunningItAgain(t *testing.T) {
	e := newPipelineEnv(t)
	ids := e.publish(t, order{1, 1, 5}, order{2, 2, 7})
	// The first entry was applied and committed by a worker that died
	// before acknowledging it.
	mustExec(t, e.db, "INSERT INTO applied (consumer_group, stream, entry_id) VALUES (?, ?, ?)", e.cfg.Group, e.cfg.Stream, ids[0])
	var calls atomic.Int64
	handler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		calls.Add(1)
		return applyOrder(ctx, tx, msg)
	}
	p := safesync.Stream(safesync.JSON[order]()).Handle(handler).AckAfter(safesync.Commit(e.db)).Once("applied")
	e.run(t, p, func() bool { return e.pending(t) == 0 && calls.Load() == 1 })
	if got := e.balances(t); !slices.Equal(got, []int64{0, 7, 0}) {
		t.Fatalf("balances = %v, want [0 7 0]: the recorded entry must not run again", got)
	}
	if n, _ := safesync.Get[int64](context.Background(), e.db, "SELECT COUNT(*) FROM applied"); n != 2 {
		t.Fatalf("applied rows = %d, want 2", n)
	}
}

func TestPipelineBatchSetsAsideTheFailingEntryAndCommitsTheRestTogether(t *testing.T) {
	e := newPipelineEnv(t)
	var orders []order
	for i := range 10 {
		orders = append(orders, order{int64(i + 1), 1, 1})
	}
	orders[3].Amount = -1 // refused permanently
	orders[6].AccountID = 2
	orders[6].Amount = -2 // fails, but not permanently
	ids := e.publish(t, orders...)
	handler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		switch {
		case msg.Value.Amount == -1:
			return safesync.Permanent(errors.New("negative amount"))
		case msg.Value.Amount < 0:
			return errors.New("cannot apply yet")
		}
		return applyOrder(ctx, tx, msg)
	}
	m, reg := safesynctest.NewMetrics(t)
	p := safesync.Stream(safesync.JSON[order]()).Handle(handler).
		AckAfter(safesync.Commit(e.db, safesync.WithMetrics(m), safesync.Label("batch"))).Batch(10)
	e.cfg.Count = 10
	e.cfg.ClaimIdle = time.Hour // no redelivery in this test
	e.run(t, p, func() bool {
		return len(safesynctest.DeadLetters(t, e.rdb, "orders:dead")) == 1 && e.pending(t) == 1
	})
	if got := e.balances(t); !slices.Equal(got, []int64{8, 0, 0}) {
		t.Fatalf("balances = %v, want [8 0 0]", got)
	}
	dead := safesynctest.DeadLetters(t, e.rdb, "orders:dead")
	if dead[0].OriginalID != ids[3] || dead[0].Reason != safesync.DeadLetterHandler {
		t.Fatalf("dead letter = %+v, want %s with reason handler", dead[0], ids[3])
	}
	if pending := safesynctest.Pending(t, e.rdb, e.cfg.Stream, e.cfg.Group); pending[0].ID != ids[6] {
		t.Fatalf("pending = %+v, want %s", pending, ids[6])
	}
	// The eight good entries committed in one transaction: the first try
	// of ten and the retry of nine rolled back, and each set-aside entry
	// ran alone.
	if c := safesynctest.MetricValue(t, reg, "coti_safesync_db_transactions_total", map[string]string{"label": "batch", "outcome": "commit"}); c != 1 {
		t.Fatalf("commits = %v, want 1", c)
	}
}

func TestPipelineRetryRerunsTheWholeTransaction(t *testing.T) {
	e := newPipelineEnv(t)
	e.publish(t, order{1, 1, 5})
	var attempts atomic.Int64
	handler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if err := applyOrder(ctx, tx, msg); err != nil {
			return err
		}
		if attempts.Add(1) < 3 {
			return &safesync.ConflictError{Table: "accounts"}
		}
		return nil
	}
	p := safesync.Stream(safesync.JSON[order]()).Handle(handler).AckAfter(safesync.Commit(e.db)).
		Retry(safesync.Constant(time.Millisecond).WithMetrics(e.metrics))
	e.run(t, p, func() bool { return e.pending(t) == 0 && attempts.Load() >= 3 })
	if got := e.balances(t); !slices.Equal(got, []int64{5, 0, 0}) || attempts.Load() != 3 {
		t.Fatalf("balances = %v after %d attempts, want [5 0 0] after 3", got, attempts.Load())
	}
	if r := safesynctest.MetricValue(t, e.reg, "coti_safesync_db_retries_total", map[string]string{"reason": "conflict"}); r != 2 {
		t.Fatalf("retries = %v, want 2", r)
	}
}

func TestPipelineConstructionRefusesMisuse(t *testing.T) {
	db := mysqltest.New(t)
	valid := safesync.Stream(safesync.JSON[order]()).Handle(applyOrder)
	for name, build := range map[string]func(){
		"nil decoder":    func() { safesync.Stream[order](nil) },
		"nil handler":    func() { safesync.Stream(safesync.JSON[order]()).Handle(nil) },
		"nil db":         func() { safesync.Commit(nil) },
		"zero stage":     func() { valid.AckAfter(safesync.CommitStage{}) },
		"batch of zero":  func() { valid.AckAfter(safesync.Commit(db)).Batch(0) },
		"bad once table": func() { valid.AckAfter(safesync.Commit(db)).Once("applied;") },
		"invalid retry":  func() { valid.AckAfter(safesync.Commit(db)).Retry(safesync.RetryPolicy{}) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			build()
		})
	}
	if err := (safesync.Pipeline[order]{}).Run(context.Background(), nil, safesync.StreamConfig{}); err == nil {
		t.Fatal("Run on a zero Pipeline succeeded")
	}
}

// Issue 11, item 13: metrics given once, in StreamConfig.Metrics, reach the
// pipeline's database and retry metrics too; a pipeline used to record
// those on prometheus.DefaultRegisterer unless Commit(db, WithMetrics(m))
// and the policy's WithMetrics were also given.
func TestPipelineMetricsGivenOnceRecordEverything(t *testing.T) {
	e := newPipelineEnv(t) // e.cfg.Metrics is a registry of its own
	mustExec(t, e.db, "CREATE TABLE metrics_once_acct (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)")
	mustExec(t, e.db, "INSERT INTO metrics_once_acct (id, n) VALUES (1, 0)")
	e.publish(t, order{1, 1, 5})
	var attempts atomic.Int64
	handler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if _, err := tx.ExecContext(ctx, "UPDATE metrics_once_acct SET n = n + 1 WHERE id = 1"); err != nil {
			return err
		}
		if attempts.Add(1) < 2 {
			return &safesync.ConflictError{Table: "metrics_once_acct"}
		}
		return nil
	}
	p := safesync.Stream(safesync.JSON[order]()).Handle(handler).
		AckAfter(safesync.Commit(e.db, safesync.Label("metrics_once"))).
		Retry(safesync.Constant(time.Millisecond))
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"coti_safesync_db_write_total", map[string]string{"table": "metrics_once_acct"}, 2},
		{"coti_safesync_db_transactions_total", map[string]string{"label": "metrics_once", "outcome": "commit"}, 1},
		{"coti_safesync_db_retries_total", map[string]string{"reason": "conflict"}, 1},
		{"coti_safesync_queue_messages_ack_total", map[string]string{"stream": "orders"}, 1},
	}
	before := make([]float64, len(checks))
	for i, m := range checks {
		before[i] = safesynctest.MetricValue(t, prometheus.DefaultGatherer, m.name, m.labels)
	}
	e.run(t, p, func() bool { return e.pending(t) == 0 && attempts.Load() >= 2 })
	for i, m := range checks {
		if got := safesynctest.MetricValue(t, e.reg, m.name, m.labels); got != m.want {
			t.Errorf("%s%v = %v in StreamConfig.Metrics, want %v", m.name, m.labels, got, m.want)
		}
		if got := safesynctest.MetricValue(t, prometheus.DefaultGatherer, m.name, m.labels) - before[i]; got != 0 {
			t.Errorf("%s%v: %v recorded in the default registry, want nothing there", m.name, m.labels, got)
		}
	}
	// Metrics given to the commit stage or the policy themselves still win.
	own, ownReg := safesynctest.NewMetrics(t)
	e.publish(t, order{2, 1, 5})
	attempts.Store(0)
	p = safesync.Stream(safesync.JSON[order]()).Handle(handler).
		AckAfter(safesync.Commit(e.db, safesync.Label("metrics_once"), safesync.WithMetrics(own))).
		Retry(safesync.Constant(time.Millisecond).WithMetrics(own))
	e.run(t, p, func() bool { return e.pending(t) == 0 && attempts.Load() >= 2 })
	if got := safesynctest.MetricValue(t, ownReg, "coti_safesync_db_retries_total", nil); got != 1 {
		t.Errorf("retries in the policy's own metrics = %v, want 1", got)
	}
	if got := safesynctest.MetricValue(t, ownReg, "coti_safesync_db_transactions_total", map[string]string{"label": "metrics_once", "outcome": "commit"}); got != 1 {
		t.Errorf("transactions in the commit stage's own metrics = %v, want 1", got)
	}
}

// Issue 12: dead letters explain themselves, written by one code path.
// safesynctest.HandleTxJSON recorded a Permanent error's text while the
// pipeline dropped it; both now write the same dead letter: reason, the
// handler's error, delivery and failure counts, failure times, consumer.
func TestPipelineAndHandleTxJSONWriteTheSameDeadLetter(t *testing.T) {
	refuse := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		return safesync.Permanent(errors.New("amount must be positive"))
	}
	check := func(where string, d safesync.DeadLetterEntry) {
		t.Helper()
		if d.Reason != safesync.DeadLetterHandler || d.Error != "amount must be positive" || d.Deliveries != 1 ||
			d.Failures != 1 || d.FirstFail.IsZero() || !d.LastFail.Equal(d.FirstFail) || d.Consumer == "" {
			t.Errorf("%s: dead letter %+v, want reason handler, the handler's text, 1 delivery, 1 failure at one time, the consumer", where, d)
		}
	}
	rep := safesynctest.HandleTxJSON(t, mysqltest.New(t), refuse, order{1, 1, -5})
	if len(rep.DeadLettered) != 1 {
		t.Fatalf("HandleTxJSON dead-lettered %d entries, want 1", len(rep.DeadLettered))
	}
	check("HandleTxJSON", rep.DeadLettered[0])

	e := newPipelineEnv(t)
	e.publish(t, order{1, 1, -5})
	p := safesync.Stream(safesync.JSON[order]()).Handle(refuse).AckAfter(safesync.Commit(e.db))
	e.run(t, p, func() bool { return len(safesynctest.DeadLetters(t, e.rdb, "orders:dead")) == 1 })
	check("Pipeline", safesynctest.DeadLetters(t, e.rdb, "orders:dead")[0])
}
