package safesync_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cenkalti/backoff/v4"
	"github.com/safesync-go/safesync"
)

// The tests here check the tracing call sites of the database side against
// a recording Tracer and a database/sql driver that answers every
// statement at once; the otel module checks the spans on MariaDB.

// recorder is a Tracer that keeps every span it started.
type recorder struct {
	mu    sync.Mutex
	spans []*recSpan
}

type recSpan struct {
	rec    *recorder
	id     int
	parent int // 0: none
	op     safesync.Operation
	attrs  map[string]slog.Value
	events []recEvent
	ends   int
	err    error
}

type recEvent struct {
	name  string
	attrs map[string]slog.Value
}

type recSpanKey struct{}

func (r *recorder) Start(ctx context.Context, op safesync.Operation) (context.Context, safesync.Span) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &recSpan{rec: r, id: len(r.spans) + 1, op: op, attrs: map[string]slog.Value{}}
	if p, ok := ctx.Value(recSpanKey{}).(*recSpan); ok {
		s.parent = p.id
	}
	for _, a := range op.Attrs {
		s.attrs[a.Key] = a.Value
	}
	r.spans = append(r.spans, s)
	return context.WithValue(ctx, recSpanKey{}, s), s
}

func (r *recorder) Inject(context.Context, map[string]string) {}

func (r *recorder) Extract(ctx context.Context, _ map[string]string) (context.Context, bool) {
	return ctx, false
}

func (s *recSpan) SetAttrs(attrs ...slog.Attr) {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	for _, a := range attrs {
		s.attrs[a.Key] = a.Value
	}
}

func (s *recSpan) Event(name string, attrs ...slog.Attr) {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	e := recEvent{name: name, attrs: map[string]slog.Value{}}
	for _, a := range attrs {
		e.attrs[a.Key] = a.Value
	}
	s.events = append(s.events, e)
}

func (s *recSpan) End(err error) {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	s.ends++
	s.err = err
}

// tree renders the spans as an indented outline: kind, name or verb, and
// the attributes named in keys, in the order they started.
func (r *recorder) tree(keys ...string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	var walk func(parent, depth int)
	walk = func(parent, depth int) {
		for _, s := range r.spans {
			if s.parent != parent {
				continue
			}
			fmt.Fprintf(&b, "%s%s", strings.Repeat("  ", depth), s.op.Kind)
			for _, n := range []string{s.op.Name, s.op.Table, s.op.SQLVerb} {
				if n != "" {
					b.WriteString(" " + n)
				}
			}
			for _, k := range keys {
				if v, ok := s.attrs[k]; ok {
					fmt.Fprintf(&b, " %s=%v", k, v)
				}
			}
			for _, e := range s.events {
				fmt.Fprintf(&b, " [%s]", e.name)
			}
			if s.err != nil {
				b.WriteString(" error")
			}
			b.WriteString("\n")
			walk(s.id, depth+1)
		}
	}
	walk(0, 0)
	return b.String()
}

// traceWith installs a new recorder for the test and removes it after.
func traceWith(t *testing.T) *recorder {
	t.Helper()
	r := &recorder{}
	prev := safesync.SetTracer(r)
	t.Cleanup(func() { safesync.SetTracer(prev) })
	return r
}

// instantDB is a database/sql driver whose statements succeed at once.
// An UPDATE reports rowsAffected rows; COMMIT returns commitErr.
type instantDB struct {
	rowsAffected int64
	commitErr    error
}

type instantConn struct{ db *instantDB }
type instantTx struct{ db *instantDB }

func (d *instantDB) Open(string) (driver.Conn, error) { return instantConn{d}, nil }
func (d *instantDB) Connect(context.Context) (driver.Conn, error) {
	return instantConn{d}, nil
}
func (d *instantDB) Driver() driver.Driver { return d }

func (c instantConn) Prepare(string) (driver.Stmt, error) {
	return nil, errors.New("instantDB: no prepared statements")
}
func (c instantConn) Close() error              { return nil }
func (c instantConn) Begin() (driver.Tx, error) { return instantTx(c), nil }
func (c instantConn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	return instantTx(c), nil
}
func (c instantConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(c.db.rowsAffected), nil
}
func (t instantTx) Commit() error   { return t.db.commitErr }
func (t instantTx) Rollback() error { return nil }

