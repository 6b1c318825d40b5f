package safesync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// ackTimeout bounds an acknowledgement or dead-letter move that runs after
// the consumer's ctx ended, so that shutdown cannot hang on a dead server.
const ackTimeout = 10 * time.Second

// streamCore is the part of a Consumer that does not depend on T: the
// group, the read position, acknowledgements and dead letters.
type streamCore struct {
	client  rueidis.Client
	cfg     StreamConfig // defaults applied
	log     *slog.Logger
	metrics *streamMetrics
	fails   *failureStore
	// token names the running Run in attempt markers (see failureStore);
	// set before Run's loops start, "" outside Run.
	token string
	// reread asks the next read to start again with this consumer's own
	// pending entries (see rereadOwnPending).
	reread atomic.Bool
	// spans keeps, while tracing, the span each entry's XACK belongs under.
	spans entrySpans

	groupMu    sync.Mutex
	groupReady bool

	readMu sync.Mutex
	// pendingFrom is the id after which this consumer's own pending entries
	// are re-read; "" once they all have been, and reads ask for new
	// entries (">").
	pendingFrom string
	// waited is true when the last read of new entries returned none: the
	// next one blocks at once instead of first trying without BLOCK.
	waited bool

	running atomic.Bool // Run, RunBatch or ClaimStale is running
}

// rawEntries are entries as read, before decoding: ids and fields as
// rueidis parsed them (fields nil for an entry deleted from the stream
// while pending), and their delivery counts and failure records, nil when
// every entry was delivered once.
type rawEntries struct {
	xs         []rueidis.XRangeEntry
	deliveries []int64
	records    []*failureRecord
}

func (r rawEntries) len() int { return len(r.xs) }

// record returns entry i's failure record, nil when it has none.
func (r rawEntries) record(i int) *failureRecord {
	if r.records == nil {
		return nil
	}
	return r.records[i]
}

// delivered returns how many times entry i has been delivered.
func (r rawEntries) delivered(i int) int64 {
	if r.deliveries == nil {
		return 1
	}
	return r.deliveries[i]
}

func newStreamCore(client rueidis.Client, cfg StreamConfig) *streamCore {
	s := &streamCore{
		client:      client,
		cfg:         cfg,
		log:         cfg.Logger.With("stream", cfg.Stream, "group", cfg.Group, "consumer", cfg.Consumer),
		metrics:     cfg.Metrics.forStream(cfg.Stream, cfg.Group),
		pendingFrom: "0",
	}
	s.fails = newFailureStore(s)
	return s
}

// newPartitionCore is newStreamCore for partition index of the logical
// stream named logical: cfg.Stream is the partition's key.
func newPartitionCore(client rueidis.Client, cfg StreamConfig, logical string, index int) *streamCore {
	s := newStreamCore(client, cfg)
	s.log = s.log.With("partition", index)
	s.metrics = cfg.Metrics.forPartition(cfg.Stream, cfg.Group, logical, index)
	return s
}

// rereadOwnPending makes the next read start again with this consumer's
// own pending entries, as at a restart. It does not wait for a read in
// progress.
func (s *streamCore) rereadOwnPending() {
	s.reread.Store(true)
}

// ensureGroup creates the group (and the stream) unless this consumer has
// already seen it exist. BUSYGROUP, the group being there already, is fine.
// A key of another type, the stream's or the dead-letter stream's, is an
// error matching ErrWrongType, which retrying cannot fix.
func (s *streamCore) ensureGroup(ctx context.Context) error {
	s.groupMu.Lock()
	defer s.groupMu.Unlock()
	if s.groupReady {
		return nil
	}
	ctx, cancel := quick(ctx) // a command without a deadline would switch rueidis to background pipelining for good
	defer cancel()
	cmd := s.client.B().XgroupCreate().Key(s.cfg.Stream).Group(s.cfg.Group).Id(s.cfg.StartID).Mkstream().Build()
	if err := s.client.Do(ctx, cmd).Error(); err != nil && !rueidis.IsRedisBusyGroup(err) {
		return s.explain(ctx, fmt.Sprintf("XGROUP CREATE %q %q", s.cfg.Stream, s.cfg.Group), s.cfg.Stream, err)
	}
	// A dead-letter key of another type would make the move's XADD fail
	// inside MULTI while its XACK succeeds: refuse to start instead.
	typ, err := s.client.Do(ctx, s.client.B().Type().Key(s.cfg.DeadLetterStream).Build()).ToString()
	if err != nil {
		return fmt.Errorf("safesync: TYPE %q (the DeadLetterStream): %w", s.cfg.DeadLetterStream, err)
	}
	if typ != "none" && typ != "stream" {
		return fmt.Errorf("%w: DeadLetterStream %q holds a %s, not a stream: the XADD of every dead letter would fail",
			ErrWrongType, s.cfg.DeadLetterStream, typ)
	}
	s.groupReady = true
	return nil
}

