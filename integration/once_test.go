package integration

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

// dedupeTable creates a uniquely named exactly-once table, dropped at the end.
func dedupeTable(t testing.TB, db *sql.DB) string {
	t.Helper()
	table := uniqueName(t, "applied")
	if err := safesync.CreateDedupeTable(context.Background(), db, table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE IF EXISTS `" + table + "`") })
	return table
}

// A second transaction marking an entry that a first, still open,
// transaction marked waits for it, then sees the first one's outcome.
func TestMarkAppliedSerialisesConcurrentDeliveries(t *testing.T) {
	db := openMySQL(t, nil)
	table := dedupeTable(t, db)
	for _, firstCommits := range []bool{true, false} {
		id := "1-0"
		if !firstCommits {
			id = "2-0"
		}
		marked := make(chan struct{})
		finish := make(chan struct{})
		firstDone := make(chan error, 1)
		go func() {
			_, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
				ok, err := safesync.MarkApplied(ctx, tx, table, "g", "orders", id)
				if err != nil || !ok {
					return errors.Join(err, errors.New("first mark was not true"))
				}
				close(marked)
				<-finish
				if !firstCommits {
					return errors.New("handler failed")
				}
				return nil
			}))(context.Background())
			firstDone <- err
		}()
		<-marked
		secondResult := make(chan bool, 1)
		go func() {
			ok, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (bool, error) {
				return safesync.MarkApplied(ctx, tx, table, "g", "orders", id)
			})(context.Background())
			if err != nil {
				t.Error(err)
			}
			secondResult <- ok
		}()
		select {
		case ok := <-secondResult:
			t.Fatalf("the second mark returned %v while the first transaction was open; it must wait", ok)
		case <-time.After(300 * time.Millisecond):
		}
		close(finish)
		err := <-firstDone
		if firstCommits != (err == nil) {
			t.Fatalf("first transaction: %v", err)
		}
		if got := <-secondResult; got == firstCommits {
			t.Fatalf("first committed=%v, second mark = %v; want %v", firstCommits, got, !firstCommits)
		}
	}
}

func TestPruneDedupeOnTheRealServer(t *testing.T) {
	db := openMySQL(t, nil)
	table := dedupeTable(t, db)
	if _, err := db.Exec("INSERT INTO `" + table + "` (consumer_group, stream, entry_id, applied_at) VALUES ('g', 's', '1-0', NOW(6) - INTERVAL 2 HOUR), ('g', 's', '2-0', NOW(6))"); err != nil {
		t.Fatal(err)
	}
	n, err := safesync.PruneDedupe(context.Background(), db, table, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("PruneDedupe = %d, %v; want 1", n, err)
	}
	if left := countRows(t, db, table); left != 1 {
		t.Fatalf("%d rows left, want 1", left)
	}
}
