package integration

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/safesync-go/safesync"
)

// BenchmarkStrategies increments counters from 8 concurrent workers with
// each concurrency strategy, on one hot row and spread over 64 rows, and
// reports throughput, per-operation latency percentiles and retries per
// operation. Every strategy runs in the same process against the same
// server in one run.
func BenchmarkStrategies(b *testing.B) {
	const workers = 8
	for _, rows := range []int{1, 64} {
		for _, strat := range []string{"atomic", "rowlock", "advisory", "occ"} {
			b.Run(fmt.Sprintf("rows=%d/%s", rows, strat), func(b *testing.B) {
				db := openMySQL(b, nil)
				db.SetMaxOpenConns(workers * 2)
				db.SetMaxIdleConns(workers * 2)
				table := createTable(b, db, "strat", counterDDL)
				for id := 1; id <= rows; id++ {
					if _, err := db.Exec("INSERT INTO `"+table+"` (id) VALUES (?)", id); err != nil {
						b.Fatal(err)
					}
				}
				var retries atomic.Int64
				op := strategyOp(db, table, strat, &retries)
				var next atomic.Int64
				lat := make([][]time.Duration, workers)
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for w := range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							id := int64(1 + rand.IntN(rows))
							t0 := time.Now()
							if err := op(context.Background(), id); err != nil {
								b.Error(err)
								return
							}
							lat[w] = append(lat[w], time.Since(t0))
						}
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				var all []time.Duration
				for _, l := range lat {
					all = append(all, l...)
				}
				sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
				var sum int64
				for id := 1; id <= rows; id++ {
					sum += amountOf(b, db, table, int64(id))
				}
				if sum != int64(b.N) {
					b.Fatalf("counters sum to %d after %d increments", sum, b.N)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
				b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
				b.ReportMetric(float64(retries.Load())/float64(b.N), "retries/op")
			})
		}
	}
}

// strategyOp returns one increment of row id with the named strategy.
func strategyOp(db *sql.DB, table, strat string, retries *atomic.Int64) func(ctx context.Context, id int64) error {
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		panic(err)
	}
	tbl := "`" + table + "`"
	policy := safesync.Exponential(time.Millisecond, 20*time.Millisecond).WithMaxAttempts(1000).
		WithMetrics(m).WithOnRetry(func(safesync.RetryEvent) { retries.Add(1) })
	run := func(ctx context.Context, op safesync.TxFunc[struct{}]) error {
		_, err := safesync.Retry(policy, safesync.WithTx(db, op, safesync.WithMetrics(m)))(ctx)
		return err
	}
	readWrite := func(id int64) safesync.TxFunc[struct{}] {
		return safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			cur, err := safesync.Get[int64](ctx, tx, "SELECT amount FROM "+tbl+" WHERE id = ?", id)
			if err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, "UPDATE "+tbl+" SET amount = ? WHERE id = ?", cur+1, id)
			return err
		})
	}
	switch strat {
	case "atomic":
		return func(ctx context.Context, id int64) error {
			return run(ctx, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
				_, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET amount = amount + 1 WHERE id = ?", id)
				return err
			}))
		}
	case "rowlock":
		return func(ctx context.Context, id int64) error {
			return run(ctx, safesync.WithRowLock(table, safesync.Key{"id": id}, func(ctx context.Context, tx *safesync.Tx, r counterRow) (struct{}, error) {
				_, err := tx.ExecContext(ctx, "UPDATE "+tbl+" SET amount = ? WHERE id = ?", r.Amount+1, id)
				return struct{}{}, err
			}))
		}
	case "advisory":
		return func(ctx context.Context, id int64) error {
			return run(ctx, safesync.WithAdvisoryLock(fmt.Sprintf("%s:%d", table, id), 30*time.Second, readWrite(id)))
		}
	case "occ":
		return func(ctx context.Context, id int64) error {
			read := safesync.ReadVersioned[counterRow](table, safesync.Key{"id": id}, "version")
			return run(ctx, func(ctx context.Context, tx *safesync.Tx) (struct{}, error) {
				_, err := safesync.OCC(read, func(r counterRow) (counterRow, error) { r.Amount++; return r, nil })(ctx, tx)
				return struct{}{}, err
			})
		}
	}
	panic("unknown strategy " + strat)
}
