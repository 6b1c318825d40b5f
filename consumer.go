package safesync

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/redis/rueidis"
)

// Handler handles one entry. Returning nil acknowledges it. Returning an
// error leaves it pending, to be redelivered by reclaim; an error of its
// own counts towards MaxDeliveries, and the one that reaches it
// dead-letters the entry with the error's text. An error matching
// ErrPermanent (see Permanent) dead-letters it at once. A panic is
// recovered, counted in handler_panics_total, and counts as an error of
// its own. An error that says a server could not be used (a network
// error, a lost or refused database connection, an unknown commit
// outcome, a Redis that is loading or failing over, ErrOutage) or that a
// conflict outlasted its retries does not count: see
// StreamConfig.MaxDeliveries; repeated ones pause the consumer (see Run).
//
// A handler may acknowledge its entry itself, with Consumer.Ack (in a
// transaction's after-commit hook, say); the consumer's own acknowledgement
// then finds nothing pending and counts nothing.
type Handler[T any] func(ctx context.Context, msg Message[T]) error

// BatchHandler handles up to a batch size of entries at once, in stream
// order. It owns their acknowledgement: it calls Consumer.Ack for the
// entries it finished (typically after committing their effects) and
// Consumer.DeadLetter for those it gives up on. Entries it neither acked nor
// dead-lettered stay pending. When it returns an error, each of those
// entries has the failure as its own, as for Handler (an error matching
// ErrPermanent dead-letters them at once; an outage counts for none): a
// batch handler that knows which entry is at fault dead-letters it, or
// acknowledges the others, before returning. A panic is recovered,
// counted, and is an error of each entry left.
type BatchHandler[T any] func(ctx context.Context, msgs []Message[T]) error

// ConsumerOption configures NewConsumer.
type ConsumerOption[T any] func(*Consumer[T])

// OrderBy makes the consumer keep per-key order: entries for which key
// returns the same string never run at the same time, and run in the order
// they were read, also across reads and across batches of RunBatch. Entries
// with different keys still run Concurrency at a time. key must be fast and
// safe for concurrent use. An entry redelivered after a failure runs when
// it is reclaimed, after later entries of its key that succeeded.
func OrderBy[T any](key func(Message[T]) string) ConsumerOption[T] {
	return func(c *Consumer[T]) { c.key = key }
}

// OrderKeyType is a key type OrderKey accepts: an integer or a string
// type.
type OrderKeyType interface {
	~int | ~int8 | ~int16 | ~int32 | ~int64 |
		~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64 | ~uintptr | ~string
}

// OrderKey turns a key function of an integer or string type into the
// string key function that OrderBy (the consumer option and
// Pipeline.OrderBy) takes, with T and K inferred from key:
//
//	.OrderBy(safesync.OrderKey(func(m safesync.Message[Order]) int64 { return m.Value.AccountID }))
//
// Integers become their decimal form, so equal keys give equal strings
// and different keys different ones (int64(7) and "7" would meet, but one
// function returns one type).
func OrderKey[T any, K OrderKeyType](key func(Message[T]) K) func(Message[T]) string {
	if key == nil {
		panic("safesync: OrderKey with nil key")
	}
	return func(m Message[T]) string { return formatOrderKey(key(m)) }
}

// formatOrderKey formats k by its kind (a String method of a named type
// plays no part), without reflection for the common types.
func formatOrderKey[K OrderKeyType](k K) string {
	switch v := any(k).(type) {
	case string:
		return v
	case int64:
		return strconv.FormatInt(v, 10)
	case int:
		return strconv.Itoa(v)
	case uint64:
		return strconv.FormatUint(v, 10)
	}
	v := reflect.ValueOf(k)
	switch {
	case v.CanInt():
		return strconv.FormatInt(v.Int(), 10)
	case v.CanUint():
		return strconv.FormatUint(v.Uint(), 10)
	default:
		return v.String()
	}
}

