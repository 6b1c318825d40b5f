package safesync

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"
)

// Tracing is a seam, not a dependency: safesync reports what it does to a
// Tracer, and the module github.com/safesync-go/safesync/otel implements
// one on OpenTelemetry. Nothing here imports OpenTelemetry, so a program
// that does not trace does not build it.
//
// One call turns tracing on for the whole process, for every transaction,
// retry, lock, statement and stream operation (there is no per-call
// setting, as there is one TracerProvider per process):
//
//	safesync.SetTracer(safesyncotel.New())
//
// With no Tracer set (the default) the instrumented code paths load one
// pointer, find it nil and do nothing else: no allocation, no call.

// OperationKind says what a traced operation is. A Tracer maps each kind to
// a span kind, a span name and the semantic conventions' attributes.
type OperationKind uint8

// The operations safesync reports.
const (
	// OpTransaction is one WithTx transaction, BEGIN to COMMIT or ROLLBACK
	// and its hooks. Name is its Label. At its end it carries the
	// attributes safesync.tx.outcome (commit, rollback or commit_unknown)
	// and, when the outcome is unknown, safesync.tx.commit_unknown = true;
	// inside Retry, safesync.tx.attempt is the attempt it is, from 1.
	OpTransaction OperationKind = iota + 1
	// OpStatement is one statement run through a *Tx (ExecContext,
	// QueryContext, QueryRowContext). SQL, SQLVerb and Bound describe it;
	// Table is its target when the statement is an INSERT, UPDATE, DELETE
	// or REPLACE. It covers sending the statement, not reading its rows.
	OpStatement
	// OpRowLock is WithRowLock: the locking read (FOR UPDATE) and the
	// function that runs holding the row. Table is the table. Attributes:
	// safesync.lock.mode (wait, nowait, skip_locked), and at its end
	// safesync.lock.wait_seconds and safesync.lock.outcome (acquired,
	// locked, not_found, timeout).
	OpRowLock
	// OpAdvisoryLock is WithAdvisoryLock: GET_LOCK, the function that runs
	// holding the lock and the confirmation that it is still held. Name is
	// the lock's name. Attributes: safesync.lock.timeout_seconds, and at
	// its end safesync.lock.wait_seconds and safesync.lock.outcome
	// (acquired, timeout, failed, lost).
	OpAdvisoryLock
	// OpRetry is one call of a Func built by Retry, all attempts included.
	// Every attempt that failed is an event named "retry" (attributes
	// safesync.retry.attempt, .reason, .wait_seconds and .error; .decision
	// is retry, give_up, exhausted or ctx_done); at its end safesync.retry.attempts
	// is the number of attempts.
	OpRetry
	// OpPublish is Publish: one XADD. Name is the stream; at its end
	// safesync.message.id is the new entry's id.
	OpPublish
	// OpRead is one read of a consumer that returned entries. Name is the
	// stream; Group, Consumer and Messages describe it.
	OpRead
	// OpHandle is a handler's work on one entry (MessageID), or on a batch
	// (Messages). Name is the stream.
	OpHandle
	// OpAck is the acknowledgement of entries (XACK).
	OpAck
	// OpDeadLetter is the move of an entry to the dead-letter stream.
	OpDeadLetter
	// OpReclaim is one reclaim scan (XAUTOCLAIM) that claimed entries.
	OpReclaim
)

var operationKindNames = [...]string{
	OpTransaction:  "transaction",
	OpStatement:    "statement",
	OpRowLock:      "row_lock",
	OpAdvisoryLock: "advisory_lock",
	OpRetry:        "retry",
	OpPublish:      "publish",
	OpRead:         "read",
	OpHandle:       "handle",
	OpAck:          "ack",
	OpDeadLetter:   "dead_letter",
	OpReclaim:      "reclaim",
}

// String returns the kind's name: transaction, statement, row_lock,
// advisory_lock, retry, publish, read, handle, ack, dead_letter, reclaim.
func (k OperationKind) String() string {
	if int(k) < len(operationKindNames) && operationKindNames[k] != "" {
		return operationKindNames[k]
	}
	return "unknown"
}

// Operation describes an operation that is starting, for Tracer.Start. The
// fields a kind does not use are empty.
type Operation struct {
	// Kind is what the operation is.
	Kind OperationKind
	// Name is what the operation acts on: a transaction's Label, an
	// advisory lock's name, a stream's key.
	Name string
	// Table is the table of a row lock, or of a statement when it is known.
	Table string
	// SQL is a statement's text, SQLVerb its first keyword in upper case
	// (SELECT, UPDATE…), and Bound says it was run with arguments, so that
	// its values are placeholders rather than text.
	SQL, SQLVerb string
	Bound        bool
	// Group and Consumer are a stream consumer's group and its name.
	Group, Consumer string
	// MessageID is the entry of an operation on one entry.
	MessageID string
	// Messages is the number of entries an operation on several covers.
	Messages int
	// Start is when the operation began, when that was before Tracer.Start
	// was called; zero means now.
	Start time.Time
	// Parent, when not nil, carries the span the operation is a child of,
	// in place of ctx's: a handler runs under the consumer's ctx, but its
	// span belongs under the read that returned its entry. The ctx returned
	// by Start keeps ctx's values and cancellation.
	Parent context.Context
	// Links are contexts whose spans the operation relates to without
	// being their child.
	Links []context.Context
	// Attrs are further details, keyed safesync.*.
	Attrs []slog.Attr
}

