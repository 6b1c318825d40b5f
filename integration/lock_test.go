package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/safesync-go/safesync"
)

// otherConnectionGetsLock reports whether a connection outside db's pool
// can take name at once.
func otherConnectionGetsLock(t *testing.T, name string) bool {
	t.Helper()
	other := openMySQL(t, nil)
	conn, err := other.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var got sql.NullInt64
	if err := conn.QueryRowContext(context.Background(), "SELECT GET_LOCK(?, 0)", name).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got.Int64 == 1 {
		if _, err := conn.ExecContext(context.Background(), "DO RELEASE_LOCK(?)", name); err != nil {
			t.Fatal(err)
		}
	}
	return got.Int64 == 1
}

// Regression for the original's defect 1: its advisory lock was never
// released, and the connection went back to the pool still holding it.
func TestRegressionAdvisoryLockIsReleasedWhenTheTransactionEnds(t *testing.T) {
	db := openMySQL(t, nil)
	db.SetMaxOpenConns(1) // the pool keeps, and reuses, the very connection that held the lock
	table := itemsTable(t, db, 1)
	name := uniqueName(t, "lock")
	for _, outcome := range []string{"commit", "rollback", "panic"} {
		t.Run(outcome, func(t *testing.T) {
			op := safesync.WithTx(db, safesync.WithAdvisoryLock(name, time.Second, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
				if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id = 1"); err != nil {
					return err
				}
				switch outcome {
				case "rollback":
					return errors.New("boom")
				case "panic":
					panic("boom")
				}
				return nil
			})))
			func() {
				defer func() { _ = recover() }()
				_, _ = op(context.Background())
			}()
			if !otherConnectionGetsLock(t, name) {
				t.Fatalf("after %s, another connection could not take %q with timeout 0", outcome, name)
			}
		})
	}
}

// Regression for the original's defect 2, on the real server.
func TestRegressionUpdateVersionedOnCollidingColumnsAndTableOrder(t *testing.T) {
	db := openMySQL(t, nil)
	// The table is literally named order (a reserved word) for this test.
	if _, err := db.Exec("DROP TABLE IF EXISTS `order`"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE `order` (id BIGINT PRIMARY KEY, id_value BIGINT NOT NULL, version_value BIGINT NOT NULL, version BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE IF EXISTS `order`") })
	if _, err := db.Exec("INSERT INTO `order` VALUES (1, 2, 0, 0), (2, 1, 0, 0)"); err != nil {
		t.Fatal(err)
	}
	// id_value = 1 names row 2's column value and row 1's id: the original
	// bound both under one name and updated row 1.
	_, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		return safesync.UpdateVersioned(ctx, tx, "order", safesync.Key{"id": 2}, "version", 0, map[string]any{"version_value": 5, "id_value": 1})
	}))(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type orderRow struct {
		ID, IDValue, VersionValue, Version int64
	}
	rows, err := safesync.Select[orderRow](context.Background(), db, "SELECT id AS ID, id_value AS IDValue, version_value AS VersionValue, version AS Version FROM `order` ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	want := []orderRow{{1, 2, 0, 0}, {2, 1, 5, 1}}
	if len(rows) != 2 || rows[0] != want[0] || rows[1] != want[1] {
		t.Fatalf("rows = %+v, want %+v", rows, want)
	}
}

// Regression for the original's defect 3: any error whose text mentioned a
// duplicate entry was taken for a duplicate.
func TestRegressionOnlyError1062IsADuplicate(t *testing.T) {
	db := openMySQL(t, nil)
	table := createTable(t, db, "prof", "CREATE TABLE %s (user_id BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL) ENGINE=InnoDB")
	insert := func(query string, args ...any) (bool, error) {
		return safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (bool, error) {
			return safesync.InsertIdempotent(ctx, tx, query, args...)
		})(context.Background())
	}
	q := "INSERT INTO `" + table + "` (user_id, name) VALUES (?, ?)"
	if ok, err := insert(q, 1, "ada"); !ok || err != nil {
		t.Fatalf("first insert = %v, %v", ok, err)
	}
	if ok, err := insert(q, 1, "ada"); ok || err != nil {
		t.Fatalf("real duplicate = %v, %v; want false, nil", ok, err)
	}
	if ok, err := insert(q, 2, nil); ok || err == nil {
		t.Fatalf("NOT NULL violation = %v, %v; want an error", ok, err)
	}
	// An error whose message literally says "Duplicate entry", raised by a
	// trigger: its number is 1644, so it is an error, not a duplicate.
	trigger := uniqueName(t, "trg")
	if _, err := db.Exec("CREATE TRIGGER `" + trigger + "` BEFORE INSERT ON `" + table + "` FOR EACH ROW BEGIN IF NEW.name LIKE 'Duplicate%' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Duplicate entry ''9'' for key ''PRIMARY'''; END IF; END"); err != nil {
		t.Fatal(err)
	}
	ok, err := insert(q, 9, "Duplicate entry '9' for key 'PRIMARY'")
	var me *mysql.MySQLError
	if ok || !errors.As(err, &me) || me.Number == 1062 || !strings.Contains(me.Message, "Duplicate entry") {
		t.Fatalf("trigger error = %v, %v; want an error whose text says Duplicate entry, returned as an error", ok, err)
	}
}

