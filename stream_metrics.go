package safesync

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// streamMetrics is the queue collectors of one stream and group with their
// labels resolved once, so that recording costs no label lookup per entry.
// Every method is safe on a nil *streamMetrics, which records nothing.
type streamMetrics struct {
	m              *Metrics
	stream         string
	read           prometheus.Counter
	acked          prometheus.Counter
	ackFailures    prometheus.Counter
	claimed        prometheus.Counter
	panics         prometheus.Counter
	readLatency    prometheus.Observer
	handlerLatency prometheus.Observer
	pending        prometheus.Gauge
	oldestPending  prometheus.Gauge
	paused         prometheus.Gauge

	// Set for a partition of a partitioned stream, else nil.
	partRead    prometheus.Counter
	partAck     prometheus.Counter
	partPending prometheus.Gauge
}

// forPartition returns the collectors of one partition: those of its own
// stream key, plus the partition_* ones labelled with the logical stream
// and the partition index.
func (m *Metrics) forPartition(stream, group, logical string, index int) *streamMetrics {
	s := m.forStream(stream, group)
	if s == nil {
		return nil
	}
	label := strconv.Itoa(index)
	s.partRead = m.partRead.WithLabelValues(logical, label)
	s.partAck = m.partAck.WithLabelValues(logical, label)
	s.partPending = m.partPending.WithLabelValues(logical, group, label)
	return s
}

// forStream returns the collectors of stream and group, or nil when m is
// nil.
func (m *Metrics) forStream(stream, group string) *streamMetrics {
	if m == nil {
		return nil
	}
	return &streamMetrics{
		m:              m,
		stream:         stream,
		read:           m.readTotal.WithLabelValues(stream),
		acked:          m.ackTotal.WithLabelValues(stream),
		ackFailures:    m.ackFailures.WithLabelValues(stream),
		claimed:        m.claimedTotal.WithLabelValues(stream),
		panics:         m.handlerPanics.WithLabelValues(stream),
		readLatency:    m.readLatency.WithLabelValues(stream),
		handlerLatency: m.handlerLatency.WithLabelValues(stream),
		pending:        m.pending.WithLabelValues(stream, group),
		oldestPending:  m.oldestPending.WithLabelValues(stream, group),
		paused:         m.paused.WithLabelValues(stream, group),
	}
}

func (s *streamMetrics) countRead(n int) {
	if s != nil && n > 0 {
		s.read.Add(float64(n))
		if s.partRead != nil {
			s.partRead.Add(float64(n))
		}
	}
}

// observeRead records the duration of a read that returned entries without
// waiting for them (see the read_latency_seconds help text).
func (s *streamMetrics) observeRead(elapsed time.Duration) {
	if s != nil {
		s.readLatency.Observe(elapsed.Seconds())
	}
}

func (s *streamMetrics) countAcked(n int64) {
	if s != nil && n > 0 {
		s.acked.Add(float64(n))
		if s.partAck != nil {
			s.partAck.Add(float64(n))
		}
	}
}

func (s *streamMetrics) countAckFailure() {
	if s != nil {
		s.ackFailures.Inc()
	}
}

func (s *streamMetrics) countClaimed(n int) {
	if s != nil && n > 0 {
		s.claimed.Add(float64(n))
	}
}

func (s *streamMetrics) countDeadLettered(reason string) {
	if s != nil {
		s.m.deadLettered.WithLabelValues(s.stream, reason).Inc()
	}
}

func (s *streamMetrics) observeHandler(elapsed time.Duration) {
	if s != nil {
		s.handlerLatency.Observe(elapsed.Seconds())
	}
}

func (s *streamMetrics) countHandlerPanic() {
	if s != nil {
		s.panics.Inc()
	}
}

// setPending records the group's pending-entry count and the idle time of
// its oldest pending entry (0 when none is pending).
func (s *streamMetrics) setPending(count int64, oldestIdle time.Duration) {
	if s != nil {
		s.pending.Set(float64(count))
		s.oldestPending.Set(oldestIdle.Seconds())
		if s.partPending != nil {
			s.partPending.Set(float64(count))
		}
	}
}

// countFailure counts a handler failure of kind (see FailureError and the
// other kinds).
func (s *streamMetrics) countFailure(kind string) {
	if s != nil {
		s.m.handlerFailures.WithLabelValues(s.stream, kind).Inc()
	}
}

// setPaused records whether the consumer is paused by an outage.
func (s *streamMetrics) setPaused(paused bool) {
	if s != nil {
		v := 0.0
		if paused {
			v = 1
		}
		s.paused.Set(v)
	}
}
