package safesynctest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/safesync-go/safesync"
)

// NewMetrics returns safesync Metrics registered on a registry of their
// own, so that a test reads only what its own code recorded, and that
// registry. It fails the test if the collectors cannot be registered.
func NewMetrics(tb testing.TB) (*safesync.Metrics, *prometheus.Registry) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg})
	if err != nil {
		tb.Fatal(err)
	}
	return m, reg
}

// MetricValue gathers g and returns the sum over the samples of the metric
// named name (with its namespace, as exposed: "coti_safesync_queue_messages_ack_total")
// whose labels include every pair in labels: the value of a counter or a
// gauge, the sample count of a histogram or a summary. It returns 0 when no
// sample matches. It fails the test if g cannot be gathered.
//
//	acked := safesynctest.MetricValue(t, reg, "coti_safesync_queue_messages_ack_total", map[string]string{"stream": "orders"})
func MetricValue(tb testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	tb.Helper()
	families, err := g.Gather()
	if err != nil {
		tb.Fatalf("safesynctest: gather metrics: %v", err)
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
			case m.Summary != nil:
				total += float64(m.Summary.GetSampleCount())
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
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