func TestNoWaitFailsAtOnceAndSkipLockedSkips(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 2)
	holding, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := safesync.WithTx(db, safesync.WithRowLock(table, safesync.Key{"id": 1}, func(ctx context.Context, tx *safesync.Tx, _ item) (int, error) {
			close(holding)
			<-release
			return 0, nil
		}))(context.Background())
		done <- err
	}()
	<-holding
	defer func() {
		close(release)
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	lock := func(id int64, opt safesync.RowLockOption) (bool, error) {
		called := false
		_, err := safesync.WithTx(db, safesync.WithRowLock(table, safesync.Key{"id": id}, func(ctx context.Context, tx *safesync.Tx, _ item) (int, error) {
			called = true
			return 0, nil
		}, opt))(context.Background())
		return called, err
	}
	start := time.Now()
	called, err := lock(1, safesync.NoWait())
	if !errors.Is(err, safesync.ErrRowLocked) || called {
		t.Fatalf("NoWait on a held row: err = %v, called = %v; want ErrRowLocked", err, called)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("NoWait waited %v; it must fail at once (the lock wait timeout is far longer)", waited)
	}
	if called, err := lock(1, safesync.SkipLocked()); !errors.Is(err, safesync.ErrRowLocked) || called {
		t.Fatalf("SkipLocked on a held row: err = %v, called = %v; want ErrRowLocked (skipped) and fn not called", err, called)
	}
	if called, err := lock(2, safesync.SkipLocked()); err != nil || !called {
		t.Fatalf("SkipLocked on a free row: err = %v, called = %v", err, called)
	}
	if _, err := lock(3, safesync.SkipLocked()); !errors.Is(err, safesync.ErrNotFound) {
		t.Fatalf("SkipLocked on a missing row: err = %v, want ErrNotFound", err)
	}
	if _, err := lock(3, safesync.NoWait()); !errors.Is(err, safesync.ErrNotFound) {
		t.Fatalf("NoWait on a missing row: err = %v, want ErrNotFound", err)
	}
}

func TestAdvisoryLockTimeout(t *testing.T) {
	db := openMySQL(t, nil)
	name := uniqueName(t, "lock")
	holder, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(context.Background(), "DO GET_LOCK(?, 0)", name); err != nil {
		t.Fatal(err)
	}
	_, err = safesync.WithTx(db, safesync.WithAdvisoryLock(name, 200*time.Millisecond, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		t.Error("fn ran without the lock")
		return nil
	})))(context.Background())
	var lte *safesync.LockTimeoutError
	if !errors.As(err, &lte) || !errors.Is(err, safesync.ErrLockTimeout) || lte.Name != name || lte.Timeout != 200*time.Millisecond {
		t.Fatalf("err = %v, want *LockTimeoutError{%q, 200ms}", err, name)
	}
}

