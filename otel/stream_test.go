package safesyncotel_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/safesync-go/safesync"
	safesyncotel "github.com/safesync-go/safesync/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// The worker subprocess of TestATraceCrossesAPublishAndAConsumeInTwoProcesses.
const (
	envWorker      = "SAFESYNC_OTEL_TEST_WORKER" // stream,table,group,consumer,spans file
	workerDeadline = 60 * time.Second
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(envWorker); spec != "" {
		if err := runWorker(spec); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type order struct {
	ID     int64 `json:"id"`
	Amount int64 `json:"amount"`
}

func openRedis(t *testing.T) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{needEnv(t, "SAFESYNC_REDIS_ADDR")}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// newStream names a stream for the test and deletes it, and its
// dead-letter stream, after.
func newStream(t *testing.T, rdb rueidis.Client) string {
	stream := uniqueName("tracestream")
	t.Cleanup(func() {
		ctx := context.Background()
		for _, key := range []string{stream, stream + safesync.DeadLetterSuffix} {
			_ = rdb.Do(ctx, rdb.B().Del().Key(key).Build()).Error()
		}
	})
	return stream
}

// applyOrder inserts the order into table, once.
func applyOrder(table string) safesync.TxHandler[order] {
	return func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if msg.Value.Amount < 0 {
			return safesync.Permanent(errors.New("negative amount"))
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO "+table+" (id, amount) VALUES (?, ?)", msg.Value.ID, msg.Value.Amount)
		return err
	}
}

// runPipelineUntil runs the pipeline on stream until done reports true,
// then stops it and returns Run's error.
func runPipelineUntil(t *testing.T, db *sql.DB, rdb rueidis.Client, stream, table string, logger *slog.Logger, done func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- safesync.Stream[order](safesync.JSON[order]()).
			Handle(applyOrder(table)).
			AckAfter(safesync.Commit(db, safesync.Label("apply_order"), safesync.WithMetrics(nil))).
			Run(ctx, rdb, safesync.StreamConfig{Stream: stream, Group: "billing", Consumer: uniqueName("w"), Block: 50 * time.Millisecond, Logger: logger})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			t.Fatal("the pipeline did not finish its entries within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
}

// nothingPending reports whether the group has no pending entry.
func nothingPending(t *testing.T, rdb rueidis.Client, stream string) bool {
	res, err := rdb.Do(context.Background(), rdb.B().Xpending().Key(stream).Group("billing").Build()).ToArray()
	if err != nil {
		return false
	}
	n, _ := res[0].AsInt64()
	return n == 0
}

func rowCount(t *testing.T, db *sql.DB, table string) int {
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM " + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAPipelineEntryIsOneTraceFromReadToAck(t *testing.T) {
	db, rdb := openMySQL(t), openRedis(t)
	table := createTable(t, db, "id BIGINT PRIMARY KEY, amount BIGINT NOT NULL")
	stream := newStream(t, rdb)
	exp := traceToMemory(t)
	ctx := context.Background()
	if _, err := safesync.PublishJSON(ctx, rdb, stream, order{ID: 1, Amount: 30}); err != nil {
		t.Fatal(err)
	}
	runPipelineUntil(t, db, rdb, stream, table, nil, func() bool { return rowCount(t, db, table) == 1 && nothingPending(t, rdb, stream) })

	want := `publish tracestream_<id>
read tracestream_<id>
  handle tracestream_<id>
    transaction apply_order
      INSERT trace_<id>
    ack tracestream_<id>
`
	spans := exp.GetSpans()
	if got := tree(spans); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}
	readTrace := named(spans, "read tracestream_<id>")[0].SpanContext.TraceID()
	var entry tracetest.SpanStubs
	for _, s := range spans {
		if s.SpanContext.TraceID() == readTrace {
			entry = append(entry, s)
		}
	}
	t.Logf("trace of a pipeline entry:\n%s", waterfall(rowsOf(entry, ""), 40))
	handle := named(spans, "handle tracestream_<id>")[0]
	publish := named(spans, "publish tracestream_<id>")[0]
	if attr(handle, "messaging.message.id") != attr(publish, "messaging.message.id") || attr(handle, "messaging.consumer.group.name") != "billing" ||
		handle.SpanKind != trace.SpanKindConsumer {
		t.Errorf("handle span %v %v; publish span %v", handle.SpanKind, handle.Attributes, publish.Attributes)
	}
}

func TestADeadLetterIsASpanOfItsEntry(t *testing.T) {
	db, rdb := openMySQL(t), openRedis(t)
	table := createTable(t, db, "id BIGINT PRIMARY KEY, amount BIGINT NOT NULL")
	stream := newStream(t, rdb)
	ctx := context.Background()
	if _, err := safesync.Publish(ctx, rdb, stream, map[string]string{"data": "not json"}); err != nil {
		t.Fatal(err)
	}
	if _, err := safesync.PublishJSON(ctx, rdb, stream, order{ID: 2, Amount: -5}); err != nil {
		t.Fatal(err)
	}
	exp := traceToMemory(t)
	var logged bytes.Buffer
	logger := slog.New(safesyncotel.LogHandler(slog.NewJSONHandler(&logged, nil)))
	runPipelineUntil(t, db, rdb, stream, table, logger, func() bool {
		n, err := rdb.Do(ctx, rdb.B().Xlen().Key(stream+safesync.DeadLetterSuffix).Build()).AsInt64()
		return err == nil && n == 2 && nothingPending(t, rdb, stream)
	})

	// The undecodable entry is dead-lettered without running the handler,
	// under the read; the one the handler refused (Permanent), under its
	// handler.
	want := `read tracestream_<id>
  dead_letter tracestream_<id> safesync.dead_letter.reason=decode
  handle tracestream_<id> !
    transaction apply_order safesync.tx.outcome=rollback !
    dead_letter tracestream_<id> safesync.dead_letter.reason=handler
`
	spans := exp.GetSpans()
	if got := tree(spans, "safesync.dead_letter.reason", "safesync.tx.outcome"); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}

	// The consumer's log line of each dead letter carries its span's ids.
	deadLetters := named(spans, "dead_letter tracestream_<id>")
	var lines int
	for _, line := range strings.Split(strings.TrimSpace(logged.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["msg"] != "safesync: entry dead-lettered" {
			continue
		}
		if rec["span_id"] != deadLetters[lines].SpanContext.SpanID().String() || rec["trace_id"] != deadLetters[lines].SpanContext.TraceID().String() {
			t.Errorf("dead-letter log line %v, want the ids of span %v", rec, deadLetters[lines].SpanContext)
		}
		lines++
	}
	if lines != 2 {
		t.Errorf("%d dead-letter log lines, want 2:\n%s", lines, logged.String())
	}
}

func TestABatchIsOneHandleSpanLinkedToEachEntrysProducer(t *testing.T) {
	db, rdb := openMySQL(t), openRedis(t)
	table := createTable(t, db, "id BIGINT PRIMARY KEY, amount BIGINT NOT NULL")
	stream := newStream(t, rdb)
	exp := traceToMemory(t)
	ctx := context.Background()
	for id := int64(1); id <= 3; id++ {
		if _, err := safesync.PublishJSON(ctx, rdb, stream, order{ID: id, Amount: 1}, safesync.TraceContext()); err != nil {
			t.Fatal(err)
		}
	}
	run, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- safesync.Stream[order](safesync.JSON[order]()).
			Handle(applyOrder(table)).
			AckAfter(safesync.Commit(db, safesync.Label("apply_orders"), safesync.WithMetrics(nil))).
			Batch(3).
			Run(run, rdb, safesync.StreamConfig{Stream: stream, Group: "billing", Consumer: uniqueName("w"), Block: 50 * time.Millisecond})
	}()
	for rowCount(t, db, table) < 3 || !nothingPending(t, rdb, stream) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans()
	handles := named(spans, "handle tracestream_<id>")
	if len(handles) != 1 || attr(handles[0], "messaging.batch.message_count") != "3" || len(handles[0].Links) != 3 {
		t.Fatalf("handle spans %d; the batch's: attributes %v, links %v", len(handles), handles[0].Attributes, handles[0].Links)
	}
	publishes := named(spans, "publish tracestream_<id>")
	for i, l := range handles[0].Links {
		if l.SpanContext.SpanID() != publishes[i].SpanContext.SpanID() {
			t.Errorf("link %d is %v, want publish span %v", i, l.SpanContext.SpanID(), publishes[i].SpanContext.SpanID())
		}
	}
	if acks := named(spans, "ack tracestream_<id>"); len(acks) != 3 || acks[0].Parent.SpanID() != handles[0].SpanContext.SpanID() {
		t.Errorf("%d ack spans, want 3 under the batch's handle span", len(acks))
	}
	if tx := named(spans, "transaction apply_orders"); len(tx) != 1 || tx[0].Parent.SpanID() != handles[0].SpanContext.SpanID() {
		t.Errorf("transaction spans %v, want one under the batch's handle span", tx)
	}
}

func TestABatchThatSetsAnEntryAsideShowsEachTransaction(t *testing.T) {
	db, rdb := openMySQL(t), openRedis(t)
	table := createTable(t, db, "id BIGINT PRIMARY KEY, amount BIGINT NOT NULL")
	stream := newStream(t, rdb)
	ctx := context.Background()
	for _, o := range []order{{ID: 1, Amount: 1}, {ID: 2, Amount: -1}, {ID: 3, Amount: 1}} {
		if _, err := safesync.PublishJSON(ctx, rdb, stream, o); err != nil {
			t.Fatal(err)
		}
	}
	exp := traceToMemory(t)
	run, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- safesync.Stream[order](safesync.JSON[order]()).
			Handle(applyOrder(table)).
			AckAfter(safesync.Commit(db, safesync.Label("apply_orders"), safesync.WithMetrics(nil))).
			Batch(3).
			Run(run, rdb, safesync.StreamConfig{Stream: stream, Group: "billing", Consumer: uniqueName("w"), Block: 50 * time.Millisecond})
	}()
	for rowCount(t, db, table) < 2 || !nothingPending(t, rdb, stream) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	// Entry 2 fails its batch, which runs again without it; then it runs
	// alone, fails again (Permanent) and is dead-lettered. Every attempt
	// is a handle span under the read.
	want := `read tracestream_<id> messaging.batch.message_count=3
  handle tracestream_<id> messaging.batch.message_count=3 !
    transaction apply_orders !
      INSERT trace_<id>
  handle tracestream_<id> messaging.batch.message_count=2
    transaction apply_orders
      INSERT trace_<id>
      INSERT trace_<id>
    ack tracestream_<id>
    ack tracestream_<id>
  handle tracestream_<id> !
    transaction apply_orders !
    dead_letter tracestream_<id>
`
	if got := tree(exp.GetSpans(), "messaging.batch.message_count"); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}
}