// ErrWrongType is matched by the error Run, RunBatch, ClaimStale and the
// pipelines return at once when the stream's key or the dead-letter
// stream's key holds another type than a stream. The error names the key,
// its type and the command refused.
var ErrWrongType = errors.New("safesync: key holds another type than a stream")

// explain wraps err, the failure of command on key, naming both; a
// WRONGTYPE refusal also names the type the key holds and matches
// ErrWrongType.
func (s *streamCore) explain(ctx context.Context, command, key string, err error) error {
	var re *rueidis.RedisError
	if !errors.As(err, &re) || !strings.HasPrefix(re.Error(), "WRONGTYPE") {
		return fmt.Errorf("safesync: %s: %w", command, err)
	}
	ctx, cancel := quick(ctx)
	defer cancel()
	typ, typErr := s.client.Do(ctx, s.client.B().Type().Key(key).Build()).ToString()
	if typErr != nil {
		typ = "value of another type"
	}
	return fmt.Errorf("%w: %s: key %q holds a %s: %w", ErrWrongType, command, key, typ, err)
}

// forgetGroup makes the next ensureGroup check the group again, creating
// it if it is missing: called when a read or claim failed in a way that
// ends Run, such as NOGROUP (the group was destroyed, or lost in a
// failover before its creation reached the replica) or a blocked read
// UNBLOCKED by its group's removal.
func (s *streamCore) forgetGroup() {
	s.groupMu.Lock()
	s.groupReady = false
	s.groupMu.Unlock()
}

// read returns up to count entries for this consumer: first its own pending
// entries (a restarted consumer finishes what it was given), then new ones,
// waiting up to Block for them, or until ctx's deadline. It returns no
// entries and no error when that time passed without any. It is safe for
// concurrent use.
//
// acks, when not empty, are acknowledged in the same round trip as the
// first read command (XACK then XREADGROUP, pipelined), or on their own
// before a blocking read; ackErr reports their failure, and those entries
// stay pending.
//
// Read latency is recorded only for reads that returned entries without
// waiting: after a read of new entries that returned some, the next read
// is sent without BLOCK; only when that one returns nothing is a blocking
// read sent, and its duration, mostly time spent waiting, is not recorded.
// While a stream has a backlog every read is of the first kind.
func (s *streamCore) read(ctx context.Context, count int, acks []string) (entries rawEntries, ackErr, err error) {
	if err := s.ensureGroup(ctx); err != nil {
		return rawEntries{}, s.ackAlone(ctx, acks), err
	}
	s.readMu.Lock()
	defer s.readMu.Unlock()

	if s.reread.Swap(false) {
		s.pendingFrom, s.waited = "0", false
	}
	if s.pendingFrom != "" {
		entries, ackErr, err = s.readOwnPending(ctx, count, acks)
		acks = nil
		if err != nil || entries.len() > 0 {
			return entries, ackErr, err
		}
	}
	if !s.waited {
		start := time.Now()
		var err error
		entries, ackErr, err = s.readNew(ctx, count, 0, acks)
		acks = nil
		if err != nil {
			return rawEntries{}, ackErr, err
		}
		if entries.len() > 0 {
			s.metrics.observeRead(time.Since(start))
			return entries, ackErr, nil
		}
	}
	if len(acks) > 0 {
		ackErr = s.ackAlone(ctx, acks)
	}
	block := blockFor(ctx, s.cfg.Block)
	if block <= 0 {
		// ctx's deadline is less than deadlineMargin away: a read could not
		// block, and a loop of reads that cannot would spin. Wait for it.
		s.waited = false
		<-ctx.Done()
		return rawEntries{}, ackErr, nil
	}
	entries, _, err = s.readNew(ctx, count, block, nil)
	if err != nil {
		return rawEntries{}, ackErr, err
	}
	s.waited = entries.len() == 0
	return entries, ackErr, nil
}

