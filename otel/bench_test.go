package safesyncotel_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"testing"

	"github.com/safesync-go/safesync"
	safesyncotel "github.com/safesync-go/safesync/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// instantDB is a database/sql driver whose statements succeed at once, so
// that a benchmark shows what tracing adds to a transaction (the root
// package's BenchmarkTransaction measures the same transaction untraced).
type instantDB struct{}

type instantConn struct{}

func (instantDB) Open(string) (driver.Conn, error)             { return instantConn{}, nil }
func (instantDB) Connect(context.Context) (driver.Conn, error) { return instantConn{}, nil }
func (d instantDB) Driver() driver.Driver                      { return d }
func (instantConn) Prepare(string) (driver.Stmt, error)        { return nil, errors.New("no prepare") }
func (instantConn) Close() error                               { return nil }
func (c instantConn) Begin() (driver.Tx, error)                { return c, nil }
func (instantConn) Commit() error                              { return nil }
func (instantConn) Rollback() error                            { return nil }
func (c instantConn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	return c, nil
}
func (instantConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(1), nil
}

// BenchmarkTransactionTraced is a transaction of two statements traced with
// the OpenTelemetry SDK, every span sampled and none exported: three spans
// (the transaction and its statements).
func BenchmarkTransactionTraced(b *testing.B) {
	db := sql.OpenDB(instantDB{})
	defer db.Close()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	prev := safesync.SetTracer(safesyncotel.New(safesyncotel.WithTracerProvider(tp)))
	defer safesync.SetTracer(prev)
	op := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", 1, 1); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - ? WHERE id = ?", 1, 2)
		return err
	}), safesync.Label("bench"), safesync.WithMetrics(nil))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := op(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
