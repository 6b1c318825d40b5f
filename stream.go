package safesync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// Defaults of StreamConfig's zero values.
const (
	// DefaultBlock is how long one read waits for new entries.
	DefaultBlock = 5 * time.Second
	// DefaultCount is the most entries one read returns.
	DefaultCount = 100
	// DefaultStartID is where a newly created group starts: the beginning
	// of the stream, so entries published before the first consumer started
	// are not skipped.
	DefaultStartID = "0"
	// DefaultConcurrency is the number of handlers in flight at once.
	DefaultConcurrency = 1
	// DefaultClaimIdle is how long an entry must have been pending, without
	// being delivered again, before another consumer may claim it.
	DefaultClaimIdle = time.Minute
	// DefaultClaimInterval is the pause between two reclaim scans.
	DefaultClaimInterval = 5 * time.Second
	// DefaultMaxDeliveries is how many times an entry may fail for its own
	// reasons before it is dead-lettered (see StreamConfig.MaxDeliveries).
	DefaultMaxDeliveries = 10
	// DefaultShutdownGrace is how long in-flight handlers may run on after
	// the consumer's ctx is cancelled.
	DefaultShutdownGrace = 10 * time.Second
	// DeadLetterSuffix is appended to the stream name to form the default
	// dead-letter stream: "orders:{3}" becomes "orders:{3}:dead", which keeps
	// the hash tag and so the cluster slot.
	DeadLetterSuffix = ":dead"
)

// ErrInvalidStreamConfig is matched by every error StreamConfig.Validate
// returns.
var ErrInvalidStreamConfig = errors.New("safesync: invalid StreamConfig")

// StreamConfig configures a Consumer. Stream, Group and Consumer are
// required; every other zero value means the default named in its comment.
// Durations are sent to Redis in whole milliseconds.
type StreamConfig struct {
	// Stream is the stream key. Required.
	Stream string
	// Group is the consumer group, created on first use with
	// XGROUP CREATE … MKSTREAM if missing. Required.
	Group string
	// Consumer names this consumer inside the group. Required. Keep it
	// stable across restarts of the same worker (a pod name, or a host
	// name plus a worker index; not a random value): a restarted consumer
	// first re-reads the entries still pending under its name. Keep it
	// unique among live processes: two processes of one name would share
	// one pending list, each handling again what the other holds. While
	// Run, RunBatch, ClaimStale or a pipeline runs, the consumer holds a
	// lease on its name (a key beside the stream, renewed every second);
	// one started while another live process holds it fails at start with
	// ErrConsumerNameInUse, within about a second, and one restarted
	// under the name of a process that died without stopping waits until
	// that lease has gone 4 s without renewal.
	Consumer string

	// Block is how long a read waits for new entries (DefaultBlock). It
	// must be at least a millisecond: Redis reads BLOCK 0 as "forever".
	Block time.Duration
	// Count is the most entries one read returns (DefaultCount). RunBatch
	// reads its batch size instead.
	Count int
	// StartID is where a group created by this consumer starts
	// (DefaultStartID, "0": the whole stream; "$": only entries added from
	// now on). It has no effect on an existing group.
	StartID string
	// Concurrency is the number of handler calls in flight at once
	// (DefaultConcurrency). For RunBatch, it counts batches.
	Concurrency int

	// ClaimIdle is how long an entry must have sat pending, undelivered,
	// before reclaim takes it over (DefaultClaimIdle). Set it above the
	// longest time an entry may wait behind the others of its read (about
	// Count × handler time / Concurrency) plus the handler's own time (and
	// up to 10 ms, plus one other unit of work, that its acknowledgement
	// may wait to go out with others), or another consumer may claim and
	// handle it a second time. This
	// consumer never hands an entry it still holds (queued, running, or
	// handled and waiting for its XACK) to a handler again, whatever
	// ClaimIdle is.
	ClaimIdle time.Duration
	// ClaimInterval is the pause between reclaim scans, and between
	// refreshes of the pending-entries gauges (DefaultClaimInterval). A scan
	// follows the XAUTOCLAIM cursor to its end before it pauses.
	ClaimInterval time.Duration
	// MaxDeliveries is how many times an entry may fail for its own
	// reasons (DefaultMaxDeliveries): its handler returned an error or
	// panicked, or its process ended while the handler ran alone on it (a
	// crash: see Run). The failure that reaches MaxDeliveries moves the
	// entry to the dead-letter stream, with that failure's error, instead
	// of leaving it pending. A Permanent error moves it at once, and an
	// entry that cannot be decoded on its first delivery.
	//
	// Failures that are not the entry's own never count: the database or
	// Redis unreachable, a connection lost, BEGIN or COMMIT failing, an
	// unknown commit outcome, Outage errors, conflicts, deadlocks and lock
	// waits that outlast the Retry budget, and the end of Run's ctx. Such
	// an entry stays pending, and comes back however long the outage
	// lasts. Redis' own delivery count (Message.Deliveries) is not the
	// measure: it grows with every read and claim. The count of own
	// failures (Message.Failures) is kept in Redis, in a hash beside the
	// stream in its cluster slot, written when an entry fails or is
	// delivered again, and removed when it is acknowledged or
	// dead-lettered; an entry delivered once and handled costs nothing
	// there.
	MaxDeliveries int64
	// DeadLetterStream receives entries that could not be decoded, failed
	// permanently, or failed MaxDeliveries times (Stream +
	// DeadLetterSuffix), each with the fields named DeadLetterField….
	// Give it the same hash tag as Stream on Redis Cluster so that the move
	// stays one MULTI/EXEC. It must differ from Stream.
	DeadLetterStream string

	// ShutdownGrace is how long in-flight handlers may run after the ctx
	// given to Run is cancelled, before their own ctx is cancelled
	// (DefaultShutdownGrace).
	ShutdownGrace time.Duration
	// Logger receives the consumer's diagnostics. Nil discards them.
	Logger *slog.Logger
	// Readiness, when set, reports whether this consumer is paused by an
	// outage (see Readiness); one Readiness may serve every consumer and
	// pipeline of a process, for its readiness probe.
	Readiness *Readiness
	// Metrics records reads, acks, claims, dead letters, handler latency and
	// pending gauges. Nil means DefaultMetrics().
	//
	// read_latency_seconds excludes time spent blocked waiting for entries:
	// it records only reads that returned entries without BLOCK. After a
	// read that returned entries the next is sent without BLOCK; only when
	// that one comes back empty is a blocking read sent, and its duration,
	// mostly waiting, is not recorded. While there is a backlog every read
	// is recorded. pending_entries and oldest_pending_age_seconds are
	// refreshed every ClaimInterval by Run and ClaimStale.
	Metrics *Metrics
}