func TestKillingTheLockConnectionCancelsFnWithErrLockLost(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	name := uniqueName(t, "lock")
	connIDs := make(chan int64, 1)
	var fnSawDone atomic.Bool
	var killedAt time.Time
	result := make(chan error, 1)
	go func() {
		_, err := safesync.WithTx(db, safesync.WithAdvisoryLock(name, time.Second, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 99 WHERE id = 1"); err != nil {
				return err
			}
			id, err := safesync.Get[int64](ctx, tx, "SELECT CONNECTION_ID()")
			if err != nil {
				return err
			}
			connIDs <- id
			select {
			case <-ctx.Done():
				fnSawDone.Store(true)
				return ctx.Err()
			case <-time.After(10 * time.Second):
				return errors.New("fn's ctx was not cancelled")
			}
		})))(context.Background())
		result <- err
	}()
	id := <-connIDs
	killedAt = time.Now()
	if _, err := db.Exec(fmt.Sprintf("KILL %d", id)); err != nil {
		t.Fatal(err)
	}
	err := <-result
	elapsed := time.Since(killedAt)
	if !errors.Is(err, safesync.ErrLockLost) || !fnSawDone.Load() {
		t.Fatalf("err = %v (fn saw ctx done: %v); want ErrLockLost and a cancelled ctx", err, fnSawDone.Load())
	}
	if elapsed > time.Second {
		t.Fatalf("ErrLockLost came %v after the KILL, want within 1 s", elapsed)
	}
	if got := amountOf(t, db, table, 1); got != 0 {
		t.Fatalf("amount = %d, want 0: the transaction must roll back", got)
	}
	if !safesync.DefaultRetryable(err) {
		t.Fatal("a lock lost before commit should be retryable: the transaction rolled back")
	}
}

func TestDeadlockIsRetriedAndBothEffectsLandOnce(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 2)
	var bothHoldFirst sync.WaitGroup
	bothHoldFirst.Add(2)
	var deadlocks atomic.Int64
	policy := safesync.Constant(5 * time.Millisecond).WithMaxAttempts(20).WithMetrics(nil).
		WithOnRetry(func(e safesync.RetryEvent) {
			if e.Reason == safesync.ReasonDeadlock {
				deadlocks.Add(1)
			}
		})
	// transfer touches first then second; the two goroutines use opposite
	// orders and meet at a barrier on their first attempt, so InnoDB must
	// pick a victim.
	transfer := func(first, second int64) safesync.Func[struct{}] {
		var once sync.Once
		return safesync.Retry(policy, safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id = ?", first); err != nil {
				return err
			}
			once.Do(func() { bothHoldFirst.Done(); bothHoldFirst.Wait() })
			_, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id = ?", second)
			return err
		})))
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, order := range [][2]int64{{1, 2}, {2, 1}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = transfer(order[0], order[1])(context.Background())
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if deadlocks.Load() < 1 {
		t.Fatal("no deadlock happened; the test did not exercise the retry")
	}
	if a, b := amountOf(t, db, table, 1), amountOf(t, db, table, 2); a != 2 || b != 2 {
		t.Fatalf("amounts = %d, %d; want 2 and 2: each transaction applied exactly once", a, b)
	}
}

func TestConnectionKilledMidTransactionIsRetriedAsANewTransaction(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	attempts := 0
	var reasons []string
	policy := safesync.Constant(10 * time.Millisecond).WithMetrics(nil).
		WithOnRetry(func(e safesync.RetryEvent) { reasons = append(reasons, e.Reason) })
	_, err := safesync.Retry(policy, safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		attempts++
		if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id = 1"); err != nil {
			return err
		}
		if attempts == 1 {
			id, err := safesync.Get[int64](ctx, tx, "SELECT CONNECTION_ID()")
			if err != nil {
				return err
			}
			if _, err := db.ExecContext(ctx, fmt.Sprintf("KILL %d", id)); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET name = 'done' WHERE id = 1")
		return err
	})))(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || len(reasons) != 1 || reasons[0] != safesync.ReasonConnection {
		t.Fatalf("attempts = %d, retry reasons = %v; want 2 attempts, one connection retry", attempts, reasons)
	}
	if got := amountOf(t, db, table, 1); got != 1 {
		t.Fatalf("amount = %d, want 1: the killed attempt rolled back", got)
	}
}

