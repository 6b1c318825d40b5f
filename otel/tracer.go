// Package safesyncotel traces safesync with OpenTelemetry: transactions,
// statements, locks, retries and stream operations become spans that
// follow the semantic conventions for databases and messaging.
//
// Tracing is turned on once per process, with the global TracerProvider:
//
//	safesync.SetTracer(safesyncotel.New())
//
// or with a given one:
//
//	safesync.SetTracer(safesyncotel.New(safesyncotel.WithTracerProvider(tp)))
//
// It lives in a module of its own so that the safesync module does not
// require OpenTelemetry; safesync itself only knows the small Tracer
// interface this package implements.
//
// # Spans
//
//	operation        span name                  kind      conventions
//	transaction      transaction <label>        internal  db.system.name=mysql
//	statement        <VERB> [<table>]           client    db.system.name, db.operation.name, db.collection.name, db.query.text (parameterized only)
//	row lock         lock row <table>           internal  db.system.name, db.collection.name
//	advisory lock    lock advisory              internal  db.system.name
//	retry            retry                      internal  -
//	publish          publish <stream>           producer  messaging.system=redis, messaging.destination.name, messaging.operation.type=send, messaging.message.id
//	read             read <stream>              consumer  messaging.operation.type=receive, messaging.consumer.group.name, messaging.client.id, messaging.batch.message_count
//	handle           handle <stream>            consumer  messaging.operation.type=process, messaging.message.id
//	ack              ack <stream>               client    messaging.operation.type=settle
//	dead letter      dead_letter <stream>       client    messaging.operation.type=settle
//	reclaim          reclaim <stream>           consumer  messaging.operation.type=receive
//
// safesync's own details are attributes in the safesync.* namespace (see
// safesync.OperationKind); a failed operation's span has status Error, the
// error recorded as an exception event, and error.type.
package safesyncotel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/go-sql-driver/mysql"
	"github.com/safesync-go/safesync"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of every span this package
// starts.
const ScopeName = "github.com/safesync-go/safesync/otel"

// messagingSystemRedis is messaging.system for Redis Streams; the
// conventions name no value for Redis, so it is the system's own name.
var messagingSystemRedis = semconv.MessagingSystemKey.String("redis")

// Option configures New.
type Option func(*config)

type config struct {
	provider   trace.TracerProvider
	propagator propagation.TextMapPropagator
}

// WithTracerProvider makes the Tracer start its spans on tp instead of the
// global TracerProvider (otel.GetTracerProvider).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.provider = tp }
}

// WithPropagator sets the format in which the trace context travels in
// stream entries (propagation.TraceContext, the W3C format, when not
// given: fields traceparent and tracestate).
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) { c.propagator = p }
}

// Tracer implements safesync.Tracer on OpenTelemetry. It is safe for
// concurrent use.
type Tracer struct {
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
}

// New returns a Tracer on the global TracerProvider, or the one given with
// WithTracerProvider. The global provider is looked up once, here; it is
// the OpenTelemetry API's delegating provider until otel.SetTracerProvider
// is called, so New may run before the SDK is set up. Pass the result to
// safesync.SetTracer.
func New(opts ...Option) *Tracer {
	c := config{propagator: propagation.TraceContext{}}
	for _, o := range opts {
		o(&c)
	}
	if c.provider == nil {
		c.provider = otel.GetTracerProvider()
	}
	return &Tracer{
		tracer:     c.provider.Tracer(ScopeName, trace.WithInstrumentationVersion(Version), trace.WithSchemaURL(semconv.SchemaURL)),
		propagator: c.propagator,
	}
}

// Version is this package's version, reported as the instrumentation
// scope's version.
const Version = "0.1.0"

var _ safesync.Tracer = (*Tracer)(nil)

// Start implements safesync.Tracer: it starts op's span as a child of
// ctx's span, named and attributed by the conventions (see the package
// documentation).
func (t *Tracer) Start(ctx context.Context, op safesync.Operation) (context.Context, safesync.Span) {
	name, kind, attrs := describe(op)
	opts := make([]trace.SpanStartOption, 0, 4)
	opts = append(opts, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	if !op.Start.IsZero() {
		opts = append(opts, trace.WithTimestamp(op.Start))
	}
	for _, l := range op.Links {
		if sc := trace.SpanContextFromContext(l); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
	}
	if op.Parent != nil {
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContextFromContext(op.Parent))
	}
	ctx, s := t.tracer.Start(ctx, name, opts...)
	return ctx, span{s}
}