func openInstantDB(t testing.TB, d *instantDB) *sql.DB {
	db := sql.OpenDB(d)
	t.Cleanup(func() { db.Close() })
	return db
}

func TestATransactionIsASpanWithItsLabelOutcomeAndStatements(t *testing.T) {
	rec := traceWith(t)
	db := openInstantDB(t, &instantDB{rowsAffected: 1})
	err := safesync.RunTx(context.Background(), db, func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - ? WHERE id = ?", 30, 1); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "insert into transfers (amount) values (30)")
		return err
	}, safesync.Label("transfer"), safesync.WithMetrics(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := "transaction transfer safesync.tx.label=transfer safesync.tx.outcome=commit\n" +
		"  statement accounts UPDATE\n" +
		"  statement transfers INSERT\n"
	if got := rec.tree("safesync.tx.label", "safesync.tx.outcome"); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}
	if s := rec.spans[1]; !s.op.Bound || rec.spans[2].op.Bound {
		t.Errorf("Bound: %v and %v, want true for the statement with arguments and false for the other", s.op.Bound, rec.spans[2].op.Bound)
	}
	for _, s := range rec.spans {
		if s.ends != 1 {
			t.Errorf("span %d ended %d times", s.id, s.ends)
		}
	}
}

func TestRetryRecordsEveryAttemptAsAnEventAndEachTransactionItsAttempt(t *testing.T) {
	rec := traceWith(t)
	db := openInstantDB(t, &instantDB{rowsAffected: 0})
	attempts := 0
	op := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		attempts++
		if attempts < 3 {
			// No row matched: the version moved.
			return safesync.UpdateVersioned(ctx, tx, "accounts", safesync.Key{"id": 1}, "", 7, map[string]any{"balance": 5})
		}
		return nil
	}), safesync.Label("deposit"), safesync.WithMetrics(nil))
	if _, err := safesync.Retry(safesync.Constant(0).WithMetrics(nil), op)(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "retry safesync.retry.attempts=3 [retry] [retry]\n" +
		"  transaction deposit safesync.tx.attempt=1 safesync.tx.outcome=rollback [occ_conflict] error\n" +
		"    statement accounts UPDATE\n" +
		"  transaction deposit safesync.tx.attempt=2 safesync.tx.outcome=rollback [occ_conflict] error\n" +
		"    statement accounts UPDATE\n" +
		"  transaction deposit safesync.tx.attempt=3 safesync.tx.outcome=commit\n"
	if got := rec.tree("safesync.retry.attempts", "safesync.tx.attempt", "safesync.tx.outcome"); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}
	ev := rec.spans[0].events[1]
	if ev.attrs["safesync.retry.attempt"].Int64() != 2 || ev.attrs["safesync.retry.reason"].String() != safesync.ReasonConflict ||
		ev.attrs["safesync.retry.decision"].String() != "retry" || !strings.Contains(ev.attrs["safesync.retry.error"].String(), "conflict") {
		t.Errorf("second retry event: %v", ev.attrs)
	}
	conflict := rec.spans[1].events[0]
	if conflict.attrs["safesync.occ.table"].String() != "accounts" || conflict.attrs["safesync.occ.version"].Int64() != 7 {
		t.Errorf("conflict event: %v", conflict.attrs)
	}
}

func TestRetryThatGivesUpSaysWhy(t *testing.T) {
	rec := traceWith(t)
	boom := errors.New("not retryable")
	_, err := safesync.Retry(safesync.Constant(0).WithMetrics(nil), func(context.Context) (int, error) { return 0, boom })(context.Background())
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	s := rec.spans[0]
	if len(s.events) != 1 || s.events[0].attrs["safesync.retry.decision"].String() != "give_up" || !errors.Is(s.err, boom) ||
		s.attrs["safesync.retry.attempts"].Int64() != 1 {
		t.Errorf("retry span: events %v, error %v, attrs %v", s.events, s.err, s.attrs)
	}
}

func TestAPanickingTransactionEndsItsSpanOnceWithAnError(t *testing.T) {
	rec := traceWith(t)
	db := openInstantDB(t, &instantDB{})
	func() {
		defer func() { _ = recover() }()
		_ = safesync.RunTx(context.Background(), db, func(context.Context, *safesync.Tx) error { panic("boom") }, safesync.WithMetrics(nil))
	}()
	s := rec.spans[0]
	if s.ends != 1 || s.err == nil || !strings.Contains(s.err.Error(), "panicked: boom") || s.attrs["safesync.tx.outcome"].String() != "rollback" {
		t.Errorf("span: ends %d, error %v, attrs %v", s.ends, s.err, s.attrs)
	}
}

