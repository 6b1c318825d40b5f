package safesync

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-sql-driver/mysql"
)

// ErrRetriesExhausted is matched by a *RetryError when the policy's attempt
// or time budget ran out while the error was still retryable.
var ErrRetriesExhausted = errors.New("safesync: retries exhausted")

// RetryError is what a Func built by Retry returns when it fails: how many
// attempts ran and the last attempt's error, which it wraps. Its message
// is the last error's, after "safesync: failed after N attempts: " when
// more than one ran, or "safesync: retries exhausted after N attempts: "
// when the budget ran out; a first attempt that failed for good (an error
// the policy does not retry) reads as its own error, unchanged.
type RetryError struct {
	Attempts  int   // attempts run, at least 1
	Err       error // the last attempt's error
	Exhausted bool  // the policy's budget ran out while Err was retryable
}

// Error implements error.
func (e *RetryError) Error() string {
	if e.Attempts <= 1 && !e.Exhausted {
		return e.Err.Error() // nothing was retried: nothing to add
	}
	plural := "s"
	if e.Attempts == 1 {
		plural = ""
	}
	if e.Exhausted {
		return fmt.Sprintf("safesync: retries exhausted after %d attempt%s: %v", e.Attempts, plural, e.Err)
	}
	return fmt.Sprintf("safesync: failed after %d attempt%s: %v", e.Attempts, plural, e.Err)
}

// Unwrap returns the last attempt's error.
func (e *RetryError) Unwrap() error { return e.Err }

// Is reports whether target is ErrRetriesExhausted and the budget ran out.
func (e *RetryError) Is(target error) bool { return target == ErrRetriesExhausted && e.Exhausted }

// Classifier decides whether an error deserves another attempt, and names
// the reason (a metric label value: keep the set small and fixed).
type Classifier func(err error) (reason string, retry bool)

// Retry reasons given by DefaultClassifier.
const (
	ReasonConflict   = "conflict"   // ErrConflict: an optimistic update lost the race
	ReasonDeadlock   = "deadlock"   // MySQL error 1213
	ReasonLockWait   = "lock_wait"  // MySQL 1205 or 3572, ErrRowLocked, ErrLockTimeout
	ReasonLockLost   = "lock_lost"  // ErrLockLost before COMMIT: rolled back
	ReasonConnection = "connection" // the connection failed where nothing can have been committed
)

// DefaultClassifier retries what a new transaction can fix and nothing
// else:
//
//   - ErrConflict, deadlocks (1213), lock wait timeouts (1205, and NOWAIT
//     refusals: 3572, ErrRowLocked), advisory lock timeouts
//     (*LockTimeoutError, ErrLockTimeout), and ErrLockLost before COMMIT;
//   - connection failures that cannot have committed anything: a statement
//     never sent (driver.ErrBadConn), a failed dial, a connection lost
//     while WithTx ran BEGIN, or one lost inside a WithTx transaction
//     before COMMIT was sent (the server rolls such a transaction back).
//
// It never retries ctx cancellation or deadline, an unknown commit outcome
// (ErrCommitUnknown), a failure after a successful commit (ErrAfterCommit),
// ErrNestedTx, or anything it does not recognise.
//
// An advisory lock timeout is retried like an InnoDB lock wait timeout
// (1205) or a NOWAIT refusal: each means another transaction held what this
// one needed, which a new attempt may find free. Measured with 6 and 12
// workers on one row whose GET_LOCK timeout was shorter than the queue of
// waiters, the median operation timed out once (with 5 ms of work) and
// every one succeeded when retried (BenchmarkRetryUnderContention in
// integration/). To give up
// at the first timeout instead (a try-lock), wrap the classifier:
//
//	WithClassifier(func(err error) (string, bool) {
//		if errors.Is(err, ErrLockTimeout) {
//			return "", false
//		}
//		return DefaultClassifier(err)
//	})
func DefaultClassifier(err error) (reason string, retry bool) {
	switch {
	case err == nil,
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, ErrCommitUnknown), errors.Is(err, ErrAfterCommit), errors.Is(err, ErrNestedTx):
		return "", false
	case errors.Is(err, ErrConflict):
		return ReasonConflict, true
	case mysqlErrorNumber(err) == 1213:
		return ReasonDeadlock, true
	case errors.Is(err, ErrRowLocked), errors.Is(err, ErrLockTimeout), isLockWaitError(err):
		return ReasonLockWait, true
	case errors.Is(err, ErrLockLost):
		return ReasonLockLost, true
	case errors.Is(err, driver.ErrBadConn), isDialError(err), rolledBackOnConnectionLoss(err):
		return ReasonConnection, true
	}
	return "", false
}