// Inject implements safesync.Tracer: it writes ctx's span context into
// fields in the propagator's format, leaving fields that are already set
// as they are (a creation context the publisher set itself is kept).
func (t *Tracer) Inject(ctx context.Context, fields map[string]string) {
	carrier := propagation.MapCarrier{}
	t.propagator.Inject(ctx, carrier)
	for k, v := range carrier {
		if _, set := fields[k]; !set {
			fields[k] = v
		}
	}
}

// Extract implements safesync.Tracer: it returns ctx carrying the span
// context fields hold as its remote parent, and whether they held one.
func (t *Tracer) Extract(ctx context.Context, fields map[string]string) (context.Context, bool) {
	out := t.propagator.Extract(ctx, propagation.MapCarrier(fields))
	sc := trace.SpanContextFromContext(out)
	if !sc.IsValid() || !sc.IsRemote() {
		return ctx, false
	}
	return out, true
}

// describe maps an operation to its span's name, kind and attributes.
func describe(op safesync.Operation) (string, trace.SpanKind, []attribute.KeyValue) {
	attrs := make([]attribute.KeyValue, 0, 6+len(op.Attrs))
	var name string
	kind := trace.SpanKindInternal
	switch op.Kind {
	case safesync.OpTransaction:
		name = "transaction " + op.Name
		attrs = append(attrs, semconv.DBSystemNameMySQL)
	case safesync.OpStatement:
		kind = trace.SpanKindClient
		name = op.SQLVerb
		attrs = append(attrs, semconv.DBSystemNameMySQL)
		if op.SQLVerb != "" {
			attrs = append(attrs, semconv.DBOperationName(op.SQLVerb))
		}
		if op.Table != "" {
			name += " " + op.Table
			attrs = append(attrs, semconv.DBCollectionName(op.Table))
		}
		if name == "" {
			name = "mysql"
		}
		if op.Bound {
			// Values are placeholders: the conventions collect the text of
			// parameterized statements, and only of those, by default.
			attrs = append(attrs, semconv.DBQueryText(op.SQL))
		}
	case safesync.OpRowLock:
		name = "lock row " + op.Table
		attrs = append(attrs, semconv.DBSystemNameMySQL, semconv.DBCollectionName(op.Table))
	case safesync.OpAdvisoryLock:
		// Lock names may be many (one per order…): not in the span name.
		name = "lock advisory"
		attrs = append(attrs, semconv.DBSystemNameMySQL, attribute.String("safesync.lock.name", op.Name))
	case safesync.OpRetry:
		name = "retry"
	case safesync.OpPublish:
		kind = trace.SpanKindProducer
		name = messaging(&attrs, op, "publish", semconv.MessagingOperationTypeSend)
	case safesync.OpRead:
		kind = trace.SpanKindConsumer
		name = messaging(&attrs, op, "read", semconv.MessagingOperationTypeReceive)
	case safesync.OpHandle:
		kind = trace.SpanKindConsumer
		name = messaging(&attrs, op, "handle", semconv.MessagingOperationTypeProcess)
	case safesync.OpAck:
		kind = trace.SpanKindClient
		name = messaging(&attrs, op, "ack", semconv.MessagingOperationTypeSettle)
	case safesync.OpDeadLetter:
		kind = trace.SpanKindClient
		name = messaging(&attrs, op, "dead_letter", semconv.MessagingOperationTypeSettle)
	case safesync.OpReclaim:
		kind = trace.SpanKindConsumer
		name = messaging(&attrs, op, "reclaim", semconv.MessagingOperationTypeReceive)
	default:
		name = "safesync " + op.Kind.String()
	}
	for _, a := range op.Attrs {
		attrs = appendAttr(attrs, "", a)
	}
	return name, kind, attrs
}

