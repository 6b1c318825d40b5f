package safesync_test

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// failing returns a Func that fails with errs in turn, then returns "ok",
// and a pointer to its call count.
func failing(errs ...error) (safesync.Func[string], *int) {
	calls := 0
	return func(ctx context.Context) (string, error) {
		calls++
		if calls <= len(errs) {
			return "", errs[calls-1]
		}
		return "ok", nil
	}, &calls
}

func TestRetryRerunsRetryableFailuresUntilSuccess(t *testing.T) {
	m, reg := safesynctest.NewMetrics(t)
	var events []safesync.RetryEvent
	f, calls := failing(&safesync.ConflictError{Table: "t"}, &mysql.MySQLError{Number: 1213, Message: "Deadlock found"})
	policy := safesync.Constant(time.Millisecond).WithMetrics(m).WithOnRetry(func(e safesync.RetryEvent) { events = append(events, e) })
	got, err := safesync.Retry(policy, f)(context.Background())
	if err != nil || got != "ok" || *calls != 3 {
		t.Fatalf("Retry = %q, %v after %d calls; want ok, nil after 3", got, err, *calls)
	}
	if len(events) != 2 || events[0].Reason != "conflict" || events[1].Reason != "deadlock" || events[1].Attempt != 2 || events[0].Wait != time.Millisecond {
		t.Fatalf("OnRetry events = %+v", events)
	}
	for reason, want := range map[string]float64{"conflict": 1, "deadlock": 1} {
		if got := safesynctest.MetricValue(t, reg, "coti_safesync_db_retries_total", map[string]string{"reason": reason}); got != want {
			t.Errorf("retries_total{reason=%s} = %v, want %v", reason, got, want)
		}
	}
}

func TestRetryGivesUpAfterMaxAttemptsAndSaysHowMany(t *testing.T) {
	conflict := &safesync.ConflictError{Table: "t"}
	f, calls := failing(conflict, conflict, conflict, conflict, conflict)
	_, err := safesync.Retry(safesync.Constant(0).WithMaxAttempts(3).WithMetrics(nil), f)(context.Background())
	var re *safesync.RetryError
	if !errors.As(err, &re) || re.Attempts != 3 || !re.Exhausted || *calls != 3 {
		t.Fatalf("err = %v (calls %d); want a *RetryError after 3 exhausted attempts", err, *calls)
	}
	if !errors.Is(err, safesync.ErrRetriesExhausted) || !errors.Is(err, safesync.ErrConflict) {
		t.Fatalf("err = %v; want it to match ErrRetriesExhausted and wrap ErrConflict", err)
	}
	if !strings.Contains(err.Error(), "3 attempts") {
		t.Fatalf("message %q does not say how many attempts ran", err)
	}
}

func TestRetryStopsAtOnceOnANonRetryableError(t *testing.T) {
	boom := errors.New("boom")
	f, calls := failing(boom)
	_, err := safesync.Retry(safesync.Constant(0).WithMetrics(nil), f)(context.Background())
	var re *safesync.RetryError
	if !errors.As(err, &re) || re.Attempts != 1 || re.Exhausted || !errors.Is(err, boom) || *calls != 1 {
		t.Fatalf("err = %v after %d calls; want boom after 1 attempt, not exhausted", err, *calls)
	}
	if errors.Is(err, safesync.ErrRetriesExhausted) {
		t.Fatal("a non-retryable error must not match ErrRetriesExhausted")
	}
	// Nothing was retried, so the message is the error's own, not "failed
	// after 1 attempt: boom".
	if err.Error() != "boom" {
		t.Errorf("message %q, want the error's own", err)
	}
}

func TestRetryMessageSaysHowManyAttemptsRanWhenThereWereSeveral(t *testing.T) {
	conflict := &safesync.ConflictError{Table: "accounts", Key: safesync.Key{"id": 9}, Version: 3}
	boom := errors.New("boom")
	cases := []struct {
		name   string
		policy safesync.RetryPolicy
		errs   []error
		want   string
	}{
		{"a conflict, then a failure for good", safesync.Constant(0), []error{conflict, boom}, "safesync: failed after 2 attempts: boom"},
		{"a budget of one attempt spent on a conflict", safesync.Constant(0).WithMaxAttempts(1), []error{conflict},
			"safesync: retries exhausted after 1 attempt: safesync: optimistic update conflict: accounts id=9 is no longer at version 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, _ := failing(c.errs...)
			_, err := safesync.Retry(c.policy.WithMetrics(nil), f)(context.Background())
			if err == nil || err.Error() != c.want {
				t.Errorf("message %q, want %q", err, c.want)
			}
		})
	}
}

func TestRetryWaitEndsWhenCtxEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f, calls := failing(&safesync.ConflictError{}, &safesync.ConflictError{})
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	_, err := safesync.Retry(safesync.Constant(time.Hour).WithMaxElapsed(0).WithMetrics(nil), f)(ctx)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, safesync.ErrConflict) || *calls != 1 {
		t.Fatalf("err = %v after %d calls; want context.Canceled joined with the conflict, 1 call", err, *calls)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("Retry returned after %v; the hour-long wait must end with ctx", elapsed)
	}
}

func TestRetryMaxElapsedStopsBeforeAWaitThatWouldOverrun(t *testing.T) {
	f, calls := failing(&safesync.ConflictError{}, &safesync.ConflictError{})
	_, err := safesync.Retry(safesync.Constant(time.Hour).WithMaxElapsed(time.Minute).WithMetrics(nil), f)(context.Background())
	if !errors.Is(err, safesync.ErrRetriesExhausted) || *calls != 1 {
		t.Fatalf("err = %v after %d calls; want exhausted after 1", err, *calls)
	}
}

func TestRetryWithACustomClassifier(t *testing.T) {
	special := errors.New("try again")
	f, calls := failing(special)
	policy := safesync.Constant(0).WithMetrics(nil).WithClassifier(func(err error) (string, bool) {
		if errors.Is(err, special) {
			return "special", true
		}
		return safesync.DefaultClassifier(err)
	})
	if got, err := safesync.Retry(policy, f)(context.Background()); err != nil || got != "ok" || *calls != 2 {
		t.Fatalf("Retry = %q, %v after %d calls", got, err, *calls)
	}
}

func TestExponentialBackoffGrowsWithJitterWithinBounds(t *testing.T) {
	var waits []time.Duration
	errs := make([]error, 6)
	for i := range errs {
		errs[i] = &safesync.ConflictError{}
	}
	f, _ := failing(errs...)
	policy := safesync.Exponential(time.Millisecond, 8*time.Millisecond).WithMetrics(nil).
		WithOnRetry(func(e safesync.RetryEvent) { waits = append(waits, e.Wait) })
	if _, err := safesync.Retry(policy, f)(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Waits are initial×2^n within ±50%, capped at max×1.5.
	for i, w := range waits {
		base := time.Millisecond << i
		if base > 8*time.Millisecond {
			base = 8 * time.Millisecond
		}
		if w < base/2 || w > base*3/2 {
			t.Errorf("wait %d = %v, want within ±50%% of %v", i, w, base)
		}
	}
}

func TestDefaultClassifier(t *testing.T) {
	dialErr := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	tests := []struct {
		name   string
		err    error
		reason string
		retry  bool
	}{
		{"a conflict is retried", fmt.Errorf("op: %w", &safesync.ConflictError{}), "conflict", true},
		{"a deadlock is retried", &mysql.MySQLError{Number: 1213}, "deadlock", true},
		{"a lock wait timeout is retried", &mysql.MySQLError{Number: 1205}, "lock_wait", true},
		{"a NOWAIT refusal (MySQL) is retried", &mysql.MySQLError{Number: 3572}, "lock_wait", true},
		{"a held row is retried", safesync.ErrRowLocked, "lock_wait", true},
		{"an advisory lock timeout is retried", fmt.Errorf("job: %w", &safesync.LockTimeoutError{Name: "job", Timeout: time.Second}), "lock_wait", true},
		{"a lost lock before commit is retried", safesync.ErrLockLost, "lock_lost", true},
		{"a statement never sent is retried", driver.ErrBadConn, "connection", true},
		{"a failed dial is retried", fmt.Errorf("safesync: acquire connection: %w", dialErr), "connection", true},
		{"a lost connection outside a transaction is not retried", mysql.ErrInvalidConn, "", false},
		{"an unknown commit outcome is never retried", &safesync.CommitUnknownError{Err: mysql.ErrInvalidConn}, "", false},
		{"a failure after commit is never retried", fmt.Errorf("%w: %w", safesync.ErrAfterCommit, safesync.ErrLockLost), "", false},
		{"cancellation is never retried", context.Canceled, "", false},
		{"cancellation joined with a conflict is not retried", errors.Join(&safesync.ConflictError{}, context.Canceled), "", false},
		{"a deadline is never retried", context.DeadlineExceeded, "", false},
		{"nested transactions are not retried", safesync.ErrNestedTx, "", false},
		{"a duplicate key is not retried", &mysql.MySQLError{Number: 1062}, "", false},
		{"an unknown error is not retried", errors.New("boom"), "", false},
		{"nil is not retried", nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reason, retry := safesync.DefaultClassifier(tt.err)
			if reason != tt.reason || retry != tt.retry {
				t.Fatalf("DefaultClassifier(%v) = %q, %v; want %q, %v", tt.err, reason, retry, tt.reason, tt.retry)
			}
		})
	}
}

