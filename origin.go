package safesync

// Fields that name where an entry first came from, when it was put on its
// stream on behalf of an earlier one: an entry replayed from a dead-letter
// stream, or an event relayed from an outbox. Once records and recognises
// the entry by its origin instead of its own id, so that the same origin
// applied twice (a dead letter replayed twice, a replay of an entry whose
// effects had in fact committed, an outbox row relayed again after a crash)
// takes effect at most once.
//
// Consumers of the original Python framework reject entries with fields
// other than "data"; do not replay to a stream they read.
const (
	// OriginFieldStream holds the origin's stream (or outbox) name.
	OriginFieldStream = "origin.stream"
	// OriginFieldID holds the origin's entry (or outbox row) id.
	OriginFieldID = "origin.id"
)

// Origin returns where the entry first came from: the values of its
// OriginFieldStream and OriginFieldID fields when it carries both, else its
// own stream and id. Once deduplicates on it.
func (m Message[T]) Origin() (stream, id string) {
	return originOf(m.Stream, m.ID, m.Fields)
}

// originOf is Message.Origin for an entry's stream, id and fields.
func originOf(stream, id string, fields map[string]string) (string, string) {
	os, okS := fields[OriginFieldStream]
	oid, okID := fields[OriginFieldID]
	if okS && okID && os != "" && oid != "" {
		return os, oid
	}
	return stream, id
}
