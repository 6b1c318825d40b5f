package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// DeadLetter is an entry of a dead-letter stream: what safesync.ParseDeadLetter
// reads from it, where it is, and its payload.
type DeadLetter struct {
	// ID is its id in DeadLetterStream.
	ID               string `json:"id"`
	DeadLetterStream string `json:"dead_letter_stream"`
	// DeadLetteredAt is when it was moved (the time in ID).
	DeadLetteredAt time.Time `json:"dead_lettered_at"`
	// Stream, Group and OriginalID name the entry it is a copy of: its
	// stream, the group that gave up on it, and its id there.
	Stream     string `json:"stream"`
	Group      string `json:"group"`
	OriginalID string `json:"original_id"`
	// Reason is one of safesync's DeadLetter reasons (decode,
	// max_deliveries, handler) or the caller's.
	Reason string `json:"reason"`
	// Error is the last failure's text, when one was recorded.
	Error string `json:"error,omitempty"`
	// Deliveries is Redis' delivery count when it was moved.
	Deliveries int64 `json:"deliveries"`
	// Consumer, Failures, FirstFailure and LastFailure are recorded by
	// consumers that know them: the consumer that moved it, how many times
	// it failed for its own reasons, and when it first and last did.
	Consumer     string    `json:"consumer,omitempty"`
	Failures     int64     `json:"failures,omitempty"`
	FirstFailure time.Time `json:"first_failure,omitzero"`
	LastFailure  time.Time `json:"last_failure,omitzero"`
	// Origin is where the entry first came from, when it carries one (it
	// was itself a replayed dead letter, or relayed from an outbox): a
	// replay keeps it, so Once still recognises the entry.
	Origin *Origin `json:"origin,omitempty"`
	// Fields are the entry's own fields, as it was published.
	Fields map[string]string `json:"fields"`
	// Payload is the "data" field when it holds JSON (the original
	// framework's wire format), for display.
	Payload json.RawMessage `json:"payload,omitempty"`

	raw map[string]string // every field, as read
}

// Origin is where an entry first came from; see safesync.OriginFieldStream.
type Origin struct {
	Stream string `json:"stream"`
	ID     string `json:"id"`
}

// Entry returns d as safesync.ParseDeadLetter returns it.
func (d DeadLetter) Entry() safesync.DeadLetterEntry {
	return safesync.DeadLetterEntry{
		ID: d.ID, Stream: d.Stream, Group: d.Group, OriginalID: d.OriginalID, Reason: d.Reason,
		Deliveries: d.Deliveries, Error: d.Error, Consumer: d.Consumer, Failures: d.Failures,
		FirstFail: d.FirstFailure, LastFail: d.LastFailure, Fields: d.Fields,
	}
}

