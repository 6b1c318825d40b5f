package safesync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// leaderTerm is one stretch of leadership on one connection: the prepared
// statements, the idle pause and the streams waiting out a failure.
type leaderTerm struct {
	r      *Relay
	conn   *sql.Conn
	connID int64

	confirm  *sql.Stmt // SELECT IS_USED_LOCK(?)
	readAll  *sql.Stmt // a full batch, no stream excluded
	markFull *sql.Stmt // delete or mark BatchSize rows

	poll    time.Duration  // the next idle pause
	outage  outboxBackoff  // when every stream of a batch failed
	streams streamBackoffs // streams failing while others succeed
	statsAt time.Time      // last refresh of the backlog gauges
	readAt  time.Time      // when the current batch was read
}

// relayRow is one outbox row read by the leader.
type relayRow struct {
	id, nonce int64
	stream    string
	data      sql.NullString
	fields    []byte
	age       time.Duration // from created_at to the read
}

// relayColumns are the columns the leader reads, in relayRow's order.
const relayColumns = "id, nonce, stream, data, fields, TIMESTAMPDIFF(MICROSECOND, created_at, UTC_TIMESTAMP(6))"

// lead relays batches on conn, which holds the lock as connID, until the
// lock is lost, a statement on conn fails, or ctx ends (nil).
func (r *Relay) lead(ctx context.Context, conn *sql.Conn, connID int64) (err error) {
	r.leading.Store(true)
	r.metrics.setLeader(true)
	defer func() {
		r.leading.Store(false)
		r.metrics.setLeader(false)
		r.metrics.setBacklog(0, 0)
	}()
	t := &leaderTerm{r: r, conn: conn, connID: connID, poll: r.cfg.PollMin, streams: streamBackoffs{}}
	defer t.closeStatements()
	if err := t.prepare(ctx); err != nil {
		return err
	}
	for ctx.Err() == nil {
		if err := t.confirmLock(ctx); err != nil {
			return err
		}
		if time.Since(t.statsAt) >= r.cfg.StatsInterval {
			if err := t.refreshStats(ctx); err != nil {
				return err
			}
		}
		rows, err := t.read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.metrics.countError(relayStageRead)
			return err
		}
		if len(rows) == 0 {
			t.idle(ctx)
			continue
		}
		t.poll = r.cfg.PollMin
		if err := t.relay(ctx, rows); err != nil {
			return err
		}
	}
	return nil
}

// prepare prepares the statements every batch uses on the leader's
// connection.
func (t *leaderTerm) prepare(ctx context.Context) error {
	var err error
	if t.confirm, err = t.conn.PrepareContext(ctx, "SELECT IS_USED_LOCK(?)"); err != nil {
		return err
	}
	if t.readAll, err = t.conn.PrepareContext(ctx, t.readQuery(0)); err != nil {
		return err
	}
	t.markFull, err = t.conn.PrepareContext(ctx, t.markQuery(t.r.cfg.BatchSize))
	return err
}

func (t *leaderTerm) closeStatements() {
	for _, s := range []*sql.Stmt{t.confirm, t.readAll, t.markFull} {
		if s != nil {
			s.Close()
		}
	}
}

// confirmLock checks on the leader's connection that it still holds the
// lock.
func (t *leaderTerm) confirmLock(ctx context.Context) error {
	var holder sql.NullInt64
	if err := t.confirm.QueryRowContext(ctx, t.r.lockName).Scan(&holder); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		t.r.metrics.countError(relayStageLock)
		return errors.Join(fmt.Errorf("%w: %q: confirming it failed", ErrLockLost, t.r.lockName), err)
	}
	if !holder.Valid || holder.Int64 != t.connID {
		t.r.metrics.countError(relayStageLock)
		return fmt.Errorf("%w: %q is no longer held by connection %d", ErrLockLost, t.r.lockName, t.connID)
	}
	return nil
}

// readQuery selects a batch, leaving out the rows of excluded streams.
//
// When relayed rows are deleted, it reads the primary key in id order:
// relay_idx would serve the same rows, but deleted rows linger in a
// secondary index until InnoDB purges them, and each one the scan passes
// costs a lookup in the primary key to learn that it is gone, so that
// batch k would pay for the k-1 batches deleted before it. When relayed
// rows are kept and marked, relay_idx skips them, and the optimizer picks
// it.
func (t *leaderTerm) readQuery(excluded int) string {
	var b strings.Builder
	b.WriteString("SELECT " + relayColumns + " FROM " + t.r.quoted)
	if !t.r.cfg.KeepRelayed {
		b.WriteString(" FORCE INDEX (`PRIMARY`)")
	}
	b.WriteString(" WHERE relayed_at IS NULL")
	if excluded > 0 {
		b.WriteString(" AND stream NOT IN (" + placeholders(excluded) + ")")
	}
	fmt.Fprintf(&b, " ORDER BY id LIMIT %d", t.r.cfg.BatchSize)
	return b.String()
}