// ackAlone acknowledges acks, if any, with the consumer's stream and group.
func (s *streamCore) ackAlone(ctx context.Context, acks []string) error {
	if len(acks) == 0 {
		return nil
	}
	ctx, cancel := quick(ctx)
	defer cancel()
	_, err := s.ack(ctx, s.cfg.Stream, s.cfg.Group, acks)
	return err
}

// doAfterAcks sends cmd, preceded by an XACK of acks in the same round trip
// when there are any, and returns cmd's result and the XACK's failure.
func (s *streamCore) doAfterAcks(ctx context.Context, acks []string, cmd rueidis.Completed) (rueidis.RedisResult, error) {
	if len(acks) == 0 {
		return s.client.Do(ctx, cmd), nil
	}
	start := s.spans.clock()
	res := s.client.DoMulti(ctx, s.client.B().Xack().Key(s.cfg.Stream).Group(s.cfg.Group).Id(acks...).Build(), cmd)
	err := s.countAck(res[0], len(acks))
	s.spans.acked(&s.cfg, acks, start, err)
	return res[1], err
}

// readNew reads entries never delivered to the group (">"), with BLOCK when
// block > 0. Blocking reads go to rueidis' pool of dedicated connections;
// cancelling ctx returns at once and closes that connection (entries the
// server delivered in that instant stay pending under this consumer and
// are re-read on its next start, or reclaimed).
func (s *streamCore) readNew(ctx context.Context, count int, block time.Duration, acks []string) (rawEntries, error, error) {
	g := s.client.B().Xreadgroup().Group(s.cfg.Group, s.cfg.Consumer).Count(int64(count))
	var cmd rueidis.Completed
	if block > 0 {
		cmd = g.Block(block.Milliseconds()).Streams().Key(s.cfg.Stream).Id(">").Build()
	} else {
		cmd = g.Streams().Key(s.cfg.Stream).Id(">").Build()
		var cancel context.CancelFunc
		ctx, cancel = quick(ctx)
		defer cancel()
	}
	res, ackErr := s.doAfterAcks(ctx, acks, cmd)
	xs, err := s.parseRead(res)
	if err != nil {
		return rawEntries{}, ackErr, err
	}
	s.metrics.countRead(len(xs))
	return rawEntries{xs: xs}, ackErr, nil
}

// readOwnPending re-reads entries delivered to this consumer and not yet
// acknowledged, after s.pendingFrom. Redis counts this as a delivery; the
// counts are looked up with XPENDING. Entries deleted from the stream while
// pending come back without fields and are acknowledged away.
func (s *streamCore) readOwnPending(ctx context.Context, count int, acks []string) (rawEntries, error, error) {
	ctx, cancel := quick(ctx)
	defer cancel()
	cmd := s.client.B().Xreadgroup().Group(s.cfg.Group, s.cfg.Consumer).Count(int64(count)).
		Streams().Key(s.cfg.Stream).Id(s.pendingFrom).Build()
	res, ackErr := s.doAfterAcks(ctx, acks, cmd)
	xs, err := s.parseRead(res)
	if err != nil {
		return rawEntries{}, ackErr, err
	}
	if len(xs) == 0 {
		s.pendingFrom = ""
		return rawEntries{}, ackErr, nil
	}
	s.pendingFrom = xs[len(xs)-1].ID
	entries, err := s.withDeliveries(ctx, s.dropDeleted(ctx, xs))
	if err != nil {
		return rawEntries{}, ackErr, err
	}
	s.metrics.countRead(entries.len())
	if entries.len() > 0 {
		s.log.Info("safesync: re-read own pending entries", "count", entries.len(), "first", entries.xs[0].ID)
	}
	return entries, ackErr, nil
}

