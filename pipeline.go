package safesync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// TxHandler applies one stream entry's effects inside the pipeline's
// transaction. It must do its database work through tx; it may use every
// TxFunc combinator (WithRowLock, WithAdvisoryLock, OCC, …) by calling it
// with ctx and tx. Returning an error rolls the transaction back and leaves
// the entry pending (counting towards MaxDeliveries when it is the entry's
// own, as for Handler); wrap it with Permanent to dead-letter the entry
// instead.
type TxHandler[T any] func(ctx context.Context, tx *Tx, msg Message[T]) error

// Source is the first step of a pipeline: entries and how to decode them.
// Its only next step is Handle.
type Source[T any] struct {
	decode Decoder[T]
}

// Stream begins a typed pipeline over stream entries decoded with decode
// (JSON[T]() for the original framework's wire format):
//
//	err := safesync.Stream(safesync.JSON[Order]()).
//		Handle(applyOrder).
//		AckAfter(safesync.Commit(db)).
//		Run(ctx, rdb, safesync.StreamConfig{Stream: "orders", Group: "workers", Consumer: podName})
//
// podName stands for a name unique to the running process (see
// StreamConfig.Consumer). Stream panics if decode is nil.
func Stream[T any](decode Decoder[T]) Source[T] {
	if decode == nil {
		panic("safesync: Stream with nil Decoder")
	}
	return Source[T]{decode: decode}
}

// Handled is a pipeline with a handler; its only next step is AckAfter,
// which says when entries are acknowledged.
type Handled[T any] struct {
	decode Decoder[T]
	handle TxHandler[T]
}

// Handle sets the function that applies each entry. It panics if fn is nil.
func (s Source[T]) Handle(fn TxHandler[T]) Handled[T] {
	if fn == nil {
		panic("safesync: Handle with nil TxHandler")
	}
	return Handled[T]{decode: s.decode, handle: fn}
}

// CommitStage is where a pipeline's handlers run: one transaction on a
// database, whose successful COMMIT is what allows the acknowledgement.
type CommitStage struct {
	db   *sql.DB
	opts []TxOption
}

// Commit returns the commit stage that runs handlers inside WithTx(db, …,
// opts...). It panics if db is nil.
func Commit(db *sql.DB, opts ...TxOption) CommitStage {
	if db == nil {
		panic("safesync: Commit with nil *sql.DB")
	}
	return CommitStage{db: db, opts: opts}
}

// AckAfter completes the pipeline: each entry is acknowledged (XACK) only
// after the commit stage's COMMIT returned nil. The transaction's
// connection goes back to the pool first; then the entries go to the
// consumer's acknowledger, which sends the acknowledgements of concurrent
// transactions together, in one XACK, as Consumer.Run does for handlers.
// A failed XACK is counted in ack_failures_total and reported by Run. The
// result can be refined with Once, Batch, Retry, OrderBy and AfterCommit,
// then Run.
func (h Handled[T]) AckAfter(commit CommitStage) Pipeline[T] {
	if commit.db == nil {
		panic("safesync: AckAfter with a zero CommitStage; use Commit(db)")
	}
	return Pipeline[T]{decode: h.decode, handle: h.handle, commit: commit, batch: 1}
}

// Pipeline is a complete stream-to-database pipeline. It is a value: each
// refinement returns a changed copy, and one Pipeline can Run any number
// of times, also concurrently.
type Pipeline[T any] struct {
	decode      Decoder[T]
	handle      TxHandler[T]
	handleBatch BatchTxHandler[T] // instead of handle: see HandleBatch
	commit      CommitStage
	once        string
	batch       int
	retry       *RetryPolicy
	orderBy     func(Message[T]) string
	afterCommit func(ctx context.Context, msgs []Message[T])
}

