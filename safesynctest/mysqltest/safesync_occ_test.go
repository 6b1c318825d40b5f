package mysqltest_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

type versionedAccount struct {
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
	Version int64  `db:"version"`
}

func occDB(t *testing.T) *sql.DB {
	db := safesynctestMySQL(t)
	mustExec(t, db, "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner VARCHAR(64) NOT NULL, balance BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 0)")
	mustExec(t, db, "INSERT INTO accounts (id, owner, balance) VALUES (1, 'ada', 100), (2, 'bob', 0)")
	return db
}

func addToBalance(n int64) func(versionedAccount) (versionedAccount, error) {
	return func(a versionedAccount) (versionedAccount, error) {
		a.Balance += n
		return a, nil
	}
}

func TestOCCWritesTheChangedColumnsAndAdvancesTheVersion(t *testing.T) {
	db := occDB(t)
	read := safesync.ReadVersioned[versionedAccount]("accounts", safesync.Key{"id": 1}, "")
	for i := 1; i <= 3; i++ {
		got, err := safesync.WithTx(db, safesync.OCC(read, addToBalance(5)))(context.Background())
		if err != nil || got.Balance != 100+5*int64(i) || got.Version != int64(i) {
			t.Fatalf("update %d = %+v, %v", i, got, err)
		}
	}
	row, err := safesync.Get[versionedAccount](context.Background(), db, "SELECT * FROM accounts WHERE id = 1")
	if err != nil || row.Balance != 115 || row.Version != 3 || row.Owner != "ada" {
		t.Fatalf("stored row = %+v, %v; want balance 115, version 3", row, err)
	}
}

func TestOCCOnAMovedVersionIsErrConflict(t *testing.T) {
	db := occDB(t)
	m, reg := safesynctest.NewMetrics(t)
	// A read that returns a stale version, as if another writer won.
	stale := func(ctx context.Context, tx *safesync.Tx) (safesync.Versioned[versionedAccount], error) {
		v, err := safesync.ReadVersioned[versionedAccount]("accounts", safesync.Key{"id": 1}, "version")(ctx, tx)
		v.Version--
		return v, err
	}
	_, err := safesync.WithTx(db, safesync.OCC(stale, addToBalance(5)), safesync.WithMetrics(m))(context.Background())
	var ce *safesync.ConflictError
	if !errors.Is(err, safesync.ErrConflict) || !errors.As(err, &ce) || ce.Table != "accounts" || ce.Version != -1 {
		t.Fatalf("err = %v, want a *ConflictError for accounts at version -1", err)
	}
	if balance(t, db, 1) != 100 {
		t.Fatal("a conflicting update changed the row")
	}
	if n := safesynctest.MetricValue(t, reg, "coti_safesync_db_occ_conflicts_total", map[string]string{"table": "accounts"}); n != 1 {
		t.Fatalf("occ_conflicts_total{accounts} = %v, want 1", n)
	}
}

func TestOCCRefusesToChangeKeyOrVersion(t *testing.T) {
	db := occDB(t)
	read := safesync.ReadVersioned[versionedAccount]("accounts", safesync.Key{"id": 1}, "")
	for name, mutate := range map[string]func(versionedAccount) (versionedAccount, error){
		"key":     func(a versionedAccount) (versionedAccount, error) { a.ID = 9; return a, nil },
		"version": func(a versionedAccount) (versionedAccount, error) { a.Version = 9; return a, nil },
	} {
		_, err := safesync.WithTx(db, safesync.OCC(read, mutate))(context.Background())
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("changing the %s: err = %v, want an error naming it", name, err)
		}
	}
}

func TestReadVersionedOfAMissingRowIsErrNotFound(t *testing.T) {
	db := occDB(t)
	_, err := safesync.WithTx(db, safesync.OCC(safesync.ReadVersioned[versionedAccount]("accounts", safesync.Key{"id": 42}, ""), addToBalance(1)))(context.Background())
	if !errors.Is(err, safesync.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if want := "safesync: row not found: accounts id=42"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// Regression: the original's occ_update bound values by name, so a column
// called id_value collided with its own id_value parameter, and it did not
// quote identifiers, so a table called order failed.
func TestUpdateVersionedWithCollidingNamesAndAReservedTableName(t *testing.T) {
	db := safesynctestMySQL(t)
	mustExec(t, db, "CREATE TABLE `order` (id BIGINT PRIMARY KEY, id_value BIGINT NOT NULL, version_value BIGINT NOT NULL, version BIGINT NOT NULL)")
	mustExec(t, db, "INSERT INTO `order` VALUES (1, 10, 100, 0), (2, 20, 200, 0)")
	_, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		return safesync.UpdateVersioned(ctx, tx, "order", safesync.Key{"id": 2}, "version", 0,
			map[string]any{"id_value": 1, "version_value": 7})
	}))(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rows, err := safesync.Select[map[string]any](context.Background(), db, "SELECT id, id_value, version_value, version FROM `order` ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"map[id:1 id_value:10 version:0 version_value:100]", "map[id:2 id_value:1 version:1 version_value:7]"}
	for i, r := range rows {
		if got := fmtMap(r); got != want[i] {
			t.Errorf("row %d = %s, want %s", i, got, want[i])
		}
	}
}

func TestUpdateVersionedRefusesBadInputBeforeAnySQL(t *testing.T) {
	ctx := context.Background()
	for name, err := range map[string]error{
		"empty key":         safesync.UpdateVersioned(ctx, nil, "t", safesync.Key{}, "", 0, nil),
		"bad table":         safesync.UpdateVersioned(ctx, nil, "t;", safesync.Key{"id": 1}, "", 0, nil),
		"bad set column":    safesync.UpdateVersioned(ctx, nil, "t", safesync.Key{"id": 1}, "", 0, map[string]any{"a b": 1}),
		"bad version":       safesync.UpdateVersioned(ctx, nil, "t", safesync.Key{"id": 1}, "v`", 0, nil),
		"set names version": safesync.UpdateVersioned(ctx, nil, "t", safesync.Key{"id": 1}, "", 0, map[string]any{"version": 3}),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Regression: the original treated any error whose text said "duplicate
// entry" as a duplicate.
func TestInsertIdempotentReportsOnlyDuplicateKeysAsDuplicates(t *testing.T) {
	db := safesynctestMySQL(t)
	mustExec(t, db, "CREATE TABLE profiles (user_id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL)")
	insert := func(args ...any) (bool, error) {
		return safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (bool, error) {
			return safesync.InsertIdempotent(ctx, tx, "INSERT INTO profiles (user_id, name) VALUES (?, ?)", args...)
		})(context.Background())
	}
	if ok, err := insert(1, "ada"); !ok || err != nil {
		t.Fatalf("first insert = %v, %v; want true, nil", ok, err)
	}
	if ok, err := insert(1, "ada again"); ok || err != nil {
		t.Fatalf("duplicate insert = %v, %v; want false, nil", ok, err)
	}
	if ok, err := insert(2, nil); ok || err == nil {
		t.Fatalf("NOT NULL violation = %v, %v; want an error", ok, err)
	}
}