// messaging appends the messaging conventions' attributes of op and
// returns the span name: "<operation> <stream>".
func messaging(attrs *[]attribute.KeyValue, op safesync.Operation, operation string, typ attribute.KeyValue) string {
	*attrs = append(*attrs, messagingSystemRedis, semconv.MessagingOperationName(operation), typ)
	name := operation
	if op.Name != "" {
		name += " " + op.Name
		*attrs = append(*attrs, semconv.MessagingDestinationName(op.Name))
	}
	if op.Group != "" {
		*attrs = append(*attrs, semconv.MessagingConsumerGroupName(op.Group))
	}
	if op.Consumer != "" {
		*attrs = append(*attrs, semconv.MessagingClientID(op.Consumer))
	}
	if op.MessageID != "" {
		*attrs = append(*attrs, semconv.MessagingMessageID(op.MessageID))
	}
	if op.Messages > 0 {
		*attrs = append(*attrs, semconv.MessagingBatchMessageCount(op.Messages))
	}
	return name
}

// renamed are safesync's attribute keys that the conventions name.
var renamed = map[string]attribute.Key{
	"safesync.message.id": semconv.MessagingMessageIDKey,
}

// appendAttr converts a slog attribute (groups flattened with dots).
func appendAttr(attrs []attribute.KeyValue, prefix string, a slog.Attr) []attribute.KeyValue {
	key := prefix + a.Key
	if k, ok := renamed[key]; ok {
		key = string(k)
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return append(attrs, attribute.String(key, v.String()))
	case slog.KindInt64:
		return append(attrs, attribute.Int64(key, v.Int64()))
	case slog.KindUint64:
		return append(attrs, attribute.Int64(key, int64(v.Uint64())))
	case slog.KindFloat64:
		return append(attrs, attribute.Float64(key, v.Float64()))
	case slog.KindBool:
		return append(attrs, attribute.Bool(key, v.Bool()))
	case slog.KindDuration:
		return append(attrs, attribute.Float64(key, v.Duration().Seconds()))
	case slog.KindGroup:
		for _, g := range v.Group() {
			attrs = appendAttr(attrs, key+".", g)
		}
		return attrs
	}
	return append(attrs, attribute.String(key, v.String()))
}

// span adapts an OpenTelemetry span to safesync.Span.
type span struct{ s trace.Span }

func (s span) SetAttrs(attrs ...slog.Attr) {
	kv := make([]attribute.KeyValue, 0, len(attrs))
	for _, a := range attrs {
		kv = appendAttr(kv, "", a)
	}
	s.s.SetAttributes(kv...)
}

func (s span) Event(name string, attrs ...slog.Attr) {
	kv := make([]attribute.KeyValue, 0, len(attrs))
	for _, a := range attrs {
		kv = appendAttr(kv, "", a)
	}
	s.s.AddEvent(name, trace.WithAttributes(kv...))
}

func (s span) End(err error) {
	if err != nil {
		s.s.RecordError(err)
		s.s.SetStatus(codes.Error, err.Error())
		s.s.SetAttributes(semconv.ErrorTypeKey.String(ErrorType(err)))
		if n := mysqlErrorNumber(err); n != 0 {
			s.s.SetAttributes(semconv.DBResponseStatusCode(strconv.Itoa(int(n))))
		}
	}
	s.s.End()
}

func mysqlErrorNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// ErrorType returns the error.type of a failed operation: a small fixed
// set of names for what safesync tells apart (the retry classifier's
// reasons: conflict, deadlock, lock_wait, lock_lost, connection; and
// commit_unknown, not_found, lock_timeout, decode, context_canceled,
// context_deadline_exceeded, mysql_<number>), else the conventions' name
// of the error's type.
func ErrorType(err error) string {
	switch {
	case errors.Is(err, context.Canceled):
		return "context_canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "context_deadline_exceeded"
	case errors.Is(err, safesync.ErrCommitUnknown):
		return "commit_unknown"
	case errors.Is(err, safesync.ErrLockTimeout):
		return "lock_timeout"
	case errors.Is(err, safesync.ErrNotFound):
		return "not_found"
	case errors.Is(err, safesync.ErrDecode):
		return "decode"
	}
	if reason, _ := safesync.DefaultClassifier(err); reason != "" {
		return reason
	}
	if n := mysqlErrorNumber(err); n != 0 {
		return fmt.Sprintf("mysql_%d", n)
	}
	return semconv.ErrorType(err).Value.AsString()
}
