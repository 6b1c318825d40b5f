package safesync

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/puddle/v2"
)

// Run reads entries and calls h for each, up to Concurrency at a time (in
// per-key order with OrderBy), until ctx is cancelled. An entry is
// acknowledged after h returns nil; acknowledgements of concurrent handlers
// are sent together, one XACK per burst. See Handler for errors and panics.
//
// Run first re-reads the entries still pending under this consumer's name,
// then reads new ones. Every ClaimInterval, starting one interval after
// Run starts, it also claims entries that have been pending longer than
// ClaimIdle under any consumer of the group (XAUTOCLAIM, following the
// cursor through the whole pending list, never more at once than there are
// free handler slots), refreshes the pending gauges, and dead-letters
// entries past MaxDeliveries. Entries that cannot be decoded are
// dead-lettered on their first delivery; the others of their read are
// handled as usual.
//
// ctx governs reading: cancelling it interrupts a blocking read at once, and
// no new handler starts after that. Handlers receive a ctx that carries
// ctx's values but is cancelled only ShutdownGrace after ctx is, so that
// in-flight handlers finish and their entries are acknowledged; entries
// read but not started stay pending, never acknowledged. Run returns once
// every handler has returned and every acknowledgement has been sent; no
// goroutine it started outlives it.
//
// Run returns nil after ctx is cancelled. It returns early with an error
// when Redis refuses a read or claim in a way retrying cannot fix (the
// group was destroyed, the key holds another type); lost connections are
// retried with backoff. Acknowledgements that failed, counted in
// ack_failures_total as they happen, are also reported in Run's error;
// their entries stay pending and are redelivered.
func (c *Consumer[T]) Run(ctx context.Context, h Handler[T]) error {
	if h == nil {
		return errors.New("safesync: Run with nil Handler")
	}
	return c.run(ctx, true, 1, c.core.cfg.Count, func(e *engine[T], ctx context.Context, u *unit[T]) {
		e.handleOne(ctx, u, h)
	})
}

// RunBatch is Run for handlers of several entries at once: it reads up to
// size entries at a time and calls h with them (fewer when fewer are
// available), up to Concurrency calls at a time. h owns acknowledgement: it
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
	return c.run(ctx, true, size, size, func(e *engine[T], ctx context.Context, u *unit[T]) {
		e.handleBatch(ctx, u, h)
	})
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
	return c.run(ctx, false, 1, 0, func(e *engine[T], ctx context.Context, u *unit[T]) {
		e.handleOne(ctx, u, h)
	})
}

// unit is what one handler call gets: one entry for Run and ClaimStale, up
// to the batch size for RunBatch. It holds one concurrency slot from the
// moment it is formed until it finishes, or until shutdown drops it unstarted.
type unit[T any] struct {
	msgs  []Message[T]
	slot  *puddle.Resource[struct{}]
	order *unitOrder // nil without OrderBy
}

// engine is one running Run, RunBatch or ClaimStale.
type engine[T any] struct {
	c          *Consumer[T]
	core       *streamCore
	unitSize   int
	readCount  int
	handle     func(e *engine[T], ctx context.Context, u *unit[T])
	slots      *puddle.Pool[struct{}]
	order      *orderer // nil without OrderBy
	acks       *acker
	inflight   inflightSet
	runCtx     context.Context // once done, nothing more starts
	handlerCtx context.Context
	stopping   atomic.Bool
	handlers   sync.WaitGroup
}

func (c *Consumer[T]) run(ctx context.Context, read bool, unitSize, readCount int, handle func(*engine[T], context.Context, *unit[T])) error {
	if !c.core.running.CompareAndSwap(false, true) {
		return ErrConsumerRunning
	}
	defer c.core.running.Store(false)
	if err := c.core.ensureGroup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	cfg := &c.core.cfg
	slots, err := newSlots(cfg.Concurrency)
	if err != nil {
		return err
	}
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	e := &engine[T]{
		c: c, core: c.core, unitSize: unitSize, readCount: readCount, handle: handle,
		slots: slots, runCtx: ctx, handlerCtx: handlerCtx,
		inflight: inflightSet{ids: map[string]struct{}{}},
	}
	if c.key != nil {
		e.order = newOrderer()
	}
	e.acks = newAcker(c.core, context.WithoutCancel(ctx))

	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	var loops sync.WaitGroup
	fatal := make(chan error, 2)
	startLoop := func(loop func(context.Context) error) {
		loops.Add(1)
		go func() {
			defer loops.Done()
			if err := loop(loopCtx); err != nil {
				fatal <- err
			}
		}()
	}
	if read {
		startLoop(e.readLoop)
	}
	startLoop(func(ctx context.Context) error { return e.reclaimLoop(ctx, !read) })

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-fatal:
	}
	e.stopping.Store(true)
	stopLoops()
	loops.Wait()
	close(fatal)
	for err := range fatal {
		runErr = errors.Join(runErr, err)
	}
	if e.order != nil {
		for _, u := range e.order.stop() {
			e.release(u.payload.(*unit[T]))
		}
	}
	e.waitHandlers(cfg.ShutdownGrace, cancelHandlers)
	ackErr := e.acks.close()
	slots.Close()
	return errors.Join(runErr, ackErr)
}

