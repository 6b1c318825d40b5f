package integration

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

// killLockHolder kills, from side, the connection that holds the advisory
// lock name, and waits until the server has ended it (the lock is free or
// held by another session). It returns the killed connection's id, or 0
// when nobody held the lock.
func killLockHolder(ctx context.Context, side *sql.Conn, name string) (int64, error) {
	var holder sql.NullInt64
	if err := side.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", name).Scan(&holder); err != nil {
		return 0, err
	}
	if !holder.Valid {
		return 0, nil
	}
	if _, err := side.ExecContext(ctx, fmt.Sprintf("KILL %d", holder.Int64)); err != nil {
		if mysqlErrorNumber(err) == 1094 { // unknown thread: it ended by itself
			return 0, nil
		}
		return 0, err
	}
	for i := 0; ; i++ {
		var now sql.NullInt64
		if err := side.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", name).Scan(&now); err != nil {
			return 0, err
		}
		if !now.Valid || now.Int64 != holder.Int64 {
			return holder.Int64, nil
		}
		if i == 500 {
			return 0, fmt.Errorf("connection %d still holds %q 5 s after KILL", holder.Int64, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sideConn is one connection of its own pool, for killing others.
func sideConn(t *testing.T) *sql.Conn {
	t.Helper()
	conn, err := openMySQL(t, nil).Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Regression: the lock's connection is killed after fn's last statement,
// before COMMIT, at a moment the lock watcher does not look (its interval
// is an hour here). COMMIT on the dead connection used to fail with an
// unknown outcome (ErrCommitUnknown), which is never retried, although the
// server had rolled the transaction back. WithAdvisoryLock now confirms the
// lock on the transaction's connection when fn returns: the loss is
// ErrLockLost, the transaction rolls back, and Retry runs it again.
func TestFaultAdvisoryLockKilledAfterFnBeforeCommitIsErrLockLost(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	name := uniqueName(t, "lock")
	side := sideConn(t)
	var attempts atomic.Int64
	op := safesync.WithAdvisoryLock(name, 5*time.Second, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id = 1"); err != nil {
			return err
		}
		if attempts.Add(1) == 1 {
			if id, err := killLockHolder(ctx, side, name); err != nil || id == 0 {
				return errors.Join(err, errors.New("the lock had no holder to kill"))
			}
		}
		return nil
	}), safesync.LockCheckInterval(time.Hour))

	_, err := safesync.WithTx(db, op, safesync.WithMetrics(nil))(context.Background())
	if !errors.Is(err, safesync.ErrLockLost) || errors.Is(err, safesync.ErrCommitUnknown) {
		t.Fatalf("err = %v; want ErrLockLost, not an unknown commit outcome", err)
	}
	if reason, retry := safesync.DefaultClassifier(err); !retry || reason != safesync.ReasonLockLost {
		t.Fatalf("DefaultClassifier(%v) = %q, %v; want %q, true", err, reason, retry, safesync.ReasonLockLost)
	}
	if got := amountOf(t, db, table, 1); got != 0 {
		t.Fatalf("amount = %d after the lost lock, want 0: the transaction must roll back", got)
	}

	// The same, under Retry: the second attempt commits, once.
	attempts.Store(0)
	var reasons []string
	policy := safesync.Constant(10 * time.Millisecond).WithMaxAttempts(5).WithMetrics(nil).
		WithOnRetry(func(e safesync.RetryEvent) { reasons = append(reasons, e.Reason) })
	if _, err := safesync.Retry(policy, safesync.WithTx(db, op, safesync.WithMetrics(nil)))(context.Background()); err != nil {
		t.Fatal(err)
	}
	if attempts.Load() != 2 || len(reasons) != 1 || reasons[0] != safesync.ReasonLockLost {
		t.Fatalf("attempts = %d, retry reasons = %v; want 2 attempts after one lock_lost retry", attempts.Load(), reasons)
	}
	if got := amountOf(t, db, table, 1); got != 1 {
		t.Fatalf("amount = %d, want 1: applied exactly once", got)
	}
}