// markQuery deletes (or marks, with KeepRelayed) n rows by id.
func (t *leaderTerm) markQuery(n int) string {
	if t.r.cfg.KeepRelayed {
		return "UPDATE " + t.r.quoted + " SET relayed_at = UTC_TIMESTAMP(6) WHERE id IN (" + placeholders(n) + ")"
	}
	return "DELETE FROM " + t.r.quoted + " WHERE id IN (" + placeholders(n) + ")"
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// read returns the next batch: the first BatchSize unrelayed rows in id
// order, without the streams waiting out a failure.
func (t *leaderTerm) read(ctx context.Context) ([]relayRow, error) {
	excluded := t.streams.excluded(time.Now())
	var rows *sql.Rows
	var err error
	if len(excluded) == 0 {
		rows, err = t.readAll.QueryContext(ctx)
	} else {
		args := make([]any, len(excluded))
		for i, s := range excluded {
			args[i] = s
		}
		rows, err = t.conn.QueryContext(ctx, t.readQuery(len(excluded)), args...)
	}
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	t.readAt = time.Now()
	var out []relayRow
	for rows.Next() {
		var row relayRow
		var micros int64
		if err := rows.Scan(&row.id, &row.nonce, &row.stream, &row.data, &row.fields, &micros); err != nil {
			return nil, err
		}
		row.age = time.Duration(micros) * time.Microsecond
		out = append(out, row)
	}
	return out, rows.Err()
}

// idle pauses for the current poll interval, or until a local commit
// wakes the relay or ctx ends, and doubles the interval up to PollMax.
func (t *leaderTerm) idle(ctx context.Context) {
	timer := time.NewTimer(t.poll)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-t.r.wake:
	case <-timer.C:
		t.poll = min(2*t.poll, t.r.cfg.PollMax)
	}
}

// relay adds rows to their streams, deletes or marks those added, and
// schedules the streams that failed for another try. It returns an error
// only when the rows could not be deleted or marked: the connection is
// then in doubt, and the leader steps down.
func (t *leaderTerm) relay(ctx context.Context, rows []relayRow) error {
	r := t.r
	outcomes := r.addToStreams(ctx, rows, t.readAt)
	var relayed []RelayedEvent
	var ids []any
	failed := 0
	for _, o := range outcomes {
		if o.err != nil {
			failed++
			stage := relayStageAdd
			if o.decodeErr {
				stage = relayStageDecode
			}
			r.metrics.countError(stage)
			r.log.Warn("safesync: outbox relay: stream not relayed; its rows wait", "stream", o.stream, "rows", len(o.rows), "error", o.err)
			continue
		}
		t.streams.succeeded(o.stream)
		for i, row := range o.rows {
			relayed = append(relayed, RelayedEvent{RowID: row.id, Origin: originID(row), Stream: o.stream, EntryID: o.ids[i]})
			ids = append(ids, row.id)
		}
	}
	switch {
	case failed == len(outcomes):
		// Redis is down, or every stream of the batch is broken: wait,
		// still leading, and try the whole batch again.
		outageWait := t.outage.next()
		timer := time.NewTimer(outageWait)
		defer timer.Stop()
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		return nil
	case failed > 0:
		for _, o := range outcomes {
			if o.err != nil {
				t.streams.failed(o.stream, time.Now())
			}
		}
	}
	t.outage.reset()
	if r.cfg.AfterXADD != nil {
		r.cfg.AfterXADD(ctx, relayed)
	}
	// The entries are in their streams: record that even if ctx has just
	// ended, so that a shutdown does not leave them to be added again.
	markCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultHookTimeout)
	defer cancel()
	var err error
	if len(ids) == r.cfg.BatchSize {
		_, err = t.markFull.ExecContext(markCtx, ids...)
	} else {
		_, err = t.conn.ExecContext(markCtx, t.markQuery(len(ids)), ids...)
	}
	if err != nil {
		r.metrics.countError(relayStageMark)
		return fmt.Errorf("delete or mark %d relayed rows (they will be added again): %w", len(ids), err)
	}
	r.metrics.observeBatch(len(ids))
	return nil
}

// refreshStats sets the backlog gauges: the number of unrelayed rows and
// the age of the lowest-id one.
func (t *leaderTerm) refreshStats(ctx context.Context) error {
	t.statsAt = time.Now()
	if t.r.metrics == nil {
		return nil
	}
	q := "SELECT COUNT(*), (SELECT TIMESTAMPDIFF(MICROSECOND, created_at, UTC_TIMESTAMP(6)) FROM " + t.r.quoted +
		" WHERE relayed_at IS NULL ORDER BY id LIMIT 1) FROM " + t.r.quoted + " WHERE relayed_at IS NULL"
	var count int64
	var micros sql.NullInt64
	if err := t.conn.QueryRowContext(ctx, q).Scan(&count, &micros); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		t.r.metrics.countError(relayStageRead)
		return err
	}
	t.r.metrics.setBacklog(count, time.Duration(micros.Int64)*time.Microsecond)
	return nil
}

// maxExcludedStreams bounds the streams a batch read leaves out; beyond
// it, failing streams are retried with the others.
const maxExcludedStreams = 256

// streamBackoffs are the streams whose last add failed while others
// succeeded: each is left out of batch reads until its retry time, with a
// delay that doubles from 50 ms to 5 s while it keeps failing. Leaving a
// stream out keeps its own rows in order (none of them is relayed) without
// holding up the others.
type streamBackoffs map[string]*streamBackoff

type streamBackoff struct {
	b       outboxBackoff
	retryAt time.Time
}

func (s streamBackoffs) failed(stream string, now time.Time) {
	sb := s[stream]
	if sb == nil {
		if len(s) >= maxExcludedStreams {
			return
		}
		sb = &streamBackoff{}
		s[stream] = sb
	}
	sb.retryAt = now.Add(sb.b.next())
}

func (s streamBackoffs) succeeded(stream string) { delete(s, stream) }

// excluded returns the streams still waiting at now.
func (s streamBackoffs) excluded(now time.Time) []string {
	var out []string
	for stream, sb := range s {
		if now.Before(sb.retryAt) {
			out = append(out, stream)
		}
	}
	return out
}
