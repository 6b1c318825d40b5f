package mysqltest_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// credit is one row of the accounts table, as a batch handler inserts it.
type credit struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
}

// applyOrders adds each order's amount to its account, all of the batch in
// one multi-row INSERT … ON DUPLICATE KEY UPDATE.
func applyOrders(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
	rows := make([]credit, len(msgs))
	for i, m := range msgs {
		rows[i] = credit{ID: m.Value.AccountID, Balance: m.Value.Amount}
	}
	_, err := safesync.InsertRows(ctx, tx, "accounts", rows, safesync.OnDuplicateAdd("balance"))
	return err
}

func TestHandleBatchWithOnceAppliesEveryEntryOnceAcrossRedelivery(t *testing.T) {
	e := newPipelineEnv(t)
	var orders []order
	for i := range 20 {
		orders = append(orders, order{int64(i + 1), int64(1 + i%3), int64(1 + i%5)})
	}
	ids := e.publish(t, orders...)
	// The first entry was applied and committed by a worker that died
	// before acknowledging it.
	mustExec(t, e.db, "INSERT INTO applied (consumer_group, stream, entry_id) VALUES (?, ?, ?)", e.cfg.Group, e.cfg.Stream, ids[0])
	mustExec(t, e.db, "UPDATE accounts SET balance = balance + ? WHERE id = ?", orders[0].Amount, orders[0].AccountID)
	var mu sync.Mutex
	seen := map[string]int{}
	var sizes []int
	handler := func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		mu.Lock()
		sizes = append(sizes, len(msgs))
		for _, m := range msgs {
			seen[m.ID]++
		}
		mu.Unlock()
		return applyOrders(ctx, tx, msgs)
	}
	var committed atomic.Int64 // entries whose transaction committed, applied then or before
	p := safesync.Stream(safesync.JSON[order]()).HandleBatch(handler).AckAfter(safesync.Commit(e.db)).Once("applied").Batch(5).
		AfterCommit(func(_ context.Context, msgs []safesync.Message[order]) { committed.Add(int64(len(msgs))) })
	e.cfg.Count = 5
	e.run(t, p, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return e.pending(t) == 0 && len(seen) == len(ids)-1
	})

	// Every entry is delivered again (the group made anew from the
	// stream's start, as if every acknowledgement had been lost), together
	// with five new ones.
	var more []order
	for i := range 5 {
		more = append(more, order{int64(21 + i), 3, 10})
	}
	if err := e.rdb.Do(context.Background(), e.rdb.B().XgroupDestroy().Key(e.cfg.Stream).Group(e.cfg.Group).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, e.publish(t, more...)...)
	committed.Store(0)
	e.run(t, p, func() bool { return committed.Load() == int64(len(ids)) && e.pending(t) == 0 })

	want := []int64{0, 0, 0}
	for _, o := range append(orders, more...) {
		want[o.AccountID-1] += o.Amount
	}
	if got := e.balances(t); !slices.Equal(got, want) {
		t.Fatalf("balances = %v, want %v: every entry applied exactly once", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen[ids[0]] != 0 {
		t.Fatalf("the handler received the entry recorded before it started")
	}
	for _, id := range ids[1:] {
		if seen[id] != 1 {
			t.Fatalf("the handler received %s %d times, want once", id, seen[id])
		}
	}
	if slices.Max(sizes) > 5 {
		t.Fatalf("batch sizes %v, want at most 5", sizes)
	}
	if n, _ := safesync.Get[int64](context.Background(), e.db, "SELECT COUNT(*) FROM applied"); n != int64(len(ids)) {
		t.Fatalf("applied rows = %d, want %d", n, len(ids))
	}
}

func TestHandleBatchDeadLettersThePoisonEntryAloneWithTheHandlersError(t *testing.T) {
	for _, tt := range []struct {
		name  string
		fail  func(msg safesync.Message[order]) error
		calls int64 // handler calls on the first delivery
	}{
		// 10 entries fail, the 9 others commit, the poison one fails alone.
		{"named with FailEntry", func(msg safesync.Message[order]) error {
			return safesync.FailEntry(msg, errors.New("no such account"))
		}, 3},
		// 0-9 fail; 0-4 fail; 0-1 commit; 2-4 fail; 2 commits; 3-4 fail;
		// 3 fails alone; 4 commits; 5-9 commit.
		{"found by halving", func(safesync.Message[order]) error { return errors.New("no such account") }, 9},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newPipelineEnv(t)
			var orders []order
			for i := range 10 {
				orders = append(orders, order{int64(i + 1), 1, 1})
			}
			orders[3].AccountID = 99 // the handler cannot apply this one
			ids := e.publish(t, orders...)
			var calls, firstDelivery atomic.Int64
			handler := func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
				calls.Add(1)
				if msgs[0].Deliveries == 1 {
					firstDelivery.Add(1)
				}
				if err := applyOrders(ctx, tx, msgs); err != nil {
					return err
				}
				for _, m := range msgs {
					if m.Value.AccountID == 99 {
						return tt.fail(m)
					}
				}
				return nil
			}
			m, reg := safesynctest.NewMetrics(t)
			p := safesync.Stream(safesync.JSON[order]()).HandleBatch(handler).
				AckAfter(safesync.Commit(e.db, safesync.WithMetrics(m), safesync.Label("batch"))).Once("applied").Batch(10)
			e.cfg.Count = 10
			e.run(t, p, func() bool {
				return len(safesynctest.DeadLetters(t, e.rdb, "orders:dead")) == 1 && e.pending(t) == 0
			})
			if got := e.balances(t); !slices.Equal(got, []int64{9, 0, 0}) {
				t.Fatalf("balances = %v, want [9 0 0]: the nine good entries applied once each", got)
			}
			d := safesynctest.DeadLetters(t, e.rdb, "orders:dead")[0]
			if d.OriginalID != ids[3] || d.Reason != safesync.DeadLetterMaxDeliveries || d.Failures != e.cfg.MaxDeliveries || d.Error != "no such account" {
				t.Fatalf("dead letter = %+v, want %s, reason %s after %d failures, with the handler's error text", d, ids[3], safesync.DeadLetterMaxDeliveries, e.cfg.MaxDeliveries)
			}
			if got := firstDelivery.Load(); got != tt.calls {
				t.Fatalf("the first delivery took %d handler calls, want %d", got, tt.calls)
			}
			// The poison entry's later deliveries each ran alone.
			if got := calls.Load(); got != tt.calls+e.cfg.MaxDeliveries-1 {
				t.Fatalf("%d handler calls in all, want %d", got, tt.calls+e.cfg.MaxDeliveries-1)
			}
			if n := safesynctest.MetricValue(t, reg, "coti_safesync_db_transactions_total", map[string]string{"label": "batch", "outcome": "commit"}); n < 1 {
				t.Fatalf("commits = %v", n)
			}
		})
	}
}

