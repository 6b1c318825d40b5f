package safesync

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// outboxCollectors are the outbox relay's collectors, part of Metrics. The
// outbox label is the outbox table's name, from RelayConfig.Table.
type outboxCollectors struct {
	backlog   *prometheus.GaugeVec
	oldestAge *prometheus.GaugeVec
	batches   *prometheus.CounterVec
	relayed   *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	errors    *prometheus.CounterVec
	leader    *prometheus.GaugeVec
}

// Stages of the relay_errors_total metric.
const (
	relayStageLock   = "lock"   // acquiring, confirming or holding the leader's lock
	relayStageRead   = "read"   // reading a batch or the backlog figures
	relayStageAdd    = "xadd"   // adding entries to a stream
	relayStageMark   = "mark"   // deleting or marking relayed rows
	relayStageDecode = "decode" // a row that cannot be made into an entry
)

func newOutboxCollectors(
	counter func(sub, name, help string, labels ...string) *prometheus.CounterVec,
	histogram func(sub, name, help string, labels ...string) *prometheus.HistogramVec,
	gauge func(sub, name, help string, labels ...string) *prometheus.GaugeVec,
) *outboxCollectors {
	return &outboxCollectors{
		backlog:   gauge("outbox", "backlog_rows", "Rows of the outbox not yet relayed, refreshed by the leading relay every StatsInterval.", "outbox"),
		oldestAge: gauge("outbox", "oldest_unrelayed_age_seconds", "Age of the oldest unrelayed row of the outbox (0 when none), refreshed by the leading relay every StatsInterval.", "outbox"),
		batches:   counter("outbox", "relay_batches_total", "Batches of rows the relay added to their streams.", "outbox"),
		relayed:   counter("outbox", "relayed_total", "Outbox rows the relay added to their streams.", "outbox"),
		latency:   histogram("outbox", "relay_latency_seconds", "Time from an event's INSERT into the outbox (database clock) to the reply of its XADD.", "outbox"),
		errors:    counter("outbox", "relay_errors_total", "Relay failures by stage (lock, read, xadd, mark, decode); the relay retries each.", "outbox", "stage"),
		leader:    gauge("outbox", "relay_leader", "1 while this process's relay of the outbox is the leader, else 0.", "outbox"),
	}
}

// relayMetrics are the collectors of one relay, bound to its outbox label.
// A nil *relayMetrics records nothing.
type relayMetrics struct {
	c         *outboxCollectors
	outbox    string
	backlog   prometheus.Gauge
	oldestAge prometheus.Gauge
	batches   prometheus.Counter
	relayed   prometheus.Counter
	latency   prometheus.Observer
	leader    prometheus.Gauge
}

func (m *Metrics) forRelay(outbox string) *relayMetrics {
	if m == nil || m.outbox == nil {
		return nil
	}
	c := m.outbox
	return &relayMetrics{
		c:         c,
		outbox:    outbox,
		backlog:   c.backlog.WithLabelValues(outbox),
		oldestAge: c.oldestAge.WithLabelValues(outbox),
		batches:   c.batches.WithLabelValues(outbox),
		relayed:   c.relayed.WithLabelValues(outbox),
		latency:   c.latency.WithLabelValues(outbox),
		leader:    c.leader.WithLabelValues(outbox),
	}
}

func (r *relayMetrics) countError(stage string) {
	if r != nil {
		r.c.errors.WithLabelValues(r.outbox, stage).Inc()
	}
}

func (r *relayMetrics) setLeader(leading bool) {
	if r != nil {
		v := 0.0
		if leading {
			v = 1
		}
		r.leader.Set(v)
	}
}

// observeBatch records one relayed batch of n rows.
func (r *relayMetrics) observeBatch(n int) {
	if r != nil {
		r.batches.Inc()
		r.relayed.Add(float64(n))
	}
}

func (r *relayMetrics) observeLatency(d time.Duration) {
	if r != nil {
		r.latency.Observe(d.Seconds())
	}
}

func (r *relayMetrics) setBacklog(rows int64, oldest time.Duration) {
	if r != nil {
		r.backlog.Set(float64(rows))
		r.oldestAge.Set(oldest.Seconds())
	}
}
