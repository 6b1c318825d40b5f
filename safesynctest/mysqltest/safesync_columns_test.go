package mysqltest_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/safesync-go/safesync"
)

// lockedBalance maps two of the accounts table's four columns.
type lockedBalance struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
}

// Regression (issue 11, item 10): WithRowLock and ReadVersioned ran
// SELECT *, so a column added by a migration (or any column T does not
// map) failed every call with ErrUnmappedColumn. They select exactly the
// columns T maps, by name and quoted.
func TestCombinatorsSelectOnlyTheColumnsTheirRowTypeMaps(t *testing.T) {
	db := occDB(t)
	ctx := context.Background()
	lockBalance := safesync.WithRowLock("accounts", safesync.Key{"id": 1}, func(ctx context.Context, tx *safesync.Tx, r lockedBalance) (int64, error) {
		return r.Balance, nil
	})
	read := safesync.ReadVersioned[versionedAccount]("accounts", safesync.Key{"id": 1}, "version")
	check := func(when string) {
		t.Helper()
		if got, err := safesync.WithTx(db, lockBalance)(ctx); err != nil || got != 100 {
			t.Fatalf("%s: WithRowLock of a struct mapping 2 of the columns = %d, %v", when, got, err)
		}
		if _, err := safesync.WithTx(db, safesync.OCC(read, addToBalance(0)))(ctx); err != nil {
			t.Fatalf("%s: OCC(ReadVersioned) = %v", when, err)
		}
	}
	check("before the migration")
	mustExec(t, db, "ALTER TABLE accounts ADD COLUMN added_later VARCHAR(16) NULL")
	check("after ADD COLUMN")

	// A map row has no columns to name: it selects them all, and shows the
	// new one.
	row, err := safesync.WithTx(db, safesync.WithRowLock("accounts", safesync.Key{"id": 1}, func(ctx context.Context, tx *safesync.Tx, r map[string]any) (map[string]any, error) {
		return r, nil
	}))(ctx)
	if _, ok := row["added_later"]; err != nil || !ok || len(row) != 5 {
		t.Fatalf("WithRowLock[map[string]any] = %v, %v; want all 5 columns", row, err)
	}

	// A field that is no column is an error naming it (on MySQL and MariaDB,
	// error 1054, with the way out: see integration/).
	type withComputed struct {
		ID      int64 `db:"id"`
		Balance int64 `db:"balance"`
		Display string
	}
	_, err = safesync.WithTx(db, safesync.WithRowLock("accounts", safesync.Key{"id": 1}, func(ctx context.Context, tx *safesync.Tx, r withComputed) (int, error) {
		return 0, nil
	}))(ctx)
	if err == nil || !strings.Contains(err.Error(), "Display") {
		t.Fatalf("a field with no column: err = %v; want one naming Display", err)
	}
}

// Row types the combinators cannot select columns for are refused before
// any SQL (the TxFuncs are called with a nil *Tx, which any SQL would
// dereference).
func TestCombinatorRowTypesWithoutColumnsAreRefusedBeforeAnySQL(t *testing.T) {
	type noColumns struct {
		Skipped string `db:"-"`
	}
	type badTag struct {
		ID int64 `db:"id;drop"`
	}
	ctx := context.Background()
	tests := []struct {
		name string
		err  error
		says string
	}{
		{"WithRowLock of a scalar", callErr(safesync.WithRowLock("accounts", safesync.Key{"id": 1}, func(context.Context, *safesync.Tx, int64) (int, error) { return 0, nil })), "int64"},
		{"WithRowLock of a struct with no columns", callErr(safesync.WithRowLock("accounts", safesync.Key{"id": 1}, func(context.Context, *safesync.Tx, noColumns) (int, error) { return 0, nil })), "no columns"},
		{"WithRowLock of a struct with a bad column tag", callErr(safesync.WithRowLock("accounts", safesync.Key{"id": 1}, func(context.Context, *safesync.Tx, badTag) (int, error) { return 0, nil })), "id;drop"},
		{"ReadVersioned of a map", callErr(safesync.ReadVersioned[map[string]any]("accounts", safesync.Key{"id": 1}, "")), "struct"},
		{"ReadVersioned of a scalar", callErr(safesync.ReadVersioned[int64]("accounts", safesync.Key{"id": 1}, "")), "struct"},
		{"ReadVersioned without the version field", callErr(safesync.ReadVersioned[lockedBalance]("accounts", safesync.Key{"id": 1}, "version")), "version"},
	}
	_ = ctx
	for _, tt := range tests {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.says) || !strings.HasPrefix(tt.err.Error(), "safesync:") {
			t.Errorf("%s: err = %v; want a safesync error saying %q", tt.name, tt.err, tt.says)
		}
	}
}

// callErr calls a TxFunc with a nil *Tx and returns its error, or one
// saying it reached SQL.
func callErr[T any](fn safesync.TxFunc[T]) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = errors.New("reached SQL with a nil tx")
		}
	}()
	_, err = fn(context.Background(), nil)
	return err
}