func TestHandleBatchPermanentEntryIsDeadLetteredAtOnce(t *testing.T) {
	e := newPipelineEnv(t)
	ids := e.publish(t, order{1, 1, 5}, order{2, 2, -1}, order{3, 3, 7})
	handler := func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		var errs []error
		for _, m := range msgs {
			if m.Value.Amount < 0 {
				errs = append(errs, safesync.FailEntry(m, safesync.Permanent(errors.New("negative amount"))))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		return applyOrders(ctx, tx, msgs)
	}
	p := safesync.Stream(safesync.JSON[order]()).HandleBatch(handler).AckAfter(safesync.Commit(e.db))
	e.cfg.ClaimIdle = time.Hour // no redelivery: at once means on the first delivery
	e.run(t, p, func() bool {
		return len(safesynctest.DeadLetters(t, e.rdb, "orders:dead")) == 1 && e.pending(t) == 0
	})
	if got := e.balances(t); !slices.Equal(got, []int64{5, 0, 7}) {
		t.Fatalf("balances = %v, want [5 0 7]", got)
	}
	d := safesynctest.DeadLetters(t, e.rdb, "orders:dead")[0]
	if d.OriginalID != ids[1] || d.Reason != safesync.DeadLetterHandler || d.Error != "negative amount" {
		t.Fatalf("dead letter = %+v, want %s, reason handler, text %q", d, ids[1], "negative amount")
	}
}

func TestHandleBatchRetryRerunsTheWholeBatch(t *testing.T) {
	e := newPipelineEnv(t)
	e.publish(t, order{1, 1, 5}, order{2, 2, 7}, order{3, 1, 1})
	var attempts atomic.Int64
	handler := func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		if err := applyOrders(ctx, tx, msgs); err != nil {
			return err
		}
		if attempts.Add(1) < 3 {
			return &safesync.ConflictError{Table: "accounts"}
		}
		return nil
	}
	p := safesync.Stream(safesync.JSON[order]()).HandleBatch(handler).AckAfter(safesync.Commit(e.db)).Once("applied").
		Retry(safesync.Constant(time.Millisecond).WithMetrics(e.metrics))
	e.cfg.Count = 10
	e.run(t, p, func() bool { return e.pending(t) == 0 && attempts.Load() >= 3 })
	if got := e.balances(t); !slices.Equal(got, []int64{6, 7, 0}) || attempts.Load() != 3 {
		t.Fatalf("balances = %v after %d attempts, want [6 7 0] after 3: one batch, retried whole", got, attempts.Load())
	}
	if r := safesynctest.MetricValue(t, e.reg, "coti_safesync_db_retries_total", map[string]string{"reason": "conflict"}); r != 2 {
		t.Fatalf("retries = %v, want 2", r)
	}
	if f := safesynctest.MetricValue(t, e.reg, "coti_safesync_queue_handler_failures_total", nil); f != 0 {
		t.Fatalf("failures = %v, want 0: a conflict Retry resolved is no failure", f)
	}
}

