package integration

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// credit is a row of the accounts table as a batch handler adds to it.
type credit struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
}

// applyBatch returns a batch handler that adds every order of the batch
// to its account with one InsertRows (INSERT … ON DUPLICATE KEY UPDATE),
// rows sorted by account so that concurrent batches lock in one order.
func (s *pipelineSetup) applyBatch() safesync.BatchTxHandler[order] {
	return func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		rows := make([]credit, len(msgs))
		for i, m := range msgs {
			rows[i] = credit{ID: m.Value.AccountID, Balance: m.Value.Amount}
		}
		slices.SortStableFunc(rows, func(a, b credit) int { return cmp.Compare(a.ID, b.ID) })
		_, err := safesync.InsertRows(ctx, tx, s.accounts, rows, safesync.OnDuplicateAdd("balance"))
		return err
	}
}

// batchCrashArgs configures the batch worker that dies after its second
// COMMIT, before acknowledging it.
type batchCrashArgs struct {
	Accounts, Applied, Stream, Group string
}

func init() { workers["batch-handler-crash"] = batchCrashWorker }

func batchCrashWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a batchCrashArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	db, rdb, err := workerServices()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	defer rdb.Close()
	s := &pipelineSetup{db: db, rdb: rdb, accounts: a.Accounts, applied: a.Applied, stream: a.Stream, group: a.Group}
	var commits atomic.Int64
	p := safesync.Stream(safesync.JSON[order]()).HandleBatch(s.applyBatch()).AckAfter(safesync.Commit(db)).
		Once(a.Applied).Batch(5).
		AfterCommit(func(context.Context, []safesync.Message[order]) {
			if commits.Add(1) == 2 {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way
			}
		})
	cfg := s.config("doomed")
	cfg.Count, cfg.Concurrency, cfg.ClaimIdle = 5, 1, time.Hour
	return nil, p.Run(ctx, rdb, cfg)
}

func TestHandleBatchWithOnceAppliesEveryEntryOnceAcrossACrash(t *testing.T) {
	s := newPipelineSetup(t)
	var want [4]int64
	var ids []string
	for i := range 20 {
		o := order{OrderID: int64(i + 1), AccountID: int64(1 + i%3), Amount: int64(1 + i%5)}
		want[o.AccountID] += o.Amount
		ids = append(ids, safesynctest.PublishJSON(t, s.rdb, s.stream, o))
	}
	w := startWorker(t, "batch-handler-crash", batchCrashArgs{Accounts: s.accounts, Applied: s.applied, Stream: s.stream, Group: s.group})
	err := waitExit(w, 30*time.Second)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("worker ended with %v, want SIGKILL\nstderr: %s", err, w.stderr.String())
	}
	// Two batches committed; the second was never acknowledged.
	recorded, err := safesync.Select[string](context.Background(), s.db, "SELECT CAST(entry_id AS CHAR) FROM `"+s.applied+"`")
	if err != nil {
		t.Fatal(err)
	}
	if len(recorded) != 10 {
		t.Fatalf("%d entries recorded before the crash, want 10 (two batches of 5)", len(recorded))
	}
	if p := s.pending(t); len(p) < 5 {
		t.Fatalf("%d entries pending after the crash, want the unacknowledged batch among them", len(p))
	}
	committedBefore := map[string]bool{}
	for _, id := range recorded {
		committedBefore[id] = true
	}

	var mu sync.Mutex
	seen := map[string]int{}
	apply := s.applyBatch()
	p := safesync.Stream(safesync.JSON[order]()).HandleBatch(func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		mu.Lock()
		for _, m := range msgs {
			seen[m.ID]++
		}
		mu.Unlock()
		return apply(ctx, tx, msgs)
	}).AckAfter(safesync.Commit(s.db)).Once(s.applied).Batch(5)
	cfg := s.config("rescuer")
	cfg.Count = 5
	runUntil(t, p, s.rdb, cfg, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 10 && len(s.pending(t)) == 0
	})
	for id := 1; id <= 3; id++ {
		if got := s.balance(t, int64(id)); got != want[id] {
			t.Fatalf("account %d = %d, want %d: every entry applied exactly once", id, got, want[id])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		switch {
		case committedBefore[id] && seen[id] != 0:
			t.Fatalf("%s, committed before the crash, was given to the handler again", id)
		case !committedBefore[id] && seen[id] != 1:
			t.Fatalf("%s was given to the handler %d times, want once", id, seen[id])
		}
	}
}

