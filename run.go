package safesync

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/puddle/v2"
)

// Run reads entries and calls h for each, up to Concurrency at a time (in
// per-key order with OrderBy), until ctx ends. An entry is acknowledged
// after h returns nil; the acknowledgements of entries handled in a burst
// are sent together, in one XACK, while handling goes on. See Handler for
// errors and panics.
//
// Run first re-reads the entries still pending under this consumer's name,
// then reads new ones, Count at a time, reading the next batch while the
// previous one is handled. Every ClaimInterval, starting one interval after
// Run starts, it also claims entries that have been pending longer than
// ClaimIdle under any consumer of the group (XAUTOCLAIM, following the
// cursor through the whole pending list, never claiming more at once than
// there are free handler slots), and refreshes the pending gauges. Entries
// that cannot be decoded are dead-lettered on their first delivery, and
// entries that failed for their own reasons MaxDeliveries times at the
// failure that reaches it; the others of their read are handled as usual.
// While it runs, the consumer holds a lease on its name (see
// StreamConfig.Consumer).
//
// Outages. When Redis cannot be reached, or handlers fail for reasons
// that are not their entries' own (see Handler), Run probes Redis (and a
// pipeline's database); when a probe fails, or three such failures come
// in a row, it pauses: it reads and claims nothing, starts no handler,
// lets those running finish (their entries stay pending, uncounted) and
// leaves the entries read but not started pending. It logs the pause once,
// sets the paused gauge, and reports it through Ready and
// StreamConfig.Readiness; it probes with a backoff doubling from 100 ms to
// 5 s, resumes by itself once the probes pass (re-reading its own pending
// entries first), and logs once more when a second has gone by without a
// failure. Redis or the database unreachable when Run starts is the same:
// Run waits. An acknowledgement that fails for want of Redis is sent again
// until it succeeds or Run ends; its entries are not run again meanwhile.
//
// Crashes. Before handling an entry delivered before, Run records the
// attempt's start beside the entry's failure record, and removes it with
// the outcome. An attempt found unended on the next delivery means its
// process ended during the handler (os.Exit, a fatal error, the OOM
// killer, SIGKILL): when that handler ran alone in its process, the end is
// counted as one failure of the entry, of kind crash; an entry found so
// after a run beside others is run alone next time, with no other handler
// of the process running, so that a crash poison entry is dead-lettered
// after MaxDeliveries crashes while the entries beside it are not counted.
//
// ctx governs reading: cancelling it interrupts a blocking read at once, and
// no handler starts after that. Handlers receive a ctx that carries ctx's
// values but is cancelled only ShutdownGrace after ctx is, so that
// in-flight handlers finish and their entries are acknowledged; entries
// read but not started stay pending, never acknowledged. Run returns once
// every handler has returned and every acknowledgement has been sent; no
// goroutine it started outlives it.
//
// Run returns nil once ctx has ended, cancelled or past its deadline; near
// the deadline it waits for it rather than send reads that cannot block.
// It returns early with an error when Redis refuses to create the group,
// or a read or claim, in a way retrying cannot fix (the group was
// destroyed, or lost in a failover before its creation reached the
// replica; NOPERM; a key holds another type, ErrWrongType), naming the
// command and the key, and when another live process runs a consumer of
// the same name (ErrConsumerNameInUse). After a missing group, the next
// Run creates it again, from StartID. Acknowledgements that failed for
// good (refused by Redis, or still failing when Run ends), counted in
// ack_failures_total as they happen, are also reported in Run's error;
// their entries stay pending and are redelivered.
func (c *Consumer[T]) Run(ctx context.Context, h Handler[T]) error {
	if h == nil {
		return errors.New("safesync: Run with nil Handler")
	}
	return c.run(ctx, true, 1, c.core.cfg.Count, func(e *engine[T], w *worker[T], u *unit[T]) {
		e.handleOne(w, u, h)
	}, runOptions{})
}

