package safesync

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-sql-driver/mysql"
)

// TxFunc is one step inside a transaction. It receives the transaction's
// ctx and the transaction itself, and must not keep either after it
// returns. TxFuncs compose by calling each other with the same tx; WithTx
// turns one into a Func.
type TxFunc[T any] func(ctx context.Context, tx *Tx) (T, error)

// Func is a standalone operation: a whole transaction, or several
// composed. Retry re-runs Funcs, never TxFuncs, so that every attempt is a
// new transaction.
type Func[T any] func(ctx context.Context) (T, error)

// NoResult adapts a step that returns only an error into a TxFunc, for
// WithTx and the other combinators:
//
//	_, err := WithTx(db, NoResult(func(ctx context.Context, tx *Tx) error { … }))(ctx)
func NoResult(fn func(ctx context.Context, tx *Tx) error) TxFunc[struct{}] {
	return func(ctx context.Context, tx *Tx) (struct{}, error) { return struct{}{}, fn(ctx, tx) }
}

// RunTx runs fn in a transaction now and returns only its error: it is
// WithTx(db, NoResult(fn), opts...)(ctx) for the many transactions that
// produce no value. Everything WithTx says holds: COMMIT when fn returns
// nil, ROLLBACK when it returns an error, panics or ctx ends; ctx governs
// the whole transaction and fn receives a ctx derived from it. To retry it,
// build the Func instead: Retry(policy, WithTx(db, NoResult(fn))). RunTx
// panics if db or fn is nil.
func RunTx(ctx context.Context, db *sql.DB, fn func(ctx context.Context, tx *Tx) error, opts ...TxOption) error {
	_, err := WithTx(db, NoResult(fn), opts...)(ctx)
	return err
}

var (
	// ErrNestedTx is returned by a Func built with WithTx when it is called
	// with a ctx that belongs to a running transaction, unless the
	// Independent option says a second, separate transaction is intended.
	// Compose TxFuncs inside one transaction by calling them with its tx.
	ErrNestedTx = errors.New("safesync: WithTx called inside a running transaction; call the inner TxFunc with the outer tx, or pass Independent()")

	// ErrCommitUnknown is matched by every *CommitUnknownError.
	ErrCommitUnknown = errors.New("safesync: commit outcome unknown")

	// ErrAfterCommit is wrapped around a failure of an after-commit or
	// end-of-transaction hook when the transaction itself committed. The
	// database changes are durable; the hook's work (releasing a lock,
	// acknowledging a stream entry) is what failed. It is never retried by
	// the default classifier.
	ErrAfterCommit = errors.New("safesync: transaction committed, but a step after commit failed")
)

// CommitUnknownError reports that the connection failed while COMMIT was in
// flight: the server may or may not have committed. Retrying blindly could
// apply the work twice, so the default retry classifier never retries it;
// check the database, or make the work idempotent.
type CommitUnknownError struct {
	Err error // the connection error
}

// Error implements error.
func (e *CommitUnknownError) Error() string {
	return "safesync: commit outcome unknown (connection lost during COMMIT): " + e.Err.Error()
}

// Unwrap returns the connection error.
func (e *CommitUnknownError) Unwrap() error { return e.Err }

// Is reports whether target is ErrCommitUnknown.
func (e *CommitUnknownError) Is(target error) bool { return target == ErrCommitUnknown }

// TxOption configures WithTx.
type TxOption func(*txConfig)

type txConfig struct {
	txOptions   sql.TxOptions // isolation level and read-only, given to BeginTx
	label       string
	metrics     *Metrics
	hasMetrics  bool
	independent bool
	hookTimeout time.Duration
}

// DefaultTxLabel is the transactions_total label of a WithTx without Label.
const DefaultTxLabel = "tx"

// DefaultHookTimeout bounds the hooks that run after a transaction ends.
const DefaultHookTimeout = 10 * time.Second

// Isolation sets the transaction's isolation level (the server's default,
// REPEATABLE READ on InnoDB, when not given).
func Isolation(level sql.IsolationLevel) TxOption {
	return func(c *txConfig) { c.txOptions.Isolation = level }
}

// ReadOnly starts the transaction with START TRANSACTION READ ONLY.
func ReadOnly() TxOption { return func(c *txConfig) { c.txOptions.ReadOnly = true } }

// Label names the transaction in metrics (label "label" of
// transactions_total). Use a fixed string from code, never data.
func Label(name string) TxOption { return func(c *txConfig) { c.label = name } }