// Regression (issue 11, item 8): MariaDB cuts advisory lock names at a NUL
// byte, so while one session held "p\x00a", WithAdvisoryLock("p\x00b")
// timed out on a lock it never asked for. Such names, and the others
// ValidateLockName lists, are refused before any SQL, whatever the server
// would do with them.
func TestRegressionLockNamesTheServerWouldAlterAreRefused(t *testing.T) {
	db := openMySQL(t, nil)
	ctx := context.Background()
	unique := uniqueName(t, "nul")
	prefix := "nul_" + unique[len(unique)-8:] // short: the names below must fit in 64 characters
	holder, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	var got sql.NullInt64
	if err := holder.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", prefix+"\x00a").Scan(&got); err != nil || got.Int64 != 1 {
		t.Fatalf("holder GET_LOCK = %v, %v", got, err)
	}
	defer func() { _, _ = holder.ExecContext(ctx, "DO RELEASE_ALL_LOCKS()") }()
	// What the server does with the prefix alone, for the record.
	shared := !otherConnectionGetsLock(t, prefix)
	t.Logf("server treats %q as the lock %q: %v", prefix+"\x00a", prefix, shared)

	for _, name := range []string{prefix + "\x00b", prefix + "\x00a", "Job:" + prefix, prefix + ":\xff", prefix + ":😀"} {
		start := time.Now()
		_, err := safesync.WithTx(db, safesync.WithAdvisoryLock(name, 2*time.Second, safesync.NoResult(func(context.Context, *safesync.Tx) error {
			t.Errorf("fn ran under %q", name)
			return nil
		})))(ctx)
		if !errors.Is(err, safesync.ErrInvalidLockName) || errors.Is(err, safesync.ErrLockTimeout) {
			t.Errorf("name %q: err = %v; want ErrInvalidLockName", name, err)
		}
		if waited := time.Since(start); waited > time.Second {
			t.Errorf("name %q: refused after %v; it must be refused before any SQL", name, waited)
		}
	}
}

