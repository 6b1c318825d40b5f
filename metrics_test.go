package safesync

import (
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestTableLabelsAreCappedAtMaxTableLabels(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{Registerer: prometheus.NewRegistry(), MaxTableLabels: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		m.observeStatement(fmt.Sprintf("INSERT INTO t%d VALUES (1)", i), time.Millisecond, nil)
	}
	m.observeStatement("INSERT INTO t0 VALUES (1)", time.Millisecond, nil)
	for label, want := range map[string]float64{"t0": 2, "t1": 1, "t2": 0, "other": 3} {
		if got := testutil.ToFloat64(m.writeTotal.WithLabelValues(label, "insert", "success")); got != want {
			t.Errorf("write_total{table=%s} = %v, want %v", label, got, want)
		}
	}
}

func TestTableLabelsCanBeAnAllowlist(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{Registerer: prometheus.NewRegistry(), Tables: []string{"orders"}})
	if err != nil {
		t.Fatal(err)
	}
	m.observeStatement("UPDATE orders SET a = 1", time.Millisecond, nil)
	m.observeStatement("UPDATE users SET a = 1", time.Millisecond, errors.New("x"))
	if got := testutil.ToFloat64(m.writeTotal.WithLabelValues("orders", "update", "success")); got != 1 {
		t.Errorf("orders = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.writeTotal.WithLabelValues("other", "update", "error")); got != 1 {
		t.Errorf("other = %v, want 1", got)
	}
}

func TestNewMetricsTwiceOnOneRegistryShares(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := NewMetrics(MetricsOptions{Registerer: reg, Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewMetrics(MetricsOptions{Registerer: reg, Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	a.countRetry("deadlock")
	b.countRetry("deadlock")
	if n, err := testutil.GatherAndCount(reg, "shop_db_retries_total"); err != nil || n != 1 {
		t.Fatalf("shop_db_retries_total series = %d, %v; want 1", n, err)
	}
	if got := testutil.ToFloat64(a.retries.WithLabelValues("deadlock")); got != 2 {
		t.Fatalf("shared counter = %v, want 2", got)
	}
}

func TestNewMetricsRejectsBadOptions(t *testing.T) {
	if _, err := NewMetrics(MetricsOptions{Registerer: prometheus.NewRegistry(), Namespace: "bad-name"}); err == nil {
		t.Error("namespace with a dash accepted")
	}
	if _, err := NewMetrics(MetricsOptions{Registerer: prometheus.NewRegistry(), MaxTableLabels: -1}); err == nil {
		t.Error("negative MaxTableLabels accepted")
	}
}

func TestANilMetricsRecordsNothing(t *testing.T) {
	var m *Metrics
	m.observeStatement("UPDATE t SET a = 1", time.Millisecond, nil)
	m.observeTx("x", outcomeCommit, time.Millisecond)
	m.observeLockAcquire(strategyRow, time.Millisecond)
	m.countLockTimeout(strategyAdvisory)
	m.countLockLost(strategyAdvisory)
	m.countConflict("t")
	m.countRetry("conflict")
}

func TestCommitErrorsAreClassifiedByWhatTheServerCanHaveDone(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		unknown bool
	}{
		{"the server refused the commit", &mysql.MySQLError{Number: 1213, Message: "deadlock"}, false},
		{"the commit was never sent", driver.ErrBadConn, false},
		{"the connection broke after sending", mysql.ErrInvalidConn, true},
		{"the stream ended after sending", io.ErrUnexpectedEOF, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := classifyCommitError(tt.err)
			if !errors.Is(err, tt.err) {
				t.Fatalf("classified error %v does not wrap %v", err, tt.err)
			}
			if got := errors.Is(err, ErrCommitUnknown); got != tt.unknown {
				t.Fatalf("errors.Is(%v, ErrCommitUnknown) = %v, want %v", err, got, tt.unknown)
			}
		})
	}
	if classifyCommitError(nil) != nil {
		t.Fatal("nil commit error classified as a failure")
	}
}

// pythonDefaultBuckets are prometheus_client's default histogram buckets,
// which the original framework's histograms used.
var pythonDefaultBuckets = []float64{.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10}

// Regression (issue 11, item 12): the original's dashboards and alerts
// select buckets by le, and 0.075, 0.75 and 7.5 were missing. Every
// histogram has every bucket of the original (plus finer ones below 5 ms).
func TestEveryHistogramHasEveryBucketOfTheOriginal(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(MetricsOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	m.observeStatement("UPDATE t SET a = 1", time.Millisecond, nil)
	m.observeTx("x", outcomeCommit, time.Millisecond)
	m.observeLockAcquire(strategyRow, time.Millisecond)
	m.readLatency.WithLabelValues("s").Observe(0.001)
	m.handlerLatency.WithLabelValues("s").Observe(0.001)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	histograms := 0
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			h := metric.GetHistogram()
			if h == nil {
				continue
			}
			histograms++
			have := map[float64]bool{}
			for _, b := range h.GetBucket() {
				have[b.GetUpperBound()] = true
			}
			for _, le := range pythonDefaultBuckets {
				if !have[le] {
					t.Errorf("%s has no bucket le=%v", f.GetName(), le)
				}
			}
		}
	}
	if histograms != 5 {
		t.Fatalf("checked %d histograms, want 5", histograms)
	}
}

// Recording a statement that succeeded costs no allocation, whatever the
// case of its keyword: it runs for every statement of every transaction.
func TestObserveStatementAllocatesNothing(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, query string }{
		{"an upper-case update", "UPDATE accounts SET balance = balance + ? WHERE id = ?"},
		{"a lower-case insert", "insert into accounts (id) values (?)"},
		{"a replace", "REPLACE INTO `kv` VALUES (?, ?)"},
		{"not a write", "SELECT balance FROM accounts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.observeStatement(tc.query, time.Millisecond, nil) // creates the series
			if n := testing.AllocsPerRun(100, func() { m.observeStatement(tc.query, time.Millisecond, nil) }); n != 0 {
				t.Errorf("observeStatement allocated %v times, want 0", n)
			}
		})
	}
}

// A statement that failed because its table does not exist (1146) or
// could not be parsed (1064) is labelled "other", its name being
// unbounded; other failures keep the table's name.
func TestFailedStatementsOfUnknownTablesAreLabelledOther(t *testing.T) {
	m, err := NewMetrics(MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	m.observeStatement("INSERT INTO nosuch VALUES (1)", time.Millisecond, fmt.Errorf("wrapped: %w", &mysql.MySQLError{Number: 1146}))
	m.observeStatement("UPDATE `bad SET x", time.Millisecond, &mysql.MySQLError{Number: 1064})
	m.observeStatement("UPDATE accounts SET x = 1", time.Millisecond, &mysql.MySQLError{Number: 1213})
	for _, c := range []struct {
		table, op string
		want      float64
	}{
		{"other", "insert", 1}, {"nosuch", "insert", 0}, {"other", "update", 1}, {"accounts", "update", 1},
	} {
		if got := testutil.ToFloat64(m.writeTotal.WithLabelValues(c.table, c.op, "error")); got != c.want {
			t.Errorf("write_total{table=%s,op_type=%s,status=error} = %v, want %v", c.table, c.op, got, c.want)
		}
	}
}
