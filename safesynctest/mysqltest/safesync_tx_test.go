package mysqltest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

var errBusiness = errors.New("insufficient funds")

func TestWithTxCommitsWhenFnReturnsNil(t *testing.T) {
	db := embeddedDB(t)
	m, reg := safesynctest.NewMetrics(t)
	transfer := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int64, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - ? WHERE id = ?", 30, 1); err != nil {
			return 0, err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", 30, 2); err != nil {
			return 0, err
		}
		return safesync.Get[int64](ctx, tx, "SELECT balance FROM accounts WHERE id = ?", 2)
	}, safesync.WithMetrics(m), safesync.Label("transfer"))

	got, err := transfer(context.Background())
	if err != nil || got != 30 {
		t.Fatalf("transfer = %d, %v; want 30, nil", got, err)
	}
	if b1, b2 := balance(t, db, 1), balance(t, db, 2); b1 != 70 || b2 != 30 {
		t.Fatalf("balances after commit = %d, %d; want 70, 30", b1, b2)
	}
	if n := safesynctest.MetricValue(t, reg, "coti_safesync_db_transactions_total", map[string]string{"label": "transfer", "outcome": "commit"}); n != 1 {
		t.Fatalf("transactions_total{transfer,commit} = %v, want 1", n)
	}
}

func TestWithTxRollsBackWhenFnFails(t *testing.T) {
	db := embeddedDB(t)
	m, reg := safesynctest.NewMetrics(t)
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (struct{}, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - 500 WHERE id = 1"); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, errBusiness
	}, safesync.WithMetrics(m))(context.Background())
	if !errors.Is(err, errBusiness) {
		t.Fatalf("err = %v, want the fn's error", err)
	}
	if b := balance(t, db, 1); b != 100 {
		t.Fatalf("balance after rollback = %d, want 100", b)
	}
	if n := safesynctest.MetricValue(t, reg, "coti_safesync_db_transactions_total", map[string]string{"outcome": "rollback"}); n != 1 {
		t.Fatalf("transactions_total{rollback} = %v, want 1", n)
	}
}

func TestWithTxRollsBackAndRepanicsWhenFnPanics(t *testing.T) {
	db := embeddedDB(t)
	var ended []bool
	op := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		tx.AfterEnd(func(ctx context.Context, conn *sql.Conn, committed bool) error {
			ended = append(ended, committed)
			return nil
		})
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = 0 WHERE id = 1"); err != nil {
			return 0, err
		}
		panic("boom")
	})
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Fatalf("recovered %v, want the fn's panic value", p)
			}
		}()
		op(context.Background())
		t.Fatal("the panic did not propagate")
	}()
	if b := balance(t, db, 1); b != 100 {
		t.Fatalf("balance after panic = %d, want 100 (rolled back)", b)
	}
	if !slices.Equal(ended, []bool{false}) {
		t.Fatalf("end hooks saw %v, want one call with committed=false", ended)
	}
}

func TestWithTxRollsBackWhenCtxEndsWhileFnRuns(t *testing.T) {
	db := embeddedDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = 0 WHERE id = 1"); err != nil {
			return 0, err
		}
		cancel() // fn does not look at ctx again and returns nil
		return 1, nil
	})(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if b := balance(t, db, 1); b != 100 {
		t.Fatalf("balance = %d, want 100: a cancelled transaction must not commit", b)
	}
}

func TestWithTxRefusesAnAlreadyEndedCtxBeforeTouchingTheDatabase(t *testing.T) {
	db := embeddedDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		ran = true
		return 0, nil
	})(ctx)
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("err = %v, ran = %v; want context.Canceled and fn not run", err, ran)
	}
}

func TestWithTxInsideATransactionIsErrNestedTx(t *testing.T) {
	db := embeddedDB(t)
	inner := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		t.Error("the nested transaction ran")
		return 0, nil
	})
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = 1 WHERE id = 1"); err != nil {
			return 0, err
		}
		return inner(ctx)
	})(context.Background())
	if !errors.Is(err, safesync.ErrNestedTx) {
		t.Fatalf("err = %v, want ErrNestedTx", err)
	}
	if b := balance(t, db, 1); b != 100 {
		t.Fatalf("balance = %d, want 100: the outer transaction must roll back", b)
	}
}

func TestWithTxHooksRunInOrderOnTheConnectionAndOnlyCommitHooksNeedACommit(t *testing.T) {
	db := embeddedDB(t)
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("fn fails=%v", fail), func(t *testing.T) {
			var calls []string
			_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
				for _, name := range []string{"a", "b"} {
					tx.AfterEnd(func(ctx context.Context, conn *sql.Conn, committed bool) error {
						if err := conn.PingContext(ctx); err != nil {
							return err
						}
						calls = append(calls, fmt.Sprintf("end %s committed=%v", name, committed))
						return nil
					})
					tx.AfterCommit(func(ctx context.Context) error {
						calls = append(calls, "commit "+name)
						return nil
					})
				}
				if fail {
					return 0, errBusiness
				}
				return 0, nil
			})(context.Background())
			want := []string{"end b committed=true", "end a committed=true", "commit a", "commit b"}
			if fail {
				want = []string{"end b committed=false", "end a committed=false"}
			}
			if !slices.Equal(calls, want) {
				t.Fatalf("hook calls = %q, want %q (err %v)", calls, want, err)
			}
		})
	}
}