// RunBatch is Run for handlers of several entries at once: it calls h with
// up to size entries (fewer when fewer are available), up to Concurrency
// calls at a time. Each read asks for the larger of size and Count
// entries and splits them into batches, so small batches do not cost a
// read each. h owns acknowledgement: it
// calls Ack for the entries it finished, for example in a transaction's
// after-commit hook, and DeadLetter for those it rejects; nothing else is
// acknowledged. With OrderBy, a batch containing a key waits for every
// earlier batch containing that key. Everything else, including ctx,
// reclaim, dead letters and shutdown, is as for Run; see BatchHandler for
// errors and panics.
func (c *Consumer[T]) RunBatch(ctx context.Context, size int, h BatchHandler[T]) error {
	if h == nil {
		return errors.New("safesync: RunBatch with nil BatchHandler")
	}
	if size < 1 {
		return fmt.Errorf("safesync: RunBatch with batch size %d", size)
	}
	return c.run(ctx, true, size, max(size, c.core.cfg.Count), func(e *engine[T], w *worker[T], u *unit[T]) {
		e.handleBatch(u, h)
	}, runOptions{batchHandler: true})
}

// ClaimStale runs only the reclaim part of Run, like the original's
// run_claim_stale: it reads no new entries, and every ClaimInterval,
// starting at once, claims the entries that have been pending longer than
// ClaimIdle under any consumer of the group, and calls h for each as Run
// does. A scan follows the XAUTOCLAIM cursor through the whole pending list
// and claims no more at once than there are free handler slots; when a
// claim fills them, the next claim follows as soon as slots free up, with
// no pause. ctx and shutdown are as for Run.
func (c *Consumer[T]) ClaimStale(ctx context.Context, h Handler[T]) error {
	if h == nil {
		return errors.New("safesync: ClaimStale with nil Handler")
	}
	return c.run(ctx, false, 1, 1, func(e *engine[T], w *worker[T], u *unit[T]) {
		e.handleOne(w, u, h)
	}, runOptions{})
}

// engine is one running Run, RunBatch or ClaimStale.
type engine[T any] struct {
	c          *Consumer[T]
	core       *streamCore // parts[0].core: where handler metrics and logs go
	parts      []*enginePart
	unitSize   int
	readCount  int
	sched      *scheduler[T]
	outage     *outage
	inline     bool            // the reader handles what it reads: Run with Concurrency 1 on one stream
	runCtx     context.Context // Run's ctx
	handlerCtx context.Context // its values; cancelled ShutdownGrace after it

	readMu     sync.Mutex
	readCtx    context.Context // reads' ctx: cancelled when the consumer pauses
	cancelRead context.CancelFunc
}

// enginePart is one stream an engine reads (a partition, when there are
// several): its reader, reclaim and acknowledgements are its own; the
// handler slots and the scheduler are shared.
type enginePart struct {
	index int
	core  *streamCore
	acks  *acker
}

// runOptions are what a pipeline adds to a run: its database.
type runOptions struct {
	// probe checks the commit stage's database while the consumer is
	// paused, and after an infrastructure failure.
	probe func(ctx context.Context) error
	// start runs before the first read; an infrastructure failure (the
	// database unreachable) is waited out as an outage, another error
	// ends Run.
	start func(ctx context.Context) error
	// batchHandler: the handler acknowledges entries itself (RunBatch),
	// and units record which.
	batchHandler bool
}