// Once makes effects exactly-once: in the handler's own transaction, before
// the handler runs, the entry is recorded in table (see DedupeTableDDL); an
// entry already recorded by a committed transaction is acknowledged
// without running the handler again. Without Once, delivery is
// at-least-once: an entry redelivered after its COMMIT but before its
// acknowledgement (a crash in between) is applied again. An entry that
// carries an origin (see OriginFieldStream: a replayed dead letter, an
// event relayed from an outbox) is recorded under its origin, so that one
// origin takes effect at most once however often it arrives. Once panics if
// table is not a valid identifier.
func (p Pipeline[T]) Once(table string) Pipeline[T] {
	if err := ValidateIdentifier(table); err != nil {
		panic(err.Error())
	}
	p.once = table
	return p
}

// Batch applies up to n entries in one transaction and acknowledges them
// together, in one XACK, after its COMMIT. One failing entry does not
// poison its batch: when entry k's handler fails, the transaction rolls
// back, k is set aside and the batch runs again without it, until a batch
// commits; each entry set aside then runs alone, in its own transaction,
// where it either commits and is acknowledged, is dead-lettered (Permanent
// errors), or stays pending for reclaim, its own failure counted, until
// the one that reaches MaxDeliveries dead-letters it. A failure that
// belongs to no entry (BEGIN, COMMIT, the connection, a handler's
// statement meeting an outage) leaves the whole batch pending, counted
// for none; so does Run's end: a batch is not split into more
// transactions once Run's ctx ended. Every size works: with Once, the
// batch's exactly-once records are inserted in chunks of 2,000 rows,
// within MySQL's limit of placeholders a statement. With HandleBatch, n
// bounds the entries the batch handler receives, and a failing batch is
// split as HandleBatch describes. Batch panics if n < 1.
func (p Pipeline[T]) Batch(n int) Pipeline[T] {
	if n < 1 {
		panic(fmt.Sprintf("safesync: Batch(%d), want at least 1", n))
	}
	p.batch = n
	return p
}

// Retry re-runs an entry's (or batch's) whole transaction for errors the
// policy retries (conflicts, deadlocks, lock waits…), within its budget.
// When the budget is spent the entry stays pending, for reclaim; a budget
// spent on conflicts or on an outage does not count towards
// MaxDeliveries.
func (p Pipeline[T]) Retry(policy RetryPolicy) Pipeline[T] {
	if err := policy.validate(); err != nil {
		panic(err.Error())
	}
	p.retry = &policy
	return p
}

// OrderBy runs entries with the same key one at a time, in stream order
// (see the consumer option OrderBy).
func (p Pipeline[T]) OrderBy(key func(Message[T]) string) Pipeline[T] {
	p.orderBy = key
	return p
}

// AfterCommit calls fn with the entries of each transaction after its
// COMMIT succeeded (and its connection went back to the pool) and before
// they are handed to the acknowledger: the window in which a crash leaves
// committed entries pending. fn runs on the handler's goroutine and must
// be quick; its ctx carries Run's values, not its cancellation.
func (p Pipeline[T]) AfterCommit(fn func(ctx context.Context, msgs []Message[T])) Pipeline[T] {
	p.afterCommit = fn
	return p
}

// Run consumes cfg's stream with client until ctx ends, applying entries
// through the commit stage; see Consumer.RunBatch for reading, reclaim,
// dead letters, concurrency and shutdown, Consumer.Run for outages, and
// StreamConfig for the defaults. Before the first read it pings the
// database (and, with Once, prepares its statements): a database that
// cannot be reached then is an outage like any other, waited out, not an
// error. While the database or Redis is down the pipeline pauses: it
// reads and claims nothing, probes both with backoff, reports the pause in
// cfg.Readiness and the paused gauge, and resumes by itself.
//
// cfg.Metrics, when set, also records the commit stage's transactions and
// statements and the Retry policy's retries, unless Commit was given
// WithMetrics or the policy its own WithMetrics.
//
// Run returns nil after ctx ended (cancelled or past its deadline) and
// every in-flight transaction has committed and been acknowledged or
// rolled back; an error for an invalid configuration, a refusal that
// waiting cannot fix (a key of another type, NOPERM, a missing
// exactly-once table, the consumer's name in use by another process), and
// acknowledgements that failed for good.
func (p Pipeline[T]) Run(ctx context.Context, client rueidis.Client, cfg StreamConfig) error {
	opts, err := p.consumerOptions("Run")
	if err != nil {
		return err
	}
	c, err := NewConsumer(client, cfg, p.decode, opts...)
	if err != nil {
		return err
	}
	return p.withMetrics(cfg.Metrics).runOn(ctx, c)
}