// WithMetrics records the transaction's statements, locks and outcome in m
// instead of DefaultMetrics(). A nil m records nothing.
func WithMetrics(m *Metrics) TxOption {
	return func(c *txConfig) { c.metrics, c.hasMetrics = m, true }
}

// Independent allows the Func to be called while another transaction is
// running in ctx. It then runs as a second transaction on its own
// connection, committing or rolling back on its own; it can wait on locks
// the outer transaction holds, so use it only for work that must survive
// the outer transaction's rollback (an audit record, say).
func Independent() TxOption { return func(c *txConfig) { c.independent = true } }

// HookTimeout bounds each hook that runs after the transaction ends
// (DefaultHookTimeout when not given). Hooks run with a ctx that keeps the
// caller's values but not its cancellation, so a lock is released and a
// stream entry acknowledged even when the caller's ctx has ended.
func HookTimeout(d time.Duration) TxOption { return func(c *txConfig) { c.hookTimeout = d } }

// Tx is a transaction on one pinned connection. Its methods have the
// database/sql signatures, so code written against an interface of those
// methods, sqlc's DBTX for one, runs unchanged inside any combinator.
//
// A Tx is only valid inside the TxFunc it was given to. Its methods may be
// called from several goroutines, but statements on one connection run one
// at a time.
type Tx struct {
	db       *sql.DB // the pool the connection came from
	tx       *sql.Tx
	conn     *sql.Conn
	metrics  *Metrics
	label    string
	onCommit []func(ctx context.Context) error
	onEnd    []func(ctx context.Context, conn *sql.Conn, committed bool) error
	tracer   Tracer // the Tracer the transaction started with, or nil
	span     Span   // the transaction's span, when tracer is not nil

	// The contexts of BEGIN and of fn live in the Tx, so that a
	// transaction allocates them with itself.
	beginCtx detachedContext
	fnCtx    txContext
}

type txKey struct{}

// txContext is the ctx a transaction's function receives: its parent's
// deadline, cancellation and values, and the transaction under txKey, as
// context.WithValue(parent, txKey{}, tx) would make it.
type txContext struct {
	context.Context
	tx *Tx
}

// Value returns the transaction for txKey, else the parent's value.
func (c *txContext) Value(key any) any {
	if _, ok := key.(txKey); ok {
		return c.tx
	}
	return c.Context.Value(key)
}

// detachedContext is its parent's values without its deadline or
// cancellation, as context.WithoutCancel(parent) would make it.
type detachedContext struct {
	parent context.Context
}

func (detachedContext) Deadline() (time.Time, bool) { return time.Time{}, false }
func (detachedContext) Done() <-chan struct{}       { return nil }
func (detachedContext) Err() error                  { return nil }
func (c *detachedContext) Value(key any) any        { return c.parent.Value(key) }

// Transaction outcomes, the values of the outcome label.
const (
	outcomeCommit        = "commit"
	outcomeRollback      = "rollback"
	outcomeCommitUnknown = "commit_unknown"
)

// ExecContext runs a statement that returns no rows. INSERT, UPDATE,
// DELETE and REPLACE statements are counted in the write metrics with
// their own latency, whether they succeed or fail.
func (tx *Tx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var span Span
	if tx.tracer != nil {
		ctx, span = startStatement(ctx, tx.tracer, query, len(args) > 0)
	}
	start := time.Now()
	res, err := tx.tx.ExecContext(ctx, query, args...)
	tx.metrics.observeStatement(query, time.Since(start), err)
	if span != nil {
		span.End(err)
	}
	return res, err
}

// QueryContext runs a query that returns rows. A write with a RETURNING
// clause is counted in the write metrics like ExecContext.
func (tx *Tx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	var span Span
	if tx.tracer != nil {
		ctx, span = startStatement(ctx, tx.tracer, query, len(args) > 0)
	}
	start := time.Now()
	rows, err := tx.tx.QueryContext(ctx, query, args...)
	tx.metrics.observeStatement(query, time.Since(start), err)
	if span != nil {
		span.End(err)
	}
	return rows, err
}

// QueryRowContext runs a query expected to return at most one row. Errors
// are deferred to Scan, as in database/sql.
func (tx *Tx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	var span Span
	if tx.tracer != nil {
		ctx, span = startStatement(ctx, tx.tracer, query, len(args) > 0)
	}
	start := time.Now()
	row := tx.tx.QueryRowContext(ctx, query, args...)
	tx.metrics.observeStatement(query, time.Since(start), row.Err())
	if span != nil {
		span.End(row.Err())
	}
	return row
}

