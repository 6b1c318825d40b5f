package safesync

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"
)

// handleOne calls h for the unit's one entry and acknowledges,
// dead-letters or leaves it pending according to the outcome.
func (e *engine[T]) handleOne(w *worker[T], u *unit[T], h Handler[T]) {
	if run, ok := e.begin(u, u.all()); !ok || len(run) == 0 {
		return
	}
	core := e.parts[u.msgs[0].part].core
	ctx, span := traceUnit(e.handlerCtx, &core.cfg, u, u.all())
	msg := u.msgs[0]
	start := time.Now()
	err := callHandler(ctx, h, msg)
	end := time.Now()
	core.metrics.observeHandler(end.Sub(start))
	if span != nil {
		endUnit(ctx, span, &core.spans, u, u.all(), err == nil, err)
	}
	if err == nil {
		e.succeeded(w, u, u.all())
		w.flushIfDue(e.sched, end)
		return
	}
	e.failed(u, 0, err, classifyFailure(e.handlerCtx, err))
}

// handleBatch calls h for the unit's entries; h acknowledges them itself.
// When h fails, each entry it neither acknowledged nor dead-lettered has
// the failure as its own (see failed): a batch handler that knows which
// entry is at fault dead-letters it, or acknowledges the others.
func (e *engine[T]) handleBatch(u *unit[T], h BatchHandler[T]) {
	run, ok := e.begin(u, u.all())
	if !ok || len(run) == 0 {
		return
	}
	core := e.parts[u.msgs[run[0]].part].core // a batch comes from one stream
	ctx, span := traceUnit(e.handlerCtx, &core.cfg, u, run)
	msgs := u.msgs
	if len(run) < len(u.msgs) {
		msgs = make([]Message[T], len(run))
		for j, i := range run {
			msgs[j] = u.msgs[i]
		}
	}
	start := time.Now()
	err := callBatchHandler(ctx, h, msgs)
	core.metrics.observeHandler(time.Since(start))
	if span != nil {
		endUnit(ctx, span, &core.spans, u, run, false, err) // h acknowledges them (Consumer.Ack)
	}
	var left []int // neither acknowledged nor dead-lettered by h
	for _, i := range run {
		if !u.msgs[i].batch.isHandled(i) {
			left = append(left, i)
		}
	}
	if err == nil {
		e.outage.succeeded()
		e.endAttempts(u, left) // left pending, not failed
		return
	}
	kind := classifyFailure(e.handlerCtx, err)
	if !isOwnFailure(kind) {
		e.notOwn(u, left, err, kind)
		return
	}
	for _, i := range left {
		e.failed(u, i, err, kind)
	}
}

