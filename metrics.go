package safesync

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultNamespace is the metric name prefix used when MetricsOptions leaves
// Namespace empty. It is the original framework's, so its dashboards and
// alerts keep working.
const DefaultNamespace = "coti_safesync"

// DefaultMaxTableLabels bounds the distinct values of the table label when
// MetricsOptions leaves MaxTableLabels at zero.
const DefaultMaxTableLabels = 64

// otherLabel is the label value for anything without a bounded name.
const otherLabel = "other"

// MetricsOptions configures NewMetrics. The zero value registers the
// original's metric names on prometheus.DefaultRegisterer.
type MetricsOptions struct {
	// Registerer receives every collector. Nil means prometheus.DefaultRegisterer.
	Registerer prometheus.Registerer
	// Namespace prefixes every metric name. Empty means DefaultNamespace.
	Namespace string
	// Tables, when not empty, is the complete set of values the table label
	// may take; writes to any other table are labelled "other".
	Tables []string
	// MaxTableLabels caps the distinct table label values when Tables is
	// empty: the first MaxTableLabels tables written to keep their name,
	// later ones are labelled "other". Zero means DefaultMaxTableLabels.
	MaxTableLabels int
}

// Metrics is a set of Prometheus collectors for transactions, locks and
// streams. One Metrics may be shared by any number of goroutines,
// transactions and consumers. A nil *Metrics records nothing.
//
// Label cardinality is bounded by construction: the table label is the
// target of an INSERT, UPDATE, DELETE or REPLACE read by a small scanner
// (never a regular expression over the whole statement), kept only when it
// is a valid identifier and within MaxTableLabels (or the Tables allowlist),
// and "other" otherwise; a statement that failed because its table does not
// exist is labelled "other". The stream, group, strategy, reason and
// transaction label values come from configuration and code, not from data.
//
// Every histogram has the original framework's buckets (prometheus_client's
// defaults, .005 to 10 s) and four finer ones below them. Write counts and
// latencies are per statement, each with its own status and duration (the
// original's were per session); read latency excludes time blocked waiting
// for entries. README's Metrics section compares them in full.
//
// Partitioned streams (see Partitions) are recorded twice: every queue
// metric carries the partition's own key as its stream label, exactly as
// for a stream of its own, and three partition_* metrics carry the logical
// stream's name and the partition index (0 to P-1, so at most P values):
// partition_messages_read_total, partition_messages_ack_total and
// partition_pending_entries. The existing metrics keep their names and
// labels.
type Metrics struct {
	writeTotal     *prometheus.CounterVec
	writeLatency   *prometheus.HistogramVec
	txTotal        *prometheus.CounterVec
	txLatency      *prometheus.HistogramVec
	lockAcquire    *prometheus.HistogramVec
	lockTimeouts   *prometheus.CounterVec
	lockLost       *prometheus.CounterVec
	occConflicts   *prometheus.CounterVec
	retries        *prometheus.CounterVec
	readTotal      *prometheus.CounterVec
	ackTotal       *prometheus.CounterVec
	ackFailures    *prometheus.CounterVec
	claimedTotal   *prometheus.CounterVec
	readLatency    *prometheus.HistogramVec
	deadLettered   *prometheus.CounterVec
	handlerLatency *prometheus.HistogramVec
	handlerPanics  *prometheus.CounterVec
	pending        *prometheus.GaugeVec
	oldestPending  *prometheus.GaugeVec
	partRead       *prometheus.CounterVec
	partAck        *prometheus.CounterVec
	partPending    *prometheus.GaugeVec
	// Added for outages: see handler_failures_total and paused.
	handlerFailures *prometheus.CounterVec
	paused          *prometheus.GaugeVec

	// Outbox relays (outbox_metrics.go).
	outbox *outboxCollectors

	allow     map[string]bool
	maxTables int
	mu        sync.Mutex
	seen      map[string]bool
}

// latencyBuckets are every bucket of the original framework's histograms
// (prometheus_client's defaults: .005 to 10 s, 14 buckets), so that its
// dashboards and alerts, which select buckets by le, keep working, plus
// four finer ones below 5 ms, where a statement on a nearby server lands.
var latencyBuckets = []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10}