func TestACommitWhoseOutcomeIsUnknownIsMarked(t *testing.T) {
	rec := traceWith(t)
	db := openInstantDB(t, &instantDB{commitErr: io.ErrUnexpectedEOF})
	err := safesync.RunTx(context.Background(), db, func(context.Context, *safesync.Tx) error { return nil }, safesync.WithMetrics(nil))
	if !errors.Is(err, safesync.ErrCommitUnknown) {
		t.Fatal(err)
	}
	s := rec.spans[0]
	if !s.attrs["safesync.tx.commit_unknown"].Bool() || s.attrs["safesync.tx.outcome"].String() != "commit_unknown" || !errors.Is(s.err, safesync.ErrCommitUnknown) {
		t.Errorf("span: attrs %v, error %v", s.attrs, s.err)
	}
}

func TestSetTracerReturnsTheOneItReplaces(t *testing.T) {
	a, b := &recorder{}, &recorder{}
	prev := safesync.SetTracer(a)
	defer safesync.SetTracer(prev)
	if got := safesync.SetTracer(b); got != a {
		t.Errorf("SetTracer(b) returned %v, want a", got)
	}
	if got := safesync.SetTracer(nil); got != b {
		t.Errorf("SetTracer(nil) returned %v, want b", got)
	}
}

func TestOperationKindsHaveNames(t *testing.T) {
	var names []string
	for k := safesync.OpTransaction; k <= safesync.OpReclaim; k++ {
		names = append(names, k.String())
	}
	want := []string{"transaction", "statement", "row_lock", "advisory_lock", "retry", "publish", "read", "handle", "ack", "dead_letter", "reclaim"}
	if !slices.Equal(names, want) || safesync.OperationKind(0).String() != "unknown" {
		t.Errorf("names %v, want %v", names, want)
	}
}

// sharedBackOff is a BackOff that allocates nothing per Retry call.
var sharedBackOff = &backoff.ZeroBackOff{}

func TestRetryWithTracingOffAllocatesNothing(t *testing.T) {
	prev := safesync.SetTracer(nil)
	defer safesync.SetTracer(prev)
	op := safesync.Retry(safesync.FromBackOff(func() backoff.BackOff { return sharedBackOff }).WithMetrics(nil),
		func(context.Context) (int, error) { return 1, nil })
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { _, _ = op(ctx) }); n != 0 {
		t.Errorf("Retry with tracing off allocated %v times per call, want 0", n)
	}
}

// BenchmarkTransaction measures a WithTx transaction of two statements on
// a driver that answers at once, so that what safesync adds shows: with
// tracing off (the default) and with a Tracer that records nothing.
func BenchmarkTransaction(b *testing.B) {
	db := openInstantDB(b, &instantDB{rowsAffected: 1})
	db.SetMaxIdleConns(4)
	op := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", 1, 1); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - ? WHERE id = ?", 1, 2)
		return err
	}), safesync.Label("bench"), safesync.WithMetrics(nil))
	run := func(b *testing.B, tr safesync.Tracer) {
		prev := safesync.SetTracer(tr)
		defer safesync.SetTracer(prev)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := op(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("tracing=off", func(b *testing.B) { run(b, nil) })
	b.Run("tracing=discard", func(b *testing.B) { run(b, discardTracer{}) })
}

// discardTracer starts spans that record nothing.
type discardTracer struct{}

type discardSpan struct{}

var spansStarted atomic.Int64

func (discardTracer) Start(ctx context.Context, _ safesync.Operation) (context.Context, safesync.Span) {
	spansStarted.Add(1)
	return ctx, discardSpan{}
}
func (discardTracer) Inject(context.Context, map[string]string) {}
func (discardTracer) Extract(ctx context.Context, _ map[string]string) (context.Context, bool) {
	return ctx, false
}
func (discardSpan) SetAttrs(...slog.Attr)      {}
func (discardSpan) Event(string, ...slog.Attr) {}
func (discardSpan) End(error)                  {}
