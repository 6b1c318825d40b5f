package safesync

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// The stream side's spans. A consumer's entry has one story, whose spans
// the functions here start for the stream core:
//
//	read <stream>                 the XREADGROUP (or reclaim: XAUTOCLAIM) that returned it
//	└ handle <stream>             the handler; a pipeline's transaction is its child
//	  ├ transaction <label>
//	  ├ ack <stream>              the XACK that acknowledged it
//	  └ dead_letter <stream>      or its move to the dead-letter stream
//
// An entry published with TraceContext carries its creation context: its
// handle span is then the child of the publish span, in the producer's
// trace, and links to the read span (the conventions let a span that
// processes one message take the creation context as parent, keeping the
// ambient one as a link). A batch's handle span stays under the read and
// links to each entry's creation context.

// streamOperation returns the Operation of kind on cfg's stream.
func streamOperation(kind OperationKind, cfg *StreamConfig) Operation {
	return Operation{Kind: kind, Name: cfg.Stream, Group: cfg.Group, Consumer: cfg.Consumer}
}

// traceRead records, on tr, a read (OpRead) or a claim (OpReclaim) of
// cfg's stream that began at start and returned n entries, and returns the
// ctx the entries' spans descend from. Reads that return nothing are not
// recorded: an idle consumer would fill traces with empty reads.
func traceRead(ctx context.Context, tr Tracer, kind OperationKind, cfg *StreamConfig, start time.Time, n int) context.Context {
	op := streamOperation(kind, cfg)
	op.Start, op.Messages = start, n
	ctx, span := tr.Start(ctx, op)
	span.End(nil)
	return ctx
}

// startHandle starts, on tr, the span of a handler on the entry id with
// fields, read under readCtx (nil when unknown). ctx is the handler's ctx;
// the returned one keeps its values and cancellation.
func startHandle(ctx context.Context, tr Tracer, cfg *StreamConfig, readCtx context.Context, id string, fields map[string]string) (context.Context, Span) {
	op := streamOperation(OpHandle, cfg)
	op.MessageID = id
	if created, ok := tr.Extract(ctx, fields); ok {
		ctx = created
		if readCtx != nil {
			op.Links = []context.Context{readCtx}
		}
	} else {
		op.Parent = readCtx
	}
	return tr.Start(ctx, op)
}

// startBatchHandle starts, on tr, the span of a batch handler on entries
// with the given fields, read under readCtx: a child of the read, linked
// to every entry's creation context.
func startBatchHandle(ctx context.Context, tr Tracer, cfg *StreamConfig, readCtx context.Context, fields []map[string]string) (context.Context, Span) {
	op := streamOperation(OpHandle, cfg)
	op.Messages, op.Parent = len(fields), readCtx
	for _, f := range fields {
		if created, ok := tr.Extract(context.Background(), f); ok {
			op.Links = append(op.Links, created)
		}
	}
	return tr.Start(ctx, op)
}

// startDeadLetter starts, on tr, the span of moving entry id to the
// dead-letter stream for reason, under ctx's span.
func startDeadLetter(ctx context.Context, tr Tracer, cfg *StreamConfig, id, reason string) (context.Context, Span) {
	op := streamOperation(OpDeadLetter, cfg)
	op.MessageID = id
	op.Attrs = []slog.Attr{slog.String(attrDeadLetterReason, reason)}
	return tr.Start(ctx, op)
}

// entrySpans remembers, while tracing, the ctx of each entry's handle span
// from the handler's success to the XACK that acknowledges the entry, so
// that the ack span is the entry's own although acknowledgements of many
// entries go out together, later, from another goroutine. The zero value
// is ready; while nothing was ever remembered, forget and acked cost one
// atomic load.
type entrySpans struct {
	used atomic.Bool
	ctxs sync.Map // entry id → context.Context
}

// remember keeps ctx as the span under which id's acknowledgement goes.
func (s *entrySpans) remember(id string, ctx context.Context) {
	s.used.Store(true)
	s.ctxs.Store(id, ctx)
}

// adopt keeps ctx as the span under which id's acknowledgement goes,
// unless one is kept already: for Consumer.Ack, whose ctx is a batch
// handler's or the caller's.
func (s *entrySpans) adopt(id string, ctx context.Context) {
	s.used.Store(true)
	s.ctxs.LoadOrStore(id, ctx)
}

