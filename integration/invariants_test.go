package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/safesync-go/safesync"
)

// Invariant tests: P goroutines spread over several OS processes each run O
// operations on one row with one strategy; the final value must be exactly
// P·O. A control runs the same read-modify-write with no lock and must lose
// updates, which shows these tests can fail.

const counterDDL = "CREATE TABLE %s (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL DEFAULT 0, version BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB"

type counterRow struct {
	ID      int64 `db:"id"`
	Amount  int64 `db:"amount"`
	Version int64 `db:"version"`
}

// contendArgs is what each worker process is told.
type contendArgs struct {
	Strategy   string
	Table      string
	Goroutines int
	Ops        int
	Think      time.Duration // pause between read and write, the same for every strategy
}

// contendResult is what each worker process reports.
type contendResult struct {
	Ops      int
	Inserted int
	Retries  int
}

func init() { workers["contend"] = contendWorker }

// strategy returns the operation for one increment of row 1.
func strategy(db *sql.DB, a contendArgs, retries *atomic.Int64, inserted *atomic.Int64) (func(ctx context.Context) error, error) {
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		return nil, err
	}
	tbl := "`" + a.Table + "`"
	key := safesync.Key{"id": 1}
	think := func() { time.Sleep(a.Think) }
	readModifyWrite := func(ctx context.Context, tx *safesync.Tx) error {
		cur, err := safesync.Get[int64](ctx, tx, "SELECT amount FROM "+tbl+" WHERE id = 1")
		if err != nil {
			return err
		}
		think()
		_, err = tx.ExecContext(ctx, "UPDATE "+tbl+" SET amount = ? WHERE id = 1", cur+1)
		return err
	}
	rowLocked := safesync.WithRowLock(a.Table, key, func(ctx context.Context, tx *safesync.Tx, row counterRow) (struct{}, error) {
		think()
		_, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET amount = ? WHERE id = 1", row.Amount+1)
		return struct{}{}, err
	})
	lockName := "contend:" + a.Table
	var op safesync.TxFunc[struct{}]
	switch a.Strategy {
	case "atomic":
		op = safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			_, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET amount = amount + 1 WHERE id = 1")
			return err
		})
	case "none":
		op = safesync.NoResult(readModifyWrite)
	case "rowlock":
		op = rowLocked
	case "advisory":
		op = safesync.WithAdvisoryLock(lockName, 30*time.Second, safesync.NoResult(readModifyWrite))
	case "advisory+rowlock":
		op = safesync.WithAdvisoryLock(lockName, 30*time.Second, rowLocked)
	case "occ":
		read := safesync.ReadVersioned[counterRow](a.Table, key, "version")
		op = func(ctx context.Context, tx *safesync.Tx) (struct{}, error) {
			_, err := safesync.OCC(read, func(r counterRow) (counterRow, error) {
				think()
				r.Amount++
				return r, nil
			})(ctx, tx)
			return struct{}{}, err
		}
	case "insert":
		op = safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			ok, err := safesync.InsertIdempotent(ctx, tx, "INSERT INTO "+tbl+" (id, amount) VALUES (?, ?)", 7, 1)
			if ok {
				inserted.Add(1)
			}
			return err
		})
	default:
		return nil, fmt.Errorf("unknown strategy %q", a.Strategy)
	}
	policy := safesync.Exponential(time.Millisecond, 50*time.Millisecond).WithMaxAttempts(10000).
		WithMetrics(m).WithOnRetry(func(safesync.RetryEvent) { retries.Add(1) })
	job := safesync.Retry(policy, safesync.WithTx(db, op, safesync.WithMetrics(m)))
	return func(ctx context.Context) error { _, err := job(ctx); return err }, nil
}

func contendWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a contendArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	db, err := sql.Open("mysql", os.Getenv(envMySQLDSN))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(a.Goroutines + 4)
	db.SetMaxIdleConns(a.Goroutines + 4)
	var retries, inserted atomic.Int64
	run, err := strategy(db, a, &retries, &inserted)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, a.Goroutines)
	var ops atomic.Int64
	for range a.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range a.Ops {
				if err := run(ctx); err != nil {
					errs <- err
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		return nil, err
	}
	return contendResult{Ops: int(ops.Load()), Inserted: int(inserted.Load()), Retries: int(retries.Load())}, nil
}

