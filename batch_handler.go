package safesync

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
)

// BatchTxHandler applies a batch of stream entries inside the pipeline's
// transaction, in stream order, so that it can write them with multi-row
// statements (see InsertRows). It must do its database work through tx and
// must not keep msgs after it returns.
//
// Returning nil commits the batch; every entry of msgs is then
// acknowledged. Returning an error rolls the whole transaction back. To say
// which entry is at fault, return (or wrap, or join) FailEntry(msg, err):
// the pipeline then sets that entry aside without searching for it. Any
// other error of the entries' own is searched for by halving the batch
// (see HandleBatch). An error that is no entry's own (an outage, a
// conflict outlasting Retry) leaves the whole batch pending, uncounted.
type BatchTxHandler[T any] func(ctx context.Context, tx *Tx, msgs []Message[T]) error

// DefaultHandleBatchSize is how many entries a batch handler receives at
// most when the pipeline is not given Batch(n).
const DefaultHandleBatchSize = 100

// BatchHandled is a pipeline with a batch handler; its only next step is
// AckAfter.
type BatchHandled[T any] struct {
	decode Decoder[T]
	handle BatchTxHandler[T]
}

// HandleBatch sets a function that applies a whole batch of entries in one
// transaction: up to Batch(n) entries (DefaultHandleBatchSize when Batch is
// not given), fewer when fewer are waiting. The pipeline's refinements
// work as for Handle:
//
//   - Once records every entry of the batch in the handler's transaction,
//     with one multi-row INSERT, before the handler runs, and leaves out of
//     msgs the entries an earlier, committed transaction applied; when all
//     were, the handler is not called.
//   - Retry re-runs the whole transaction, handler included.
//   - A failing batch does not poison its entries. When the handler names
//     the entry at fault with FailEntry, that entry is set aside, the rest
//     run again as one batch, and the entry set aside runs alone, in a
//     batch of one. When the handler returns an error that names no entry
//     (or names one not in msgs), or panics, the batch is halved and each
//     half runs in its own transaction, the first half first; a failing
//     half is halved again, down to single entries. Either way an entry
//     is charged with a failure (towards MaxDeliveries, or dead-lettered at
//     once for Permanent) only when it failed alone, with the error the
//     handler returned for it then; the entries beside it commit.
//     Naming the entry costs two more transactions per poison entry;
//     halving costs about two per halving (14 for one poison entry in 100).
//
// HandleBatch panics if fn is nil.
func (s Source[T]) HandleBatch(fn BatchTxHandler[T]) BatchHandled[T] {
	if fn == nil {
		panic("safesync: HandleBatch with nil BatchTxHandler")
	}
	return BatchHandled[T]{decode: s.decode, handle: fn}
}

// AckAfter completes the pipeline, as Handled.AckAfter does: the entries
// of a batch are acknowledged together once its COMMIT returned nil.
func (h BatchHandled[T]) AckAfter(commit CommitStage) Pipeline[T] {
	if commit.db == nil {
		panic("safesync: AckAfter with a zero CommitStage; use Commit(db)")
	}
	return Pipeline[T]{decode: h.decode, handleBatch: h.handle, commit: commit, batch: DefaultHandleBatchSize}
}

// EntryError is a batch handler's failure that names the entry at fault:
// see FailEntry. Its text is Err's, so that a dead letter keeps the
// handler's words.
type EntryError struct {
	ID  string // the entry's id (Message.ID)
	Err error
}

// Error implements error: it returns Err's text.
func (e *EntryError) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *EntryError) Unwrap() error { return e.Err }

// FailEntry returns err as the failure of msg, for a BatchTxHandler to
// return (as it is, wrapped, or joined with FailEntry errors of other
// entries): the pipeline sets msg aside instead of halving the batch to
// find it. Wrap err with Permanent to have msg dead-lettered at once when
// it fails alone. FailEntry(msg, nil) is nil.
func FailEntry[T any](msg Message[T], err error) error {
	if err == nil {
		return nil
	}
	return &EntryError{ID: msg.ID, Err: err}
}

// batchFailure is a batch handler's failure: err as it returned it, and
// the indices (in the transaction's msgs) of the entries it named.
type batchFailure struct {
	err   error
	named []int
}

func (b *batchFailure) Error() string { return b.err.Error() }
func (b *batchFailure) Unwrap() error { return b.err }

// namedEntries returns the indices in msgs of the entries err names with
// FailEntry, anywhere in its tree, each once.
func namedEntries[T any](err error, msgs []Message[T]) []int {
	var named []int
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
			return
		case *EntryError:
			for i := range msgs {
				if msgs[i].ID == e.ID {
					for _, j := range named {
						if j == i {
							return
						}
					}
					named = append(named, i)
					return
				}
			}
		case interface{ Unwrap() []error }:
			for _, err := range e.Unwrap() {
				walk(err)
			}
			return
		}
		walk(errors.Unwrap(err))
	}
	walk(err)
	return named
}