func TestAReclaimedEntryGoesUnderItsClaim(t *testing.T) {
	db, rdb := openMySQL(t), openRedis(t)
	table := createTable(t, db, "id BIGINT PRIMARY KEY, amount BIGINT NOT NULL")
	stream := newStream(t, rdb)
	ctx := context.Background()
	// A consumer that crashed: it read the entry and never acknowledged it.
	if err := rdb.Do(ctx, rdb.B().XgroupCreate().Key(stream).Group("billing").Id("0").Mkstream().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := safesync.PublishJSON(ctx, rdb, stream, order{ID: 4, Amount: 7}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Do(ctx, rdb.B().Xreadgroup().Group("billing", "crashed").Count(1).Streams().Key(stream).Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	exp := traceToMemory(t)
	claimed, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- safesync.Stream[order](safesync.JSON[order]()).
			Handle(applyOrder(table)).
			AckAfter(safesync.Commit(db, safesync.Label("apply_order"), safesync.WithMetrics(nil))).
			Run(claimed, rdb, safesync.StreamConfig{Stream: stream, Group: "billing", Consumer: uniqueName("w"), Block: 50 * time.Millisecond,
				ClaimIdle: time.Millisecond, ClaimInterval: 10 * time.Millisecond})
	}()
	for rowCount(t, db, table) == 0 || !nothingPending(t, rdb, stream) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	want := `reclaim tracestream_<id>
  handle tracestream_<id>
    transaction apply_order
      INSERT trace_<id>
    ack tracestream_<id>
`
	if got := tree(exp.GetSpans()); got != want {
		t.Errorf("spans:\n%s\nwant:\n%s", got, want)
	}
}

func TestATraceCrossesAPublishAndAConsumeInTwoProcesses(t *testing.T) {
	db, rdb := openMySQL(t), openRedis(t)
	table := createTable(t, db, "id BIGINT PRIMARY KEY, amount BIGINT NOT NULL")
	stream := newStream(t, rdb)
	exp := traceToMemory(t)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()

	// The producer: a request of its own publishes with the trace context.
	ctx, checkout := tp.Tracer("shop").Start(context.Background(), "checkout")
	id, err := safesync.PublishJSON(ctx, rdb, stream, order{ID: 3, Amount: 12}, safesync.TraceContext())
	checkout.End()
	if err != nil {
		t.Fatal(err)
	}

	// The consumer: another process, exporting its spans to a file.
	spansFile := filepath.Join(t.TempDir(), "worker-spans.json")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envWorker+"="+strings.Join([]string{stream, table, spansFile}, ","))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("worker: %v\n%s", err, out)
	}
	worker := readSpans(t, spansFile)

	local := exp.GetSpans()
	checkoutSpan := named(local, "checkout")[0]
	publish := named(local, "publish tracestream_<id>")[0]
	if publish.Parent.SpanID() != checkoutSpan.SpanContext.SpanID() || attr(publish, "messaging.message.id") != id {
		t.Fatalf("publish span %v is not checkout's child, or has not the entry's id", publish)
	}
	handle, ok := worker["handle "+stream]
	if !ok {
		t.Fatalf("the worker has no handle span: %v", worker)
	}
	if handle.SpanContext.TraceID != checkoutSpan.SpanContext.TraceID().String() || handle.Parent.SpanID != publish.SpanContext.SpanID().String() || !handle.Parent.Remote {
		t.Errorf("the worker's handle span is in trace %s under %s; want trace %s under the publish span %s",
			handle.SpanContext.TraceID, handle.Parent.SpanID, checkoutSpan.SpanContext.TraceID(), publish.SpanContext.SpanID())
	}
	read := worker["read "+stream]
	if len(handle.Links) != 1 || handle.Links[0].SpanContext.SpanID != read.SpanContext.SpanID {
		t.Errorf("the handle span's links %v, want the worker's read span %s", handle.Links, read.SpanContext.SpanID)
	}
	tx := worker["transaction apply_order"]
	if tx.Parent.SpanID != handle.SpanContext.SpanID || tx.SpanContext.TraceID != handle.SpanContext.TraceID {
		t.Errorf("the transaction span is not the handle span's child: %+v", tx)
	}

	// The trace as a viewer draws it: both processes' spans of the trace.
	var rows []waterfallRow
	for _, s := range local {
		if s.SpanContext.TraceID() == checkoutSpan.SpanContext.TraceID() {
			rows = append(rows, waterfallRow{"producer", s.Name, s.SpanContext.SpanID().String(), s.Parent.SpanID().String(), s.StartTime, s.EndTime, ""})
		}
	}
	for _, s := range worker {
		if s.SpanContext.TraceID == handle.SpanContext.TraceID {
			rows = append(rows, waterfallRow{"worker", s.Name, s.SpanContext.SpanID, s.Parent.SpanID, s.StartTime, s.EndTime, ""})
		}
	}
	t.Logf("one trace, two processes:\n%s", waterfall(rows, 40))
}

