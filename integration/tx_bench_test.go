package integration

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/safesync-go/safesync"
)

// benchUpdate is the single-row UPDATE both sides run per transaction.
const benchUpdate = "UPDATE `%s` SET amount = amount + 1 WHERE id = ?"

func benchDB(b *testing.B, interpolate bool) (*sql.DB, string) {
	db := openMySQL(b, func(c *mysql.Config) { c.InterpolateParams = interpolate })
	db.SetMaxOpenConns(4)
	table := createTable(b, db, "bench", itemsDDL)
	if _, err := db.Exec("INSERT INTO `"+table+"` (id) VALUES (?)", 1); err != nil {
		b.Fatal(err)
	}
	return db, table
}

func handWritten(db *sql.DB, query string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, query, 1); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	}
}

func withSafesync(db *sql.DB, query string) func(ctx context.Context) error {
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		panic(err)
	}
	op := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (struct{}, error) {
		_, err := tx.ExecContext(ctx, query, 1)
		return struct{}{}, err
	}, safesync.WithMetrics(m))
	return func(ctx context.Context) error { _, err := op(ctx); return err }
}

// BenchmarkWithTx compares WithTx (with metrics recording) against the same
// transaction written by hand with database/sql, on the same DSN. The
// "pair" benchmarks run one of each per iteration, alternating which goes
// first, and report each side's median and the ratio of medians, so that
// drift on a busy machine hits both sides alike.
func BenchmarkWithTx(b *testing.B) {
	for _, mode := range []struct {
		name        string
		interpolate bool
	}{{"prepared", false}, {"interpolateParams", true}} {
		b.Run(mode.name+"/database_sql", func(b *testing.B) {
			db, table := benchDB(b, mode.interpolate)
			run := handWritten(db, fmt.Sprintf(benchUpdate, table))
			b.ReportAllocs()
			for b.Loop() {
				if err := run(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(mode.name+"/safesync", func(b *testing.B) {
			db, table := benchDB(b, mode.interpolate)
			run := withSafesync(db, fmt.Sprintf(benchUpdate, table))
			b.ReportAllocs()
			for b.Loop() {
				if err := run(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(mode.name+"/pair", func(b *testing.B) {
			db, table := benchDB(b, mode.interpolate)
			query := fmt.Sprintf(benchUpdate, table)
			sides := [2]func(context.Context) error{handWritten(db, query), withSafesync(db, query)}
			var samples [2][]time.Duration
			i := 0
			for b.Loop() {
				for k := range 2 {
					side := (i + k) % 2
					start := time.Now()
					if err := sides[side](context.Background()); err != nil {
						b.Fatal(err)
					}
					samples[side] = append(samples[side], time.Since(start))
				}
				i++
			}
			base, ours := median(samples[0]), median(samples[1])
			b.ReportMetric(float64(base.Nanoseconds()), "database_sql-ns/tx")
			b.ReportMetric(float64(ours.Nanoseconds()), "safesync-ns/tx")
			b.ReportMetric(float64(ours)/float64(base), "ratio")
		})
	}
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