// Consumer reads one stream as one named consumer of a group, and hands
// decoded entries to handlers (Run, RunBatch, ClaimStale) or to a loop of
// its own (Next, Messages, Read, with Ack).
//
// A Consumer is safe for concurrent use, but only one of Run, RunBatch and
// ClaimStale runs at a time on it (another returns ErrConsumerRunning), and
// it should be driven either by those or by Next, Read and Messages, not
// both, since they share its read position. Run several processes, or
// Consumers with different names, to scale out. A Consumer holds no
// connection of its own: closing the rueidis client is the caller's
// business.
type Consumer[T any] struct {
	core   *streamCore   // parts[0]: the stream of Read, Next and Messages
	parts  []*streamCore // one per stream read by Run: several for partitions
	decode Decoder[T]
	key    func(Message[T]) string

	nextMu  sync.Mutex
	buf     []Message[T]
	bufErrs error

	outage atomic.Pointer[outage] // of the latest Run, RunBatch or ClaimStale
}

// Ready returns nil unless the consumer's Run (or RunBatch, ClaimStale,
// pipeline) is paused by an outage now; then an error matching ErrPaused
// names the failure. See StreamConfig.Readiness for a value that serves
// pipelines, which hold no Consumer.
func (c *Consumer[T]) Ready() error {
	if o := c.outage.Load(); o != nil {
		return o.err()
	}
	return nil
}