// withMetrics makes the commit stage and the retry policy record in m,
// the metrics given in StreamConfig, unless they were given metrics of
// their own; with m nil it returns p unchanged.
func (p Pipeline[T]) withMetrics(m *Metrics) Pipeline[T] {
	if m == nil {
		return p
	}
	// Options apply in order: a WithMetrics among the stage's own wins.
	p.commit.opts = append([]TxOption{WithMetrics(m)}, p.commit.opts...)
	if p.retry != nil && !p.retry.hasMetrics {
		policy := p.retry.WithMetrics(m)
		p.retry = &policy
	}
	return p
}

// consumerOptions checks that p was built, naming method in the error if
// not, and returns the options of the consumer that runs it.
func (p Pipeline[T]) consumerOptions(method string) ([]ConsumerOption[T], error) {
	if p.handle == nil && p.handleBatch == nil {
		return nil, fmt.Errorf("safesync: %s on a zero Pipeline; build it with Stream(…).Handle(…).AckAfter(…)", method)
	}
	var opts []ConsumerOption[T]
	if p.orderBy != nil {
		opts = append(opts, OrderBy(p.orderBy))
	}
	return opts, nil
}

// runOn runs the pipeline on c; see Run. Before the first read, the
// database is pinged and, with Once, the exactly-once statements are
// prepared: the database unreachable then is an outage, waited out like
// one later on; a refusal (a missing table, say) ends Run.
func (p Pipeline[T]) runOn(ctx context.Context, c *Consumer[T]) error {
	r := &pipelineRun[T]{p: p, c: c}
	defer func() {
		if r.marker != nil {
			r.marker.close()
		}
	}()
	db := p.commit.db
	start := func(ctx context.Context) error {
		if p.once == "" {
			return db.PingContext(ctx)
		}
		m, err := newDedupeMarker(ctx, db, p.once, p.batch)
		if err == nil {
			r.marker = m
		}
		return err
	}
	return c.run(ctx, true, p.batch, max(p.batch, c.core.cfg.Count), func(e *engine[T], w *worker[T], u *unit[T]) {
		r.handleUnit(e, w, u)
	}, runOptions{probe: db.PingContext, start: start})
}

// pipelineRun is one running Pipeline.
type pipelineRun[T any] struct {
	p      Pipeline[T]
	c      *Consumer[T]
	marker *dedupeMarker // with Once
	txs    sync.Pool     // of *pipelineTx[T]

	observerOnce sync.Once
	observerCtx  context.Context // for AfterCommit: the handlers' ctx without its cancellation
}

// pipelineTx runs the pipeline's transactions, one at a time: its Func,
// built once, applies the entries in msgs. Workers take one from the
// run's pool for each transaction, so that a transaction allocates no
// closure, option set or buffer of its own.
type pipelineTx[T any] struct {
	r    *pipelineRun[T]
	msgs []Message[T] // the entries of the transaction running
	job  Func[struct{}]
	mark markBuffers // with Once
}

// getTx returns a pipelineTx from the run's pool.
func (r *pipelineRun[T]) getTx() *pipelineTx[T] {
	if t, ok := r.txs.Get().(*pipelineTx[T]); ok {
		return t
	}
	t := &pipelineTx[T]{r: r}
	apply := t.apply
	if r.p.handleBatch != nil {
		apply = t.applyBatch
	}
	t.job = WithTx(r.p.commit.db, apply, r.p.commit.opts...)
	if r.p.retry != nil {
		t.job = Retry(*r.p.retry, t.job)
	}
	return t
}