func (c *Consumer[T]) run(ctx context.Context, read bool, unitSize, readCount int, work func(*engine[T], *worker[T], *unit[T]), opts runOptions) error {
	if !c.core.running.CompareAndSwap(false, true) {
		return ErrConsumerRunning
	}
	defer c.core.running.Store(false)
	cfg := &c.core.cfg
	token := newRunToken()
	var metrics []*streamMetrics
	for _, core := range c.parts {
		core.token = token
		metrics = append(metrics, core.metrics)
	}
	ping := func(ctx context.Context) error {
		return c.core.client.Do(ctx, c.core.client.B().Ping().Build()).Error()
	}
	probes := []func(context.Context) error{ping}
	if opts.probe != nil {
		probes = append(probes, opts.probe)
	}
	o := newOutage(c.core.log, fmt.Sprintf("consumer %q of group %q on %q", cfg.Consumer, cfg.Group, cfg.Stream),
		cfg.Readiness, metrics, probes...)
	c.outage.Store(o)
	proberCtx, stopProber := context.WithCancel(ctx)
	proberDone := make(chan struct{})
	go func() { defer close(proberDone); o.loop(proberCtx) }()
	defer func() {
		stopProber()
		<-proberDone
		o.close()
	}()

	// Until the first read: the group, the name's lease, the pipeline's
	// start. A server unavailable meanwhile is an outage, waited out.
	for _, core := range c.parts {
		core.rereadOwnPending() // what an earlier run left unstarted comes first
		if err := o.retry(ctx, core.log, "create the group", core.ensureGroup, retryable); err != nil || ctx.Err() != nil {
			return err
		}
	}
	leases, err := c.acquireNames(ctx, o)
	if err != nil || leases == nil {
		return err // nil: ctx ended
	}
	defer func() {
		for _, l := range leases {
			l.release(ctx)
		}
	}()
	if opts.start != nil {
		if err := o.retry(ctx, c.core.log, "prepare the commit stage", opts.start, isInfrastructure); err != nil || ctx.Err() != nil {
			return err
		}
	}

	slots, err := newSlots(cfg.Concurrency)
	if err != nil {
		return err
	}
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	e := &engine[T]{
		c: c, core: c.core, unitSize: unitSize, readCount: readCount, outage: o,
		runCtx: ctx, handlerCtx: handlerCtx,
		inline: read && unitSize == 1 && cfg.Concurrency == 1 && len(c.parts) == 1,
	}
	var order *orderer
	if c.key != nil {
		order = newOrderer()
	}
	e.sched = newScheduler[T](ctx, slots, cfg.Concurrency, readCount, order)
	e.sched.trackHandled = opts.batchHandler
	settle := func(refs []heldRef, acked bool) {
		if acked {
			e.sched.settle(refs)
		} else {
			e.sched.release(refs)
		}
	}
	for i, core := range c.parts {
		e.parts = append(e.parts, &enginePart{index: i, core: core, acks: newAcker(core, context.WithoutCancel(ctx), settle, o.report)})
	}
	e.sched.work = func(w *worker[T], u *unit[T]) { work(e, w, u) }
	e.sched.flushAcks = func(part int, ids []string, refs []heldRef) { e.parts[part].acks.add(ids, refs) }

	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	e.readCtx, e.cancelRead = context.WithCancel(loopCtx)
	o.setHooks(e.pause, func() { e.resume(loopCtx) })
	var loops sync.WaitGroup
	fatal := make(chan error, 2*len(e.parts)+1)
	startLoop := func(loop func(context.Context) error) {
		loops.Add(1)
		go func() {
			defer loops.Done()
			if err := loop(loopCtx); err != nil {
				fatal <- err
			}
		}()
	}
	startLoop(func(ctx context.Context) error { return renewNames(ctx, leases, o.report) })
	for _, p := range e.parts {
		if read {
			startLoop(func(ctx context.Context) error { return e.readLoop(ctx, p) })
		}
		startLoop(func(ctx context.Context) error { return e.reclaimLoop(ctx, p, !read) })
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-fatal:
	}
	o.setHooks(nil, nil)
	e.sched.stop()
	stopLoops()
	e.waitHandlers(cfg.ShutdownGrace, cancelHandlers, &loops)
	close(fatal)
	for err := range fatal {
		runErr = errors.Join(runErr, err)
	}
	var ackErr error
	for _, p := range e.parts {
		ackErr = errors.Join(ackErr, p.acks.close())
	}
	slots.Close()
	return errors.Join(runErr, ackErr)
}

