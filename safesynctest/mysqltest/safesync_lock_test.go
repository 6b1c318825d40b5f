package mysqltest_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

type acctRow struct {
	ID      int64   `db:"id"`
	Balance int64   `db:"balance"`
	Note    *string `db:"note"`
}

func TestWithRowLockGivesFnTheLockedRow(t *testing.T) {
	db := embeddedDB(t)
	m, reg := safesynctest.NewMetrics(t)
	got, err := safesync.WithTx(db, safesync.WithRowLock("accounts", safesync.Key{"id": 1},
		func(ctx context.Context, tx *safesync.Tx, row acctRow) (int64, error) {
			_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = ? WHERE id = ?", row.Balance+1, row.ID)
			return row.Balance + 1, err
		}), safesync.WithMetrics(m))(context.Background())
	if err != nil || got != 101 || balance(t, db, 1) != 101 {
		t.Fatalf("WithRowLock = %d, %v; balance %d; want 101", got, err, balance(t, db, 1))
	}
	if n := safesynctest.MetricValue(t, reg, "coti_safesync_db_lock_acquire_latency_seconds", map[string]string{"strategy": "row"}); n != 1 {
		t.Fatalf("lock_acquire_latency_seconds{strategy=row} count = %v, want 1", n)
	}
}

func TestWithRowLockOfAMissingRowIsErrNotFound(t *testing.T) {
	db := embeddedDB(t)
	called := false
	_, err := safesync.WithTx(db, safesync.WithRowLock[acctRow]("accounts", safesync.Key{"id": 99},
		func(ctx context.Context, tx *safesync.Tx, row acctRow) (int, error) {
			called = true
			return 0, nil
		}))(context.Background())
	if !errors.Is(err, safesync.ErrNotFound) || called {
		t.Fatalf("err = %v, fn called = %v; want ErrNotFound and fn not called", err, called)
	}
	if want := "safesync: row not found: accounts id=99"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// The TxFuncs below are called with a nil *Tx: any SQL would panic, so
// returning an error proves it was refused before any SQL ran.
func TestLockInputsAreRefusedBeforeAnySQL(t *testing.T) {
	noop := func(ctx context.Context, tx *safesync.Tx, row acctRow) (int, error) { return 0, nil }
	noopTx := func(ctx context.Context, tx *safesync.Tx) (int, error) { return 0, nil }
	tests := []struct {
		name string
		fn   safesync.TxFunc[int]
		want error
	}{
		{"an empty key", safesync.WithRowLock("accounts", safesync.Key{}, noop), safesync.ErrEmptyKey},
		{"a nil key", safesync.WithRowLock("accounts", nil, noop), safesync.ErrEmptyKey},
		{"a table with a quote", safesync.WithRowLock("acc'ounts", safesync.Key{"id": 1}, noop), safesync.ErrInvalidIdentifier},
		{"a table with a backtick", safesync.WithRowLock("acc`ounts", safesync.Key{"id": 1}, noop), safesync.ErrInvalidIdentifier},
		{"a table with a space", safesync.WithRowLock("my accounts", safesync.Key{"id": 1}, noop), safesync.ErrInvalidIdentifier},
		{"a table with a semicolon", safesync.WithRowLock("accounts;DROP TABLE x", safesync.Key{"id": 1}, noop), safesync.ErrInvalidIdentifier},
		{"a key column over 64 characters", safesync.WithRowLock("accounts", safesync.Key{strings.Repeat("c", 65): 1}, noop), safesync.ErrInvalidIdentifier},
		{"a key column with a quote", safesync.WithRowLock("accounts", safesync.Key{`i"d`: 1}, noop), safesync.ErrInvalidIdentifier},
		{"an advisory lock name over 64 characters", safesync.WithAdvisoryLock(strings.Repeat("n", 65), time.Second, noopTx), safesync.ErrInvalidLockName},
		{"an empty advisory lock name", safesync.WithAdvisoryLock("", time.Second, noopTx), safesync.ErrInvalidLockName},
		{"an advisory lock name with a NUL byte", safesync.WithAdvisoryLock("job\x00a", time.Second, noopTx), safesync.ErrInvalidLockName},
		{"an advisory lock name with an upper-case letter", safesync.WithAdvisoryLock("Job", time.Second, noopTx), safesync.ErrInvalidLockName},
		{"a negative advisory lock timeout", safesync.WithAdvisoryLock("job", -time.Second, noopTx), nil},
		{"a non-positive lock check interval", safesync.WithAdvisoryLock("job", time.Second, noopTx, safesync.LockCheckInterval(0)), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.fn(context.Background(), nil)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "safesync:") {
				t.Fatalf("err %q does not name the package", err)
			}
		})
	}
	if _, err := safesync.WithRowLock("accounts", safesync.Key{"id": nil}, noop)(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "nil") {
		t.Fatalf("a nil key value: err = %v, want an error about NULL", err)
	}
}

func TestWithAdvisoryLockReleasesItWhenTheTransactionEnds(t *testing.T) {
	db := embeddedDB(t)
	for _, fail := range []bool{false, true} {
		_, err := safesync.WithTx(db, safesync.WithAdvisoryLock("acct:1", time.Second,
			func(ctx context.Context, tx *safesync.Tx) (int64, error) {
				held, err := safesync.Get[int64](ctx, tx, "SELECT IS_FREE_LOCK('acct:1')")
				if err != nil || held != 0 {
					return 0, errors.Join(err, errors.New("the lock is not held inside fn"))
				}
				if fail {
					return 0, errBusiness
				}
				return 0, nil
			}))(context.Background())
		if fail != errors.Is(err, errBusiness) || (!fail && err != nil) {
			t.Fatalf("fail=%v: err = %v", fail, err)
		}
		free, err := safesync.Get[int64](context.Background(), db, "SELECT IS_FREE_LOCK('acct:1')")
		if err != nil || free != 1 {
			t.Fatalf("fail=%v: IS_FREE_LOCK after the transaction = %d, %v; want 1", fail, free, err)
		}
	}
}

func TestLockTimeoutErrorCarriesNameAndTimeout(t *testing.T) {
	err := error(&safesync.LockTimeoutError{Name: "job:7", Timeout: 2 * time.Second})
	var lte *safesync.LockTimeoutError
	if !errors.Is(err, safesync.ErrLockTimeout) || !errors.As(err, &lte) || lte.Name != "job:7" || !strings.Contains(err.Error(), "2s") {
		t.Fatalf("LockTimeoutError %v does not carry its name and timeout", err)
	}
}
