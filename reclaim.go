package safesync

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

// endCursor is the XAUTOCLAIM cursor that ends a scan of the pending list.
const endCursor = "0-0"

// reclaimLoop scans the group's pending list every ClaimInterval until ctx
// ends; see Run. It scans at once when now is true, else one interval in,
// which leaves Run's reader to re-read this consumer's own pending entries
// first. After each scan it refreshes the pending gauges. While the
// consumer is paused it neither scans nor refreshes.
func (e *engine[T]) reclaimLoop(ctx context.Context, p *enginePart, now bool) error {
	interval := p.core.cfg.ClaimInterval
	if !now && !sleep(ctx, interval) {
		return nil
	}
	var b readBackoff
	for e.outage.wait(ctx) {
		err := e.claimPass(ctx, p)
		if ctx.Err() != nil || (err != nil && ended(ctx, err)) {
			return nil
		}
		if err != nil {
			if e.outage.paused() {
				continue
			}
			if !retryable(err) {
				p.core.forgetGroup()
				return p.core.explain(ctx, fmt.Sprintf("reclaim on %q (XAUTOCLAIM)", p.core.cfg.Stream), p.core.cfg.Stream, err)
			}
			e.outage.report(err)
			p.core.log.Warn("safesync: reclaim failed; retrying", "error", err)
			if !b.wait(ctx) {
				return nil
			}
			continue
		}
		b.reset()
		if !e.outage.paused() {
			if err := p.core.refreshPending(ctx); err != nil && ctx.Err() == nil {
				p.core.log.Warn("safesync: refresh pending gauges", "error", err)
			}
		}
		if !sleep(ctx, interval) {
			return nil
		}
	}
	return nil
}

// claimPass follows the XAUTOCLAIM cursor from the start of the pending
// list to its end. Each claim asks for as many entries as there are free
// slots (waiting for one when none is free), and the next claim follows at
// once. It stops when the consumer pauses; entries claimed as the pause
// began stay pending under this consumer, which re-reads them on resume.
func (e *engine[T]) claimPass(ctx context.Context, p *enginePart) error {
	cursor := endCursor
	for {
		free := e.sched.waitFreeSlots(ctx)
		if free == 0 || e.outage.paused() {
			return nil // ctx ended, or paused
		}
		read := e.sched.readStarted()
		tr := activeTracer()
		var claimStart time.Time
		if tr != nil {
			claimStart = time.Now()
		}
		next, raws, err := p.core.autoclaim(ctx, cursor, free*e.unitSize)
		if err != nil || e.outage.paused() {
			e.sched.readDone(read)
			return err
		}
		var claimCtx context.Context // the claim's span, while tracing
		if tr != nil && raws.len() > 0 {
			claimCtx = traceRead(ctx, tr, OpReclaim, &p.core.cfg, claimStart, raws.len())
		}
		e.sched.admit(e.prepare(ctx, p, raws, nil, claimCtx), e.unitSize, e.c.key, true, nil, read)
		e.sched.readDone(read)
		if next == endCursor {
			return nil
		}
		cursor = next
	}
}

// autoclaim claims up to count entries idle for ClaimIdle from cursor on,
// and returns the next cursor and the entries with their delivery counts.
// Entries deleted from the stream while pending (listed by Redis 7 in the
// reply's third element; returned without fields by Redis 6.2) are
// acknowledged away.
func (s *streamCore) autoclaim(ctx context.Context, cursor string, count int) (string, rawEntries, error) {
	ctx, cancel := quick(ctx) // see quick: no switch to background pipelining
	defer cancel()
	cmd := s.client.B().Xautoclaim().Key(s.cfg.Stream).Group(s.cfg.Group).Consumer(s.cfg.Consumer).
		MinIdleTime(fmt.Sprint(s.cfg.ClaimIdle.Milliseconds())).Start(cursor).Count(int64(count)).Build()
	none := rawEntries{}
	reply, err := s.client.Do(ctx, cmd).ToArray()
	if err != nil {
		return "", none, err
	}
	if len(reply) < 2 {
		return "", none, fmt.Errorf("XAUTOCLAIM returned %d elements", len(reply))
	}
	next, err := reply[0].ToString()
	if err != nil {
		return "", none, err
	}
	xs, err := reply[1].AsXRange()
	if err != nil {
		return "", none, err
	}
	if len(reply) > 2 {
		deleted, err := reply[2].AsStrSlice()
		if err != nil {
			return "", none, err
		}
		if len(deleted) > 0 {
			if _, err := s.ack(ctx, s.cfg.Stream, s.cfg.Group, deleted); err != nil {
				s.log.Warn("safesync: acknowledge entries deleted from the stream", "ids", deleted, "error", err)
			}
		}
	}
	xs = s.dropDeleted(ctx, xs)
	s.metrics.countClaimed(len(xs))
	if len(xs) > 0 {
		s.log.Info("safesync: claimed stale entries", "count", len(xs), "first", xs[0].ID)
	}
	entries, err := s.withDeliveries(ctx, xs)
	return next, entries, err
}

// refreshPending sets the pending-entries gauge from the XPENDING summary,
// and the oldest-pending-age gauge from the idle time of the first pending
// entry.
func (s *streamCore) refreshPending(ctx context.Context) error {
	ctx, cancel := quick(ctx)
	defer cancel()
	res := s.client.DoMulti(ctx,
		s.client.B().Xpending().Key(s.cfg.Stream).Group(s.cfg.Group).Build(),
		s.client.B().Xpending().Key(s.cfg.Stream).Group(s.cfg.Group).Start("-").End("+").Count(1).Build(),
	)
	summary, err := res[0].ToArray()
	if err != nil {
		return err
	}
	if len(summary) == 0 {
		return fmt.Errorf("XPENDING returned an empty summary")
	}
	count, err := summary[0].AsInt64()
	if err != nil {
		return err
	}
	rows, err := res[1].ToArray()
	if err != nil {
		return err
	}
	var idle time.Duration
	if len(rows) > 0 {
		idle, err = pendingIdle(rows[0])
		if err != nil {
			return err
		}
	}
	s.metrics.setPending(count, idle)
	return nil
}

// pendingIdle reads the idle time of one row of extended XPENDING: id,
// consumer, idle milliseconds, deliveries.
func pendingIdle(row rueidis.RedisMessage) (time.Duration, error) {
	fields, err := row.ToArray()
	if err != nil {
		return 0, err
	}
	if len(fields) != 4 {
		return 0, fmt.Errorf("XPENDING row has %d fields", len(fields))
	}
	ms, err := fields[2].AsInt64()
	if err != nil {
		return 0, err
	}
	return time.Duration(ms) * time.Millisecond, nil
}
