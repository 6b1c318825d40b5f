package mysqltest_test

import (
	"context"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

func TestMarkAppliedIsTrueOnceThenFalse(t *testing.T) {
	db := safesynctestMySQL(t)
	ctx := context.Background()
	if err := safesync.CreateDedupeTable(ctx, db, "applied"); err != nil {
		t.Fatal(err)
	}
	mark := func(group, stream, id string) bool {
		t.Helper()
		ok, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (bool, error) {
			return safesync.MarkApplied(ctx, tx, "applied", group, stream, id)
		})(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !mark("g", "orders", "1-0") {
		t.Fatal("first mark = false, want true")
	}
	if mark("g", "orders", "1-0") {
		t.Fatal("second mark of the same entry = true, want false")
	}
	for _, other := range [][3]string{{"g2", "orders", "1-0"}, {"g", "orders2", "1-0"}, {"g", "orders", "1-1"}, {"g", "Orders", "1-0"}} {
		if !mark(other[0], other[1], other[2]) {
			t.Fatalf("mark %v = false; group, stream and id (exact case) each distinguish entries", other)
		}
	}
}

func TestDedupeRejectsABadTableName(t *testing.T) {
	if _, err := safesync.DedupeTableDDL("applied; DROP TABLE x"); err == nil {
		t.Fatal("DDL for a bad name succeeded")
	}
	if _, err := safesync.MarkApplied(context.Background(), nil, "a`b", "g", "s", "1-0"); err == nil {
		t.Fatal("MarkApplied with a bad table name succeeded")
	}
	if _, err := safesync.PruneDedupe(context.Background(), nil, "ok", 0); err == nil {
		t.Fatal("PruneDedupe with a zero age succeeded")
	}
}

func TestPruneDedupeDeletesOnlyOldRows(t *testing.T) {
	db := safesynctestMySQL(t)
	ctx := context.Background()
	if err := safesync.CreateDedupeTable(ctx, db, "applied"); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, "INSERT INTO applied (consumer_group, stream, entry_id, applied_at) VALUES ('g', 's', '1-0', NOW(6) - INTERVAL 2 HOUR), ('g', 's', '2-0', NOW(6))")
	n, err := safesync.PruneDedupe(ctx, db, "applied", time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("PruneDedupe = %d, %v; want 1 row", n, err)
	}
	left, err := safesync.Select[string](ctx, db, "SELECT entry_id FROM applied")
	if err != nil || len(left) != 1 || left[0] != "2-0" {
		t.Fatalf("rows left = %v, %v; want [2-0]", left, err)
	}
}
