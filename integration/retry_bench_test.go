package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

// BenchmarkRetryUnderContention measures what a retry budget must allow
// when six (or twelve) workers increment one row: every operation retries without
// limit, and the benchmark reports how many attempts operations needed
// (median, 99th percentile, maximum), the share that a budget of 10 or 20
// attempts would have failed, and the 99th percentile and longest time per
// operation. Twelve workers show how the need grows with contention.
// It runs OCC (conflicts), and an advisory lock whose GET_LOCK timeout is
// shorter than the queue of waiters (timeouts), each with a few policies
// and with and without work between read and write.
//
//	go test -run '^$' -bench RetryUnderContention -benchtime 600x -count 5 ./integration/
func BenchmarkRetryUnderContention(b *testing.B) {
	for _, workers := range []int{6, 12} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) { retryUnderContention(b, workers) })
	}
}

func retryUnderContention(b *testing.B, workers int) {
	policies := []struct {
		name   string
		policy safesync.RetryPolicy
	}{
		{"Backoff(1ms)", safesync.Backoff(time.Millisecond, 1<<30)},
		{"Backoff(10ms)", safesync.Backoff(10*time.Millisecond, 1<<30)},
	}
	for _, think := range []time.Duration{0, 2 * time.Millisecond, 5 * time.Millisecond} {
		for _, strat := range []string{"occ", "advisory-timeout"} {
			for _, pol := range policies {
				b.Run(fmt.Sprintf("%s/think=%v/%s", strat, think, pol.name), func(b *testing.B) {
					db := openMySQL(b, nil)
					db.SetMaxOpenConns(2 * workers)
					db.SetMaxIdleConns(2 * workers)
					table := createTable(b, db, "rb", counterDDL)
					if _, err := db.Exec("INSERT INTO `" + table + "` (id) VALUES (1)"); err != nil {
						b.Fatal(err)
					}
					op := contendedOp(table, strat, think)
					// Every error the default classifier retries, plus
					// advisory lock timeouts, is retried here, so that the
					// attempts an operation needed are seen whole.
					policy := pol.policy.WithMetrics(nil).WithClassifier(func(err error) (string, bool) {
						if errors.Is(err, safesync.ErrLockTimeout) {
							return "lock_timeout", true
						}
						return safesync.DefaultClassifier(err)
					})
					var next atomic.Int64
					attempts := make([][]int, workers)
					took := make([][]time.Duration, workers)
					b.ResetTimer()
					start := time.Now()
					var wg sync.WaitGroup
					for w := range workers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for next.Add(1) <= int64(b.N) {
								n := 1
								p := policy.WithOnRetry(func(e safesync.RetryEvent) { n = e.Attempt + 1 })
								t0 := time.Now()
								if _, err := safesync.Retry(p, safesync.WithTx(db, op, safesync.WithMetrics(nil)))(context.Background()); err != nil {
									b.Error(err)
									return
								}
								took[w] = append(took[w], time.Since(t0))
								attempts[w] = append(attempts[w], n)
							}
						}()
					}
					wg.Wait()
					elapsed := time.Since(start)
					b.StopTimer()
					all, times := slices.Concat(attempts...), slices.Concat(took...)
					slices.Sort(all)
					slices.Sort(times)
					over := func(budget int) float64 {
						n := 0
						for _, a := range all {
							if a > budget {
								n++
							}
						}
						return 100 * float64(n) / float64(len(all))
					}
					if amount := amountOf(b, db, table, 1); amount != int64(len(all)) {
						b.Fatalf("amount %d after %d increments", amount, len(all))
					}
					b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
					b.ReportMetric(float64(all[len(all)/2]), "attempts-p50")
					b.ReportMetric(float64(all[len(all)*99/100]), "attempts-p99")
					b.ReportMetric(float64(all[len(all)-1]), "attempts-max")
					b.ReportMetric(over(10), "%>10")
					b.ReportMetric(over(20), "%>20")
					b.ReportMetric(float64(times[len(times)*99/100].Microseconds())/1000, "p99-ms")
					b.ReportMetric(float64(times[len(times)-1].Microseconds())/1000, "max-ms")
				})
			}
		}
	}
}

// contendedOp is one increment of row 1 of table: an optimistic update
// ("occ"), or a read-modify-write under an advisory lock whose 10 ms
// timeout is shorter than five waiters' turns ("advisory-timeout"). think
// is the work between read and write.
func contendedOp(table, strat string, think time.Duration) safesync.TxFunc[struct{}] {
	work := func() {
		if think > 0 {
			time.Sleep(think)
		}
	}
	switch strat {
	case "occ":
		return func(ctx context.Context, tx *safesync.Tx) (struct{}, error) {
			_, err := safesync.OCCRow(table, safesync.Key{"id": 1}, "version", func(r counterRow) (counterRow, error) {
				work()
				r.Amount++
				return r, nil
			})(ctx, tx)
			return struct{}{}, err
		}
	case "advisory-timeout":
		return safesync.WithAdvisoryLock("rb:"+table[len(table)-8:], 10*time.Millisecond, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			cur, err := safesync.Get[int64](ctx, tx, "SELECT amount FROM `"+table+"` WHERE id = 1")
			if err != nil {
				return err
			}
			work()
			_, err = tx.ExecContext(ctx, "UPDATE `"+table+"` SET amount = ? WHERE id = 1", cur+1)
			return err
		}))
	}
	panic("unknown strategy " + strat)
}