func TestHandleBatchDeadLettersThePoisonEntryAloneOnTheServer(t *testing.T) {
	for _, tt := range []struct {
		name string
		fail func(safesync.Message[order]) error
	}{
		{"named with FailEntry", func(m safesync.Message[order]) error { return safesync.FailEntry(m, errors.New("no such account")) }},
		{"found by halving", func(safesync.Message[order]) error { return errors.New("no such account") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newPipelineSetup(t)
			var ids []string
			for i := 1; i <= 10; i++ {
				o := order{OrderID: int64(i), AccountID: 3, Amount: 1}
				if i == 7 {
					o.AccountID = 99 // the handler refuses this one
				}
				ids = append(ids, safesynctest.PublishJSON(t, s.rdb, s.stream, o))
			}
			apply := s.applyBatch()
			p := safesync.Stream(safesync.JSON[order]()).HandleBatch(func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
				if err := apply(ctx, tx, msgs); err != nil {
					return err
				}
				for _, m := range msgs {
					if m.Value.AccountID == 99 {
						return tt.fail(m)
					}
				}
				return nil
			}).AckAfter(safesync.Commit(s.db)).Once(s.applied).Batch(10)
			cfg := s.config("w1")
			cfg.Count = 10
			dead := s.stream + safesync.DeadLetterSuffix
			runUntil(t, p, s.rdb, cfg, 20*time.Second, func() bool {
				return len(s.pending(t)) == 0 && len(safesynctest.DeadLetters(t, s.rdb, dead)) == 1
			})
			if got := s.balance(t, 3); got != 9 {
				t.Fatalf("balance = %d, want 9: the nine good entries applied once each", got)
			}
			if n, _ := safesync.Get[int64](context.Background(), s.db, "SELECT COUNT(*) FROM `"+s.accounts+"` WHERE id = 99"); n != 0 {
				t.Fatal("the poison entry's row was committed")
			}
			d := safesynctest.DeadLetters(t, s.rdb, dead)[0]
			if d.OriginalID != ids[6] || d.Reason != safesync.DeadLetterMaxDeliveries || d.Failures != cfg.MaxDeliveries || d.Error != "no such account" {
				t.Fatalf("dead letter = %+v, want %s with reason %s after %d failures, with the handler's error text", d, ids[6], safesync.DeadLetterMaxDeliveries, cfg.MaxDeliveries)
			}
		})
	}
}