// newRunToken returns a random name for one Run, for attempt markers.
func newRunToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// pause is the outage's pause hook: no unit starts, those waiting are
// dropped (their entries stay pending), and reads in progress are cut
// short.
func (e *engine[T]) pause() {
	e.sched.pause()
	e.readMu.Lock()
	e.cancelRead()
	e.readMu.Unlock()
}

// resume is the outage's resume hook: reads start again with this
// consumer's own pending entries (those it dropped or left at the pause),
// and units start again.
func (e *engine[T]) resume(loopCtx context.Context) {
	e.readMu.Lock()
	e.readCtx, e.cancelRead = context.WithCancel(loopCtx)
	e.readMu.Unlock()
	for _, p := range e.parts {
		p.core.rereadOwnPending()
	}
	e.sched.resume()
}

// currentReadCtx returns the ctx of the next read: cancelled when the
// consumer pauses.
func (e *engine[T]) currentReadCtx() context.Context {
	e.readMu.Lock()
	defer e.readMu.Unlock()
	return e.readCtx
}

// acquireNames takes the lease of the consumer's name on each of its
// streams (see nameLease); Redis unavailable meanwhile is an outage,
// waited out. It returns nil leases and a nil error when ctx ended first.
func (c *Consumer[T]) acquireNames(ctx context.Context, o *outage) ([]*nameLease, error) {
	var leases []*nameLease
	for _, core := range c.parts {
		l := newNameLease(core)
		if err := o.retry(ctx, core.log, "take the consumer name's lease", l.acquire, retryable); err != nil || ctx.Err() != nil {
			for _, l := range leases {
				l.release(ctx)
			}
			return nil, err
		}
		leases = append(leases, l)
	}
	return leases, nil
}

// renewNames renews the leases every leaseRenewal until ctx ends. It
// returns an error when another process holds one of them. A renewal that
// fails for want of Redis (it waits leaseRenewal at most) is reported to
// the outage detector, which probes Redis: a Redis that hangs is noticed
// within seconds even when nothing else is sent to it. The next renewal
// tries again.
func renewNames(ctx context.Context, leases []*nameLease, report func(error)) error {
	t := time.NewTicker(leaseRenewal)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, l := range leases {
			rctx, cancel := context.WithTimeout(ctx, leaseRenewal)
			err := l.renew(rctx)
			cancel()
			switch {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, ErrConsumerNameInUse):
				return err
			default:
				report(err)
			}
		}
	}
}

// newSlots returns a pool of n concurrency slots, all created up front so
// that taking one never constructs anything.
func newSlots(n int) (*puddle.Pool[struct{}], error) {
	p, err := puddle.NewPool(&puddle.Config[struct{}]{
		Constructor: func(context.Context) (struct{}, error) { return struct{}{}, nil },
		Destructor:  func(struct{}) {},
		MaxSize:     int32(n),
	})
	if err != nil {
		return nil, fmt.Errorf("safesync: handler slots: %w", err)
	}
	for range n {
		if err := p.CreateResource(context.Background()); err != nil {
			p.Close()
			return nil, fmt.Errorf("safesync: handler slots: %w", err)
		}
	}
	return p, nil
}