var defaultMetrics = sync.OnceValue(func() *Metrics {
	m, err := NewMetrics(MetricsOptions{})
	if err != nil {
		// Only a collector of the same name but another shape already in
		// the default registry can cause this; record nothing rather than
		// crash the program that imported us.
		return nil
	}
	return m
})

// DefaultMetrics returns the Metrics registered on
// prometheus.DefaultRegisterer under DefaultNamespace, creating it on first
// use. Transactions and consumers use it unless given their own.
func DefaultMetrics() *Metrics { return defaultMetrics() }

// NewMetrics creates the collectors and registers them. Registering the
// same names twice on one registerer is not an error: the collectors
// already there are reused, so two Metrics on one registry share counts.
func NewMetrics(opts MetricsOptions) (*Metrics, error) {
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	ns := opts.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	if err := ValidateIdentifier(ns); err != nil {
		return nil, errors.Join(errors.New("safesync: MetricsOptions.Namespace"), err)
	}
	if opts.MaxTableLabels < 0 {
		return nil, errors.New("safesync: MetricsOptions.MaxTableLabels is negative")
	}
	m := &Metrics{maxTables: opts.MaxTableLabels, seen: map[string]bool{}}
	if m.maxTables == 0 {
		m.maxTables = DefaultMaxTableLabels
	}
	if len(opts.Tables) > 0 {
		m.allow = map[string]bool{}
		for _, t := range opts.Tables {
			m.allow[t] = true
		}
	}

	var errs []error
	counter := func(sub, name, help string, labels ...string) *prometheus.CounterVec {
		c, err := registerCollector(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels))
		errs = append(errs, err)
		return c
	}
	histogram := func(sub, name, help string, labels ...string) *prometheus.HistogramVec {
		h, err := registerCollector(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, Buckets: latencyBuckets}, labels))
		errs = append(errs, err)
		return h
	}
	gauge := func(sub, name, help string, labels ...string) *prometheus.GaugeVec {
		g, err := registerCollector(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels))
		errs = append(errs, err)
		return g
	}

	m.writeTotal = counter("db", "write_total", "Write statements run inside transactions, by target table, operation and status (success or error).", "table", "op_type", "status")
	m.writeLatency = histogram("db", "write_latency_seconds", "Duration of each write statement alone, by target table and operation.", "table", "op_type")
	m.txTotal = counter("db", "transactions_total", "Transactions by label and outcome (commit, rollback, commit_unknown).", "label", "outcome")
	m.txLatency = histogram("db", "transaction_latency_seconds", "Duration from BEGIN to the end of COMMIT or ROLLBACK, by label.", "label")
	m.lockAcquire = histogram("db", "lock_acquire_latency_seconds", "Time to acquire a lock, by strategy (row or advisory).", "strategy")
	m.lockTimeouts = counter("db", "lock_timeouts_total", "Lock acquisitions that timed out or were refused (NOWAIT), by strategy.", "strategy")
	m.lockLost = counter("db", "lock_lost_total", "Advisory locks lost while held (connection died or lock taken over).", "strategy")
	m.occConflicts = counter("db", "occ_conflicts_total", "Optimistic updates that matched no row because the version moved, by table.", "table")
	m.retries = counter("db", "retries_total", "Attempts re-run by Retry, by reason.", "reason")
	m.readTotal = counter("queue", "messages_read_total", "Stream entries delivered to this process, by stream.", "stream")
	m.ackTotal = counter("queue", "messages_ack_total", "Stream entries acknowledged, by stream.", "stream")
	m.ackFailures = counter("queue", "ack_failures_total", "XACK calls that failed, by stream.", "stream")
	m.claimedTotal = counter("queue", "messages_claimed_total", "Stale stream entries claimed from other consumers, by stream.", "stream")
	m.readLatency = histogram("queue", "read_latency_seconds", "Duration of stream reads that returned entries (time spent blocked waiting for entries is excluded), by stream.", "stream")
	m.deadLettered = counter("queue", "dead_lettered_total", "Stream entries moved to the dead-letter stream, by stream and reason.", "stream", "reason")
	m.handlerLatency = histogram("queue", "handler_latency_seconds", "Duration of handler calls (for pipelines, the whole transaction), by stream.", "stream")
	m.handlerPanics = counter("queue", "handler_panics_total", "Message handlers that panicked (the entry stays pending), by stream.", "stream")
	m.pending = gauge("queue", "pending_entries", "Entries delivered to the group but not acknowledged, by stream and group.", "stream", "group")
	m.oldestPending = gauge("queue", "oldest_pending_age_seconds", "Idle time of the oldest unacknowledged entry, by stream and group.", "stream", "group")
	m.partRead = counter("queue", "partition_messages_read_total", "Entries of a partitioned stream delivered to this process, by logical stream and partition index.", "stream", "partition")
	m.partAck = counter("queue", "partition_messages_ack_total", "Entries of a partitioned stream acknowledged, by logical stream and partition index.", "stream", "partition")
	m.partPending = gauge("queue", "partition_pending_entries", "Entries of a partitioned stream delivered to the group but not acknowledged, by logical stream, group and partition index.", "stream", "group", "partition")
	m.handlerFailures = counter("queue", "handler_failures_total", "Handler failures, by stream and kind: error, panic, permanent and crash count towards MaxDeliveries; infrastructure and contention do not.", "stream", "kind")
	m.paused = gauge("queue", "paused", "1 while the consumer is paused because a server it needs (Redis, the pipeline's database) is unavailable, else 0; by stream and group.", "stream", "group")

	// Outbox relays (outbox_metrics.go).
	m.outbox = newOutboxCollectors(counter, histogram, gauge)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