// Regression (issue 11, item 10): WithRowLock and ReadVersioned ran
// SELECT *, so ALTER TABLE … ADD COLUMN made every running worker fail with
// ErrUnmappedColumn until it was redeployed. Two workers, one with a row
// lock and one with OCC under Retry, run while columns are added (one of
// them first, which moves every other column); not one call may fail, and
// every increment lands.
func TestAddingAColumnUnderRunningWorkersBreaksNothing(t *testing.T) {
	db := openMySQL(t, nil)
	table := createTable(t, db, "mig", counterDDL)
	if _, err := db.Exec("INSERT INTO `" + table + "` (id) VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	policy := safesync.Exponential(time.Millisecond, 20*time.Millisecond).WithMaxAttempts(1000).WithMetrics(nil)
	ops := map[string]safesync.Func[struct{}]{
		"row lock": safesync.WithTx(db, safesync.WithRowLock(table, safesync.Key{"id": 1}, func(ctx context.Context, tx *safesync.Tx, r counterRow) (struct{}, error) {
			// The version moves too, or the OCC worker's guarded write
			// would not see this one.
			_, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = ?, version = version + 1 WHERE id = 1", r.Amount+1)
			return struct{}{}, err
		})),
		"OCC": func(ctx context.Context) (struct{}, error) {
			_, err := safesync.WithTx(db, safesync.OCC(safesync.ReadVersioned[counterRow](table, safesync.Key{"id": 1}, "version"),
				func(r counterRow) (counterRow, error) { r.Amount++; return r, nil }))(ctx)
			return struct{}{}, err
		},
	}
	var done, afterAlter atomic.Int64
	var altered atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for name, op := range ops {
		op := safesync.Retry(policy, op)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := op(ctx); err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("%s: %w", name, err)
					}
					return
				}
				done.Add(1)
				if altered.Load() {
					afterAlter.Add(1)
				}
			}
		}()
	}
	waitFor := func(n int64) {
		for deadline := time.Now().Add(20 * time.Second); done.Load() < n && time.Now().Before(deadline) && len(errs) == 0; {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(50)
	for _, ddl := range []string{
		"ALTER TABLE `" + table + "` ADD COLUMN added_later VARCHAR(16) NULL",
		"ALTER TABLE `" + table + "` ADD COLUMN added_first BIGINT NOT NULL DEFAULT 7 FIRST",
	} {
		if _, err := db.Exec(ddl); err != nil {
			t.Fatal(err)
		}
		altered.Store(true)
		waitFor(done.Load() + 50)
	}
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if afterAlter.Load() < 50 {
		t.Fatalf("only %d calls ran after the first ALTER TABLE; the test did not exercise it", afterAlter.Load())
	}
	var amount int64
	if err := db.QueryRow("SELECT amount FROM `" + table + "` WHERE id = 1").Scan(&amount); err != nil || amount != done.Load() {
		t.Fatalf("amount = %d (%v) after %d increments", amount, err, done.Load())
	}

	// A field that is no column is named, with the way out.
	type withComputed struct {
		counterRow
		Display string
	}
	_, err := safesync.WithTx(db, safesync.WithRowLock(table, safesync.Key{"id": 1}, func(ctx context.Context, tx *safesync.Tx, r withComputed) (int, error) {
		return 0, nil
	}))(context.Background())
	if mysqlNumber(err) != 1054 || !strings.Contains(err.Error(), "Display") || !strings.Contains(err.Error(), `db:"-"`) {
		t.Fatalf("a field with no column: err = %v; want error 1054 naming Display and db:\"-\"", err)
	}
}

func mysqlNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// lockedWork runs holders transactions at once, each holding its own
// advisory lock while fn works for work (one statement before, one after),
// on a pool of the given size, and returns how long each WithTx took.
func lockedWork(t *testing.T, pool, holders int, work time.Duration) []time.Duration {
	t.Helper()
	db := openMySQL(t, nil)
	db.SetMaxOpenConns(pool)
	db.SetMaxIdleConns(pool)
	unique := uniqueName(t, "w")
	took := make([]time.Duration, holders)
	errs := make([]error, holders)
	var wg sync.WaitGroup
	for i := range holders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("pool:%s:%d", unique[len(unique)-8:], i)
			start := time.Now()
			_, errs[i] = safesync.WithTx(db, safesync.WithAdvisoryLock(name, 10*time.Second, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
				if _, err := tx.ExecContext(ctx, "DO 1"); err != nil {
					return err
				}
				select {
				case <-time.After(work):
				case <-ctx.Done():
					return ctx.Err()
				}
				_, err := tx.ExecContext(ctx, "DO 2")
				return err
			}), safesync.LockCheckInterval(100*time.Millisecond)))(context.Background())
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return took
}

// Regression (issue 11, item 9): the advisory lock's watcher borrowed a
// second pooled connection for each check and stop waited for it, so with
// as many lock holders as pooled connections each 500 ms transaction took
// 1.4–1.7 s (the watcher queued behind the holders for a connection they
// held), and with a pool of one 1.5–4 s. The watcher now checks only on an
// idle connection and never waits for one: a locked transaction costs its
// work plus a few round trips, whether the pool is full or not.
func TestAdvisoryLockCostsTheSameWhetherThePoolIsFullOrNot(t *testing.T) {
	const work = 500 * time.Millisecond
	// A loaded, shared machine adds scheduling delay; a watcher waiting for
	// a connection added at least the check interval plus the time until a
	// connection freed (about a second here).
	const allowed = work + 300*time.Millisecond
	check := func(name string, took []time.Duration, limit time.Duration) {
		t.Helper()
		slowest := slices.Max(took)
		t.Logf("%s: %v", name, took)
		if slowest > limit {
			t.Errorf("%s: slowest WithTx took %v, want at most %v", name, slowest, limit)
		}
	}
	check("pool 8, 4 holders (room for the watcher)", lockedWork(t, 8, 4, work), allowed)
	check("pool 4, 4 holders (the pool is full)", lockedWork(t, 4, 4, work), allowed)
	check("pool 1, 1 holder", lockedWork(t, 1, 1, work), allowed)
	// Two holders on one connection run one after the other: the second
	// waits for the first's connection, not for a watcher.
	check("pool 1, 2 holders", lockedWork(t, 1, 2, work), 2*work+300*time.Millisecond)
}

