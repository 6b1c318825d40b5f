package safesyncotel_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	safesyncotel "github.com/safesync-go/safesync/otel"
	"go.opentelemetry.io/otel/trace"
)

type account struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
	Version int64 `db:"version"`
}

const accountColumns = "id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, version BIGINT NOT NULL"

func TestARetryUnderConflictShowsEachAttemptOnMariaDB(t *testing.T) {
	db := openMySQL(t)
	table := createTable(t, db, accountColumns)
	if _, err := db.Exec("INSERT INTO "+table+" VALUES (1, 100, 1)", nil...); err != nil {
		t.Fatal(err)
	}
	exp := traceToMemory(t)

	// The first attempt's row moves between its read and its write:
	// another connection deposits in between, so the guarded UPDATE
	// matches no row and the attempt conflicts. The second one succeeds.
	attempts := 0
	addFive := func(a account) (account, error) {
		attempts++
		if attempts == 1 {
			if _, err := db.Exec("UPDATE "+table+" SET balance = balance + 1, version = version + 1 WHERE id = 1", nil...); err != nil {
				return a, err
			}
		}
		a.Balance += 5
		return a, nil
	}
	deposit := safesync.Retry(safesync.Constant(time.Millisecond).WithMetrics(nil),
		safesync.WithTx(db, safesync.OCCRow(table, safesync.Key{"id": 1}, "", addFive), safesync.Label("deposit"), safesync.WithMetrics(nil)))
	got, err := deposit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got.Balance != 106 || got.Version != 3 {
		t.Fatalf("account %+v, want balance 106 at version 3", got)
	}

	spans := exp.GetSpans()
	want := `retry safesync.retry.attempts=2 [retry]
  transaction deposit safesync.tx.attempt=1 safesync.tx.outcome=rollback [occ_conflict] !
    SELECT
    UPDATE trace_<id> db.collection.name=trace_<id>
  transaction deposit safesync.tx.attempt=2 safesync.tx.outcome=commit
    SELECT
    UPDATE trace_<id> db.collection.name=trace_<id>
`
	if got := tree(spans, "safesync.retry.attempts", "safesync.tx.attempt", "safesync.tx.outcome", "db.collection.name"); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("trace of a retry under conflict:\n%s", waterfall(rowsOf(spans, ""), 40))

	retry := named(spans, "retry")[0]
	ev := retry.Events[0]
	for key, want := range map[string]string{
		"safesync.retry.attempt": "1", "safesync.retry.reason": "conflict", "safesync.retry.decision": "retry",
	} {
		if got := eventAttr(ev, key); got != want {
			t.Errorf("retry event %s = %q, want %q", key, got, want)
		}
	}
	first := named(spans, "transaction deposit")[0]
	if attr(first, "error.type") != "conflict" || attr(first, "db.system.name") != "mysql" || eventAttr(first.Events[0], "safesync.occ.version") != "1" {
		t.Errorf("first transaction: attributes %v, events %v", first.Attributes, first.Events)
	}
	update := named(spans, "UPDATE trace_<id>")[0]
	if q := attr(update, "db.query.text"); !strings.HasPrefix(q, "UPDATE `"+table+"` SET `balance` = ?") || attr(update, "db.operation.name") != "UPDATE" ||
		update.SpanKind != trace.SpanKindClient {
		t.Errorf("UPDATE span: kind %v, attributes %v", update.SpanKind, update.Attributes)
	}
}

