package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/safesync-go/safesync"
)

const itemsDDL = "CREATE TABLE %s (id BIGINT PRIMARY KEY, name VARCHAR(200) NULL, amount BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB"

type item struct {
	ID     int64          `db:"id"`
	Name   sql.NullString `db:"name"`
	Amount int64          `db:"amount"`
}

// itemsTable creates a table of items 1..n with amount 0.
func itemsTable(t *testing.T, db *sql.DB, n int) string {
	t.Helper()
	table := createTable(t, db, "items", itemsDDL)
	for i := 1; i <= n; i++ {
		if _, err := db.Exec("INSERT INTO `"+table+"` (id, name) VALUES (?, ?)", i, fmt.Sprintf("item-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	return table
}

func amountOf(t testing.TB, db *sql.DB, table string, id int64) int64 {
	t.Helper()
	v, err := safesync.Get[int64](context.Background(), db, "SELECT amount FROM `"+table+"` WHERE id = ?", id)
	if err != nil {
		t.Fatalf("amount of %d: %v", id, err)
	}
	return v
}

func countRows(t testing.TB, db *sql.DB, table string) int64 {
	t.Helper()
	n, err := safesync.Get[int64](context.Background(), db, "SELECT COUNT(*) FROM `"+table+"`")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSessionCommitsOnSuccess(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		_, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 5 WHERE id = 1")
		return 0, err
	})(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := amountOf(t, db, table, 1); got != 5 {
		t.Fatalf("amount = %d, want 5", got)
	}
}

func TestSessionRollsBackOnError(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	boom := errors.New("boom")
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 5 WHERE id = 1"); err != nil {
			return 0, err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO `"+table+"` (id) VALUES (2)"); err != nil {
			return 0, err
		}
		return 0, boom
	})(context.Background())
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if got, n := amountOf(t, db, table, 1), countRows(t, db, table); got != 0 || n != 1 {
		t.Fatalf("after rollback amount = %d and rows = %d, want 0 and 1", got, n)
	}
}

func TestSessionRollsBackOnPanic(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Fatalf("recovered %v, want boom", p)
			}
		}()
		_, _ = safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 5 WHERE id = 1"); err != nil {
				return 0, err
			}
			panic("boom")
		})(context.Background())
	}()
	if got := amountOf(t, db, table, 1); got != 0 {
		t.Fatalf("amount = %d, want 0 (rolled back)", got)
	}
}

func TestSessionReportsRowCountsOfUpdateAndInsert(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 3)
	type counts struct{ updated, none, inserted int64 }
	got, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (counts, error) {
		var c counts
		res, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id <= ?", 2)
		if err != nil {
			return c, err
		}
		c.updated, _ = res.RowsAffected()
		res, err = tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 1 WHERE id = ?", 999)
		if err != nil {
			return c, err
		}
		c.none, _ = res.RowsAffected()
		res, err = tx.ExecContext(ctx, "INSERT INTO `"+table+"` (id) VALUES (?), (?), (?)", 10, 11, 12)
		if err != nil {
			return c, err
		}
		c.inserted, _ = res.RowsAffected()
		return c, nil
	})(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := (counts{updated: 2, none: 0, inserted: 3}); got != want {
		t.Fatalf("row counts = %+v, want %+v", got, want)
	}
}

func TestSessionBindsParametersNeverInterpolates(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 0)
	hostile := "x'); DROP TABLE `" + table + "`; -- `"
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		_, err := tx.ExecContext(ctx, "INSERT INTO `"+table+"` (id, name) VALUES (?, ?)", 1, hostile)
		return 0, err
	})(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := safesync.Get[item](context.Background(), db, "SELECT id, name, amount FROM `"+table+"` WHERE name = ?", hostile)
	if err != nil || got.Name.String != hostile {
		t.Fatalf("stored name = %q, %v; want the hostile text stored verbatim", got.Name.String, err)
	}
}

