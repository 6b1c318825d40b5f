package mysqltest_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

// embeddedDB returns a one-connection pool on a fresh embedded MySQL with an
// accounts table holding rows (1, 100) and (2, 0).
func embeddedDB(t *testing.T) *sql.DB {
	t.Helper()
	db := mysqltest.New(t)
	mustExec(t, db, "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, note VARCHAR(64) NULL)")
	mustExec(t, db, "INSERT INTO accounts (id, balance) VALUES (1, 100), (2, 0)")
	return db
}

func mustExec(t testing.TB, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func balance(t testing.TB, db *sql.DB, id int) int64 {
	t.Helper()
	v, err := safesync.Get[int64](context.Background(), db, "SELECT balance FROM accounts WHERE id = ?", id)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func safesynctestMySQL(t *testing.T) *sql.DB { return mysqltest.New(t) }

// fmtMap prints a row map with byte slices as strings, keys sorted.
func fmtMap(m map[string]any) string { return fmt.Sprint(m) }