// DefaultRetryable reports whether DefaultClassifier would retry err.
func DefaultRetryable(err error) bool {
	_, retry := DefaultClassifier(err)
	return retry
}

func mysqlErrorNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// isConnectionError reports an error that means the connection itself
// failed, whatever was or was not sent on it.
func isConnectionError(err error) bool {
	switch mysqlErrorNumber(err) {
	case 1053, 1927: // server shutdown in progress; connection was killed (MariaDB)
		return true
	}
	var netErr net.Error
	return errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, sql.ErrConnDone) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) || (errors.As(err, &netErr) && !isTimeout(netErr))
}

func isTimeout(err net.Error) bool { return err.Timeout() }

// rolledBackError marks a connection failure inside a WithTx transaction
// before COMMIT was sent, BEGIN included: the server rolls the transaction
// back (or never started it), so a new attempt cannot apply the work twice.
type rolledBackError struct{ err error }

// markRolledBack marks err as a rolledBackError when it is a connection
// failure (not the end of ctx) of a transaction that cannot have committed,
// which makes a new attempt safe; other errors are returned as they are.
func markRolledBack(err error) error {
	if isConnectionError(err) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		return &rolledBackError{err: err}
	}
	return err
}

func (e *rolledBackError) Error() string { return e.err.Error() }
func (e *rolledBackError) Unwrap() error { return e.err }

func rolledBackOnConnectionLoss(err error) bool {
	var rb *rolledBackError
	return errors.As(err, &rb)
}

// RetryEvent describes one retry, for RetryPolicy.OnRetry.
type RetryEvent struct {
	Attempt int           // the attempt that failed, from 1
	Err     error         // its error
	Reason  string        // the classifier's reason
	Wait    time.Duration // the pause before the next attempt
}

// ErrInvalidRetryPolicy is matched by the error Validate returns for a
// policy Retry would refuse.
var ErrInvalidRetryPolicy = errors.New("safesync: invalid RetryPolicy")

// RetryPolicy says when and how often Retry runs another attempt. Build one
// with Constant, Exponential, Backoff or FromBackOff and refine it with the
// With methods; a RetryPolicy is a value, safe to share and to copy.
//
// Building a policy never fails. A policy whose values came from
// configuration (an attempt count, an interval) should be checked with
// Validate, which returns an error naming the bad setting; Retry and
// Pipeline.Retry panic on an invalid policy, as on any other programmer
// error at construction.
type RetryPolicy struct {
	badParam    string // a bad constructor argument, reported by Validate
	newBackOff  func() backoff.BackOff
	maxAttempts int
	maxElapsed  time.Duration
	classify    Classifier
	onRetry     func(RetryEvent)
	metrics     *Metrics
	hasMetrics  bool
}

// The default budget of a RetryPolicy: at most DefaultMaxAttempts attempts
// (unless WithMaxAttempts or Backoff says otherwise), and no wait that
// would end more than DefaultMaxElapsed after the first attempt started
// (unless WithMaxElapsed says otherwise; WithMaxElapsed(0) removes it).
//
// They come from BenchmarkRetryUnderContention (integration/): 6 and 12
// workers incrementing one row with OCC, or under an advisory lock whose
// timeout is shorter than the queue, with 0 to 5 ms of work per
// transaction, on MariaDB on a shared 2-core machine. An operation needed
// up to 29 attempts and up to 3.6 s (the worst of all runs); a budget of
// 10 attempts failed a median 6.3% of them in the worst case (the original
// framework allowed 100). 100 attempts leave over 3× the most measured; 30 s is 8× the
// slowest operation, and half of DefaultClaimIdle, so that a pipeline's
// retries end before another consumer may reclaim its entry. The time
// budget is the one that binds under heavy contention. It also means that a
// lock wait timeout (1205) of InnoDB's default innodb_lock_wait_timeout
// (50 s) is not retried: lower that setting, or raise WithMaxElapsed.
const (
	DefaultMaxAttempts = 100
	DefaultMaxElapsed  = 30 * time.Second
)