func TestSessionSingleRowReads(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 2)
	ctx := context.Background()
	one, err := safesync.Get[item](ctx, db, "SELECT * FROM `"+table+"` WHERE id = ?", 2)
	if err != nil || one.ID != 2 || one.Name.String != "item-2" {
		t.Fatalf("one row = %+v, %v", one, err)
	}
	if _, err := safesync.Get[item](ctx, db, "SELECT * FROM `"+table+"` WHERE id = ?", 3); !errors.Is(err, sql.ErrNoRows) {
		t.Fatalf("no row: err = %v, want sql.ErrNoRows", err)
	}
	if _, err := safesync.Get[item](ctx, db, "SELECT * FROM `"+table+"`"); !errors.Is(err, safesync.ErrTooManyRows) {
		t.Fatalf("two rows: err = %v, want ErrTooManyRows", err)
	}
}

func TestSessionAllRowsReads(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 3)
	ctx := context.Background()
	none, err := safesync.Select[item](ctx, db, "SELECT * FROM `"+table+"` WHERE id > ?", 10)
	if err != nil || len(none) != 0 {
		t.Fatalf("none = %v, %v", none, err)
	}
	some, err := safesync.Select[item](ctx, db, "SELECT * FROM `"+table+"` WHERE id >= ? ORDER BY id", 2)
	if err != nil || len(some) != 2 || some[0].ID != 2 || some[1].ID != 3 {
		t.Fatalf("some = %+v, %v", some, err)
	}
}

func TestSessionScalarAndNullScalar(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 2)
	ctx := context.Background()
	if _, err := db.Exec("UPDATE `" + table + "` SET name = NULL WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	n, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM `"+table+"`")
	if err != nil || n != 2 {
		t.Fatalf("COUNT = %d, %v; want 2", n, err)
	}
	name, err := safesync.Get[*string](ctx, db, "SELECT name FROM `"+table+"` WHERE id = 2")
	if err != nil || name != nil {
		t.Fatalf("NULL scalar = %v, %v; want nil", name, err)
	}
	max, err := safesync.Get[sql.NullInt64](ctx, db, "SELECT MAX(amount) FROM `"+table+"` WHERE id > 100")
	if err != nil || max.Valid {
		t.Fatalf("MAX over no rows = %+v, %v; want NULL", max, err)
	}
}

// lockFree reports whether row id can be locked right now without waiting.
func lockFree(db *sql.DB, table string, id int64) error {
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (item, error) {
		return safesync.Get[item](ctx, tx, "SELECT * FROM `"+table+"` WHERE id = ? FOR UPDATE NOWAIT", id)
	})(context.Background())
	return err
}

func TestSessionCtxCancelledMidTransactionLeavesNothingBehind(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)

	t.Run("cancelled between statements", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, "INSERT INTO `"+table+"` (id) VALUES (100)"); err != nil {
				return 0, err
			}
			if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 9 WHERE id = 1"); err != nil {
				return 0, err
			}
			cancel()
			<-ctx.Done()
			return 0, ctx.Err()
		})(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if n, a := countRows(t, db, table), amountOf(t, db, table, 1); n != 1 || a != 0 {
			t.Fatalf("rows = %d, amount = %d; want 1 and 0", n, a)
		}
		// The rollback ran on the live connection: the row lock is gone now.
		if err := lockFree(db, table, 1); err != nil {
			t.Fatalf("row 1 still locked after the cancelled transaction: %v", err)
		}
	})

	t.Run("cancelled during a statement", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 9 WHERE id = 1"); err != nil {
				return 0, err
			}
			_, err := tx.ExecContext(ctx, "SELECT SLEEP(2)")
			return 0, err
		})(ctx)
		if elapsed := time.Since(start); elapsed > 1500*time.Millisecond {
			t.Fatalf("WithTx returned after %v; cancellation must not wait for the statement", elapsed)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		if a := amountOf(t, db, table, 1); a != 0 {
			t.Fatalf("amount = %d, want 0: the update must not be visible", a)
		}
		// The driver closed the connection; the server ends that session,
		// and rolls it back, once its running statement returns.
		deadline := time.Now().Add(10 * time.Second)
		for lockFree(db, table, 1) != nil {
			if time.Now().After(deadline) {
				t.Fatal("row 1 still locked 10 s after the cancelled transaction")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if a := amountOf(t, db, table, 1); a != 0 {
			t.Fatalf("amount = %d after the session ended, want 0", a)
		}
	})
}