// parseRead returns the entries of the consumer's stream in an XREADGROUP
// reply; none when BLOCK timed out.
func (s *streamCore) parseRead(res rueidis.RedisResult) ([]rueidis.XRangeEntry, error) {
	streams, err := res.AsXRead()
	if rueidis.IsRedisNil(err) {
		return nil, nil // BLOCK timed out
	}
	if err != nil {
		return nil, err
	}
	return streams[s.cfg.Stream], nil
}

// dropDeleted acknowledges entries that were deleted from the stream while
// pending and returns the others.
func (s *streamCore) dropDeleted(ctx context.Context, xs []rueidis.XRangeEntry) []rueidis.XRangeEntry {
	var gone []string
	kept := xs[:0]
	for _, x := range xs {
		if x.FieldValues == nil {
			gone = append(gone, x.ID)
		} else {
			kept = append(kept, x)
		}
	}
	if len(gone) > 0 {
		if _, err := s.ack(ctx, s.cfg.Stream, s.cfg.Group, gone); err != nil {
			s.log.Warn("safesync: acknowledge entries deleted from the stream", "ids", gone, "error", err)
		}
	}
	return kept
}

// withDeliveries looks up the delivery counts of entries pending under
// this consumer, one XPENDING per entry, and their failure records, one
// HMGET per entry, all in one round trip: they were all delivered before.
// An entry no longer pending under this consumer by then (its earlier
// holder acknowledged it, or another consumer claimed it) is left out: it
// is not this consumer's to handle.
func (s *streamCore) withDeliveries(ctx context.Context, xs []rueidis.XRangeEntry) (rawEntries, error) {
	entries := rawEntries{xs: xs, deliveries: make([]int64, len(xs)), records: make([]*failureRecord, len(xs))}
	if len(xs) == 0 {
		return entries, nil
	}
	cmds := make(rueidis.Commands, 2*len(xs))
	for i, x := range xs {
		cmds[2*i] = s.client.B().Xpending().Key(s.cfg.Stream).Group(s.cfg.Group).Start(x.ID).End(x.ID).Count(1).Build()
		cmds[2*i+1] = s.fails.readCmd(x.ID)
	}
	res := s.client.DoMulti(ctx, cmds...)
	kept := 0
	for i := range xs {
		rows, err := res[2*i].ToArray()
		if err != nil {
			return rawEntries{}, fmt.Errorf("safesync: delivery count of %s: %w", xs[i].ID, err)
		}
		values, err := res[2*i+1].ToArray()
		if err != nil {
			return rawEntries{}, fmt.Errorf("safesync: failure record of %s: %w", xs[i].ID, err)
		}
		n, ok := pendingDeliveries(rows, s.cfg.Consumer)
		if !ok {
			continue
		}
		entries.xs[kept], entries.deliveries[kept], entries.records[kept] = xs[i], n, parseRecord(values)
		kept++
	}
	entries.xs, entries.deliveries, entries.records = entries.xs[:kept], entries.deliveries[:kept], entries.records[:kept]
	return entries, nil
}

// pendingDeliveries reads the delivery count of the one row of an extended
// XPENDING, and reports whether the entry is pending under consumer.
func pendingDeliveries(rows []rueidis.RedisMessage, consumer string) (int64, bool) {
	if len(rows) != 1 {
		return 0, false
	}
	row, err := rows[0].ToArray()
	if err != nil || len(row) != 4 {
		return 0, false
	}
	if owner, err := row[1].ToString(); err != nil || owner != consumer {
		return 0, false
	}
	n, err := row[3].AsInt64()
	if err != nil {
		return 0, false
	}
	return n, true
}

// ack acknowledges ids in one XACK and returns how many were pending. A
// failure is counted in ack_failures_total and returned.
func (s *streamCore) ack(ctx context.Context, stream, group string, ids []string) (int64, error) {
	start := s.spans.clock()
	res := s.client.Do(ctx, s.client.B().Xack().Key(stream).Group(group).Id(ids...).Build())
	err := s.countAck(res, len(ids))
	if stream == s.cfg.Stream && group == s.cfg.Group {
		s.spans.acked(&s.cfg, ids, start, err)
	}
	if err != nil {
		return 0, fmt.Errorf("safesync: acknowledge entries of %q: %w", stream, err)
	}
	n, _ := res.AsInt64()
	return n, nil
}