// PrepareContext prepares a statement bound to this transaction; it is
// closed when the transaction ends. Statements run through it are not
// counted in the write metrics.
func (tx *Tx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return tx.tx.PrepareContext(ctx, query)
}

// AfterCommit registers fn to run once COMMIT has returned nil, before the
// connection goes back to the pool. Hooks run in registration order; the
// first failure stops the rest and is returned, wrapped in ErrAfterCommit.
// On rollback they do not run. fn's ctx keeps the caller's values but not
// its cancellation, and is bounded by HookTimeout.
func (tx *Tx) AfterCommit(fn func(ctx context.Context) error) {
	tx.onCommit = append(tx.onCommit, fn)
}

// AfterEnd registers fn to run on the pinned connection after COMMIT or
// ROLLBACK, whichever happened, before AfterCommit hooks and before the
// connection goes back to the pool. Hooks run in reverse registration
// order, like defer; all run even if one fails. When any fails, the
// connection is closed instead of being reused, so session state such as an
// advisory lock cannot leak into the pool. conn may already be unusable
// (the transaction ended because it broke); fn then sees an error from it.
func (tx *Tx) AfterEnd(fn func(ctx context.Context, conn *sql.Conn, committed bool) error) {
	tx.onEnd = append(tx.onEnd, fn)
}

