// Package ops inspects and repairs the Redis side of a safesync
// deployment: the streams, their consumer groups, consumers and pending
// entries, and the dead letters, which it lists, shows, replays and
// purges. The safesync command-line tool (cmd/safesync) is a thin layer on
// it; a dashboard can be another.
//
//	o := ops.New(client, ops.Config{})
//	page, err := o.Streams(ctx, ops.StreamsQuery{})              // every stream, summed up
//	t, err := o.Resolve(ctx, "orders")                           // a stream or a partitioned stream
//	info, err := o.Inspect(ctx, t)                               // groups, consumers, lag, pending
//	dead, err := o.DeadLetters(ctx, t, ops.DeadLetterQuery{Filter: ops.Filter{Reason: "handler"}})
//	res, err := o.Replay(ctx, t, ops.Filter{All: true}, ops.ReplayOptions{})
//
// # Targets
//
// Every operation on a stream takes a Target: the stream keys (one, or one
// per partition of a safesync.Partitions) and their dead-letter streams.
// Listings over several keys are merged in (id, key) order and paged with
// an opaque cursor (the Next of a page, passed back as After).
//
// # Replay
//
// Replay moves dead letters back to the streams they came from, each with
// its origin (safesync.OriginFieldStream and safesync.OriginFieldID), and
// a pipeline with Once applies an origin at most once: replaying twice,
// replaying after a crash half-way through, or replaying an entry whose
// effects had committed after all, applies nothing twice. See Replay for
// the exact moves and what holds without Once.
//
// Consumers of the original Python framework reject entries with fields
// other than "data": do not replay to a stream they read, or replay with
// ReplayOptions.StripOrigin and give up exactly-once.
//
// # Results
//
// Results are plain structs with JSON tags: durations encode as
// nanoseconds (fields named *_ns), times as RFC 3339. Ages are measured
// against Config.Now from the time in an entry's id; idle times are the
// server's.
package ops