// putTx returns t to the run's pool, keeping no entry.
func (r *pipelineRun[T]) putTx(t *pipelineTx[T]) {
	t.msgs = nil
	t.mark.clear()
	r.txs.Put(t)
}

// entryFailure is a handler failure attributable to one entry of a batch.
type entryFailure struct {
	index int
	err   error
}

func (e *entryFailure) Error() string { return e.err.Error() }
func (e *entryFailure) Unwrap() error { return e.err }

// run runs the whole unit of work for msgs: one transaction that marks
// (with Once) and applies each entry in order, under the pipeline's Retry
// policy if it has one.
func (t *pipelineTx[T]) run(ctx context.Context, msgs []Message[T]) error {
	t.msgs = msgs
	_, err := t.job(ctx)
	return err
}

// apply is the transaction's function: it marks (with Once) and applies
// each entry of t.msgs in order.
func (t *pipelineTx[T]) apply(ctx context.Context, tx *Tx) (struct{}, error) {
	r, msgs := t.r, t.msgs
	var fresh []bool
	if r.marker != nil {
		var err error
		if fresh, err = markApplied(ctx, r.marker, tx, msgs, &t.mark); err != nil {
			return struct{}{}, fmt.Errorf("safesync: record entries in %s: %w", r.p.once, err)
		}
	}
	for i, msg := range msgs {
		if fresh != nil && !fresh[i] {
			continue // applied by an earlier, committed transaction
		}
		if err := callTxHandler(ctx, tx, r.p.handle, msg); err != nil {
			return struct{}{}, &entryFailure{index: i, err: err}
		}
	}
	return struct{}{}, nil
}

// callTxHandler runs the handler, turning a panic into an error the
// consumer counts as a handler panic, after the transaction rolled back.
func callTxHandler[T any](ctx context.Context, tx *Tx, h TxHandler[T], msg Message[T]) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p, stack: debug.Stack()}
		}
	}()
	return h(ctx, tx, msg)
}

// handleUnit applies the unit's entries as described on Pipeline.Batch.
func (r *pipelineRun[T]) handleUnit(e *engine[T], w *worker[T], u *unit[T]) {
	idx, ok := e.begin(u, u.all())
	if !ok || len(idx) == 0 {
		return
	}
	core := e.parts[u.msgs[0].part].core // a unit comes from one stream
	start := time.Now()
	if r.p.handleBatch != nil {
		r.applyBatch(e, w, u, idx)
	} else {
		r.apply(e, w, u, idx)
	}
	end := time.Now()
	core.metrics.observeHandler(end.Sub(start))
	w.flushIfDue(e.sched, end)
}

// apply runs the unit's entries idx in one transaction, setting aside each
// entry whose handler fails for its own reasons until a transaction
// commits, then each entry set aside alone. Entries committed are handed
// to the acknowledger; the failures of the others are settled as Run's
// (see engine.failed). A failure that is no entry's own (BEGIN, COMMIT,
// the connection, a conflict outlasting Retry, shutdown) leaves every
// entry not yet committed pending, uncounted.
func (r *pipelineRun[T]) apply(e *engine[T], w *worker[T], u *unit[T], idx []int) {
	ctx := e.handlerCtx
	if len(idx) == 1 { // nothing to set aside
		r.commitAlone(ctx, e, w, u, idx)
		return
	}
	var setAside []int
	for len(idx) > 1 {
		err := r.commit(ctx, e, w, u, idx)
		if err == nil {
			idx = nil
			break
		}
		var ef *entryFailure
		if errors.As(err, &ef) && isOwnFailure(classifyFailure(ctx, ef.err)) {
			setAside = append(setAside, idx[ef.index])
			idx = append(idx[:ef.index:ef.index], idx[ef.index+1:]...)
			if r.stopping(e, u, append(idx, setAside...)) {
				return
			}
			continue
		}
		e.notOwn(u, append(idx, setAside...), err, notOwnFailure(ctx, unwrapEntryFailure(err)))
		return
	}
	setAside = append(setAside, idx...)
	for j := range setAside {
		if j > 0 && r.stopping(e, u, setAside[j:]) {
			return
		}
		r.commitAlone(ctx, e, w, u, setAside[j:j+1])
	}
}

