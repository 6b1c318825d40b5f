package safesync_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// newTestMetrics returns Metrics on a private registry, and the registry.
func newTestMetrics(t *testing.T) (*safesync.Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// metricValue returns the value of the counter, gauge or histogram sample
// count named name whose labels include all of labels, or 0.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return total
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == k && lp.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// embeddedDB returns a one-connection pool on a fresh embedded MySQL with an
// accounts table holding rows (1, 100) and (2, 0).
func embeddedDB(t *testing.T) *sql.DB {
	t.Helper()
	db := safesynctest.NewMySQL(t)
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

func safesynctestMySQL(t *testing.T) *sql.DB { return safesynctest.NewMySQL(t) }

// fmtMap prints a row map with byte slices as strings, keys sorted.
func fmtMap(m map[string]any) string { return fmt.Sprint(m) }
