package safesync

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Dead-letter reasons, the values of the reason field and of the
// dead_lettered_total metric's reason label.
const (
	// DeadLetterDecode: the entry's Decoder failed. Decoding is
	// deterministic, so the entry is moved on its first delivery.
	DeadLetterDecode = "decode"
	// DeadLetterMaxDeliveries: the entry failed for its own reasons (its
	// handler returned an error or panicked, or its process crashed while
	// the handler ran alone on it) MaxDeliveries times. Failures that were
	// not its own (outages, contention, shutdown) do not count.
	DeadLetterMaxDeliveries = "max_deliveries"
	// DeadLetterHandler: the handler returned an error matching
	// ErrPermanent.
	DeadLetterHandler = "handler"
)

// Fields a dead-letter entry carries besides the original entry's fields.
const (
	DeadLetterFieldStream     = "dead_letter.stream"           // stream the entry came from
	DeadLetterFieldGroup      = "dead_letter.group"            // group that gave up on it
	DeadLetterFieldID         = "dead_letter.id"               // its id in that stream
	DeadLetterFieldReason     = "dead_letter.reason"           // one of the DeadLetter reasons, or the caller's
	DeadLetterFieldDeliveries = "dead_letter.deliveries"       // Redis' delivery count when it was moved
	DeadLetterFieldError      = "dead_letter.error"            // the last failure's text, when there was one
	DeadLetterFieldConsumer   = "dead_letter.consumer"         // consumer that moved it
	DeadLetterFieldFailures   = "dead_letter.failures"         // how many times it failed for its own reasons
	DeadLetterFieldFirstFail  = "dead_letter.first_failure_at" // when it first failed, RFC 3339 UTC
	DeadLetterFieldLastFail   = "dead_letter.last_failure_at"  // when it last failed, RFC 3339 UTC
)

// DeadLetterTimeFormat is the format of the dead-letter time fields.
const DeadLetterTimeFormat = time.RFC3339Nano

// maxDeadLetterErrorLen bounds the error text stored with a dead letter.
const maxDeadLetterErrorLen = 1024

// ErrPermanent is matched by errors made with Permanent.
var ErrPermanent = errors.New("safesync: permanent failure")

// PermanentError marks a failure that will not go away by itself (a
// message that violates a business rule, say): a handler returning it has
// its entry dead-lettered at once instead of redelivered.
type PermanentError struct {
	Err error
}

