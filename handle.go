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
	msg := u.msgs[0]
	core := e.parts[msg.part].core
	start := time.Now()
	err := callHandler(e.handlerCtx, h, msg)
	core.metrics.observeHandler(time.Since(start))
	switch {
	case err == nil:
		w.ack(e.sched, u, 0)
	case e.handlerFailed(core, err, msg.ID):
		e.deadLetterAll(u.msgs, err, nil)
	}
}

// handleBatch calls h for the unit's entries; h acknowledges them itself.
func (e *engine[T]) handleBatch(u *unit[T], h BatchHandler[T]) {
	core := e.parts[u.msgs[0].part].core // a batch comes from one stream
	start := time.Now()
	err := callBatchHandler(e.handlerCtx, h, u.msgs)
	core.metrics.observeHandler(time.Since(start))
	if err != nil && e.handlerFailed(core, err, u.msgs[0].ID) {
		e.deadLetterAll(u.msgs, err, u.msgs[0].batch)
	}
}

// handlerFailed records a handler's failure and reports whether its entries
// are to be dead-lettered (the error matches ErrPermanent).
func (e *engine[T]) handlerFailed(core *streamCore, err error, firstID string) bool {
	var pe *panicError
	if errors.As(err, &pe) {
		core.metrics.countHandlerPanic()
		core.log.Error("safesync: handler panicked; the entry stays pending", "id", firstID, "panic", pe.value, "stack", string(pe.stack))
		return false
	}
	if errors.Is(err, ErrPermanent) {
		return true
	}
	core.log.Warn("safesync: handler failed; the entry stays pending", "id", firstID, "error", err)
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
			core := e.parts[m.part].core
			core.metrics.countAckFailure()
			core.log.Error("safesync: dead-letter failed; the entry stays pending", "id", m.ID, "error", err)
		}
	}
}

// deadLetter moves msg to the dead-letter stream with reason and cause,
// under a ctx that outlives Run's by ackTimeout.
func (e *engine[T]) deadLetter(msg Message[T], reason string, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.runCtx), ackTimeout)
	defer cancel()
	return e.c.deadLetter(ctx, msg, reason, cause)
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