// all returns the indices of every entry of u.
func (u *unit[T]) all() []int {
	if len(u.msgs) == 1 {
		return zeroIndex[:]
	}
	idx := make([]int, len(u.msgs))
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// zeroIndex is all() of a unit of one entry. Read only.
var zeroIndex = [1]int{0}

// begin starts an attempt on the unit's entries idx. For those delivered
// before, it records the attempt's start, in one round trip; an earlier
// attempt found unended, which ran alone in its process, counts as a
// crash of the entry, and an entry whose failures reach MaxDeliveries that
// way is dead-lettered instead of run. It returns the entries to run, and
// false when the attempt cannot start because Redis failed: the entries
// stay pending.
func (e *engine[T]) begin(u *unit[T], idx []int) ([]int, bool) {
	var again []int // entries delivered before
	for _, i := range idx {
		if u.msgs[i].Deliveries > 1 {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return idx, true
	}
	core := e.parts[u.msgs[idx[0]].part].core
	ids := make([]string, len(again))
	for j, i := range again {
		ids[j] = u.msgs[i].ID
	}
	isolated := len(idx) == 1 && (core.cfg.Concurrency == 1 || u.exclusive)
	attempts, err := core.fails.begin(e.handlerCtx, ids, isolated, core.token)
	if err != nil {
		if e.handlerCtx.Err() == nil {
			e.outage.report(err)
		}
		core.log.Debug("safesync: cannot record the start of an attempt; the entries stay pending", "error", err)
		return nil, false
	}
	dead := map[int]bool{}
	for j, a := range attempts {
		i := again[j]
		m := &u.msgs[i]
		if a.record != nil {
			m.rec, m.Failures = a.record, a.record.failures
		}
		if !a.crashed {
			continue
		}
		core.metrics.countFailure(FailureCrash)
		core.log.Warn("safesync: the process handling this entry ended during its handler (crash)",
			"id", m.ID, "failures", m.Failures, "max", core.cfg.MaxDeliveries, "error", a.record.lastErr)
		if a.record.failures >= core.cfg.MaxDeliveries {
			dead[i] = true
			e.deadLetter(u, i, DeadLetterMaxDeliveries, errors.New(a.record.lastErr), m.entry().withRecord(a.record))
		}
	}
	if len(dead) == 0 {
		return idx, true
	}
	run := make([]int, 0, len(idx)-len(dead))
	for _, i := range idx {
		if !dead[i] {
			run = append(run, i)
		}
	}
	return run, true
}

// succeeded hands the unit's entries idx, whose effects are done, to the
// acknowledger, after removing the failure records of those delivered
// before.
func (e *engine[T]) succeeded(w *worker[T], u *unit[T], idx []int) {
	var again []string
	for _, i := range idx {
		if u.msgs[i].Deliveries > 1 {
			again = append(again, u.msgs[i].ID)
		}
	}
	if len(again) > 0 {
		core := e.parts[u.msgs[idx[0]].part].core
		if err := core.fails.forget(e.handlerCtx, again); err != nil {
			// A record left behind is harmless: the entry is acknowledged.
			core.log.Debug("safesync: cannot remove failure records", "ids", again, "error", err)
		}
	}
	for _, i := range idx {
		w.ack(e.sched, u, i)
	}
	e.outage.succeeded()
}

// failed settles entry i of u, whose attempt failed with err of kind (see
// classifyFailure). Its own failures are recorded, and the one that
// reaches MaxDeliveries dead-letters it, as Permanent does at once; other
// failures leave it pending, uncounted, and an infrastructure failure is
// reported to the outage detector.
func (e *engine[T]) failed(u *unit[T], i int, err error, kind string) {
	m := u.msgs[i]
	core := e.parts[m.part].core
	if isOwnFailure(kind) {
		core.metrics.countFailure(kind)
	}
	switch {
	case kind == FailurePermanent:
		e.deadLetter(u, i, DeadLetterHandler, err, m.entry().withFailure(m.rec))
	case isOwnFailure(kind):
		var pe *panicError
		if errors.As(err, &pe) {
			core.metrics.countHandlerPanic()
			core.log.Error("safesync: handler panicked", "id", m.ID, "panic", pe.value, "stack", string(pe.stack))
		}
		rec, recErr := core.fails.fail(e.handlerCtx, m.ID, kind, err)
		if recErr != nil {
			if e.handlerCtx.Err() == nil {
				e.outage.report(recErr)
			}
			core.log.Warn("safesync: handler failed; the entry stays pending (its failure could not be recorded)",
				"id", m.ID, "kind", kind, "error", err, "record_error", recErr)
			return
		}
		if rec.failures >= core.cfg.MaxDeliveries {
			e.deadLetter(u, i, DeadLetterMaxDeliveries, err, m.entry().withRecord(rec))
			return
		}
		core.log.Warn("safesync: handler failed; the entry stays pending",
			"id", m.ID, "kind", kind, "failures", rec.failures, "max", core.cfg.MaxDeliveries, "error", err)
	default: // infrastructure, contention, shutdown: not the entry's fault
		e.notOwn(u, []int{i}, err, kind)
	}
}

// notOwn settles the unit's entries idx, whose attempt failed with err of
// a kind that is not their own fault (infrastructure, contention, or ""
// for shutdown): they stay pending, uncounted, and an infrastructure
// failure is reported once to the outage detector.
func (e *engine[T]) notOwn(u *unit[T], idx []int, err error, kind string) {
	if len(idx) == 0 {
		return
	}
	core := e.parts[u.msgs[idx[0]].part].core
	if kind != "" {
		for range idx {
			core.metrics.countFailure(kind)
		}
	}
	e.endAttempts(u, idx)
	if kind == FailureInfrastructure {
		e.outage.report(err)
	}
	core.log.Debug("safesync: failed, not through the entries' fault; they stay pending, uncounted",
		"id", u.msgs[idx[0]].ID, "entries", len(idx), "kind", kind, "error", err)
}

// endAttempts removes the attempt markers of the unit's entries idx that
// were delivered before (those given one), whose attempt ended without an
// own failure.
func (e *engine[T]) endAttempts(u *unit[T], idx []int) {
	var again []string
	for _, i := range idx {
		if u.msgs[i].Deliveries > 1 {
			again = append(again, u.msgs[i].ID)
		}
	}
	if len(again) == 0 {
		return
	}
	core := e.parts[u.msgs[idx[0]].part].core
	if err := core.fails.endAttempts(e.handlerCtx, again); err != nil {
		core.log.Debug("safesync: cannot remove attempt markers", "ids", again, "error", err)
	}
}

// deadLetter moves entry i of u, described by d, to the dead-letter
// stream with reason and cause, under a ctx that outlives Run's by
// ackTimeout, and records it settled. When the move fails the entry stays
// pending, and comes back.
func (e *engine[T]) deadLetter(u *unit[T], i int, reason string, cause error, d deadLetterEntry) {
	msg := u.msgs[i]
	base := e.runCtx
	if msg.span != nil {
		base = msg.span // traced: the move goes under the entry's span
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(base), ackTimeout)
	defer cancel()
	if err := e.c.moveToDeadLetter(ctx, msg, reason, cause, d); err != nil {
		core := e.parts[msg.part].core
		core.metrics.countAckFailure()
		core.log.Error("safesync: dead-letter failed; the entry stays pending", "id", msg.ID, "error", err)
		return
	}
	u.mark(i, outcomeSettled)
}

// panicError is a recovered handler panic.
type panicError struct {
	value any
	stack []byte
}

func (p *panicError) Error() string { return fmt.Sprintf("safesync: handler panicked: %v", p.value) }

func callHandler[T any](ctx context.Context, h Handler[T], msg Message[T]) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p, stack: debug.Stack()}
		}
	}()
	return h(ctx, msg)
}

func callBatchHandler[T any](ctx context.Context, h BatchHandler[T], msgs []Message[T]) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p, stack: debug.Stack()}
		}
	}()
	return h(ctx, msgs)
}