// commitAlone runs the transaction of the unit's one entry idx[0], and
// settles its failure if it fails.
func (r *pipelineRun[T]) commitAlone(ctx context.Context, e *engine[T], w *worker[T], u *unit[T], idx []int) {
	err := r.commit(ctx, e, w, u, idx)
	if err == nil {
		return
	}
	var ef *entryFailure
	if errors.As(err, &ef) {
		e.failed(u, idx[0], ef.err, classifyFailure(ctx, ef.err))
	} else {
		e.notOwn(u, idx, err, notOwnFailure(ctx, err))
	}
}

// stopping reports whether Run's ctx has ended, leaving the unit's entries
// idx pending, uncounted, if so: once Run stops, a failed batch is not
// split into more transactions; shutdown waits for no new one.
func (r *pipelineRun[T]) stopping(e *engine[T], u *unit[T], idx []int) bool {
	if e.runCtx.Err() == nil {
		return false
	}
	e.notOwn(u, idx, e.runCtx.Err(), "")
	return true
}

// notOwnFailure names the kind of a pipeline failure that is no entry's
// own (see classifyFailure): never one that counts.
func notOwnFailure(ctx context.Context, err error) string {
	kind := classifyFailure(ctx, err)
	if kind == "" || kind == FailureContention {
		return kind
	}
	return FailureInfrastructure
}

// commit runs the transaction of the unit's entries idx. Once its COMMIT
// has returned nil and its connection is back in the pool, it calls the
// AfterCommit observer and hands the entries to the acknowledger, which
// sends their XACK together with those of other transactions.
func (r *pipelineRun[T]) commit(ctx context.Context, e *engine[T], w *worker[T], u *unit[T], idx []int) error {
	msgs := u.msgs
	if len(idx) != len(u.msgs) {
		msgs = make([]Message[T], len(idx))
		for j, i := range idx {
			msgs[j] = u.msgs[i]
		}
	}
	core := e.parts[u.msgs[idx[0]].part].core
	ctx, span := traceUnit(ctx, &core.cfg, u, idx)
	for j, i := range idx {
		msgs[j].span = u.msgs[i].span
	}
	t := r.getTx()
	err := t.run(ctx, msgs)
	r.putTx(t)
	if span != nil {
		endUnit(ctx, span, &core.spans, u, idx, err == nil || errors.Is(err, ErrAfterCommit), err)
	}
	if err != nil && !errors.Is(err, ErrAfterCommit) {
		return err
	}
	if err != nil {
		// COMMIT succeeded: the effects are durable and the entries are
		// acknowledged; what failed is a hook the handler registered.
		core := e.parts[msgs[0].part].core
		core.log.Error("safesync: a hook after COMMIT failed; the entries are committed and acknowledged", "id", msgs[0].ID, "error", err)
	}
	if r.p.afterCommit != nil {
		r.p.afterCommit(r.observerContext(ctx, e), msgs)
	}
	e.succeeded(w, u, idx)
	return nil
}

// observerContext returns ctx without its cancellation, for AfterCommit;
// the handlers' ctx (untraced transactions) is detached once per run.
func (r *pipelineRun[T]) observerContext(ctx context.Context, e *engine[T]) context.Context {
	if ctx != e.handlerCtx {
		return context.WithoutCancel(ctx)
	}
	r.observerOnce.Do(func() { r.observerCtx = context.WithoutCancel(e.handlerCtx) })
	return r.observerCtx
}

func unwrapEntryFailure(err error) error {
	var ef *entryFailure
	if errors.As(err, &ef) {
		return ef.err
	}
	return err
}