// readLoop reads entries and hands them to the scheduler until ctx ends,
// reading ahead while fewer than a read's worth of entries wait to start.
// While the consumer is paused it does not read; a read in progress when
// the pause begins is cut short, and entries it returned anyway are left
// pending, to be re-read on resume.
//
// With Concurrency 1 (inline), the reader is also the worker: it handles
// what it read itself, then acknowledges those entries in the same round
// trip as its next read. Draining a backlog then costs one round trip per
// read and no goroutine hand-off per entry.
func (e *engine[T]) readLoop(ctx context.Context, p *enginePart) error {
	var w worker[T] // the reader's acknowledgements, inline
	if e.inline {
		// Acknowledgements that waited ackFlushAfter (a read's handlers
		// were slow) go out at once, from the reader itself: an XACK sent
		// by the acknowledger beside a read would make rueidis pipeline
		// the connection through goroutines from then on.
		w.direct = func(part int, ids []string, refs []heldRef) {
			q := e.parts[part]
			if err := q.core.ackAlone(ctx, ids); err != nil {
				q.acks.retryOrFail(ids, refs, err)
				return
			}
			e.sched.settle(refs)
		}
	}
	defer w.flush(e.sched)
	var msgs []Message[T] // inline: reused from read to read
	var units []unit[T]
	var b readBackoff
	for e.outage.wait(ctx) && e.sched.waitToRead(ctx) {
		if e.outage.paused() {
			continue
		}
		acked, ackedRefs := w.take(p.index)
		read := e.sched.readStarted()
		tr := activeTracer()
		var readStart time.Time
		if tr != nil {
			readStart = time.Now()
		}
		raws, ackErr, err := p.core.read(e.currentReadCtx(), e.readCount, acked)
		if ackErr != nil {
			p.acks.retryOrFail(acked, ackedRefs, ackErr)
		} else {
			e.sched.settle(ackedRefs)
			w.reuse(p.index, acked, ackedRefs)
		}
		if err != nil {
			e.sched.readDone(read)
			switch {
			case ended(ctx, err):
				return nil
			case e.outage.paused():
				continue // cut short by the pause
			case !retryable(err):
				p.core.forgetGroup()
				return p.core.explain(ctx, fmt.Sprintf("read %q (XREADGROUP)", p.core.cfg.Stream), p.core.cfg.Stream, err)
			}
			e.outage.report(err)
			p.core.log.Warn("safesync: read failed; retrying", "error", err)
			if !b.wait(ctx) {
				return nil
			}
			continue
		}
		b.reset()
		if raws.len() > 0 && e.outage.paused() {
			e.sched.readDone(read)
			continue // read as the pause began: pending, re-read on resume
		}
		var readCtx context.Context // the read's span, while tracing
		if tr != nil && raws.len() > 0 {
			readCtx = traceRead(ctx, tr, OpRead, &p.core.cfg, readStart, raws.len())
		}
		if !e.inline {
			e.sched.admit(e.prepare(ctx, p, raws, nil, readCtx), e.unitSize, e.c.key, true, nil, read)
			e.sched.readDone(read)
			continue
		}
		// Inline, the messages and units of a read are done with once
		// runHere has drained the queue, so the next read reuses them.
		msgs = e.prepare(ctx, p, raws, msgs, readCtx)
		e.sched.admit(msgs, e.unitSize, e.c.key, false, &units, read)
		e.sched.readDone(read)
		if !e.sched.runHere(ctx, &w) {
			msgs, units = nil, nil
		}
	}
	return nil
}

// prepare decodes raw entries; failures to dead-letter are counted and
// logged, and those entries stay pending for a later attempt.
// While tracing, readCtx carries the span of the read or claim that
// returned the entries: their dead letters and handlers go under it.
func (e *engine[T]) prepare(ctx context.Context, p *enginePart, raws rawEntries, into []Message[T], readCtx context.Context) []Message[T] {
	if readCtx != nil {
		ctx = readCtx
	}
	msgs, err := e.c.prepare(ctx, p.index, raws, into)
	if err != nil {
		p.core.metrics.countAckFailure()
		p.core.log.Error("safesync: dead-letter failed; the entry stays pending", "error", err)
	}
	if readCtx != nil {
		for i := range msgs {
			msgs[i].read, msgs[i].span = readCtx, readCtx
		}
	}
	return msgs
}

// waitHandlers waits for the loops and the workers to return, cancelling
// the handlers' ctx once grace has passed (an inline reader may be running
// a handler).
func (e *engine[T]) waitHandlers(grace time.Duration, cancel context.CancelFunc, loops *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		loops.Wait()
		e.sched.workers.Wait()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		e.core.log.Warn("safesync: handlers still running after ShutdownGrace; cancelling their ctx", "grace", grace)
		cancel()
		<-done
	}
}