// newSlots returns a pool of n concurrency slots, all created up front so
// that acquiring one never constructs anything.
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

// readLoop reads entries and dispatches them until ctx ends. It takes a
// free slot before each read, so that it reads only when a handler can
// start on the first entry at once.
func (e *engine[T]) readLoop(ctx context.Context) error {
	var b readBackoff
	for {
		slot, err := e.slots.Acquire(ctx)
		if err != nil {
			return nil // ctx ended
		}
		raws, err := e.core.read(ctx, e.readCount)
		if err != nil {
			slot.Release()
			if ctx.Err() != nil {
				return nil
			}
			if !retryable(err) {
				return fmt.Errorf("safesync: read %q: %w", e.core.cfg.Stream, err)
			}
			e.core.log.Warn("safesync: read failed; retrying", "error", err)
			if !b.wait(ctx) {
				return nil
			}
			continue
		}
		b.reset()
		e.dispatch(ctx, e.prepare(ctx, raws), []*puddle.Resource[struct{}]{slot})
	}
}

// prepare decodes raw entries; failures to dead-letter are counted and
// logged, and those entries stay pending for a later attempt.
func (e *engine[T]) prepare(ctx context.Context, raws []rawEntry) []Message[T] {
	msgs, err := e.c.prepare(ctx, raws)
	if err != nil {
		e.core.metrics.countAckFailure()
		e.core.log.Error("safesync: dead-letter failed; the entry stays pending", "error", err)
	}
	return msgs
}

// dispatch forms units of msgs, gives each a slot (first the held ones,
// then ones it waits for) and starts or queues them. It stops when ctx
// ends: the entries it has not started stay pending. Held slots it does not
// use are released.
func (e *engine[T]) dispatch(ctx context.Context, msgs []Message[T], held []*puddle.Resource[struct{}]) {
	defer func() {
		for _, s := range held {
			s.Release()
		}
	}()
	msgs = e.inflightAdd(msgs)
	defer func() {
		e.inflightRemove(msgs) // the ones not dispatched
	}()
	for len(msgs) > 0 {
		var slot *puddle.Resource[struct{}]
		if len(held) > 0 {
			slot, held = held[0], held[1:]
		} else {
			s, err := e.slots.Acquire(ctx)
			if err != nil {
				return
			}
			slot = s
		}
		if e.stopped() {
			slot.Release()
			return
		}
		n := min(e.unitSize, len(msgs))
		u := e.newUnit(msgs[:n:n], slot)
		msgs = msgs[n:]
		e.submit(u)
	}
}

func (e *engine[T]) stopped() bool { return e.stopping.Load() || e.runCtx.Err() != nil }

func (e *engine[T]) newUnit(msgs []Message[T], slot *puddle.Resource[struct{}]) *unit[T] {
	u := &unit[T]{msgs: msgs, slot: slot}
	if e.unitSize > 1 {
		st := &batchState{handled: make([]bool, len(msgs))}
		for i := range msgs {
			msgs[i].batch, msgs[i].index = st, i
		}
	}
	if e.order != nil {
		u.order = &unitOrder{payload: u}
		for _, m := range msgs {
			k := e.c.key(m)
			seen := false
			for _, have := range u.order.keys {
				seen = seen || have == k
			}
			if !seen {
				u.order.keys = append(u.order.keys, k)
			}
		}
	}
	return u
}