// Permanent wraps err so that a consumer moves the entry to the dead-letter
// stream at once (reason DeadLetterHandler) instead of leaving it pending
// for redelivery. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// Error implements error.
func (e *PermanentError) Error() string { return "safesync: permanent failure: " + e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Is reports whether target is ErrPermanent.
func (e *PermanentError) Is(target error) bool { return target == ErrPermanent }

// DeadLetterEntry is an entry of a dead-letter stream, as read back by
// ParseDeadLetter.
type DeadLetterEntry struct {
	ID         string            // id in the dead-letter stream
	Stream     string            // stream the entry came from
	Group      string            // group that moved it
	OriginalID string            // its id in Stream
	Reason     string            // why it was moved
	Deliveries int64             // Redis' delivery count then
	Error      string            // the last failure's text, if any
	Consumer   string            // consumer that moved it, if recorded
	Failures   int64             // how many times it failed for its own reasons, if recorded
	FirstFail  time.Time         // when it first failed, if recorded
	LastFail   time.Time         // when it last failed, if recorded
	Fields     map[string]string // the original entry's fields
}

// ParseDeadLetter splits the fields of a dead-letter entry into the
// metadata the consumer added and the original entry's fields.
func ParseDeadLetter(id string, fields map[string]string) DeadLetterEntry {
	e := DeadLetterEntry{ID: id, Fields: make(map[string]string, len(fields))}
	for k, v := range fields {
		switch k {
		case DeadLetterFieldStream:
			e.Stream = v
		case DeadLetterFieldGroup:
			e.Group = v
		case DeadLetterFieldID:
			e.OriginalID = v
		case DeadLetterFieldReason:
			e.Reason = v
		case DeadLetterFieldDeliveries:
			e.Deliveries, _ = strconv.ParseInt(v, 10, 64)
		case DeadLetterFieldError:
			e.Error = v
		case DeadLetterFieldConsumer:
			e.Consumer = v
		case DeadLetterFieldFailures:
			e.Failures, _ = strconv.ParseInt(v, 10, 64)
		case DeadLetterFieldFirstFail:
			e.FirstFail, _ = time.Parse(DeadLetterTimeFormat, v)
		case DeadLetterFieldLastFail:
			e.LastFail, _ = time.Parse(DeadLetterTimeFormat, v)
		default:
			e.Fields[k] = v
		}
	}
	return e
}

// deadLetterEntry is what moveToDeadLetter needs to know of an entry.
type deadLetterEntry struct {
	stream, group, id string
	fields            map[string]string
	deliveries        int64
	// failures is the count of its own failures, this one included when
	// this one counts; first and last when they happened (zero: none).
	failures    int64
	first, last time.Time
}

// withFailure returns e with one more own failure, now, on top of rec (the
// record before it, nil when none).
func (e deadLetterEntry) withFailure(rec *failureRecord) deadLetterEntry {
	now := time.Now().UTC()
	e.failures, e.first, e.last = 1, now, now
	if rec != nil {
		e.failures = rec.failures + 1
		if !rec.first.IsZero() {
			e.first = rec.first
		}
	}
	return e
}

// withRecord returns e with the failures rec holds.
func (e deadLetterEntry) withRecord(rec *failureRecord) deadLetterEntry {
	if rec != nil {
		e.failures, e.first, e.last = rec.failures, rec.first, rec.last
	}
	return e
}

// moveToDeadLetter adds a copy of the entry with the reason and what is
// known of its failures to the dead-letter stream, acknowledges the
// original and removes its failure record, in one MULTI/EXEC when the keys
// can be in one transaction (always on a single server; on a cluster when
// they share a slot), else as XADD then XACK and HDEL, so that a crash in
// between duplicates the dead letter rather than losing the entry. It is
// the one writer of dead letters: Run, pipelines, Consumer.DeadLetter and
// safesynctest all go through it.
//
// Redis does not roll back a transaction whose XADD failed at run time
// (WRONGTYPE: the dead-letter key holds something else); the entry is then
// acknowledged but not copied. That case is reported, the XADD is retried
// alone, and the entry itself remains in its stream until trimmed.
func (s *streamCore) moveToDeadLetter(ctx context.Context, e deadLetterEntry, reason string, cause error) (err error) {
	if tr := activeTracer(); tr != nil {
		var span Span
		ctx, span = startDeadLetter(ctx, tr, &s.cfg, e.id, reason)
		defer func() { span.End(err) }()
	}
	dead := s.cfg.DeadLetterStream
	b := s.client.B().Xadd().Key(dead).Id("*").FieldValue().
		FieldValue(DeadLetterFieldStream, e.stream).
		FieldValue(DeadLetterFieldGroup, e.group).
		FieldValue(DeadLetterFieldID, e.id).
		FieldValue(DeadLetterFieldReason, reason).
		FieldValue(DeadLetterFieldDeliveries, strconv.FormatInt(e.deliveries, 10))
	if cause != nil {
		b = b.FieldValue(DeadLetterFieldError, truncate(errorText(cause), maxDeadLetterErrorLen))
	}
	b = b.FieldValue(DeadLetterFieldConsumer, s.cfg.Consumer).
		FieldValue(DeadLetterFieldFailures, strconv.FormatInt(e.failures, 10))
	if !e.first.IsZero() {
		b = b.FieldValue(DeadLetterFieldFirstFail, e.first.UTC().Format(DeadLetterTimeFormat))
	}
	if !e.last.IsZero() {
		b = b.FieldValue(DeadLetterFieldLastFail, e.last.UTC().Format(DeadLetterTimeFormat))
	}
	for k, v := range e.fields {
		b = b.FieldValue(k, v)
	}
	xadd := b.Build()
	xack := s.client.B().Xack().Key(e.stream).Group(e.group).Id(e.id).Build()
	// The record of its failures goes with it (it lives in the slot of
	// this consumer's stream).
	var forget rueidis.Completed
	ownRecord := e.stream == s.cfg.Stream && e.group == s.cfg.Group
	if ownRecord {
		forget = s.fails.forgetCmd(e.id)
	}

	if s.atomicWith(e.stream, dead) {
		err = s.execDeadLetter(ctx, xadd, xack, forget, ownRecord, e, dead)
	} else {
		if err = s.client.Do(ctx, xadd).Error(); err == nil {
			err = s.client.Do(ctx, xack).Error()
		}
		if err == nil && ownRecord {
			_ = s.client.Do(ctx, forget).Error() // a leftover record is harmless
		}
	}
	if err != nil {
		return fmt.Errorf("safesync: dead-letter entry %s of %q to %q: %w", e.id, e.stream, dead, err)
	}
	s.metrics.countDeadLettered(reason)
	log := s.log // it names the consumer's stream and group
	if e.stream != s.cfg.Stream || e.group != s.cfg.Group {
		log = log.With("entry_stream", e.stream, "entry_group", e.group)
	}
	log.WarnContext(ctx, "safesync: entry dead-lettered", "id", e.id, "reason", reason, "deliveries", e.deliveries,
		"failures", e.failures, "error", cause)
	return nil
}

func (s *streamCore) execDeadLetter(ctx context.Context, xadd, xack, forget rueidis.Completed, withForget bool, e deadLetterEntry, dead string) error {
	cmds := rueidis.Commands{s.client.B().Multi().Build(), xadd, xack}
	if withForget {
		cmds = append(cmds, forget)
	}
	cmds = append(cmds, s.client.B().Exec().Build())
	res := s.client.DoMulti(ctx, cmds...)
	queued := len(cmds) - 1
	for _, r := range res[:queued] {
		if err := r.Error(); err != nil {
			return err // not executed: EXEC is discarded or never ran
		}
	}
	replies, err := res[queued].ToArray()
	if err != nil {
		return err
	}
	if len(replies) != queued-1 {
		return fmt.Errorf("EXEC returned %d replies, want %d", len(replies), queued-1)
	}
	addErr := replies[0].Error()
	if addErr == nil {
		return replies[1].Error()
	}
	// The XACK ran although the XADD failed: copy the entry again on its own.
	retryErr := s.client.Do(ctx, xadd).Error()
	if retryErr == nil {
		return nil
	}
	return fmt.Errorf("entry acknowledged but not copied to %q (it is still in %q until trimmed): %w",
		dead, e.stream, errors.Join(addErr, retryErr))
}

// atomicWith reports whether one MULTI/EXEC may touch both keys.
func (s *streamCore) atomicWith(a, b string) bool {
	return s.client.Mode() != rueidis.ClientModeCluster || KeySlot(a) == KeySlot(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// KeySlot returns the Redis Cluster hash slot of key, as CLUSTER KEYSLOT
// does: CRC16 (XMODEM) of the key, or of its hash tag, the part between the
// first "{" and the next "}" when that part is not empty, modulo 16384.
// Keys with the same slot can be written in one MULTI/EXEC on a cluster.
func KeySlot(key string) uint16 {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if n := strings.IndexByte(key[open+1:], '}'); n > 0 {
			key = key[open+1 : open+1+n]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc & 16383
}