// Tracer receives safesync's operations. Implementations must be safe for
// concurrent use. The module github.com/safesync-go/safesync/otel provides
// one on OpenTelemetry; set it with SetTracer.
type Tracer interface {
	// Start begins op as a child of the span ctx carries and returns a ctx
	// carrying the new span, which safesync passes to everything the
	// operation runs (statements, the transaction's function, hooks), and
	// the span. safesync calls End on every span it started, exactly once.
	Start(ctx context.Context, op Operation) (context.Context, Span)
	// Inject writes the trace context of ctx's span into fields, the fields
	// of a stream entry about to be published, under names of the
	// propagation format's choosing (W3C: traceparent, tracestate). It
	// must not overwrite a field that is already set.
	Inject(ctx context.Context, fields map[string]string)
	// Extract reads a trace context Inject wrote from an entry's fields. It
	// returns ctx carrying it as the remote parent and true, or ctx
	// unchanged and false when the fields hold none.
	Extract(ctx context.Context, fields map[string]string) (context.Context, bool)
}

// Span is one started operation.
type Span interface {
	// SetAttrs adds attributes to the span.
	SetAttrs(attrs ...slog.Attr)
	// Event records something that happened during the operation.
	Event(name string, attrs ...slog.Attr)
	// End ends the operation; a non-nil err is its failure.
	End(err error)
}

// tracerHolder boxes the interface so that it can live in an atomic.Pointer.
type tracerHolder struct{ t Tracer }

var activeTracerHolder atomic.Pointer[tracerHolder]

// SetTracer makes t the Tracer of every operation safesync starts from now
// on, in every goroutine, and returns the one it replaces (nil if none);
// nil turns tracing off. Operations already running keep the Tracer they
// started with. It is safe for concurrent use, but meant to be called once,
// at start-up:
//
//	safesync.SetTracer(safesyncotel.New())
func SetTracer(t Tracer) (previous Tracer) {
	var next *tracerHolder
	if t != nil {
		next = &tracerHolder{t: t}
	}
	if old := activeTracerHolder.Swap(next); old != nil {
		return old.t
	}
	return nil
}

// activeTracer returns the Tracer set with SetTracer, or nil. It is the
// one check every instrumented path makes when tracing is off.
func activeTracer() Tracer {
	if h := activeTracerHolder.Load(); h != nil {
		return h.t
	}
	return nil
}

// Attribute keys of safesync's own span details.
const (
	attrTxLabel        = "safesync.tx.label"
	attrTxOutcome      = "safesync.tx.outcome"
	attrTxAttempt      = "safesync.tx.attempt"
	attrTxCommitUnk    = "safesync.tx.commit_unknown"
	attrTxIsolation    = "safesync.tx.isolation"
	attrTxReadOnly     = "safesync.tx.read_only"
	attrLockMode       = "safesync.lock.mode"
	attrLockOutcome    = "safesync.lock.outcome"
	attrLockWait       = "safesync.lock.wait_seconds"
	attrLockTimeout    = "safesync.lock.timeout_seconds"
	attrLockName       = "safesync.lock.name"
	attrLockError      = "safesync.lock.error"
	attrRetryAttempt   = "safesync.retry.attempt"
	attrRetryAttempts  = "safesync.retry.attempts"
	attrRetryReason    = "safesync.retry.reason"
	attrRetryWait      = "safesync.retry.wait_seconds"
	attrRetryError     = "safesync.retry.error"
	attrRetryDecision  = "safesync.retry.decision"
	attrConflictTable  = "safesync.occ.table"
	attrConflictVer    = "safesync.occ.version"
	eventRetry         = "retry"
	eventConflict      = "occ_conflict"
	eventLockLostLater = "advisory_lock_lost"
)

// retryAttemptKey carries, only while tracing, the attempt a Func runs as
// inside Retry, for the transaction span's safesync.tx.attempt.
type retryAttemptKey struct{}

// retryAttempt returns the attempt number Retry put in ctx, or 0.
func retryAttempt(ctx context.Context) int {
	if n, ok := ctx.Value(retryAttemptKey{}).(int); ok {
		return n
	}
	return 0
}

// statementVerb returns the first keyword of query in upper case
// (SELECT, UPDATE…), skipping leading space and comments, or "".
func statementVerb(query string) string {
	s := statementScanner{src: query}
	return strings.ToUpper(s.word())
}

// startStatement starts a statement's span on tr (which is not nil).
func startStatement(ctx context.Context, tr Tracer, query string, bound bool) (context.Context, Span) {
	_, table := statementTarget(query)
	return tr.Start(ctx, Operation{Kind: OpStatement, Table: table, SQL: query, SQLVerb: statementVerb(query), Bound: bound})
}