func TestLockWaitsShowTheirOutcomeOnMariaDB(t *testing.T) {
	db := openMySQL(t)
	table := createTable(t, db, accountColumns)
	if _, err := db.Exec("INSERT INTO "+table+" VALUES (1, 100, 1)", nil...); err != nil {
		t.Fatal(err)
	}
	lockName := uniqueName("tracelock")
	exp := traceToMemory(t)
	ctx := context.Background()
	noMetrics := safesync.WithMetrics(nil)

	// Acquired: the row lock's span covers the locking read and the work
	// done holding the row.
	err := safesync.RunTx(ctx, db, safesync.LockRow(table, safesync.Key{"id": 1}, func(ctx context.Context, tx *safesync.Tx, a account) error {
		_, err := tx.ExecContext(ctx, "UPDATE "+table+" SET balance = ? WHERE id = ?", a.Balance+1, a.ID)
		return err
	}), safesync.Label("locked_update"), noMetrics)
	if err != nil {
		t.Fatal(err)
	}

	// Refused: another transaction holds the row, and NOWAIT does not wait;
	// the advisory lock held by another session times out.
	holder, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := holder.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, "SELECT id FROM "+table+" WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, "SELECT GET_LOCK(?, 0)", lockName); err != nil {
		t.Fatal(err)
	}
	err = safesync.RunTx(ctx, db, safesync.LockRow(table, safesync.Key{"id": 1}, func(context.Context, *safesync.Tx, account) error { return nil }, safesync.NoWait()),
		safesync.Label("nowait"), noMetrics)
	if !errors.Is(err, safesync.ErrRowLocked) {
		t.Fatalf("NOWAIT on a held row: %v", err)
	}
	_, err = safesync.WithTx(db, safesync.WithAdvisoryLock(lockName, 0, func(context.Context, *safesync.Tx) (int, error) { return 0, nil }),
		safesync.Label("advisory_timeout"), noMetrics)(ctx)
	if !errors.Is(err, safesync.ErrLockTimeout) {
		t.Fatalf("GET_LOCK on a held lock: %v", err)
	}
	if _, err := holder.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, "DO RELEASE_LOCK(?)", lockName); err != nil {
		t.Fatal(err)
	}

	// Lost: the lock is released behind the holder's back (here by the
	// work itself), and the check before COMMIT finds nobody holds it; so
	// does RELEASE_LOCK after the rollback, an event on the transaction.
	_, err = safesync.WithTx(db, safesync.WithAdvisoryLock(lockName, time.Second, func(ctx context.Context, tx *safesync.Tx) (int, error) {
		_, err := tx.ExecContext(ctx, "DO RELEASE_LOCK(?)", lockName)
		return 0, err
	}), safesync.Label("advisory_lost"), noMetrics)(ctx)
	if !errors.Is(err, safesync.ErrLockLost) {
		t.Fatalf("a released lock: %v", err)
	}

	want := `transaction locked_update safesync.tx.outcome=commit
  lock row trace_<id> safesync.lock.mode=wait safesync.lock.outcome=acquired
    SELECT
    UPDATE trace_<id>
transaction nowait safesync.tx.outcome=rollback !
  lock row trace_<id> safesync.lock.mode=nowait safesync.lock.outcome=locked !
    SELECT !
transaction advisory_timeout safesync.tx.outcome=rollback !
  lock advisory safesync.lock.outcome=timeout !
    SELECT
transaction advisory_lost safesync.tx.outcome=rollback [advisory_lock_lost] !
  lock advisory safesync.lock.outcome=lost !
    SELECT
    DO
    SELECT
`
	spans := exp.GetSpans()
	if got := tree(spans, "safesync.tx.outcome", "safesync.lock.mode", "safesync.lock.outcome"); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}
	for _, s := range named(spans, "lock advisory") {
		if attr(s, "safesync.lock.name") != lockName || attr(s, "safesync.lock.wait_seconds") == "" {
			t.Errorf("advisory lock span: %v", s.Attributes)
		}
	}
	if got := attr(named(spans, "lock advisory")[0], "error.type"); got != "lock_timeout" {
		t.Errorf("timed-out lock's error.type %q, want lock_timeout", got)
	}
	if got := attr(named(spans, "lock row trace_<id>")[1], "error.type"); got != "lock_wait" {
		t.Errorf("NOWAIT refusal's error.type %q, want lock_wait", got)
	}
}

func TestLogLinesInsideATransactionCarryItsTraceAndSpanIDs(t *testing.T) {
	db := openMySQL(t)
	exp := traceToMemory(t)
	var out bytes.Buffer
	logger := slog.New(safesyncotel.LogHandler(slog.NewJSONHandler(&out, nil))).With("worker", "w1")

	err := safesync.RunTx(context.Background(), db, func(ctx context.Context, tx *safesync.Tx) error {
		logger.InfoContext(ctx, "inside")
		return nil
	}, safesync.Label("logged"), safesync.WithMetrics(nil))
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("outside")

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("log:\n%s", out.String())
	}
	var inside, outside map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &inside); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &outside); err != nil {
		t.Fatal(err)
	}
	tx := named(exp.GetSpans(), "transaction logged")[0]
	if inside["trace_id"] != tx.SpanContext.TraceID().String() || inside["span_id"] != tx.SpanContext.SpanID().String() || inside["worker"] != "w1" {
		t.Errorf("line inside the transaction: %v; transaction span %s/%s", inside, tx.SpanContext.TraceID(), tx.SpanContext.SpanID())
	}
	if _, ok := outside["trace_id"]; ok {
		t.Errorf("line outside any span has a trace id: %v", outside)
	}
}