func TestCommitWhoseReplyIsLostIsReportedAsUnknown(t *testing.T) {
	direct := openMySQL(t, nil)
	table := itemsTable(t, direct, 1)
	cfg, err := mysql.ParseDSN(mysqlDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := startMySQLProxy(t, cfg.Addr)
	viaProxy := openMySQL(t, func(c *mysql.Config) { c.Addr = proxy.addr() })

	_, err = safesync.WithTx(viaProxy, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 42 WHERE id = 1"); err != nil {
			return 0, err
		}
		proxy.loseReplyTo(isQuery("COMMIT"))
		return 0, nil
	})(context.Background())
	var unknown *safesync.CommitUnknownError
	if !errors.As(err, &unknown) || !errors.Is(err, safesync.ErrCommitUnknown) {
		t.Fatalf("err = %v, want *CommitUnknownError", err)
	}
	if proxy.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d replies, want 1", proxy.cuts.Load())
	}
	// This is why an unknown outcome is never retried blindly: the server
	// did commit.
	if got := amountOf(t, direct, table, 1); got != 42 {
		t.Fatalf("amount = %d, want 42: the server committed although the client never heard", got)
	}
	if safesync.DefaultRetryable(err) {
		t.Fatal("the default classifier would retry an unknown commit")
	}
}

func TestIsolationOptionChangesWhatTheTransactionSees(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	readTwice := func(level sql.IsolationLevel) (first, second int64, err error) {
		if _, err := db.Exec("UPDATE `" + table + "` SET amount = 1 WHERE id = 1"); err != nil {
			return 0, 0, err
		}
		_, err = safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
			var err error
			if first, err = safesync.Get[int64](ctx, tx, "SELECT amount FROM `"+table+"` WHERE id = 1"); err != nil {
				return 0, err
			}
			if _, err := db.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 2 WHERE id = 1"); err != nil {
				return 0, err
			}
			second, err = safesync.Get[int64](ctx, tx, "SELECT amount FROM `"+table+"` WHERE id = 1")
			return 0, err
		}, safesync.Isolation(level))(context.Background())
		return first, second, err
	}
	if a, b, err := readTwice(sql.LevelRepeatableRead); err != nil || a != 1 || b != 1 {
		t.Fatalf("REPEATABLE READ saw %d then %d (%v), want 1 then 1", a, b, err)
	}
	if a, b, err := readTwice(sql.LevelReadCommitted); err != nil || a != 1 || b != 2 {
		t.Fatalf("READ COMMITTED saw %d then %d (%v), want 1 then 2", a, b, err)
	}
}

func TestReadOnlyOptionRefusesWrites(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		_, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 3 WHERE id = 1")
		return 0, err
	}, safesync.ReadOnly())(context.Background())
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1792 {
		t.Fatalf("err = %v, want MySQL error 1792 (read-only transaction)", err)
	}
	if got := amountOf(t, db, table, 1); got != 0 {
		t.Fatalf("amount = %d, want 0", got)
	}
}

func TestIndependentTransactionIsExplicitAndSurvivesTheOuterRollback(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 2)
	audit := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		_, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 1 WHERE id = 2")
		return 0, err
	}, safesync.Independent())
	boom := errors.New("boom")
	_, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 1 WHERE id = 1"); err != nil {
			return 0, err
		}
		if _, err := audit(ctx); err != nil {
			return 0, err
		}
		return 0, boom
	})(context.Background())
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if a1, a2 := amountOf(t, db, table, 1), amountOf(t, db, table, 2); a1 != 0 || a2 != 1 {
		t.Fatalf("amounts = %d, %d; want 0 (outer rolled back) and 1 (independent committed)", a1, a2)
	}
}

func TestWriteLatencyIsTheStatementsOwnNotTheTransactions(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	reg := prometheus.NewRegistry()
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	_, err = safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 1 WHERE id = 1"); err != nil {
			return 0, err
		}
		_, err := tx.ExecContext(ctx, "SELECT SLEEP(0.3)")
		return 0, err
	}, safesync.WithMetrics(m), safesync.Label("slow"))(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	write := histogramSum(t, reg, "coti_safesync_db_write_latency_seconds")
	txn := histogramSum(t, reg, "coti_safesync_db_transaction_latency_seconds")
	if write <= 0 || write >= 0.2 {
		t.Fatalf("write latency sum = %.3fs, want the UPDATE alone (well under the 0.3 s sleep)", write)
	}
	if txn < 0.3 {
		t.Fatalf("transaction latency = %.3fs, want at least the 0.3 s sleep", txn)
	}
}

func histogramSum(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return sum
}