func TestHandleBatchRetriesADeadlock(t *testing.T) {
	s := newPipelineSetup(t)
	heavy := createTable(t, s.db, "heavy", "CREATE TABLE %s (id BIGINT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB")
	rows := make([][]any, 200)
	for i := range rows {
		rows[i] = []any{i + 1, 0}
	}
	if _, err := safesync.InsertRows(context.Background(), s.db, heavy, rows, safesync.InsertColumns("id", "n")); err != nil {
		t.Fatal(err)
	}
	safesynctest.PublishJSON(t, s.rdb, s.stream, order{OrderID: 1, AccountID: 1, Amount: 5})
	safesynctest.PublishJSON(t, s.rdb, s.stream, order{OrderID: 2, AccountID: 2, Amount: 7})

	// On its first attempt the batch locks account 1, then account 2,
	// which another transaction holds while it waits for account 1.
	// InnoDB rolls back the lighter of the two, the batch: the other has
	// changed 200 more rows.
	var attempts atomic.Int64
	var bothHoldFirst sync.WaitGroup
	bothHoldFirst.Add(2)
	apply := s.applyBatch()
	var deadlocks atomic.Int64
	policy := safesync.Constant(5 * time.Millisecond).WithMaxAttempts(10).WithMetrics(nil).
		WithOnRetry(func(e safesync.RetryEvent) {
			if e.Reason == safesync.ReasonDeadlock {
				deadlocks.Add(1)
			}
		})
	p := safesync.Stream(safesync.JSON[order]()).HandleBatch(func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		if attempts.Add(1) == 1 {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+s.accounts+"` SET version = version + 1 WHERE id = 1"); err != nil {
				return err
			}
			bothHoldFirst.Done()
			bothHoldFirst.Wait()
			time.Sleep(50 * time.Millisecond) // let the other transaction wait for account 1
		}
		return apply(ctx, tx, msgs) // locks account 1, then account 2
	}).AckAfter(safesync.Commit(s.db)).Once(s.applied).Batch(10).Retry(policy)

	other := make(chan error, 1)
	go func() {
		other <- safesync.RunTx(context.Background(), s.db, func(ctx context.Context, tx *safesync.Tx) error {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+heavy+"` SET n = n + 1"); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "UPDATE `"+s.accounts+"` SET version = version + 1 WHERE id = 2"); err != nil {
				return err
			}
			bothHoldFirst.Done()
			bothHoldFirst.Wait()
			_, err := tx.ExecContext(ctx, "UPDATE `"+s.accounts+"` SET version = version + 1 WHERE id = 1")
			return err
		}, safesync.WithMetrics(nil))
	}()
	cfg := s.config("w1")
	cfg.Count = 10
	runUntil(t, p, s.rdb, cfg, 20*time.Second, func() bool { return attempts.Load() >= 2 && len(s.pending(t)) == 0 })
	if err := <-other; err != nil {
		t.Fatalf("the other transaction: %v (InnoDB chose it as the victim?)", err)
	}
	if deadlocks.Load() != 1 {
		t.Fatalf("%d deadlock retries, want 1", deadlocks.Load())
	}
	if a, b := s.balance(t, 1), s.balance(t, 2); a != 5 || b != 7 {
		t.Fatalf("balances = %d, %d; want 5 and 7: the retried batch applied once", a, b)
	}
}

func TestInsertRowsOnTheServer(t *testing.T) {
	db := openMySQL(t, nil)
	ctx := context.Background()
	// Reserved words as column names: quoted, they work.
	table := createTable(t, db, "order", "CREATE TABLE %s (`key` BIGINT PRIMARY KEY, `order` BIGINT NOT NULL, `group` VARCHAR(16) NULL) ENGINE=InnoDB")
	type row struct {
		Key   int64   `db:"key"`
		Order int64   `db:"order"`
		Group *string `db:"group"`
	}
	// Three columns: 21,845 rows make 65,535 placeholders, the most one
	// prepared statement takes; one row more makes a second statement.
	rows := make([]row, safesync.MaxPlaceholders/3+1)
	for i := range rows {
		rows[i] = row{Key: int64(i), Order: 1}
	}
	n, err := safesync.InsertRows(ctx, db, table, rows)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(rows)) {
		t.Fatalf("inserted %d rows, want %d", n, len(rows))
	}
	// On duplicate keys: 1 and 2 add, 3 is new; two affected rows for
	// each updated one, as MySQL counts.
	name := "x"
	n, err = safesync.InsertRows(ctx, db, table, []row{{1, 5, &name}, {2, 7, nil}, {len64(rows), 9, nil}},
		safesync.OnDuplicateAdd("order"), safesync.OnDuplicateSet("group"))
	if err != nil {
		t.Fatal(err)
	}
	if n != 2+2+1 {
		t.Fatalf("rows affected = %d, want 5", n)
	}
	got, err := safesync.Select[row](ctx, db, "SELECT `key`, `order`, `group` FROM `"+table+"` WHERE `key` IN (1, 2, ?) ORDER BY `key`", len64(rows))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Order != 6 || got[0].Group == nil || *got[0].Group != "x" || got[1].Order != 8 || got[1].Group != nil || got[2].Order != 9 {
		t.Fatalf("rows = %+v", got)
	}
	total, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM `"+table+"`")
	if err != nil || total != int64(len(rows))+1 {
		t.Fatalf("count = %d (%v), want %d", total, err, len(rows)+1)
	}
}

func len64[T any](s []T) int64 { return int64(len(s)) }