func TestRetryRefusesMisuseAtConstruction(t *testing.T) {
	f, _ := failing()
	for name, build := range map[string]func(){
		"nil func":      func() { safesync.Retry[string](safesync.Constant(0), nil) },
		"zero policy":   func() { safesync.Retry(safesync.RetryPolicy{}, f) },
		"zero attempts": func() { safesync.Retry(safesync.Constant(0).WithMaxAttempts(0), f) },
		"nil classifier": func() {
			safesync.Retry(safesync.Constant(0).WithClassifier(nil), f)
		},
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "safesync:") {
					t.Fatalf("recovered %v, want a safesync panic", p)
				}
			}()
			build()
		})
	}
}

// Regression (issue 11, item 6): a policy built from configuration values
// (an attempt count of 0, a negative time budget) panicked the process in
// Retry. Validate returns the problem as an error, naming the setting, so
// a program can refuse its configuration instead; Retry still panics on a
// policy that was never validated, as on any programmer error.
func TestRetryPolicyValidateReportsConfigurationErrorsWithoutPanicking(t *testing.T) {
	tests := []struct {
		name   string
		policy safesync.RetryPolicy
		says   string
	}{
		{"zero attempts", safesync.Backoff(time.Millisecond, 0), "WithMaxAttempts"},
		{"negative attempts", safesync.Constant(time.Millisecond).WithMaxAttempts(-3), "max attempts -3"},
		{"negative max elapsed", safesync.Constant(time.Millisecond).WithMaxElapsed(-time.Second), "WithMaxElapsed"},
		{"negative interval", safesync.Constant(-time.Millisecond), "interval"},
		{"exponential with max below initial", safesync.Exponential(time.Second, time.Millisecond), "max"},
		{"the zero policy", safesync.RetryPolicy{}, "no backoff"},
		{"a nil classifier", safesync.Constant(0).WithClassifier(nil), "classifier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.policy.Validate()
			if !errors.Is(err, safesync.ErrInvalidRetryPolicy) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("Validate() = %v; want ErrInvalidRetryPolicy naming %q", err, tt.says)
			}
		})
	}
	for _, ok := range []safesync.RetryPolicy{safesync.Constant(0), safesync.Backoff(time.Millisecond, 1), safesync.Exponential(time.Millisecond, time.Second).WithMaxElapsed(time.Minute)} {
		if err := ok.Validate(); err != nil {
			t.Errorf("Validate() = %v on a valid policy", err)
		}
	}
}

// Regression (issue 11, item 11): with six workers on one row, the default
// budget of 10 attempts ran out. BenchmarkRetryUnderContention
// (integration/) measured up to 29 attempts and 3.6 s for one operation
// with 6 and 12 workers; the defaults allow 100 attempts within 30 s.
func TestDefaultRetryBudgetCoversContendedOperations(t *testing.T) {
	if safesync.DefaultMaxAttempts != 100 || safesync.DefaultMaxElapsed != 30*time.Second {
		t.Fatalf("defaults = %d attempts, %v; want 100, 30s", safesync.DefaultMaxAttempts, safesync.DefaultMaxElapsed)
	}
	conflicts := make([]error, 40)
	for i := range conflicts {
		conflicts[i] = &safesync.ConflictError{Table: "t"}
	}
	f, calls := failing(conflicts...)
	if got, err := safesync.Retry(safesync.Constant(0).WithMetrics(nil), f)(context.Background()); err != nil || got != "ok" || *calls != 41 {
		t.Fatalf("Retry = %q, %v after %d calls; want ok after 41 attempts within the default budget", got, err, *calls)
	}

	// The time budget: a wait that would end past 30 s is not started.
	f, calls = failing(&safesync.ConflictError{Table: "t"})
	start := time.Now()
	_, err := safesync.Retry(safesync.Constant(31*time.Second).WithMetrics(nil), f)(context.Background())
	if !errors.Is(err, safesync.ErrRetriesExhausted) || *calls != 1 || time.Since(start) > 5*time.Second {
		t.Fatalf("err = %v after %d calls and %v; want exhausted at once: the wait would overrun 30 s", err, *calls, time.Since(start))
	}
}