// The lock's connection is killed while fn runs (fn waits on its ctx, so
// the watcher's cancellation ends it): ErrLockLost, rolled back.
func TestFaultAdvisoryLockKilledWhileFnRunsIsErrLockLost(t *testing.T) {
	db := openMySQL(t, nil)
	table := itemsTable(t, db, 1)
	name := uniqueName(t, "lock")
	side := sideConn(t)
	locked := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		_, err := safesync.WithTx(db, safesync.WithAdvisoryLock(name, 5*time.Second, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = amount + 1 WHERE id = 1"); err != nil {
				return err
			}
			close(locked)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(30 * time.Second):
				return errors.New("fn's ctx was not cancelled after the kill")
			}
		}), safesync.LockCheckInterval(50*time.Millisecond)), safesync.WithMetrics(nil))(context.Background())
		result <- err
	}()
	<-locked
	if id, err := killLockHolder(context.Background(), side, name); err != nil || id == 0 {
		t.Fatalf("kill the lock holder: id %d, %v", id, err)
	}
	err := <-result
	if !errors.Is(err, safesync.ErrLockLost) || !safesync.DefaultRetryable(err) {
		t.Fatalf("err = %v; want a retryable ErrLockLost", err)
	}
	if got := amountOf(t, db, table, 1); got != 0 {
		t.Fatalf("amount = %d, want 0: rolled back", got)
	}
}

// A pipeline whose handler takes a per-account advisory lock while the
// connections holding those locks are killed at random: every kill that
// lands before COMMIT is ErrLockLost, rolled back and retried; the end
// state is exact.
func TestFaultAdvisoryLockKillsInAPipeline(t *testing.T) {
	db := openMySQL(t, nil)
	rdb := openRedis(t)
	w := newFaultWorkload(t, db, rdb)
	const entries = 600
	w.publish(t, 1, entries, randomMalformed(1, entries, 3))
	lockName := func(account int64) string { return fmt.Sprintf("%s:%d", w.accounts, account) }

	counts := newRetryCounts()
	var lostSeen, calls atomic.Int64
	policy := counts.policy()
	handler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		calls.Add(1)
		_, err := safesync.WithAdvisoryLock(lockName(msg.Value.AccountID), 10*time.Second,
			safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
				if err := w.apply(ctx, tx, msg); err != nil {
					return err
				}
				// Work done under the lock, during which kills land.
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(10 * time.Millisecond):
					return nil
				}
			}), safesync.LockCheckInterval(20*time.Millisecond))(ctx, tx)
		if errors.Is(err, safesync.ErrLockLost) {
			lostSeen.Add(1)
		}
		return err
	}
	p := safesync.Stream(safesync.JSON[order]()).Handle(handler).
		AckAfter(safesync.Commit(db, safesync.WithMetrics(nil))).Once(w.applied).Retry(policy)

	ctx, cancel := context.WithCancel(context.Background())
	var runs sync.WaitGroup
	runErrs := make(chan error, 3)
	for i := range 3 {
		cfg := faultStreamConfig(w.stream, w.group, fmt.Sprintf("c%d", i))
		cfg.Concurrency = 1
		runs.Add(1)
		go func() {
			defer runs.Done()
			runErrs <- p.Run(ctx, rdb, cfg)
		}()
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			runs.Wait()
			close(runErrs)
		}
	}
	defer stop()

	side := sideConn(t)
	kills := 0
	deadline := time.Now().Add(2 * time.Minute)
	for !w.done(context.Background()) && time.Now().Before(deadline) {
		time.Sleep(time.Duration(20+rand.IntN(60)) * time.Millisecond)
		// Kill the holder of one of the locks held now, picked at random.
		for _, account := range rand.Perm(faultAccounts) {
			id, err := killLockHolder(context.Background(), side, lockName(int64(account+1)))
			if err != nil {
				t.Fatal(err)
			}
			if id != 0 {
				kills++
				break
			}
		}
	}
	w.waitDone(t, time.Minute)
	stop()
	for err := range runErrs {
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	w.check(t)
	t.Logf("%d lock holders killed; handler calls %d for %d entries; ErrLockLost seen by the handler %d times; %v",
		kills, calls.Load(), len(w.good), lostSeen.Load(), counts)
	if kills < 10 {
		t.Errorf("only %d lock holders were killed; want at least 10", kills)
	}
	if counts.retriedFor(safesync.ReasonLockLost) == 0 {
		t.Errorf("no attempt was retried for a lost lock: %v", counts)
	}
}
