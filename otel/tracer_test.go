package safesyncotel_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/safesync-go/safesync"
	safesyncotel "github.com/safesync-go/safesync/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

func newTracer(t *testing.T) (*safesyncotel.Tracer, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return safesyncotel.New(safesyncotel.WithTracerProvider(tp)), exp
}

func TestInjectWritesTheW3CTraceContextAndExtractReadsItBack(t *testing.T) {
	tr, exp := newTracer(t)
	ctx, span := tr.Start(context.Background(), safesync.Operation{Kind: safesync.OpPublish, Name: "orders"})
	fields := map[string]string{"data": `{"id":1}`}
	tr.Inject(ctx, fields)
	span.End(nil)
	sc := exp.GetSpans()[0].SpanContext
	want := fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
	if fields["traceparent"] != want || fields["data"] != `{"id":1}` || len(fields) != 2 {
		t.Fatalf("fields %v, want data and traceparent %s", fields, want)
	}

	got, ok := tr.Extract(context.Background(), fields)
	if !ok {
		t.Fatal("Extract found no trace context")
	}
	if rsc := trace.SpanContextFromContext(got); !rsc.IsRemote() || rsc.TraceID() != sc.TraceID() || rsc.SpanID() != sc.SpanID() {
		t.Errorf("extracted %v, want the publish span %v", rsc, sc)
	}
}

func TestInjectKeepsATraceContextThePublisherSet(t *testing.T) {
	tr, _ := newTracer(t)
	ctx, span := tr.Start(context.Background(), safesync.Operation{Kind: safesync.OpPublish, Name: "orders"})
	defer span.End(nil)
	own := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	fields := map[string]string{"data": "{}", "traceparent": own}
	tr.Inject(ctx, fields)
	if fields["traceparent"] != own {
		t.Errorf("traceparent %q, want the publisher's %q", fields["traceparent"], own)
	}
}

func TestExtractWithoutATraceContextLeavesCtxAsItIs(t *testing.T) {
	tr, _ := newTracer(t)
	ctx := context.Background()
	for _, fields := range []map[string]string{
		{"data": "{}"},
		{"data": "{}", "traceparent": "not a trace context"},
	} {
		if got, ok := tr.Extract(ctx, fields); ok || got != ctx {
			t.Errorf("Extract(%v) = %v, %v; want ctx, false", fields, got, ok)
		}
	}
}

func TestStreamOperationsFollowTheMessagingConventions(t *testing.T) {
	tr, exp := newTracer(t)
	ctx := context.Background()
	readCtx, read := tr.Start(ctx, safesync.Operation{Kind: safesync.OpRead, Name: "orders", Group: "workers", Consumer: "w1", Messages: 2,
		Start: time.Now().Add(-time.Second)})
	read.End(nil)
	_, handle := tr.Start(ctx, safesync.Operation{Kind: safesync.OpHandle, Name: "orders", Group: "workers", Consumer: "w1", MessageID: "1-0",
		Links: []context.Context{readCtx}})
	handle.End(nil)
	_, pub := tr.Start(ctx, safesync.Operation{Kind: safesync.OpPublish, Name: "orders"})
	pub.SetAttrs(slog.String("safesync.message.id", "2-0"))
	pub.End(nil)

	spans := exp.GetSpans()
	cases := []struct {
		name string
		kind trace.SpanKind
		want map[string]string
	}{
		{"read orders", trace.SpanKindConsumer, map[string]string{
			"messaging.system": "redis", "messaging.operation.name": "read", "messaging.operation.type": "receive",
			"messaging.destination.name": "orders", "messaging.consumer.group.name": "workers", "messaging.client.id": "w1",
			"messaging.batch.message_count": "2"}},
		{"handle orders", trace.SpanKindConsumer, map[string]string{
			"messaging.operation.type": "process", "messaging.message.id": "1-0"}},
		{"publish orders", trace.SpanKindProducer, map[string]string{
			"messaging.operation.type": "send", "messaging.message.id": "2-0"}},
	}
	for i, c := range cases {
		s := spans[i]
		if s.Name != c.name || s.SpanKind != c.kind {
			t.Errorf("span %d: %q %v, want %q %v", i, s.Name, s.SpanKind, c.name, c.kind)
		}
		for k, v := range c.want {
			if got := attr(s, k); got != v {
				t.Errorf("%s: %s = %q, want %q", c.name, k, got, v)
			}
		}
	}
	if took := spans[0].EndTime.Sub(spans[0].StartTime); took < time.Second {
		t.Errorf("read span lasted %v; it began a second before it was started", took)
	}
	if l := spans[1].Links; len(l) != 1 || l[0].SpanContext.SpanID() != spans[0].SpanContext.SpanID() {
		t.Errorf("handle span links %v, want the read span", l)
	}
}

func TestParentPutsTheSpanUnderAnotherSpanKeepingCtx(t *testing.T) {
	tr, exp := newTracer(t)
	readCtx, read := tr.Start(context.Background(), safesync.Operation{Kind: safesync.OpRead, Name: "orders"})
	read.End(nil)
	type key struct{}
	handlerCtx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "run"))
	ctx, handle := tr.Start(handlerCtx, safesync.Operation{Kind: safesync.OpHandle, Name: "orders", Parent: readCtx})
	handle.End(nil)
	cancel()
	spans := exp.GetSpans()
	if spans[1].Parent.SpanID() != spans[0].SpanContext.SpanID() {
		t.Errorf("handle's parent %v, want the read span %v", spans[1].Parent.SpanID(), spans[0].SpanContext.SpanID())
	}
	if ctx.Value(key{}) != "run" || ctx.Err() == nil {
		t.Error("the handle span's ctx lost the handler ctx's values or cancellation")
	}
}

func TestTheConventionsKeysAreTheSemconvPackages(t *testing.T) {
	// The keys the tests above spell out are those of the semconv version
	// this module uses.
	for _, k := range []string{
		string(semconv.DBSystemNameKey), string(semconv.DBOperationNameKey), string(semconv.DBCollectionNameKey),
		string(semconv.DBQueryTextKey), string(semconv.MessagingSystemKey), string(semconv.MessagingDestinationNameKey),
		string(semconv.MessagingMessageIDKey), string(semconv.MessagingConsumerGroupNameKey), string(semconv.MessagingOperationTypeKey),
	} {
		switch k {
		case "db.system.name", "db.operation.name", "db.collection.name", "db.query.text", "messaging.system",
			"messaging.destination.name", "messaging.message.id", "messaging.consumer.group.name", "messaging.operation.type":
		default:
			t.Errorf("semconv key %q is not the one the tests check", k)
		}
	}
}

func TestErrorTypeNamesWhatSafesyncTellsApart(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{&safesync.ConflictError{Table: "accounts"}, "conflict"},
		{&safesync.RetryError{Attempts: 3, Err: &safesync.ConflictError{}, Exhausted: true}, "conflict"},
		{&mysql.MySQLError{Number: 1213}, "deadlock"},
		{&mysql.MySQLError{Number: 1062}, "mysql_1062"},
		{&safesync.LockTimeoutError{Name: "job"}, "lock_timeout"},
		{fmt.Errorf("wrapped: %w", safesync.ErrLockLost), "lock_lost"},
		{&safesync.CommitUnknownError{Err: errors.New("eof")}, "commit_unknown"},
		{context.Canceled, "context_canceled"},
		{safesync.ErrNotFound, "not_found"},
		{errors.New("something else"), "*errors.errorString"},
	}
	for _, c := range cases {
		if got := safesyncotel.ErrorType(c.err); got != c.want {
			t.Errorf("ErrorType(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