// When the pool has no idle connection the watcher skips its checks; a
// lock lost meanwhile is still found before COMMIT by the confirmation on
// the transaction's own connection, and the transaction rolls back with a
// retryable ErrLockLost.
func TestAdvisoryLockLostWhileThePoolIsFullIsFoundBeforeCommit(t *testing.T) {
	db := openMySQL(t, nil)
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	killer := openMySQL(t, nil)
	table := itemsTable(t, killer, 1)
	name := "full:" + uniqueName(t, "l")[len(uniqueName(t, "l"))-8:]
	start := time.Now()
	_, err := safesync.WithTx(db, safesync.WithAdvisoryLock(name, time.Second, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = 99 WHERE id = 1"); err != nil {
			return err
		}
		id, err := safesync.Get[int64](ctx, tx, "SELECT CONNECTION_ID()")
		if err != nil {
			return err
		}
		if _, err := killer.ExecContext(ctx, fmt.Sprintf("KILL %d", id)); err != nil {
			return err
		}
		time.Sleep(300 * time.Millisecond) // work that runs no statement
		return nil
	}), safesync.LockCheckInterval(50*time.Millisecond)))(context.Background())
	if !errors.Is(err, safesync.ErrLockLost) || errors.Is(err, safesync.ErrCommitUnknown) || !safesync.DefaultRetryable(err) {
		t.Fatalf("err = %v; want a retryable ErrLockLost before COMMIT", err)
	}
	if got := amountOf(t, killer, table, 1); got != 0 {
		t.Fatalf("amount = %d, want 0: the transaction must roll back", got)
	}
	if took := time.Since(start); took > 800*time.Millisecond {
		t.Fatalf("WithTx took %v for 300 ms of work; nothing may wait for a pooled connection", took)
	}
}

// Regression (issue 11, item 11): a GET_LOCK timeout was not retried by
// default although an InnoDB lock wait timeout (1205) was. Another session
// holds the lock for 300 ms; a transaction whose GET_LOCK waits 100 ms
// times out, is retried as a new transaction, and gets the lock.
func TestAdvisoryLockTimeoutIsRetriedByDefault(t *testing.T) {
	db := openMySQL(t, nil)
	unique := uniqueName(t, "lt")
	name := "retry:" + unique[len(unique)-8:]
	holder, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(context.Background(), "DO GET_LOCK(?, 0)", name); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(300*time.Millisecond, func() { _, _ = holder.ExecContext(context.Background(), "DO RELEASE_LOCK(?)", name) })
	var reasons []string
	policy := safesync.Constant(20 * time.Millisecond).WithMetrics(nil).
		WithOnRetry(func(e safesync.RetryEvent) { reasons = append(reasons, e.Reason) })
	ran := false
	_, err = safesync.Retry(policy, safesync.WithTx(db, safesync.WithAdvisoryLock(name, 100*time.Millisecond, safesync.NoResult(func(context.Context, *safesync.Tx) error {
		ran = true
		return nil
	}))))(context.Background())
	if err != nil || !ran || len(reasons) == 0 || reasons[0] != safesync.ReasonLockWait {
		t.Fatalf("err = %v, fn ran = %v, retries %v; want success after lock_wait retries", err, ran, reasons)
	}
}
