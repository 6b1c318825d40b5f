package ops

import (
	"context"
	"fmt"

	"github.com/redis/rueidis"
)

// item is one entry of a merged listing: its stream key and id, and what
// was read of it.
type item[T any] struct {
	key string
	id  entryID
	v   T
}

// merged reads several streams' entries (or pending entries) as one
// listing in (id, key) order: a k-way merge that reads each key in batches
// as its buffer empties, so a listing over P partitions costs about one
// round trip per batch of entries, not P per page.
type merged[T any] struct {
	keys  []string
	read  func(ctx context.Context, key, start string, n int64) ([]T, error)
	idOf  func(T) string
	batch int64

	bufs   [][]T
	starts []string // next id to read from, per key
	done   []bool
}

func newMerged[T any](keys []string, cur *position, batch int64, idOf func(T) string,
	read func(ctx context.Context, key, start string, n int64) ([]T, error)) *merged[T] {
	m := &merged[T]{keys: keys, read: read, idOf: idOf, batch: batch,
		bufs: make([][]T, len(keys)), starts: make([]string, len(keys)), done: make([]bool, len(keys))}
	for i, k := range keys {
		m.starts[i], m.done[i] = cur.startFor(k)
	}
	return m
}

// next returns the next entry in (id, key) order; ok is false at the end.
func (m *merged[T]) next(ctx context.Context) (it item[T], ok bool, err error) {
	best := -1
	var bestID entryID
	for i := range m.keys {
		if len(m.bufs[i]) == 0 && !m.done[i] {
			if err := m.fill(ctx, i); err != nil {
				return it, false, err
			}
		}
		if len(m.bufs[i]) == 0 {
			continue
		}
		id, _ := parseID(m.idOf(m.bufs[i][0]))
		if best < 0 || id.Less(bestID) || id == bestID && m.keys[i] < m.keys[best] {
			best, bestID = i, id
		}
	}
	if best < 0 {
		return it, false, nil
	}
	it = item[T]{key: m.keys[best], id: bestID, v: m.bufs[best][0]}
	m.bufs[best] = m.bufs[best][1:]
	return it, true, nil
}

func (m *merged[T]) fill(ctx context.Context, i int) error {
	vs, err := m.read(ctx, m.keys[i], m.starts[i], m.batch)
	if err != nil {
		return err
	}
	m.bufs[i] = vs
	if int64(len(vs)) < m.batch {
		m.done[i] = true
		return nil
	}
	last, ok := parseID(m.idOf(vs[len(vs)-1]))
	if !ok {
		return fmt.Errorf("safesync/ops: %s: unexpected entry id %q", m.keys[i], m.idOf(vs[len(vs)-1]))
	}
	next, ok := last.Next()
	m.starts[i], m.done[i] = next.String(), !ok
	return nil
}

// readBatch is how many entries a merged listing reads from a key at once.
const readBatch = 200

// newMergedRange lists the entries of keys after cur, each key up to the
// id end(key) returns ("+" for no bound).
func (o *Ops) newMergedRange(keys []string, cur *position, end func(key string) string) *merged[rueidis.XRangeEntry] {
	return newMerged(keys, cur, readBatch,
		func(x rueidis.XRangeEntry) string { return x.ID },
		func(ctx context.Context, key, start string, n int64) ([]rueidis.XRangeEntry, error) {
			xs, err := o.client.Do(ctx, o.client.B().Xrange().Key(key).Start(start).End(end(key)).Count(n).Build()).AsXRange()
			if err != nil {
				return nil, keyErr("XRANGE", key, err)
			}
			return xs, nil
		})
}

// noEnd is the end bound of a listing to the end of every key.
func noEnd(string) string { return "+" }