func TestHandleBatchConstructionRefusesMisuse(t *testing.T) {
	for name, build := range map[string]func(){
		"nil handler": func() { safesync.Stream(safesync.JSON[order]()).HandleBatch(nil) },
		"zero stage": func() {
			safesync.Stream(safesync.JSON[order]()).HandleBatch(applyOrders).AckAfter(safesync.CommitStage{})
		},
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
}

func TestHandleBatchPanicIsHalvedDownToItsEntryAndCounted(t *testing.T) {
	e := newPipelineEnv(t)
	var orders []order
	for i := range 6 {
		orders = append(orders, order{int64(i + 1), 2, 1})
	}
	orders[4].Amount = 0 // the handler panics on this one
	ids := e.publish(t, orders...)
	handler := func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		if err := applyOrders(ctx, tx, msgs); err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Value.Amount == 0 {
				panic("zero amount")
			}
		}
		return nil
	}
	p := safesync.Stream(safesync.JSON[order]()).HandleBatch(handler).AckAfter(safesync.Commit(e.db)).Batch(6)
	e.cfg.Count = 6
	e.cfg.ClaimIdle = time.Hour // one delivery: the entry stays pending
	e.run(t, p, func() bool {
		pending := safesynctest.Pending(t, e.rdb, e.cfg.Stream, e.cfg.Group)
		return len(pending) == 1 && safesynctest.MetricValue(t, e.reg, "coti_safesync_queue_handler_panics_total", nil) == 1
	})
	if got := e.balances(t); !slices.Equal(got, []int64{0, 5, 0}) {
		t.Fatalf("balances = %v, want [0 5 0]: the five others committed", got)
	}
	if pending := safesynctest.Pending(t, e.rdb, e.cfg.Stream, e.cfg.Group); pending[0].ID != ids[4] {
		t.Fatalf("pending = %+v, want only %s", pending, ids[4])
	}
}