// Constant waits the same interval between attempts. A negative interval
// makes the policy invalid (see Validate).
func Constant(interval time.Duration) RetryPolicy {
	p := FromBackOff(func() backoff.BackOff { return backoff.NewConstantBackOff(interval) })
	if interval < 0 {
		p.badParam = fmt.Sprintf("Constant: negative interval %v", interval)
	}
	return p
}

// Exponential waits initial, then doubles the wait up to max, each wait
// randomised by ±50% (jitter) so that competing workers spread out. A
// negative initial, or a max below initial, makes the policy invalid (see
// Validate).
func Exponential(initial, max time.Duration) RetryPolicy {
	p := FromBackOff(func() backoff.BackOff {
		b := &backoff.ExponentialBackOff{
			InitialInterval:     initial,
			RandomizationFactor: 0.5,
			Multiplier:          2,
			MaxInterval:         max,
			Stop:                backoff.Stop,
			Clock:               backoff.SystemClock,
		}
		b.Reset()
		return b
	})
	switch {
	case initial < 0:
		p.badParam = fmt.Sprintf("Exponential: negative initial interval %v", initial)
	case max < initial:
		p.badParam = fmt.Sprintf("Exponential: max interval %v is below the initial interval %v", max, initial)
	}
	return p
}

// Backoff is Exponential from initial up to 100×initial, with at most
// maxAttempts attempts (and DefaultMaxElapsed).
func Backoff(initial time.Duration, maxAttempts int) RetryPolicy {
	return Exponential(initial, 100*initial).WithMaxAttempts(maxAttempts)
}

// FromBackOff builds a policy on any backoff/v4 BackOff; newBackOff is
// called once per Retry call, so stateful BackOffs are never shared. A
// BackOff that returns backoff.Stop ends the retries.
func FromBackOff(newBackOff func() backoff.BackOff) RetryPolicy {
	return RetryPolicy{newBackOff: newBackOff, maxAttempts: DefaultMaxAttempts, maxElapsed: DefaultMaxElapsed, classify: DefaultClassifier}
}

// WithMaxAttempts bounds the number of attempts, the first included
// (DefaultMaxAttempts when not given).
func (p RetryPolicy) WithMaxAttempts(n int) RetryPolicy { p.maxAttempts = n; return p }

// WithMaxElapsed stops retrying when the next wait would end more than d
// after the first attempt started (DefaultMaxElapsed when not given). Zero
// removes the time budget, leaving the attempts and ctx to end retries.
func (p RetryPolicy) WithMaxElapsed(d time.Duration) RetryPolicy { p.maxElapsed = d; return p }

// WithClassifier replaces DefaultClassifier. Wrap it to extend it.
func (p RetryPolicy) WithClassifier(c Classifier) RetryPolicy { p.classify = c; return p }

// WithOnRetry calls fn before each wait. fn runs on the retrying
// goroutine; keep it short.
func (p RetryPolicy) WithOnRetry(fn func(RetryEvent)) RetryPolicy { p.onRetry = fn; return p }

// WithMetrics counts retries by reason in m instead of DefaultMetrics();
// nil counts nothing.
func (p RetryPolicy) WithMetrics(m *Metrics) RetryPolicy { p.metrics, p.hasMetrics = m, true; return p }

// Validate reports, with an error matching ErrInvalidRetryPolicy that names
// the setting, a policy Retry would refuse: one not built by Constant,
// Exponential, Backoff or FromBackOff; a negative interval; an Exponential
// max below its initial interval; fewer than 1 attempt (WithMaxAttempts,
// Backoff); a negative WithMaxElapsed; a nil classifier. Call it on a
// policy built from configuration, where a bad value is the configuration's
// fault and deserves an error rather than a panic.
func (p RetryPolicy) Validate() error {
	var why string
	switch {
	case p.newBackOff == nil:
		why = "no backoff; build it with Constant, Exponential, Backoff or FromBackOff"
	case p.badParam != "":
		why = p.badParam
	case p.maxAttempts < 1:
		why = fmt.Sprintf("max attempts %d (WithMaxAttempts or Backoff), want at least 1", p.maxAttempts)
	case p.maxElapsed < 0:
		why = fmt.Sprintf("negative max elapsed time %v (WithMaxElapsed)", p.maxElapsed)
	case p.classify == nil:
		why = "nil classifier (WithClassifier)"
	default:
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidRetryPolicy, why)
}

// validate is Validate, for the constructors that panic on its error.
func (p RetryPolicy) validate() error { return p.Validate() }

