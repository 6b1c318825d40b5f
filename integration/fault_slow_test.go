package integration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// pendingOwner returns the consumer an entry is pending under and its
// delivery count ("" when it is not pending).
func pendingOwner(ctx context.Context, rdb rueidis.Client, stream, group, id string) (string, int64, error) {
	rows, err := rdb.Do(ctx, rdb.B().Xpending().Key(stream).Group(group).Start(id).End(id).Count(1).Build()).ToArray()
	if err != nil || len(rows) == 0 {
		return "", 0, err
	}
	f, err := rows[0].ToArray()
	if err != nil || len(f) != 4 {
		return "", 0, fmt.Errorf("XPENDING row %v: %v", rows[0], err)
	}
	owner, _ := f[1].ToString()
	n, _ := f[3].AsInt64()
	return owner, n, nil
}

// pollUntil calls cond every 10 ms until it returns true or an error, for
// at most timeout.
func pollUntil(timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A handler outlives ClaimIdle: consumer "slow" is still applying the entry
// when consumer "fast" reclaims it (XAUTOCLAIM) and runs it too. With Once,
// fast's transaction waits on the exactly-once row slow's transaction
// holds, and then sees slow's outcome: slow commits late, and fast
// acknowledges the entry without running the handler; or slow rolls back
// late, and fast applies it. Exactly one effect either way, and nothing
// left pending. Without Once (the control), both apply it: the documented
// at-least-once, and proof that the check sees a duplicate.
func TestFaultSlowHandlerPastClaimIdle(t *testing.T) {
	for _, tc := range []struct {
		name         string
		once         bool
		slowCommits  bool
		wantEffects  int
		wantFastRuns int64
	}{
		{"with Once, the slow consumer commits late and the reclaimer finds the entry applied", true, true, 1, 0},
		{"with Once, the slow consumer rolls back late and the reclaimer applies the entry", true, false, 1, 1},
		{"without Once, both apply the entry (control)", false, true, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openMySQL(t, nil)
			rdb := openRedis(t)
			w := newFaultWorkload(t, db, rdb)
			w.publish(t, 1, 1, nil)
			var id string
			for k := range w.good {
				id = k
			}
			ctx := context.Background()

			var slowRuns, fastRuns, fastCommitted atomic.Int64
			var slowWaitErr error
			slowStarted := make(chan struct{})
			var startOnce sync.Once
			// slowHandler holds the entry past ClaimIdle: until fast has
			// claimed it and fast's transaction waits on the exactly-once
			// row (with Once) or has committed its own effect (without).
			slowHandler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
				slowRuns.Add(1)
				startOnce.Do(func() { close(slowStarted) })
				slowWaitErr = pollUntil(30*time.Second, "fast claims the entry", func() (bool, error) {
					owner, _, err := pendingOwner(ctx, rdb, w.stream, w.group, msg.ID)
					return owner == "fast" || fastRuns.Load() > 0 || fastCommitted.Load() > 0, err
				})
				if slowWaitErr == nil && tc.once {
					// Fast's INSERT into the exactly-once table cannot finish
					// while this transaction holds the row.
					slowWaitErr = pollUntil(30*time.Second, "fast's transaction waits on the exactly-once row", func() (bool, error) {
						n, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE ?", "INSERT INTO `"+w.applied+"`%")
						return n > 0, err
					})
				}
				if slowWaitErr == nil && !tc.once {
					slowWaitErr = pollUntil(30*time.Second, "fast commits its effect", func() (bool, error) {
						return fastCommitted.Load() > 0, nil
					})
				}
				if slowWaitErr != nil {
					return slowWaitErr
				}
				if !tc.slowCommits {
					return errors.New("the slow consumer fails after all")
				}
				return w.apply(ctx, tx, msg)
			}
			fastHandler := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
				fastRuns.Add(1)
				return w.apply(ctx, tx, msg)
			}
			var fastAcked atomic.Int64
			build := func(h safesync.TxHandler[order], afterCommit func(context.Context, []safesync.Message[order])) safesync.Pipeline[order] {
				p := safesync.Stream(safesync.JSON[order]()).Handle(h).AckAfter(safesync.Commit(db, safesync.WithMetrics(nil))).AfterCommit(afterCommit)
				if tc.once {
					p = p.Once(w.applied)
				}
				return p
			}
			slow := build(slowHandler, func(context.Context, []safesync.Message[order]) {})
			fast := build(fastHandler, func(_ context.Context, msgs []safesync.Message[order]) {
				fastCommitted.Add(1)
				fastAcked.Add(int64(len(msgs)))
			})
			config := func(name string) safesync.StreamConfig {
				cfg := faultStreamConfig(w.stream, w.group, name)
				cfg.Concurrency = 1
				cfg.ClaimIdle = 500 * time.Millisecond
				cfg.ClaimInterval = 100 * time.Millisecond
				return cfg
			}

			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			var runs sync.WaitGroup
			runErrs := make([]error, 2)
			runs.Add(1)
			go func() { defer runs.Done(); runErrs[0] = slow.Run(runCtx, rdb, config("slow")) }()
			select {
			case <-slowStarted:
			case <-time.After(30 * time.Second):
				t.Fatal("the slow consumer did not start on the entry")
			}
			runs.Add(1)
			go func() { defer runs.Done(); runErrs[1] = fast.Run(runCtx, rdb, config("fast")) }()

			err := pollUntil(time.Minute, "nothing pending, entry applied", func() (bool, error) {
				n, err := xpendingCount(ctx, rdb, w.stream, w.group)
				if err != nil {
					return false, err
				}
				effects, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM `"+w.effects+"`")
				return n == 0 && effects >= 1 && slowRuns.Load() >= 1 && (!tc.once || fastCommitted.Load() >= 1), err
			})
			cancel()
			runs.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if slowWaitErr != nil {
				t.Fatalf("the slow handler: %v", slowWaitErr)
			}
			for _, err := range runErrs {
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			}

			effects := countRows(t, db, w.effects)
			balance, err := safesync.Get[int64](ctx, db, "SELECT balance FROM `"+w.accounts+"` WHERE id = ?", w.good[id].AccountID)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("slow handler runs %d, fast handler runs %d, fast commits %d, effects %d, balance %d (amount %d)",
				slowRuns.Load(), fastRuns.Load(), fastCommitted.Load(), effects, balance, w.good[id].Amount)
			if effects != int64(tc.wantEffects) || balance != int64(tc.wantEffects)*w.good[id].Amount {
				t.Fatalf("effects = %d, balance = %d; want %d effects of %d", effects, balance, tc.wantEffects, w.good[id].Amount)
			}
			if slowRuns.Load() != 1 || fastRuns.Load() != tc.wantFastRuns {
				t.Fatalf("handler runs: slow %d, fast %d; want 1 and %d", slowRuns.Load(), fastRuns.Load(), tc.wantFastRuns)
			}
			if tc.once && fastAcked.Load() != 1 {
				t.Fatalf("fast committed and acknowledged %d entries, want 1", fastAcked.Load())
			}
			if tc.once {
				w.check(t)
			} else if n, err := xpendingCount(ctx, rdb, w.stream, w.group); err != nil || n != 0 {
				t.Fatalf("XPENDING count = %d, %v; want 0", n, err)
			}
		})
	}
}