func TestWithTxAfterCommitFailureKeepsTheCommitAndSaysSo(t *testing.T) {
	db := embeddedDB(t)
	ackErr := errors.New("XACK failed")
	got, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		tx.AfterCommit(func(ctx context.Context) error { return ackErr })
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = 7 WHERE id = 1")
		return 42, err
	})(context.Background())
	if !errors.Is(err, safesync.ErrAfterCommit) || !errors.Is(err, ackErr) {
		t.Fatalf("err = %v, want ErrAfterCommit wrapping the hook's error", err)
	}
	if got != 42 {
		t.Fatalf("result = %d, want 42: the transaction committed", got)
	}
	if b := balance(t, db, 1); b != 7 {
		t.Fatalf("balance = %d, want 7 (committed)", b)
	}
}

func TestWithTxClosesTheConnectionWhenAnEndHookFails(t *testing.T) {
	db := embeddedDB(t)
	connID := func(hookErr error) (int64, error) {
		return safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int64, error) {
			tx.AfterEnd(func(context.Context, *sql.Conn, bool) error { return hookErr })
			return safesync.Get[int64](ctx, tx, "SELECT CONNECTION_ID()")
		})(context.Background())
	}
	first, err := connID(nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := connID(errors.New("release failed"))
	if again != first || !errors.Is(err, safesync.ErrAfterCommit) {
		t.Fatalf("second tx: connection %d, err %v; want the pooled connection %d and ErrAfterCommit", again, err, first)
	}
	third, err := connID(nil)
	if err != nil {
		t.Fatal(err)
	}
	if third == first {
		t.Fatalf("connection %d was reused after its end hook failed; it must be closed", third)
	}
}

// DBTX is the interface sqlc generates for its Queries type.
type DBTX interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
	PrepareContext(context.Context, string) (*sql.Stmt, error)
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	QueryRowContext(context.Context, string, ...any) *sql.Row
}

// queries is shaped like sqlc's generated code: New(db DBTX) *Queries.
type queries struct{ db DBTX }

func (q *queries) addBalance(ctx context.Context, id, delta int64) (int64, error) {
	res, err := q.db.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", delta, id)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (q *queries) getBalance(ctx context.Context, id int64) (int64, error) {
	var b int64
	err := q.db.QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = ?", id).Scan(&b)
	return b, err
}

func (q *queries) countAccounts(ctx context.Context) (int64, error) {
	stmt, err := q.db.PrepareContext(ctx, "SELECT COUNT(*) FROM accounts")
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	var n int64
	return n, stmt.QueryRowContext(ctx).Scan(&n)
}

func TestSqlcStyleQueriesRunInsideWithTx(t *testing.T) {
	db := embeddedDB(t)
	got, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int64, error) {
		q := &queries{db: tx}
		if n, err := q.addBalance(ctx, 2, 5); err != nil || n != 1 {
			return 0, fmt.Errorf("addBalance = %d, %v", n, err)
		}
		if n, err := q.countAccounts(ctx); err != nil || n != 2 {
			return 0, fmt.Errorf("countAccounts = %d, %v", n, err)
		}
		return q.getBalance(ctx, 2)
	})(context.Background())
	if err != nil || got != 5 {
		t.Fatalf("got %d, %v; want 5, nil", got, err)
	}
}

func TestWithTxPanicsOnNilArguments(t *testing.T) {
	db := embeddedDB(t)
	for name, build := range map[string]func(){
		"nil db": func() { safesync.WithTx[int](nil, func(context.Context, *safesync.Tx) (int, error) { return 0, nil }) },
		"nil fn": func() { safesync.WithTx[int](db, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "safesync: WithTx") {
					t.Fatalf("recovered %v, want a safesync panic", p)
				}
			}()
			build()
		})
	}
}

func TestWriteMetricsCountEveryStatementWithItsOwnStatus(t *testing.T) {
	db := embeddedDB(t)
	m, reg := safesynctest.NewMetrics(t)
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = ?", 1); err != nil {
			return 0, err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO accounts (id, balance) VALUES (?, ?)", 3, 0); err != nil {
			return 0, err
		}
		// A duplicate key fails; the statement still counts, as an error.
		if _, err := tx.ExecContext(ctx, "INSERT INTO accounts (id, balance) VALUES (?, ?)", 3, 0); err == nil {
			return 0, errors.New("duplicate insert succeeded")
		}
		// A table that does not exist is not a label value.
		_, _ = tx.ExecContext(ctx, "DELETE FROM no_such_table_x1 WHERE id = 1")
		// Reads are not writes.
		if _, err := safesync.Get[int64](ctx, tx, "SELECT balance FROM accounts WHERE id = 1"); err != nil {
			return 0, err
		}
		return 0, nil
	}, safesync.WithMetrics(m))(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"table": "accounts", "op_type": "update", "status": "success"}, 1},
		{map[string]string{"table": "accounts", "op_type": "insert", "status": "success"}, 1},
		{map[string]string{"table": "accounts", "op_type": "insert", "status": "error"}, 1},
		{map[string]string{"table": "other", "op_type": "delete", "status": "error"}, 1},
		{map[string]string{"table": "no_such_table_x1"}, 0},
		{map[string]string{}, 4},
	}
	for _, c := range checks {
		if got := safesynctest.MetricValue(t, reg, "coti_safesync_db_write_total", c.labels); got != c.want {
			t.Errorf("db_write_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if got := safesynctest.MetricValue(t, reg, "coti_safesync_db_write_latency_seconds", map[string]string{"table": "accounts"}); got != 3 {
		t.Errorf("db_write_latency_seconds{table=accounts} observed %v statements, want 3", got)
	}
}