// registerCollector registers c, or returns the equal collector already
// registered under the same name.
func registerCollector[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// tableLabel maps a parsed table name onto the bounded label set.
func (m *Metrics) tableLabel(table string) string {
	if table == "" {
		return otherLabel
	}
	if m.allow != nil {
		if m.allow[table] {
			return table
		}
		return otherLabel
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen[table] {
		return table
	}
	if len(m.seen) >= m.maxTables {
		return otherLabel
	}
	m.seen[table] = true
	return table
}

// observeStatement records one statement run inside a transaction. Only
// INSERT, UPDATE, DELETE and REPLACE are writes; other statements are not
// recorded. The latency is the statement's own.
func (m *Metrics) observeStatement(query string, elapsed time.Duration, err error) {
	if m == nil {
		return
	}
	op, table := statementTarget(query)
	if op == "" {
		return
	}
	status := "success"
	if err != nil {
		status = "error"
		if n := mysqlErrorNumber(err); n == 1146 || n == 1064 {
			table = "" // no such table, or not parsable: the name is not bounded
		}
	}
	label := m.tableLabel(table)
	m.writeTotal.WithLabelValues(label, op, status).Inc()
	m.writeLatency.WithLabelValues(label, op).Observe(elapsed.Seconds())
}

func (m *Metrics) observeTx(label, outcome string, elapsed time.Duration) {
	if m == nil {
		return
	}
	m.txTotal.WithLabelValues(label, outcome).Inc()
	m.txLatency.WithLabelValues(label).Observe(elapsed.Seconds())
}

// Lock strategy label values.
const (
	strategyRow      = "row"
	strategyAdvisory = "advisory"
)

func (m *Metrics) observeLockAcquire(strategy string, elapsed time.Duration) {
	if m != nil {
		m.lockAcquire.WithLabelValues(strategy).Observe(elapsed.Seconds())
	}
}

func (m *Metrics) countLockTimeout(strategy string) {
	if m != nil {
		m.lockTimeouts.WithLabelValues(strategy).Inc()
	}
}

func (m *Metrics) countLockLost(strategy string) {
	if m != nil {
		m.lockLost.WithLabelValues(strategy).Inc()
	}
}

func (m *Metrics) countConflict(table string) {
	if m != nil {
		m.occConflicts.WithLabelValues(m.tableLabel(table)).Inc()
	}
}

func (m *Metrics) countRetry(reason string) {
	if m != nil {
		m.retries.WithLabelValues(reason).Inc()
	}
}

// statementTarget reads the operation and target table of a write statement
// without interpreting anything else in it. op is one of insert, update,
// delete, replace or "" when the statement is not one of those writes; table
// is the unqualified table name, or "" when it cannot be read safely (the
// caller then labels the statement "other").
func statementTarget(query string) (op, table string) {
	s := statementScanner{src: query}
	// The keyword is matched without changing its case, so that the
	// statement of every write costs no allocation; op is a constant.
	switch kw := s.word(); {
	case strings.EqualFold(kw, "insert"), strings.EqualFold(kw, "replace"):
		op = "insert"
		if len(kw) == len("replace") {
			op = "replace"
		}
		s.skipWords("low_priority", "delayed", "high_priority", "ignore")
		s.skipWords("into")
	case strings.EqualFold(kw, "update"):
		op = "update"
		s.skipWords("low_priority", "ignore")
	case strings.EqualFold(kw, "delete"):
		op = "delete"
		s.skipWords("low_priority", "quick", "ignore")
		// DELETE FROM t … names the target after FROM; the multi-table
		// form DELETE t1 FROM t1 JOIN … names it before.
		s.skipWords("from")
	default:
		return "", ""
	}
	return op, s.tableName()
}

// statementScanner is a minimal, allocation-light reader of the first tokens
// of a SQL statement. It understands whitespace, comments and backticks and
// nothing else; whatever it does not recognise ends the scan.
type statementScanner struct {
	src string
	pos int
}

func (s *statementScanner) skipSpace() {
	for s.pos < len(s.src) {
		rest := s.src[s.pos:]
		switch {
		case rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\r':
			s.pos++
		case strings.HasPrefix(rest, "/*"):
			end := strings.Index(rest[2:], "*/")
			if end < 0 {
				s.pos = len(s.src)
				return
			}
			s.pos += end + 4
		case strings.HasPrefix(rest, "-- ") || strings.HasPrefix(rest, "#"):
			end := strings.IndexByte(rest, '\n')
			if end < 0 {
				s.pos = len(s.src)
				return
			}
			s.pos += end + 1
		default:
			return
		}
	}
}

// word returns the next bare word (letters, digits, _), possibly empty.
func (s *statementScanner) word() string {
	s.skipSpace()
	start := s.pos
	for s.pos < len(s.src) && isWordByte(s.src[s.pos]) {
		s.pos++
	}
	return s.src[start:s.pos]
}

// skipWords consumes consecutive words that are in the given set.
func (s *statementScanner) skipWords(set ...string) {
	for {
		save := s.pos
		w := s.word()
		found := false
		for _, k := range set {
			if strings.EqualFold(w, k) {
				found = true
				break
			}
		}
		if !found || w == "" {
			s.pos = save
			return
		}
	}
}

// tableName reads name, `name`, db.name or `db`.`name` and returns the last
// part if it is a valid identifier, else "".
func (s *statementScanner) tableName() string {
	s.skipSpace()
	var part string
	for {
		p, ok := s.identPart()
		if !ok {
			return ""
		}
		part = p
		if s.pos < len(s.src) && s.src[s.pos] == '.' {
			s.pos++
			continue
		}
		break
	}
	if ValidateIdentifier(part) != nil {
		return ""
	}
	return part
}

func (s *statementScanner) identPart() (string, bool) {
	if s.pos < len(s.src) && s.src[s.pos] == '`' {
		end := strings.IndexByte(s.src[s.pos+1:], '`')
		if end < 0 {
			return "", false
		}
		p := s.src[s.pos+1 : s.pos+1+end]
		s.pos += end + 2
		return p, true
	}
	start := s.pos
	for s.pos < len(s.src) && isWordByte(s.src[s.pos]) {
		s.pos++
	}
	return s.src[start:s.pos], s.pos > start
}

func isWordByte(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '$'
}