// streamIDPattern matches a complete or partial stream entry id.
var streamIDPattern = regexp.MustCompile(`^[0-9]+(-[0-9]+)?$`)

// Validate reports the first invalid field, naming it, in an error that
// matches ErrInvalidStreamConfig. Zero values are valid (they mean the
// defaults); empty names, negative numbers and durations, durations that
// would round to 0 ms, and a dead-letter stream equal to Stream are not.
func (c StreamConfig) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidStreamConfig, field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Stream == "":
		return bad("Stream", "is empty")
	case c.Group == "":
		return bad("Group", "is empty")
	case c.Consumer == "":
		return bad("Consumer", "is empty; give each worker a stable name")
	case c.Count < 0:
		return bad("Count", "is negative (%d)", c.Count)
	case c.Concurrency < 0:
		return bad("Concurrency", "is negative (%d)", c.Concurrency)
	case c.MaxDeliveries < 0:
		return bad("MaxDeliveries", "is negative (%d)", c.MaxDeliveries)
	case c.StartID != "" && c.StartID != "$" && !streamIDPattern.MatchString(c.StartID):
		return bad("StartID", "%q is neither $ nor a stream id", c.StartID)
	case c.DeadLetterStream == c.Stream:
		return bad("DeadLetterStream", "equals Stream %q", c.Stream)
	}
	for _, d := range []struct {
		field string
		v     time.Duration
		ms    bool // sent to Redis in milliseconds
	}{
		{"Block", c.Block, true},
		{"ClaimIdle", c.ClaimIdle, true},
		{"ClaimInterval", c.ClaimInterval, false},
		{"ShutdownGrace", c.ShutdownGrace, false},
	} {
		if d.v < 0 {
			return bad(d.field, "is negative (%v)", d.v)
		}
		if d.ms && d.v > 0 && d.v < time.Millisecond {
			return bad(d.field, "is %v, which Redis would receive as 0 ms (for BLOCK: forever); use at least 1ms", d.v)
		}
	}
	return nil
}

// withDefaults returns c with every zero value replaced by its default.
func (c StreamConfig) withDefaults() StreamConfig {
	if c.Block == 0 {
		c.Block = DefaultBlock
	}
	if c.Count == 0 {
		c.Count = DefaultCount
	}
	if c.StartID == "" {
		c.StartID = DefaultStartID
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.ClaimIdle == 0 {
		c.ClaimIdle = DefaultClaimIdle
	}
	if c.ClaimInterval == 0 {
		c.ClaimInterval = DefaultClaimInterval
	}
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = DefaultMaxDeliveries
	}
	if c.DeadLetterStream == "" {
		c.DeadLetterStream = c.Stream + DeadLetterSuffix
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = DefaultMetrics()
	}
	return c
}