// WithTx returns a Func that runs fn in a transaction: it pins one
// connection from db, runs BEGIN, calls fn, and runs COMMIT when fn returns
// nil or ROLLBACK when fn returns an error or panics (the panic continues
// after the rollback). A rollback failure is joined to fn's error, never
// put in its place.
//
// The ctx given to the Func governs acquiring the connection, BEGIN and,
// through fn, every statement; fn receives a ctx derived from it. When ctx
// ends before COMMIT, the transaction rolls back and the Func returns
// ctx's error. COMMIT itself is not interrupted once sent. A connection lost
// during COMMIT is reported as a *CommitUnknownError.
//
// The Func is safe for concurrent use; each call is its own transaction.
// Calling it with a ctx that is inside another WithTx returns ErrNestedTx
// unless Independent is given. WithTx panics if db or fn is nil.
func WithTx[T any](db *sql.DB, fn TxFunc[T], opts ...TxOption) Func[T] {
	if db == nil {
		panic("safesync: WithTx with nil *sql.DB")
	}
	if fn == nil {
		panic("safesync: WithTx with nil TxFunc")
	}
	cfg := txConfig{label: DefaultTxLabel, hookTimeout: DefaultHookTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.hasMetrics {
		cfg.metrics = DefaultMetrics()
	}
	return func(ctx context.Context) (T, error) {
		return runTx(ctx, db, &cfg, fn)
	}
}

func runTx[T any](ctx context.Context, db *sql.DB, cfg *txConfig, fn TxFunc[T]) (result T, err error) {
	var zero T
	if ctx.Value(txKey{}) != nil && !cfg.independent {
		return zero, ErrNestedTx
	}
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	tracer := activeTracer()
	var span Span
	if tracer != nil {
		ctx, span = startTxSpan(ctx, tracer, cfg)
		defer func() {
			if span != nil { // nil when the panic handler below ended it
				span.End(err)
			}
		}()
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return zero, fmt.Errorf("safesync: acquire connection: %w", err)
	}
	start := time.Now()
	tx := &Tx{db: db, conn: conn, metrics: cfg.metrics, label: cfg.label, tracer: tracer, span: span}
	// BEGIN runs under a ctx without cancellation so that database/sql does
	// not roll back behind our back when ctx ends: we roll back ourselves,
	// on the same connection, and then run the end hooks on it.
	beginCtx := ctx
	if ctx.Done() != nil {
		tx.beginCtx.parent = ctx
		beginCtx = &tx.beginCtx
	}
	sqlTx, err := conn.BeginTx(beginCtx, &cfg.txOptions)
	if err != nil {
		conn.Close()
		// The connection failed before fn ran: nothing was done, and
		// nothing can be committed.
		return zero, markRolledBack(fmt.Errorf("safesync: begin: %w", err))
	}
	tx.tx = sqlTx
	// No cancel func is added: a ctx with a Done channel makes the driver
	// start a cancellation watcher for every statement, which the caller's
	// ctx may not need.
	tx.fnCtx = txContext{Context: ctx, tx: tx}
	fnCtx := &tx.fnCtx

	finished := false
	defer func() {
		if finished {
			return
		}
		// fn panicked (or called runtime.Goexit): roll back, release, and
		// let the panic continue.
		p := recover()
		_ = tx.end(ctx, cfg, outcomeRollback, sqlTx.Rollback() != nil, start)
		if span != nil {
			span.End(fmt.Errorf("safesync: the transaction's function panicked: %v", p))
			span = nil
		}
		if p != nil {
			panic(p)
		}
	}()

	result, err = fn(fnCtx, tx)
	finished = true
	if err == nil {
		err = ctx.Err() // ctx ended while fn ran, and fn did not notice
	}
	if err != nil {
		// COMMIT was never sent on this connection: the server rolls the
		// transaction back.
		err = markRolledBack(err)
		rbErr := sqlTx.Rollback()
		if rbErr != nil {
			rbErr = fmt.Errorf("safesync: rollback: %w", rbErr)
		}
		return zero, errors.Join(err, rbErr, tx.end(ctx, cfg, outcomeRollback, rbErr != nil, start))
	}
	if commitErr := classifyCommitError(sqlTx.Commit()); commitErr != nil {
		outcome := outcomeRollback
		if errors.Is(commitErr, ErrCommitUnknown) {
			outcome = outcomeCommitUnknown
		}
		return zero, errors.Join(commitErr, tx.end(ctx, cfg, outcome, true, start))
	}
	if hookErr := tx.end(ctx, cfg, outcomeCommit, false, start); hookErr != nil {
		return result, fmt.Errorf("%w: %w", ErrAfterCommit, hookErr)
	}
	return result, nil
}

// startTxSpan starts the transaction's span on tracer.
func startTxSpan(ctx context.Context, tracer Tracer, cfg *txConfig) (context.Context, Span) {
	attrs := make([]slog.Attr, 0, 4)
	attrs = append(attrs, slog.String(attrTxLabel, cfg.label))
	if n := retryAttempt(ctx); n > 0 {
		attrs = append(attrs, slog.Int(attrTxAttempt, n))
	}
	if cfg.txOptions.Isolation != sql.LevelDefault {
		attrs = append(attrs, slog.String(attrTxIsolation, cfg.txOptions.Isolation.String()))
	}
	if cfg.txOptions.ReadOnly {
		attrs = append(attrs, slog.Bool(attrTxReadOnly, true))
	}
	return tracer.Start(ctx, Operation{Kind: OpTransaction, Name: cfg.label, Attrs: attrs})
}

// classifyCommitError separates a COMMIT the server refused (a MySQL error:
// nothing committed), one that was never sent (driver.ErrBadConn: nothing
// committed), and one whose answer was lost (outcome unknown).
func classifyCommitError(err error) error {
	if err == nil {
		return nil
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) || errors.Is(err, driver.ErrBadConn) {
		return fmt.Errorf("safesync: commit: %w", err)
	}
	return &CommitUnknownError{Err: err}
}

// end finishes the transaction after COMMIT or ROLLBACK: it records the
// outcome, runs the end hooks and, when committed, the commit hooks, and
// returns the connection to the pool, or closes it when its session state
// is in doubt (broken is true, or an end hook failed). It returns the hooks'
// errors joined.
func (tx *Tx) end(ctx context.Context, cfg *txConfig, outcome string, broken bool, start time.Time) error {
	committed := outcome == outcomeCommit
	tx.metrics.observeTx(tx.label, outcome, time.Since(start))
	if tx.span != nil {
		tx.span.SetAttrs(slog.String(attrTxOutcome, outcome))
		if outcome == outcomeCommitUnknown {
			tx.span.SetAttrs(slog.Bool(attrTxCommitUnk, true))
		}
	}

	var errs []error
	if len(tx.onEnd) == 0 && len(tx.onCommit) == 0 {
		tx.release(broken)
		return nil
	}
	hookCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.hookTimeout)
	defer cancel()
	for i := len(tx.onEnd) - 1; i >= 0; i-- {
		if err := tx.onEnd[i](hookCtx, tx.conn, committed); err != nil {
			errs = append(errs, err)
			broken = true
		}
	}
	if committed {
		for _, hook := range tx.onCommit {
			if err := hook(hookCtx); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	tx.release(broken)
	return errors.Join(errs...)
}

// release returns the connection to the pool, or closes it when broken.
func (tx *Tx) release(broken bool) {
	if broken {
		discardConn(tx.conn)
	} else {
		tx.conn.Close()
	}
}

// discardConn closes conn's underlying driver connection instead of
// returning it to the pool, ending its server session (and with it any
// advisory lock or session variable the session held).
func discardConn(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