// FieldNames returns the names of d's own fields, sorted.
func (d DeadLetter) FieldNames() []string {
	names := make([]string, 0, len(d.Fields))
	for k := range d.Fields {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// newDeadLetter reads entry x of the dead-letter stream key.
func newDeadLetter(key string, x rueidis.XRangeEntry) DeadLetter {
	e := safesync.ParseDeadLetter(x.ID, x.FieldValues)
	d := DeadLetter{
		ID: x.ID, DeadLetterStream: key, DeadLetteredAt: idTime(x.ID),
		Stream: e.Stream, Group: e.Group, OriginalID: e.OriginalID, Reason: e.Reason, Error: e.Error,
		Deliveries: e.Deliveries, Consumer: e.Consumer, Failures: e.Failures,
		FirstFailure: e.FirstFail, LastFailure: e.LastFail, Fields: e.Fields, raw: x.FieldValues,
	}
	os, okS := e.Fields[safesync.OriginFieldStream]
	oid, okID := e.Fields[safesync.OriginFieldID]
	if okS && okID && os != "" && oid != "" {
		d.Origin = &Origin{Stream: os, ID: oid}
	}
	if data, ok := e.Fields["data"]; ok && json.Valid([]byte(data)) {
		d.Payload = json.RawMessage(data)
	}
	return d
}

// Filter selects dead letters. Fields left zero do not filter; an entry
// is selected when it matches every field set. Replay and Purge refuse a
// Filter that sets nothing unless All is true.
type Filter struct {
	// All selects every dead letter when nothing else is set; it guards
	// Replay and Purge against an empty Filter given by mistake.
	All bool `json:"all,omitempty"`
	// IDs selects these dead-letter ids only (in any of the Target's
	// dead-letter streams).
	IDs []string `json:"ids,omitempty"`
	// Reason selects one reason (decode, max_deliveries, handler, …).
	Reason string `json:"reason,omitempty"`
	// Group selects what one consumer group dead-lettered.
	Group string `json:"group,omitempty"`
	// Since and Until select entries dead-lettered at or after Since and
	// before Until (the time in the dead-letter id).
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// ErrorContains selects entries whose error text contains it, ignoring
	// case.
	ErrorContains string `json:"error_contains,omitempty"`
}

// empty reports whether f selects by nothing.
func (f Filter) empty() bool {
	return len(f.IDs) == 0 && f.Reason == "" && f.Group == "" && f.Since.IsZero() && f.Until.IsZero() && f.ErrorContains == ""
}

// match reports whether d is selected by f's fields other than IDs,
// Since and Until, which bound the reads instead.
func (f Filter) match(d DeadLetter) bool {
	return (f.Reason == "" || d.Reason == f.Reason) &&
		(f.Group == "" || d.Group == f.Group) &&
		(f.ErrorContains == "" || strings.Contains(strings.ToLower(d.Error), strings.ToLower(f.ErrorContains)))
}

// DeadLetterQuery selects a page of dead letters.
type DeadLetterQuery struct {
	Filter
	// After is the Next of the previous page; empty starts at the oldest.
	After string `json:"after,omitempty"`
	// Limit is the page size (DefaultLimit; at most MaxLimit).
	Limit int `json:"limit,omitempty"`
}

// DeadLetterPage is one page of dead letters, oldest first.
type DeadLetterPage struct {
	Entries []DeadLetter `json:"entries"`
	// Next is the cursor of the next page, empty after the last. A page may
	// hold fewer than Limit entries, even none, and still have a Next: the
	// listing stopped after reading Config.MaxExamine entries.
	Next string `json:"next,omitempty"`
	// Examined is how many dead letters were read to fill the page.
	Examined int `json:"examined"`
}

// DeadLetters lists the dead letters of t's dead-letter streams that f
// selects, oldest first, a page at a time. It reads only, at most
// Config.MaxExamine entries per call (Since and Until bound the reads,
// the other filters are applied to what is read).
func (o *Ops) DeadLetters(ctx context.Context, t Target, q DeadLetterQuery) (DeadLetterPage, error) {
	if err := t.check(false); err != nil {
		return DeadLetterPage{}, err
	}
	cur, err := parseCursor(q.After)
	if err != nil {
		return DeadLetterPage{}, err
	}
	n := limit(q.Limit)
	page := DeadLetterPage{Entries: []DeadLetter{}}
	if len(q.IDs) > 0 {
		all, err := o.deadLettersByID(ctx, t, q.Filter)
		if err != nil {
			return DeadLetterPage{}, err
		}
		for _, d := range all {
			id, _ := parseID(d.ID)
			if cur != nil && !(position{id, d.DeadLetterStream}).after(*cur) {
				continue
			}
			if len(page.Entries) == n {
				last := page.Entries[n-1]
				lid, _ := parseID(last.ID)
				page.Next = position{lid, last.DeadLetterStream}.String()
				break
			}
			page.Examined++
			page.Entries = append(page.Entries, d)
		}
		return page, nil
	}
	it := o.selectDeadLetters(t.DeadLetterStreams, q.Filter, cur, noEnd)
	it.max = o.cfg.MaxExamine
	for {
		d, ok, err := it.next(ctx)
		if err != nil {
			return DeadLetterPage{}, err
		}
		if !ok {
			if it.stopped {
				page.Next = it.last.String()
			}
			break
		}
		if len(page.Entries) == n {
			// d shows there is more: go on after the last entry returned.
			last := page.Entries[n-1]
			lid, _ := parseID(last.ID)
			page.Next = position{lid, last.DeadLetterStream}.String()
			break
		}
		page.Entries = append(page.Entries, d)
	}
	page.Examined = it.examined
	return page, nil
}

// after reports whether p comes after q in (id, key) order.
func (p position) after(q position) bool {
	return q.id.Less(p.id) || p.id == q.id && p.key > q.key
}

// DeadLetter returns the dead letter with id from t's dead-letter streams
// (the first, by key, if several streams have one). It returns an error
// matching ErrDeadLetterNotFound when there is none.
func (o *Ops) DeadLetter(ctx context.Context, t Target, id string) (DeadLetter, error) {
	if err := t.check(false); err != nil {
		return DeadLetter{}, err
	}
	ds, err := o.deadLettersByID(ctx, t, Filter{IDs: []string{id}})
	if err != nil {
		return DeadLetter{}, err
	}
	if len(ds) == 0 {
		return DeadLetter{}, fmt.Errorf("%w: no entry %s in %s (list them with `safesync dead list --stream %s`)",
			ErrDeadLetterNotFound, id, strings.Join(t.DeadLetterStreams, ", "), t.Name)
	}
	return ds[0], nil
}

// deadLettersByID reads f.IDs from every dead-letter stream of t, in one
// pipelined round trip, keeps those f selects, in (id, key) order.
func (o *Ops) deadLettersByID(ctx context.Context, t Target, f Filter) ([]DeadLetter, error) {
	var cmds rueidis.Commands
	type ref struct{ key, id string }
	var refs []ref
	for _, key := range t.DeadLetterStreams {
		for _, id := range f.IDs {
			if _, ok := parseID(id); !ok {
				return nil, fmt.Errorf("safesync/ops: %q is not an entry id (like 1700000000000-0)", id)
			}
			cmds = append(cmds, o.client.B().Xrange().Key(key).Start(id).End(id).Build())
			refs = append(refs, ref{key, id})
		}
	}
	var out []DeadLetter
	seen := map[position]bool{}
	for i, r := range o.client.DoMulti(ctx, cmds...) {
		xs, err := r.AsXRange()
		if err != nil {
			return nil, keyErr("XRANGE", refs[i].key, err)
		}
		for _, x := range xs {
			d := newDeadLetter(refs[i].key, x)
			id, _ := parseID(x.ID)
			p := position{id, refs[i].key}
			if seen[p] || !f.match(d) || !f.Since.IsZero() && d.DeadLetteredAt.Before(f.Since) ||
				!f.Until.IsZero() && !d.DeadLetteredAt.Before(f.Until) {
				continue
			}
			seen[p] = true
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := parseID(out[i].ID)
		b, _ := parseID(out[j].ID)
		return a.Less(b) || a == b && out[i].DeadLetterStream < out[j].DeadLetterStream
	})
	return out, nil
}

// deadLetterIter walks the dead letters a Filter without IDs selects.
type deadLetterIter struct {
	m        *merged[rueidis.XRangeEntry]
	f        Filter
	max      int  // entries to read at most; 0: no bound
	examined int  // entries read
	stopped  bool // next stopped at max
	last     position
}

// selectDeadLetters walks keys after cur, each up to the id end(key)
// returns, keeping what f selects; f.Since and f.Until bound the reads.
func (o *Ops) selectDeadLetters(keys []string, f Filter, cur *position, end func(string) string) *deadLetterIter {
	if !f.Since.IsZero() {
		since, _ := parseID(boundID(f.Since))
		if cur == nil || cur.id.Less(since) {
			// Start at since on every key: a position just before it.
			cur = &position{id: since, key: ""}
		}
	}
	bound := end
	if !f.Until.IsZero() {
		until := f.Until.UnixMilli() - 1
		bound = func(key string) string {
			e := end(key)
			u := fmt.Sprintf("%d", max(until, 0))
			if e == "+" {
				return u
			}
			if eid, ok := parseID(e); ok && eid.MS > uint64(max(until, 0)) {
				return u
			}
			return e
		}
	}
	return &deadLetterIter{m: o.newMergedRange(keys, cur, bound), f: f}
}

// next returns the next selected dead letter.
func (it *deadLetterIter) next(ctx context.Context) (DeadLetter, bool, error) {
	for {
		if it.max > 0 && it.examined >= it.max {
			it.stopped = true
			return DeadLetter{}, false, nil
		}
		e, ok, err := it.m.next(ctx)
		if err != nil || !ok {
			return DeadLetter{}, false, err
		}
		it.examined++
		it.last = position{e.id, e.key}
		d := newDeadLetter(e.key, e.v)
		if it.f.match(d) {
			return d, true, nil
		}
	}
}