// countAck counts an XACK's result: the entries it acknowledged, or its
// failure, which it returns.
func (s *streamCore) countAck(res rueidis.RedisResult, sent int) error {
	n, err := res.AsInt64()
	if err != nil {
		s.metrics.countAckFailure()
		return fmt.Errorf("XACK of %d entries: %w", sent, err)
	}
	s.metrics.countAcked(n)
	return nil
}

// quickTimeout bounds a command that does not block in Redis.
const quickTimeout = 10 * time.Second

// quick returns the ctx for a command that does not block in Redis: ctx's
// values and deadline, and when ctx has no deadline, quickTimeout instead
// of ctx's cancellation. rueidis sends a command whose ctx has a deadline
// straight down its connection when nothing else is using it, but a
// command whose ctx can be cancelled and has no deadline always through
// its background pipeline, two goroutine hand-offs more; such a command
// returns within a round trip, so not cancelling it early costs nothing.
func quick(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(context.WithoutCancel(ctx), quickTimeout)
}

// ErrConsumerRunning is returned by Run, RunBatch and ClaimStale when one
// of them is already running on the same Consumer.
var ErrConsumerRunning = errors.New("safesync: consumer is already running")

// retryable reports whether a failed Redis command is worth retrying:
// network errors, timeouts (callers tell the end of their own ctx apart
// first, with ended) and the Redis errors of a server that is loading,
// failing over or resharding are; others (NOGROUP, WRONGTYPE, NOPERM, …)
// are not. It classifies with errors.As, so a wrapped Redis error is still
// seen as one.
func retryable(err error) bool {
	if errors.Is(err, ErrWrongType) || errors.Is(err, ErrConsumerNameInUse) {
		return false
	}
	var re *rueidis.RedisError
	if !errors.As(err, &re) {
		return true
	}
	if re.IsLoading() || re.IsTryAgain() || re.IsClusterDown() {
		return true
	}
	if _, ok := re.IsRedirect(); ok {
		return true
	}
	code, _, _ := strings.Cut(re.Error(), " ")
	switch code {
	case "READONLY", "MASTERDOWN", "BUSY", "NOREPLICAS":
		return true
	}
	return false
}

// readBackoff is the wait before retrying a failed read or claim: it doubles
// from 50 ms to 5 s and resets after a success.
type readBackoff struct{ d time.Duration }

func (b *readBackoff) reset() { b.d = 0 }

// wait sleeps for the next delay or until ctx ends, and reports whether
// ctx is still live.
func (b *readBackoff) wait(ctx context.Context) bool {
	switch {
	case b.d == 0:
		b.d = 50 * time.Millisecond
	case b.d < 5*time.Second:
		b.d = min(2*b.d, 5*time.Second)
	}
	return sleep(ctx, b.d)
}

// ended reports whether err, the failure of a command sent with ctx, is
// ctx's end rather than a failure of Redis: ctx is done, or err is a
// deadline error and ctx's deadline is due. rueidis reports the socket
// deadline it derives from ctx as context.DeadlineExceeded, which can
// arrive before ctx.Err() is set; ended then waits for ctx to be done.
func ended(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return true
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	dl, ok := ctx.Deadline()
	if !ok || time.Until(dl) > deadlineMargin {
		return false
	}
	t := time.NewTimer(time.Until(dl) + deadlineMargin)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return true
	case <-t.C:
		return ctx.Err() != nil
	}
}

// sleep waits for d or until ctx ends, and reports whether ctx is live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// deadlineMargin is how long before ctx's deadline a blocking read is made
// to end by itself. Redis checks BLOCK timeouts on its timer (10 times a
// second by default), so a read may block up to about 100 ms past its
// BLOCK; the rest leaves time for the reply.
const deadlineMargin = 150 * time.Millisecond

// blockFor returns how long a read may block: block, or less when ctx's
// deadline comes first, so that the read ends by itself instead of being
// cut off with an error (which also closes its connection). 0 means do not
// block.
func blockFor(ctx context.Context, block time.Duration) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return block
	}
	left := time.Until(dl) - deadlineMargin
	if left < time.Millisecond {
		return 0
	}
	return min(block, left)
}