// exportedSpan is what the stdout exporter writes of a span.
type exportedSpan struct {
	Name               string
	SpanContext        exportedContext
	Parent             exportedContext
	Links              []struct{ SpanContext exportedContext }
	StartTime, EndTime time.Time
}

type exportedContext struct {
	TraceID, SpanID string
	Remote          bool
}

// readSpans reads the worker's spans, by name.
func readSpans(t *testing.T, path string) map[string]exportedSpan {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]exportedSpan{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var s exportedSpan
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("%v: %s", err, sc.Bytes())
		}
		out[s.Name] = s
	}
	return out
}

// runWorker is the consumer process: it applies the stream's entries with
// a pipeline until the table has a row, exporting its spans to a file.
func runWorker(spec string) error {
	parts := strings.Split(spec, ",")
	stream, table, spansFile := parts[0], parts[1], parts[2]
	f, err := os.Create(spansFile)
	if err != nil {
		return err
	}
	defer f.Close()
	exp, err := stdouttrace.New(stdouttrace.WithWriter(f))
	if err != nil {
		return err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	safesync.SetTracer(safesyncotel.New(safesyncotel.WithTracerProvider(tp)))

	db, err := sql.Open("mysql", os.Getenv("SAFESYNC_MYSQL_DSN"))
	if err != nil {
		return err
	}
	defer db.Close()
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{os.Getenv("SAFESYNC_REDIS_ADDR")}, DisableCache: true})
	if err != nil {
		return err
	}
	defer rdb.Close()

	ctx, cancel := context.WithTimeout(context.Background(), workerDeadline)
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- safesync.Stream[order](safesync.JSON[order]()).
			Handle(applyOrder(table)).
			AckAfter(safesync.Commit(db, safesync.Label("apply_order"), safesync.WithMetrics(nil))).
			Run(ctx, rdb, safesync.StreamConfig{Stream: stream, Group: "billing", Consumer: uniqueName("worker"), Block: 50 * time.Millisecond})
	}()
	for {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
			return err
		}
		// NOGROUP until the pipeline has created its group.
		pending, err := rdb.Do(ctx, rdb.B().Xpending().Key(stream).Group("billing").Build()).ToArray()
		if err == nil {
			if left, _ := pending[0].AsInt64(); n > 0 && left == 0 {
				break // applied and acknowledged
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the entry was not applied and acknowledged within %v", workerDeadline)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	return <-ran
}