// clock returns the time an XACK starts at, for acked, or the zero time
// while nothing was ever remembered.
func (s *entrySpans) clock() time.Time {
	if !s.used.Load() {
		return time.Time{}
	}
	return time.Now()
}

// acked records, when tracing, the XACK of ids sent at start with outcome
// err: one ack span under each remembered entry's span, all covering the
// same XACK.
func (s *entrySpans) acked(cfg *StreamConfig, ids []string, start time.Time, err error) {
	if !s.used.Load() {
		return
	}
	tr := activeTracer()
	for _, id := range ids {
		var v any
		var ok bool
		if err != nil {
			v, ok = s.ctxs.Load(id) // kept for the XACK sent again
		} else {
			v, ok = s.ctxs.LoadAndDelete(id)
		}
		if !ok || tr == nil {
			continue
		}
		op := streamOperation(OpAck, cfg)
		op.MessageID, op.Start = id, start
		_, span := tr.Start(v.(context.Context), op)
		span.End(err)
	}
}

// attrDeadLetterReason is a dead_letter span's reason (decode,
// max_deliveries, handler).
const attrDeadLetterReason = "safesync.dead_letter.reason"

// TraceContext makes Publish write the trace context of its ctx into the
// entry, beside its other fields, so that a safesync consumer continues the
// producer's trace: its handle span becomes the child of the publish span.
// With safesyncotel the fields are W3C Trace Context's traceparent (and
// tracestate when there is one); a field the caller set already is kept.
// It has an effect only when a Tracer is set (SetTracer).
//
// It is an option, off by default, because consumers of the original
// Python framework reject entries with any field besides data: give it
// only for streams that no such consumer reads. safesync's own consumers
// and JSON[T] ignore fields they do not know, and dead letters keep them.
func TraceContext() PublishOption {
	return func(c *publishConfig) { c.traceContext = true }
}

// startPublish starts, on tr, the span of publishing fields to stream and,
// with propagate, returns a copy of fields with the span's trace context
// added (the caller's map is never written to).
func startPublish(ctx context.Context, tr Tracer, stream string, fields map[string]string, propagate bool) (context.Context, Span, map[string]string) {
	ctx, span := tr.Start(ctx, Operation{Kind: OpPublish, Name: stream})
	if propagate {
		withContext := make(map[string]string, len(fields)+2)
		for k, v := range fields {
			withContext[k] = v
		}
		tr.Inject(ctx, withContext)
		fields = withContext
	}
	return ctx, span, fields
}

// endPublish ends a publish span with the new entry's id or the error.
func endPublish(span Span, id string, err error) {
	if err == nil {
		span.SetAttrs(slog.String(attrMessageID, id))
	}
	span.End(err)
}

// attrMessageID is the id of the entry a publish span added.
const attrMessageID = "safesync.message.id"

// traceUnit starts, when tracing, the handle span of a handler on the
// entries idx of u (one, or a batch), and makes it their span: their
// dead letters, and the XACKs endUnit or Consumer.Ack attribute to them,
// go under it. Without a Tracer it returns ctx and a nil Span.
func traceUnit[T any](ctx context.Context, cfg *StreamConfig, u *unit[T], idx []int) (context.Context, Span) {
	tr := activeTracer()
	if tr == nil {
		return ctx, nil
	}
	var span Span
	first := &u.msgs[idx[0]]
	if len(idx) == 1 {
		ctx, span = startHandle(ctx, tr, cfg, first.read, first.ID, first.Fields)
	} else {
		fields := make([]map[string]string, len(idx))
		for j, i := range idx {
			fields[j] = u.msgs[i].Fields
		}
		ctx, span = startBatchHandle(ctx, tr, cfg, first.read, fields)
	}
	for _, i := range idx {
		u.msgs[i].span = ctx
	}
	return ctx, span
}

// endUnit ends a handle span traceUnit started with the handler's error;
// when the entries are to be acknowledged (done), their XACK goes under it.
func endUnit[T any](ctx context.Context, span Span, spans *entrySpans, u *unit[T], idx []int, done bool, err error) {
	span.End(err)
	if done {
		for _, i := range idx {
			spans.remember(u.msgs[i].ID, ctx)
		}
	}
}