// Message is one stream entry delivered to a consumer.
type Message[T any] struct {
	// ID is the entry id, e.g. "1700000000000-0".
	ID string
	// Stream and Group are where the entry was read; Ack uses them.
	Stream, Group string
	// Value is the decoded entry.
	Value T
	// Fields are the entry's raw fields. Treat them as read-only.
	Fields map[string]string
	// Deliveries is how many times the group has delivered the entry,
	// counting this delivery: 1 the first time. It is Redis' count (reads,
	// re-reads and claims), taken as the entry is handed over.
	Deliveries int64

	// Failures is how many times the entry failed for its own reasons
	// before this delivery (see MaxDeliveries): 0 the first time, and
	// after failures that were not its own.
	Failures int64

	batch   *batchState     // set by RunBatch, to know which entries the handler acked
	index   int             // position in batch
	part    int             // index of the consumer's stream it was read from (partitions)
	read    context.Context // while tracing: the ctx of the read's span that returned it
	span    context.Context // while tracing: read, then the ctx of its latest handle span
	rec     *failureRecord  // its failure record, when redelivered and it has one
	isolate bool            // an earlier attempt never ended: run it alone
}

// PublishOption configures Publish.
type PublishOption func(*publishConfig)

type publishConfig struct {
	maxLen       int64
	traceContext bool // TraceContext
}

// MaxLen trims the stream to about n entries as the entry is added
// (XADD MAXLEN ~ n): Redis removes whole macro nodes of old entries, so the
// stream may keep somewhat more than n. Trimming removes entries whether or
// not a group has delivered or acknowledged them; size n well above the
// backlog consumers may build up.
func MaxLen(n int64) PublishOption {
	return func(c *publishConfig) { c.maxLen = n }
}

// Publish adds an entry with the given fields to stream (XADD with an id
// chosen by Redis) and returns its id. ctx governs the one command. Fields
// are written in sorted order of their names; fields is not modified. With
// a Tracer set (SetTracer) the XADD is a publish span, and TraceContext
// adds its trace context to the entry. It is safe for concurrent use.
func Publish(ctx context.Context, client rueidis.Client, stream string, fields map[string]string, opts ...PublishOption) (string, error) {
	if stream == "" {
		return "", errors.New("safesync: Publish: empty stream name")
	}
	if len(fields) == 0 {
		return "", errors.New("safesync: Publish: an entry needs at least one field")
	}
	var cfg publishConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.maxLen < 0 {
		return "", fmt.Errorf("safesync: Publish: MaxLen(%d) is negative", cfg.maxLen)
	}
	var span Span
	if tr := activeTracer(); tr != nil {
		ctx, span, fields = startPublish(ctx, tr, stream, fields, cfg.traceContext)
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	slices.Sort(names)
	// A builder appends to one shared command: build exactly one chain.
	key := client.B().Xadd().Key(stream)
	var cmd rueidis.Completed
	if cfg.maxLen > 0 {
		cmd = withFields(key.Maxlen().Almost().Threshold(strconv.FormatInt(cfg.maxLen, 10)).Id("*").FieldValue(), names, fields)
	} else {
		cmd = withFields(key.Id("*").FieldValue(), names, fields)
	}
	id, err := client.Do(ctx, cmd).ToString()
	if err != nil {
		err = fmt.Errorf("safesync: publish to %q: %w", stream, err)
	}
	if span != nil {
		endPublish(span, id, err)
	}
	if err != nil {
		return "", err
	}
	return id, nil
}

// fieldAdder is the field-value step of an XADD builder.
type fieldAdder[B any] interface {
	FieldValue(field, value string) B
	Build() rueidis.Completed
}

// withFields appends the fields, in the order of names, and builds.
func withFields[B fieldAdder[B]](b B, names []string, fields map[string]string) rueidis.Completed {
	for _, n := range names {
		b = b.FieldValue(n, fields[n])
	}
	return b.Build()
}

// PublishJSON publishes v in the original's wire format (see EncodeJSON):
// one field, "data", holding v as a JSON object. Consumers using JSON[T],
// and the Python original, read it (but not an entry published with
// TraceContext, which adds fields).
func PublishJSON[T any](ctx context.Context, client rueidis.Client, stream string, v T, opts ...PublishOption) (string, error) {
	fields, err := EncodeJSON(v)
	if err != nil {
		return "", err
	}
	return Publish(ctx, client, stream, fields, opts...)
}