// applyBatch is the transaction's function for a batch handler: it marks
// t.msgs (with Once) and calls the handler with those not applied before.
func (t *pipelineTx[T]) applyBatch(ctx context.Context, tx *Tx) (struct{}, error) {
	r, msgs := t.r, t.msgs
	run := msgs
	if r.marker != nil {
		fresh, err := markApplied(ctx, r.marker, tx, msgs, &t.mark)
		if err != nil {
			return struct{}{}, fmt.Errorf("safesync: record entries in %s: %w", r.p.once, err)
		}
		for _, f := range fresh {
			if !f {
				run = freshOnly(msgs, fresh)
				break
			}
		}
	}
	if len(run) == 0 {
		return struct{}{}, nil
	}
	if err := callBatchTxHandler(ctx, tx, r.p.handleBatch, run); err != nil {
		named := namedEntries(err, run)
		if len(run) != len(msgs) {
			named = indicesIn(msgs, run, named)
		}
		return struct{}{}, &batchFailure{err: err, named: named}
	}
	return struct{}{}, nil
}

// freshOnly returns the entries of msgs that fresh marks.
func freshOnly[T any](msgs []Message[T], fresh []bool) []Message[T] {
	out := make([]Message[T], 0, len(msgs))
	for i, f := range fresh {
		if f {
			out = append(out, msgs[i])
		}
	}
	return out
}

// indicesIn maps indices of run, a subsequence of msgs, onto msgs.
func indicesIn[T any](msgs, run []Message[T], idx []int) []int {
	out := make([]int, len(idx))
	for k, i := range idx {
		for j := range msgs {
			if msgs[j].ID == run[i].ID {
				out[k] = j
				break
			}
		}
	}
	return out
}

// callBatchTxHandler runs the batch handler, turning a panic into an error
// the consumer counts as a handler panic, after the transaction rolled
// back.
func callBatchTxHandler[T any](ctx context.Context, tx *Tx, h BatchTxHandler[T], msgs []Message[T]) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p, stack: debug.Stack()}
		}
	}()
	return h(ctx, tx, msgs)
}

// applyBatch runs the unit's entries idx through the batch handler as
// HandleBatch describes: in one transaction; when that fails for the
// entries' own reasons, without the entries the handler named (each then
// alone), or else in halves, until every entry has committed or failed
// alone. Entries committed are handed to the acknowledger; an entry that
// failed alone is settled as Run's (see engine.failed). A failure that is
// no entry's own leaves every entry not yet committed pending, uncounted;
// so does Run's end: no new transaction starts once Run's ctx ended.
func (r *pipelineRun[T]) applyBatch(e *engine[T], w *worker[T], u *unit[T], idx []int) {
	ctx := e.handlerCtx
	queue := [][]int{idx} // batches still to run, in order
	for first := true; len(queue) > 0; first = false {
		part := queue[0]
		queue = queue[1:]
		if !first && r.stopping(e, u, flatten(part, queue)) {
			return
		}
		err := r.commit(ctx, e, w, u, part)
		if err == nil {
			continue
		}
		var bf *batchFailure
		if !errors.As(err, &bf) {
			e.notOwn(u, flatten(part, queue), err, notOwnFailure(ctx, err))
			return
		}
		kind := classifyFailure(ctx, bf.err)
		if !isOwnFailure(kind) {
			e.notOwn(u, flatten(part, queue), err, notOwnFailure(ctx, bf.err))
			return
		}
		if len(part) == 1 {
			e.failed(u, part[0], bf.err, kind)
			continue
		}
		queue = append(splitBatch(part, bf.named), queue...)
	}
}

// splitBatch returns the batches that replace part after it failed: part
// without the entries named (indices into part), then each named entry
// alone; or, when none is named, part's two halves.
func splitBatch(part, named []int) [][]int {
	if len(named) == 0 {
		mid := len(part) / 2
		return [][]int{part[:mid:mid], part[mid:]}
	}
	isNamed := make(map[int]bool, len(named))
	for _, i := range named {
		isNamed[i] = true
	}
	var rest []int
	var alone [][]int
	for j, i := range part {
		if isNamed[j] {
			alone = append(alone, []int{i})
		} else {
			rest = append(rest, i)
		}
	}
	if len(rest) == 0 {
		return alone
	}
	return append([][]int{rest}, alone...)
}

// flatten returns the entries of part and of the batches in queue.
func flatten(part []int, queue [][]int) []int {
	out := append([]int(nil), part...)
	for _, q := range queue {
		out = append(out, q...)
	}
	return out
}