// submit starts u, or queues it behind earlier units with the same key.
func (e *engine[T]) submit(u *unit[T]) {
	if e.order != nil && !e.order.admit(u.order) {
		return // finish of an earlier unit, or stop, hands it back
	}
	e.start(u)
}

func (e *engine[T]) start(u *unit[T]) {
	e.handlers.Add(1)
	go e.execute(u)
}

func (e *engine[T]) execute(u *unit[T]) {
	defer e.handlers.Done()
	e.handle(e, e.handlerCtx, u)
	e.release(u)
	if e.order == nil {
		return
	}
	for _, next := range e.order.finish(u.order) {
		nu := next.payload.(*unit[T])
		if e.stopped() {
			e.release(nu) // never started: stays pending
			continue
		}
		e.start(nu)
	}
}

// release gives back u's slot and forgets its entries.
func (e *engine[T]) release(u *unit[T]) {
	e.inflightRemove(u.msgs)
	u.slot.Release()
}

// waitHandlers waits for the handlers to return, cancelling their ctx once
// grace has passed.
func (e *engine[T]) waitHandlers(grace time.Duration, cancel context.CancelFunc) {
	done := make(chan struct{})
	go func() {
		e.handlers.Wait()
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

// handleOne calls h for the unit's one entry and acknowledges,
// dead-letters or leaves it pending according to the outcome.
func (e *engine[T]) handleOne(ctx context.Context, u *unit[T], h Handler[T]) {
	msg := u.msgs[0]
	start := time.Now()
	err := callHandler(ctx, h, msg)
	e.core.metrics.observeHandler(time.Since(start))
	switch {
	case err == nil:
		e.acks.add(msg.ID)
	case e.handlerFailed(err, msg.ID):
		e.deadLetterAll(u.msgs, err, nil)
	}
}

// handleBatch calls h for the unit's entries; h acknowledges them itself.
func (e *engine[T]) handleBatch(ctx context.Context, u *unit[T], h BatchHandler[T]) {
	start := time.Now()
	err := callBatchHandler(ctx, h, u.msgs)
	e.core.metrics.observeHandler(time.Since(start))
	if err != nil && e.handlerFailed(err, u.msgs[0].ID) {
		e.deadLetterAll(u.msgs, err, u.msgs[0].batch)
	}
}

// handlerFailed records a handler's failure and reports whether its entries
// are to be dead-lettered (the error matches ErrPermanent).
func (e *engine[T]) handlerFailed(err error, firstID string) bool {
	var pe *panicError
	if errors.As(err, &pe) {
		e.core.metrics.countHandlerPanic()
		e.core.log.Error("safesync: handler panicked; the entry stays pending", "id", firstID, "panic", pe.value, "stack", string(pe.stack))
		return false
	}
	if errors.Is(err, ErrPermanent) {
		return true
	}
	e.core.log.Warn("safesync: handler failed; the entry stays pending", "id", firstID, "error", err)
	return false
}

// deadLetterAll dead-letters msgs with reason DeadLetterHandler, skipping
// those the batch handler already acknowledged or dead-lettered.
func (e *engine[T]) deadLetterAll(msgs []Message[T], cause error, batch *batchState) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.runCtx), ackTimeout)
	defer cancel()
	for i, m := range msgs {
		if batch != nil && batch.isHandled(i) {
			continue
		}
		if err := e.c.deadLetter(ctx, m, DeadLetterHandler, cause); err != nil {
			e.core.metrics.countAckFailure()
			e.core.log.Error("safesync: dead-letter failed; the entry stays pending", "id", m.ID, "error", err)
		}
	}
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

// inflightSet is the ids of entries held in memory (running or waiting for
// a slot), so that an entry is never dispatched twice at once: reclaim can
// hand back an entry this consumer still holds, when it has been waiting
// longer than ClaimIdle.
type inflightSet struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

// inflightAdd records msgs as held and returns those that were not
// already.
func (e *engine[T]) inflightAdd(msgs []Message[T]) []Message[T] {
	s := &e.inflight
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := msgs[:0]
	for _, m := range msgs {
		if _, held := s.ids[m.ID]; held {
			continue
		}
		s.ids[m.ID] = struct{}{}
		kept = append(kept, m)
	}
	return kept
}

// inflightRemove forgets msgs.
func (e *engine[T]) inflightRemove(msgs []Message[T]) {
	if len(msgs) == 0 {
		return
	}
	s := &e.inflight
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		delete(s.ids, m.ID)
	}
}
