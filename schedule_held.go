package safesync

import (
	"math"
	"slices"

	"github.com/safesync-go/safesync/internal/streamid"
)

// The scheduler's in-flight set: the entries it holds (admitted and neither
// released nor settled: waiting, running, or handled and waiting for their
// XACK), which it never admits again, and the entries settled
// (acknowledged or dead-lettered) while a read or claim sent before the
// settlement is in flight: such a read may have run on Redis before the
// XACK and return the entry, which must not be admitted again either.
//
// Entries are recorded by admission: one heldGroup per admit, holding the
// ids of the entries it kept in their order. Units and acknowledgements
// carry a heldRef to their entries' records, so that holding, releasing
// and settling an entry costs no lookup. Ids are compared only when an
// admit may meet an entry recorded already: Redis returns the entries of
// a read or claim in id order, and a read of new entries (">") returns ids
// above every id the group has delivered, so an admit whose first id is
// above every id admitted so far from its stream (maxID) meets none; a
// claim, or a re-read of the consumer's own pending entries, looks each of
// its ids up in the groups whose id range holds it.

// heldGroup records the entries of one admit while any of them is held,
// or was settled while a read or claim sent before is in flight.
type heldGroup struct {
	part  int
	gen   uint32      // bumped at every reuse, so that a stale heldRef is ignored
	ids   []string    // of the entries kept by the admit, in admission (stream) order
	state []heldState // by entry
	held  int         // entries in state entryHeld
	// first and last are ids[0] and ids[len-1]; ranged reports that both
	// parse and first <= last, so that an id outside them is not in ids.
	first, last streamid.ID
	ranged      bool
	// settledAt is the sequence number of the latest settlement of one of
	// its entries while reads were in flight (0: none): the settled
	// entries are dropped by the admits of reads sent before it.
	settledAt uint64
}

// heldState is what became of one entry of a heldGroup.
type heldState uint8

const (
	entryHeld     heldState = iota // admitted: not admitted again
	entryReleased                  // left pending: may be admitted again
	entrySettled                   // acknowledged or dead-lettered
)

// heldRef names entry i of a heldGroup, in the generation gen of its use.
type heldRef struct {
	g   *heldGroup
	i   int32
	gen uint32
}

// at returns the ref of the entry j places after r's.
func (r heldRef) at(j int) heldRef {
	r.i += int32(j)
	return r
}

// dropRecorded returns msgs, entries of one stream (partition) in stream
// order read or claimed by the read numbered read, without those this
// consumer holds or settled after that read was sent, compacting msgs in
// place. Called with mu held.
func (s *scheduler[T]) dropRecorded(msgs []Message[T], read uint64) []Message[T] {
	part := msgs[0].part
	if first, ok := streamid.Parse(msgs[0].ID); ok && (part >= len(s.maxID) || s.maxID[part].Less(first)) {
		return msgs // above every id recorded of the stream: a read of new entries
	}
	kept := msgs[:0]
	for i := range msgs {
		if s.recorded(msgs[i].part, msgs[i].ID, read) {
			continue
		}
		if len(kept) < i {
			kept = append(kept, msgs[i])
		} else {
			kept = kept[:i+1]
		}
	}
	clear(msgs[len(kept):]) // no references kept from the dropped
	return kept
}

// recorded reports whether entry id of stream part is held, or was settled
// after the read numbered read was sent. Called with mu held.
func (s *scheduler[T]) recorded(part int, id string, read uint64) bool {
	x, ok := streamid.Parse(id)
	for _, g := range s.groups {
		if g.part != part || (ok && g.ranged && (x.Less(g.first) || g.last.Less(x))) {
			continue
		}
		for j, have := range g.ids {
			if have != id {
				continue
			}
			switch g.state[j] {
			case entryHeld:
				return true
			case entrySettled:
				if g.settledAt > read {
					return true
				}
			}
		}
	}
	return false
}

// hold records kept, entries of one stream in stream order, as held, and
// returns the ref of the first. Called with mu held.
func (s *scheduler[T]) hold(kept []Message[T]) heldRef {
	var g *heldGroup
	if n := len(s.spare); n > 0 {
		g, s.spare = s.spare[n-1], s.spare[:n-1]
		g.gen++
	} else {
		g = &heldGroup{}
	}
	g.part = kept[0].part
	g.ids = g.ids[:0]
	for i := range kept {
		g.ids = append(g.ids, kept[i].ID)
	}
	g.state = slices.Grow(g.state[:0], len(kept))[:len(kept)]
	clear(g.state) // entryHeld
	g.held, g.settledAt = len(kept), 0
	var okF, okL bool
	g.first, okF = streamid.Parse(g.ids[0])
	g.last, okL = streamid.Parse(g.ids[len(g.ids)-1])
	g.ranged = okF && okL && !g.last.Less(g.first)
	for len(s.maxID) <= g.part {
		s.maxID = append(s.maxID, streamid.ID{})
	}
	switch {
	case !g.ranged:
		s.maxID[g.part] = streamid.Max // out of order: no fast path on this stream
	case s.maxID[g.part].Less(g.last):
		s.maxID[g.part] = g.last
	}
	s.groups = append(s.groups, g)
	return heldRef{g: g, gen: g.gen}
}

// releaseRef stops holding the entry r: it stays pending, for
// redelivery, and may be admitted again. Called with mu held.
func (s *scheduler[T]) releaseRef(r heldRef) {
	if g := r.g; g != nil && g.gen == r.gen && g.state[r.i] == entryHeld {
		g.state[r.i] = entryReleased
		s.unheld(g)
	}
}

// settleRef stops holding the entry r, acknowledged or dead-lettered: a
// read or claim in flight, sent before, may still return it, and admit
// drops it. Called with mu held.
func (s *scheduler[T]) settleRef(r heldRef) {
	if g := r.g; g != nil && g.gen == r.gen && g.state[r.i] == entryHeld {
		g.state[r.i] = entrySettled
		if len(s.reads) > 0 {
			s.seq++
			g.settledAt = s.seq
		}
		s.unheld(g)
	}
}

// unheld counts one entry of g no longer held; with no read in flight, a
// group of none is forgotten at once. Called with mu held.
func (s *scheduler[T]) unheld(g *heldGroup) {
	if g.held--; g.held == 0 && len(s.reads) == 0 {
		s.forget(0)
	}
}

// forget drops the groups that hold no entry and whose settlements no read
// in flight was sent before (oldest is the number of the oldest read in
// flight; 0 when none is). Called with mu held.
func (s *scheduler[T]) forget(oldest uint64) {
	s.groups = slices.DeleteFunc(s.groups, func(g *heldGroup) bool {
		if g.held > 0 || (len(s.reads) > 0 && g.settledAt > oldest) {
			return false
		}
		g.gen++ // refs still around name the previous generation
		s.spare = append(s.spare, g)
		return true
	})
}

// oldestRead is the number of the oldest read in flight. Called with mu
// held, reads not empty.
func (s *scheduler[T]) oldestRead() uint64 {
	oldest := uint64(math.MaxUint64)
	for r := range s.reads {
		oldest = min(oldest, r)
	}
	return oldest
}