// Retry returns a Func that calls f, and calls it again after a pause
// while it fails with an error the policy's classifier calls retryable and
// the policy's budget lasts. Because f is a Func, each attempt is a whole
// new transaction: a retry never happens inside one.
//
// Passing a TxFunc (a step inside a transaction, such as OCC, WithRowLock
// or WithAdvisoryLock return) does not compile, on purpose, with this
// message:
//
//	in call to safesync.Retry, type safesync.TxFunc[Account] of op does not match inferred type safesync.Func[Account] for safesync.Func[T]
//
// A retry inside the transaction that conflicted or deadlocked cannot
// succeed (InnoDB rolled it back, or its reads are stale); make the step a
// transaction of its own with WithTx and retry that:
//
//	acct, err := safesync.Retry(policy, safesync.WithTx(db, op))(ctx)
//
// ctx is passed to every attempt and bounds the pauses: when it ends, Retry
// stops at once. Every failure is a *RetryError carrying the number of
// attempts and wrapping the last error (and ctx's error, if ctx ended);
// its message says how many attempts ran when there was more than one.
// Retry panics if f is nil or the policy is invalid: check a policy built
// from configuration with Validate first.
func Retry[T any](p RetryPolicy, f Func[T]) Func[T] {
	if f == nil {
		panic("safesync: Retry with nil Func")
	}
	if err := p.validate(); err != nil {
		panic(err.Error())
	}
	if !p.hasMetrics {
		p.metrics = DefaultMetrics()
	}
	return func(ctx context.Context) (T, error) {
		var span Span
		if tracer := activeTracer(); tracer != nil {
			ctx, span = tracer.Start(ctx, Operation{Kind: OpRetry})
		}
		v, err := retryLoop(ctx, p, f, span)
		if span != nil {
			var re *RetryError
			if errors.As(err, &re) {
				span.SetAttrs(slog.Int(attrRetryAttempts, re.Attempts))
			}
			span.End(err)
		}
		return v, err
	}
}

// retryLoop runs f's attempts for Retry. When span is not nil, every
// failed attempt is an event on it, and each attempt's ctx says which
// attempt it is.
func retryLoop[T any](ctx context.Context, p RetryPolicy, f Func[T], span Span) (T, error) {
	var zero T
	b := p.newBackOff()
	start := time.Now()
	for attempt := 1; ; attempt++ {
		attemptCtx := ctx
		if span != nil {
			attemptCtx = context.WithValue(ctx, retryAttemptKey{}, attempt)
		}
		v, err := f(attemptCtx)
		if err == nil {
			if span != nil {
				span.SetAttrs(slog.Int(attrRetryAttempts, attempt))
			}
			return v, nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			if !errors.Is(err, ctxErr) {
				err = errors.Join(err, ctxErr)
			}
			if span != nil {
				retryEvent(span, attempt, "", 0, err, "ctx_done")
			}
			return zero, &RetryError{Attempts: attempt, Err: err}
		}
		reason, retry := p.classify(err)
		if !retry {
			if span != nil {
				retryEvent(span, attempt, reason, 0, err, "give_up")
			}
			return zero, &RetryError{Attempts: attempt, Err: err}
		}
		wait := b.NextBackOff()
		if attempt >= p.maxAttempts || wait == backoff.Stop ||
			(p.maxElapsed > 0 && time.Since(start)+wait > p.maxElapsed) {
			if span != nil {
				retryEvent(span, attempt, reason, 0, err, "exhausted")
			}
			return zero, &RetryError{Attempts: attempt, Err: err, Exhausted: true}
		}
		p.metrics.countRetry(reason)
		if span != nil {
			retryEvent(span, attempt, reason, wait, err, "retry")
		}
		if p.onRetry != nil {
			p.onRetry(RetryEvent{Attempt: attempt, Err: err, Reason: reason, Wait: wait})
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return zero, &RetryError{Attempts: attempt, Err: errors.Join(err, ctx.Err())}
		case <-timer.C:
		}
	}
}

// retryEvent records a failed attempt on Retry's span: its number, the
// classifier's reason, the wait before the next one, its error, and what
// Retry decided (retry, give_up, exhausted).
func retryEvent(span Span, attempt int, reason string, wait time.Duration, err error, decision string) {
	span.Event(eventRetry,
		slog.Int(attrRetryAttempt, attempt),
		slog.String(attrRetryReason, reason),
		slog.Float64(attrRetryWait, wait.Seconds()),
		slog.String(attrRetryError, err.Error()),
		slog.String(attrRetryDecision, decision))
}