// NewConsumer returns a Consumer of cfg.Stream as cfg.Consumer in cfg.Group
// that decodes entries with decode. It validates cfg (see
// StreamConfig.Validate) and sends nothing to Redis: the group is created
// on first use.
func NewConsumer[T any](client rueidis.Client, cfg StreamConfig, decode Decoder[T], opts ...ConsumerOption[T]) (*Consumer[T], error) {
	if client == nil {
		return nil, errors.New("safesync: NewConsumer with nil client")
	}
	if decode == nil {
		return nil, errors.New("safesync: NewConsumer with nil Decoder")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	core := newStreamCore(client, cfg.withDefaults())
	c := &Consumer[T]{core: core, parts: []*streamCore{core}, decode: decode}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Config returns the consumer's configuration with defaults filled in.
func (c *Consumer[T]) Config() StreamConfig { return c.core.cfg }

// Read returns the next entries for this consumer, at most Count: first the
// entries still pending under its name from an earlier run, then new ones,
// waiting up to Block (or until ctx's deadline) for them. It returns an
// empty slice when none arrived. Entries that cannot be decoded or have
// failed MaxDeliveries times (under Run) are dead-lettered, not returned;
// a failure to dead-letter one is returned along with the others.
//
// ctx governs the read; cancelling it returns at once with ctx's error.
// Nothing is acknowledged: call Ack after handling each entry.
func (c *Consumer[T]) Read(ctx context.Context) ([]Message[T], error) {
	c.nextMu.Lock()
	defer c.nextMu.Unlock()
	if len(c.buf) > 0 || c.bufErrs != nil {
		msgs, err := c.buf, c.bufErrs
		c.buf, c.bufErrs = nil, nil
		return msgs, err
	}
	return c.read(ctx, c.core.cfg.Count)
}

// Next returns the next entry for this consumer, waiting as long as needed.
// It reads like Read, keeping the rest of a read for later calls. ctx
// governs the wait: when it ends, Next returns its error. Nothing is
// acknowledged: call Ack after handling the entry.
func (c *Consumer[T]) Next(ctx context.Context) (Message[T], error) {
	c.nextMu.Lock()
	defer c.nextMu.Unlock()
	for len(c.buf) == 0 {
		if err := c.bufErrs; err != nil {
			c.bufErrs = nil
			return Message[T]{}, err
		}
		if err := ctx.Err(); err != nil {
			return Message[T]{}, err
		}
		c.buf, c.bufErrs = c.read(ctx, c.core.cfg.Count)
	}
	msg := c.buf[0]
	c.buf[0] = Message[T]{}
	c.buf = c.buf[1:]
	return msg, nil
}

// Messages returns an iterator over this consumer's entries, for
//
//	for msg, err := range consumer.Messages(ctx) {
//		if err != nil { … continue }
//		… handle msg …
//		consumer.Ack(ctx, msg)
//	}
//
// Each step is a Next. An error (a lost connection, say) is yielded with a
// zero Message, and the iteration goes on after a short pause that grows
// while errors repeat, unless the loop breaks. The iteration ends when ctx
// ends. Nothing is acknowledged by the iterator.
func (c *Consumer[T]) Messages(ctx context.Context) iter.Seq2[Message[T], error] {
	return func(yield func(Message[T], error) bool) {
		var b readBackoff
		for {
			msg, err := c.Next(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				if !yield(Message[T]{}, err) || !b.wait(ctx) {
					return
				}
				continue
			}
			b.reset()
			if !yield(msg, nil) {
				return
			}
		}
	}
}

// Ack acknowledges msgs (XACK), one command per stream and group among
// them, and counts them in messages_ack_total; the failure records of
// those delivered before go with them. A failure is counted in
// ack_failures_total and returned; the entries it concerns stay pending.
// Acknowledging an entry that is no longer pending does nothing. ctx
// governs the commands. Ack is safe for concurrent use.
func (c *Consumer[T]) Ack(ctx context.Context, msgs ...Message[T]) error {
	if len(msgs) == 0 {
		return nil
	}
	type target struct {
		stream, group string
		core          *streamCore // whose metrics count the acknowledgement
		ids           []string
	}
	var oneTarget [1]target // usually one: on the stack
	targets := oneTarget[:0]
	for _, m := range msgs {
		i := 0
		for i < len(targets) && (targets[i].stream != m.Stream || targets[i].group != m.Group) {
			i++
		}
		if i == len(targets) {
			targets = append(targets, target{stream: m.Stream, group: m.Group, core: c.coreOf(m.part, m.Stream), ids: make([]string, 0, len(msgs))})
		}
		targets[i].ids = append(targets[i].ids, m.ID)
		if m.span != nil {
			targets[i].core.spans.adopt(m.ID, ctx) // the XACK goes under ctx's span
		}
	}
	var errs []error
	for _, t := range targets {
		if t.stream == "" || t.group == "" {
			errs = append(errs, fmt.Errorf("safesync: Ack of entry %s without Stream or Group", t.ids[0]))
			continue
		}
		if _, err := t.core.ack(ctx, t.stream, t.group, t.ids); err != nil {
			errs = append(errs, err)
			continue
		}
		var recorded []string
		for _, m := range msgs {
			if m.Stream == t.stream && m.Group == t.group {
				m.batch.markHandled(m.index)
				if m.Deliveries > 1 && t.stream == t.core.cfg.Stream && t.group == t.core.cfg.Group {
					recorded = append(recorded, m.ID)
				}
			}
		}
		// A redelivered entry may have a failure record: it goes too. A
		// record left behind is harmless.
		_ = t.core.fails.forget(ctx, recorded)
	}
	return errors.Join(errs...)
}

// DeadLetter moves msg to the dead-letter stream with reason, as the
// consumer itself does: it adds a copy of the entry's fields with its
// stream, group, id, reason, delivery count, the consumer's name and what
// is known of its own failures (count, first and last time) to
// DeadLetterStream, acknowledges the original and removes its failure
// record, in one MULTI/EXEC (see StreamConfig's DeadLetterStream for
// Redis Cluster). reason becomes a metric label: use a fixed string such
// as DeadLetterHandler, never data. ctx governs the commands. It is safe
// for concurrent use.
func (c *Consumer[T]) DeadLetter(ctx context.Context, msg Message[T], reason string) error {
	return c.deadLetter(ctx, msg, reason, nil)
}

func (c *Consumer[T]) deadLetter(ctx context.Context, msg Message[T], reason string, cause error) error {
	return c.moveToDeadLetter(ctx, msg, reason, cause, msg.entry().withRecord(msg.rec))
}

// moveToDeadLetter moves msg, described by e, to its dead-letter stream.
func (c *Consumer[T]) moveToDeadLetter(ctx context.Context, msg Message[T], reason string, cause error, e deadLetterEntry) error {
	if reason == "" {
		return errors.New("safesync: DeadLetter with empty reason")
	}
	err := c.coreOf(msg.part, msg.Stream).moveToDeadLetter(ctx, e, reason, cause)
	if err == nil {
		msg.batch.markHandled(msg.index)
	}
	return err
}

// entry returns what a dead letter records of msg.
func (msg *Message[T]) entry() deadLetterEntry {
	return deadLetterEntry{stream: msg.Stream, group: msg.Group, id: msg.ID, fields: msg.Fields, deliveries: msg.Deliveries}
}

// coreOf returns the stream core of partition part when it reads stream,
// else the first one.
func (c *Consumer[T]) coreOf(part int, stream string) *streamCore {
	if part > 0 && part < len(c.parts) && c.parts[part].cfg.Stream == stream {
		return c.parts[part]
	}
	return c.core
}

// read reads and decodes; see Read.
func (c *Consumer[T]) read(ctx context.Context, count int) ([]Message[T], error) {
	raws, _, err := c.core.read(ctx, count, nil)
	if err != nil {
		return nil, err
	}
	return c.prepare(ctx, 0, raws, nil)
}

// prepare turns raw entries of partition part into messages. Entries that
// have failed MaxDeliveries times for their own reasons and entries that
// cannot be decoded are dead-lettered instead; failures to do so are
// returned joined, and those entries stay pending. into, when it has room,
// receives the messages instead of a new slice. An entry whose record
// holds the marker of an attempt of another run that never ended is to be
// run alone (isolate).
func (c *Consumer[T]) prepare(ctx context.Context, part int, raws rawEntries, into []Message[T]) ([]Message[T], error) {
	if raws.len() == 0 {
		return nil, nil
	}
	core := c.parts[part]
	cfg := &core.cfg
	msgs := into[:0]
	if cap(msgs) < raws.len() {
		msgs = make([]Message[T], 0, raws.len())
	}
	var errs []error
	for i, x := range raws.xs {
		deliveries := raws.delivered(i)
		rec := raws.record(i)
		dead := deadLetterEntry{stream: cfg.Stream, group: cfg.Group, id: x.ID, fields: x.FieldValues, deliveries: deliveries}
		if rec != nil && rec.failures >= cfg.MaxDeliveries {
			errs = append(errs, core.moveToDeadLetter(ctx, dead.withRecord(rec), DeadLetterMaxDeliveries, rec.cause(cfg.MaxDeliveries)))
			continue
		}
		v, err := c.decode(x.FieldValues)
		if err != nil {
			core.metrics.countFailure(failureDecode)
			errs = append(errs, core.moveToDeadLetter(ctx, dead.withFailure(rec), DeadLetterDecode, &DecodeError{Stream: cfg.Stream, ID: x.ID, Err: err}))
			continue
		}
		m := Message[T]{
			ID: x.ID, Stream: cfg.Stream, Group: cfg.Group,
			Value: v, Fields: x.FieldValues, Deliveries: deliveries, part: part, rec: rec,
		}
		if rec != nil {
			m.Failures = rec.failures
			if rec.attempt != "" {
				_, token, _, _, ok := markerOf(rec.attempt)
				m.isolate = !ok || token != core.token
			}
		}
		msgs = append(msgs, m)
	}
	return msgs, errors.Join(errs...)
}

// batchState records which entries of one RunBatch call the handler
// acknowledged or dead-lettered itself.
type batchState struct {
	mu      sync.Mutex
	handled []bool
}

func (b *batchState) markHandled(i int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.handled[i] = true
	b.mu.Unlock()
}

func (b *batchState) isHandled(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.handled[i]
}
