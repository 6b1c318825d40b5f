package safesyncotel

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Attribute keys LogHandler adds to a record: the names of the
// OpenTelemetry log data model's fields.
const (
	TraceIDKey = "trace_id"
	SpanIDKey  = "span_id"
)

// LogHandler wraps h so that every record logged with a ctx inside a
// traced operation (logger.InfoContext(ctx, …), or a Logger's …Context
// methods) carries the trace and span ids of ctx's span, as the attributes
// trace_id and span_id (hex, as trace viewers show them), and a record
// logged without such a ctx is passed on as it is. Inside a transaction's
// function the span is the transaction's; inside a pipeline's handler, the
// handler's.
//
//	logger := slog.New(safesyncotel.LogHandler(slog.NewJSONHandler(os.Stderr, nil)))
//
// The ids are added when the record is handled, so attributes and groups
// given to the logger before (With, WithGroup) keep their place; under a
// WithGroup the ids land in that group, as any record attribute would.
// The returned handler is safe for concurrent use if h is.
func LogHandler(h slog.Handler) slog.Handler {
	return traceHandler{next: h}
}

type traceHandler struct{ next slog.Handler }

func (h traceHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String(TraceIDKey, sc.TraceID().String()), slog.String(SpanIDKey, sc.SpanID().String()))
	}
	return h.next.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{next: h.next.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{next: h.next.WithGroup(name)}
}
