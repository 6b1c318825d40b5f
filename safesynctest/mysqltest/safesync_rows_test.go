package mysqltest_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/safesync-go/safesync"
)

type account struct {
	ID      int64 `db:"id"`
	Balance int64 // matched case-insensitively
	Note    sql.NullString
	Ignored string `db:"-"`
}

type audit struct {
	CreatedBy string
}

type accountWithAudit struct {
	account        // embedded structs are flattened
	audit          // so are embedded unexported types' exported fields
	Extra   string `db:"extra"`
}

func rowsDB(t *testing.T) *sql.DB {
	db := embeddedDB(t)
	mustExec(t, db, "UPDATE accounts SET note = 'vip' WHERE id = 1")
	return db
}

func TestGetScansOneRowIntoAStructByTagAndFieldName(t *testing.T) {
	db := rowsDB(t)
	ctx := context.Background()
	got, err := safesync.Get[account](ctx, db, "SELECT id, BALANCE, note FROM accounts WHERE id = ?", 1)
	if err != nil {
		t.Fatal(err)
	}
	want := account{ID: 1, Balance: 100, Note: sql.NullString{String: "vip", Valid: true}}
	if got != want {
		t.Fatalf("Get = %+v, want %+v", got, want)
	}
	ptr, err := safesync.Get[*account](ctx, db, "SELECT id, balance FROM accounts WHERE id = ?", 2)
	if err != nil || ptr == nil || ptr.ID != 2 || ptr.Note.Valid {
		t.Fatalf("Get[*account] = %+v, %v; want id 2 with NULL note", ptr, err)
	}
	nested, err := safesync.Get[accountWithAudit](ctx, db, "SELECT id, balance, 'ops' AS createdby, 'x' AS extra FROM accounts WHERE id = 2")
	if err != nil || nested.ID != 2 || nested.CreatedBy != "ops" || nested.Extra != "x" {
		t.Fatalf("Get[accountWithAudit] = %+v, %v", nested, err)
	}
}

func TestGetReportsNoRowsAndTooManyRows(t *testing.T) {
	db := rowsDB(t)
	ctx := context.Background()
	_, err := safesync.Get[account](ctx, db, "SELECT id, balance FROM accounts WHERE id = ?", 99)
	if !errors.Is(err, safesync.ErrNoRows) || !errors.Is(err, sql.ErrNoRows) {
		t.Fatalf("no rows: err = %v, want ErrNoRows matching sql.ErrNoRows", err)
	}
	_, err = safesync.Get[account](ctx, db, "SELECT id, balance FROM accounts")
	if !errors.Is(err, safesync.ErrTooManyRows) {
		t.Fatalf("two rows: err = %v, want ErrTooManyRows", err)
	}
}

func TestScanningNamesAColumnWithNoDestination(t *testing.T) {
	db := rowsDB(t)
	_, err := safesync.Select[account](context.Background(), db, "SELECT id, balance, 1 AS surprise FROM accounts")
	if !errors.Is(err, safesync.ErrUnmappedColumn) || !strings.Contains(err.Error(), `"surprise"`) {
		t.Fatalf("err = %v, want ErrUnmappedColumn naming \"surprise\"", err)
	}
	_, err = safesync.Get[int64](context.Background(), db, "SELECT id, balance FROM accounts WHERE id = 1")
	if err == nil || !strings.Contains(err.Error(), "exactly one column") {
		t.Fatalf("two columns into a scalar: err = %v, want an error asking for one column", err)
	}
	_, err = safesync.Get[account](context.Background(), db, "SELECT id, id AS ID FROM accounts WHERE id = 1")
	if err == nil || !strings.Contains(err.Error(), "both map to field ID") {
		t.Fatalf("two columns into one field: err = %v, want an error naming the field", err)
	}
}

func TestSelectReturnsAllRowsOrAnEmptySlice(t *testing.T) {
	db := rowsDB(t)
	ctx := context.Background()
	all, err := safesync.Select[account](ctx, db, "SELECT id, balance FROM accounts ORDER BY id")
	if err != nil || len(all) != 2 || all[0].ID != 1 || all[1].Balance != 0 {
		t.Fatalf("Select = %+v, %v", all, err)
	}
	none, err := safesync.Select[account](ctx, db, "SELECT id, balance FROM accounts WHERE id > 100")
	if err != nil || none == nil || len(none) != 0 {
		t.Fatalf("Select of no rows = %#v, %v; want an empty non-nil slice", none, err)
	}
}

func TestScalarsNullsAndMaps(t *testing.T) {
	db := rowsDB(t)
	ctx := context.Background()
	if n, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM accounts"); err != nil || n != 2 {
		t.Fatalf("scalar = %d, %v; want 2", n, err)
	}
	note, err := safesync.Get[*string](ctx, db, "SELECT note FROM accounts WHERE id = 2")
	if err != nil || note != nil {
		t.Fatalf("NULL into *string = %v, %v; want nil, nil", note, err)
	}
	ns, err := safesync.Get[sql.NullString](ctx, db, "SELECT note FROM accounts WHERE id = 1")
	if err != nil || ns.String != "vip" || !ns.Valid {
		t.Fatalf("NullString = %+v, %v", ns, err)
	}
	if _, err := safesync.Get[int64](ctx, db, "SELECT note FROM accounts WHERE id = 2"); err == nil {
		t.Fatal("NULL into int64 succeeded, want a scan error")
	}
	rows, err := safesync.Select[map[string]any](ctx, db, "SELECT id, note FROM accounts ORDER BY id")
	if err != nil || len(rows) != 2 || rows[0]["note"] != "vip" || rows[1]["note"] != nil {
		t.Fatalf("maps = %v, %v; want note vip then nil", rows, err)
	}
	if id, ok := rows[0]["id"].(int64); !ok || id != 1 {
		t.Fatalf("map id = %#v, want int64 1", rows[0]["id"])
	}
}