func collect(errs <-chan error) []error {
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

// contend runs the strategy in processes×goroutines goroutines, ops each,
// on a fresh counter table with row 1 at 0, and returns the summed worker
// results and the table.
func contend(t *testing.T, db *sql.DB, strategy string, processes, goroutines, ops int) (contendResult, string) {
	t.Helper()
	table := createTable(t, db, "cnt", counterDDL)
	if strategy != "insert" {
		if _, err := db.Exec("INSERT INTO `" + table + "` (id) VALUES (1)"); err != nil {
			t.Fatal(err)
		}
	}
	args := contendArgs{Strategy: strategy, Table: table, Goroutines: goroutines, Ops: ops, Think: 500 * time.Microsecond}
	procs := make([]*workerProc, processes)
	for i := range procs {
		procs[i] = startWorker(t, "contend", args)
	}
	var total contendResult
	for _, p := range procs {
		var r contendResult
		p.wait(t, 3*time.Minute, &r)
		total.Ops += r.Ops
		total.Inserted += r.Inserted
		total.Retries += r.Retries
	}
	return total, table
}

const (
	invProcesses  = 2
	invGoroutines = 4
	invOps        = 50
	invTotal      = invProcesses * invGoroutines * invOps
)

func TestInvariantAtomicIncrementsLoseNothing(t *testing.T) {
	db := openMySQL(t, nil)
	res, table := contend(t, db, "atomic", invProcesses, invGoroutines, invOps)
	if got := amountOf(t, db, table, 1); got != invTotal || res.Ops != invTotal {
		t.Fatalf("value = %d after %d ops, want %d", got, res.Ops, invTotal)
	}
}

func TestInvariantIdempotentInsertInsertsExactlyOnce(t *testing.T) {
	db := openMySQL(t, nil)
	res, table := contend(t, db, "insert", invProcesses, invGoroutines, 5)
	if n := countRows(t, db, table); n != 1 {
		t.Fatalf("rows = %d, want exactly 1", n)
	}
	if res.Inserted != 1 {
		t.Fatalf("%d callers saw inserted=true, want exactly 1 (of %d calls)", res.Inserted, res.Ops)
	}
}

func TestInvariantRowLockLosesNoUpdate(t *testing.T) {
	db := openMySQL(t, nil)
	res, table := contend(t, db, "rowlock", invProcesses, invGoroutines, invOps)
	if got := amountOf(t, db, table, 1); got != invTotal {
		t.Fatalf("value = %d after %d ops, want %d", got, res.Ops, invTotal)
	}
}

func TestInvariantAdvisoryLockLosesNoUpdate(t *testing.T) {
	db := openMySQL(t, nil)
	res, table := contend(t, db, "advisory", invProcesses, invGoroutines, invOps)
	if got := amountOf(t, db, table, 1); got != invTotal {
		t.Fatalf("value = %d after %d ops, want %d", got, res.Ops, invTotal)
	}
}

func TestInvariantAdvisoryAndRowLockLoseNoUpdate(t *testing.T) {
	db := openMySQL(t, nil)
	res, table := contend(t, db, "advisory+rowlock", invProcesses, invGoroutines, invOps)
	if got := amountOf(t, db, table, 1); got != invTotal {
		t.Fatalf("value = %d after %d ops, want %d", got, res.Ops, invTotal)
	}
}

func TestInvariantOCCWithRetryLosesNoUpdate(t *testing.T) {
	db := openMySQL(t, nil)
	res, table := contend(t, db, "occ", invProcesses, invGoroutines, invOps)
	row, err := safesync.Get[counterRow](context.Background(), db, "SELECT * FROM `"+table+"` WHERE id = 1")
	if err != nil {
		t.Fatal(err)
	}
	if row.Amount != invTotal || row.Version != invTotal {
		t.Fatalf("value = %d, version = %d; want both %d", row.Amount, row.Version, invTotal)
	}
	t.Logf("OCC: %d increments over %d processes needed %d retries (%.2f per op)", invTotal, invProcesses, res.Retries, float64(res.Retries)/invTotal)
	if res.Retries == 0 {
		t.Fatal("no conflict was retried: the test did not contend")
	}
}

func TestControlUnlockedReadModifyWriteLosesUpdates(t *testing.T) {
	db := openMySQL(t, nil)
	const attempts = 5
	for i := 1; i <= attempts; i++ {
		res, table := contend(t, db, "none", invProcesses, invGoroutines, invOps)
		got := amountOf(t, db, table, 1)
		t.Logf("attempt %d: value %d after %d ops (%d lost)", i, got, res.Ops, invTotal-got)
		if got < invTotal {
			return // updates were lost: the invariant tests above can fail
		}
	}
	t.Fatalf("the unlocked read-modify-write lost no update in %d attempts; the invariant tests prove nothing", attempts)
}
