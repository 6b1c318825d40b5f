package ops

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// ReplayOptions tunes Replay. The zero value replays at full speed,
// DefaultBatch entries per round trip, keeping origins.
type ReplayOptions struct {
	// DryRun selects and checks the entries, calls Each for each, and
	// moves nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Rate bounds the entries replayed per second; 0 does not bound it.
	Rate float64 `json:"rate,omitempty"`
	// Batch is how many entries are moved per pipelined round trip
	// (DefaultBatch; at most Rate when Rate is set).
	Batch int `json:"batch,omitempty"`
	// StripOrigin replays each entry with its own fields only, without
	// the origin fields (and drops those it already carried), for streams
	// that consumers of the original Python framework read: they reject
	// entries with fields other than "data". Once cannot then recognise a
	// replayed entry: replaying one twice, or one whose effects had in
	// fact committed, applies it twice.
	StripOrigin bool `json:"strip_origin,omitempty"`
	// Each, if not nil, is called with every entry replayed (or, in a dry
	// run, that would be), in order, after its move.
	Each func(ReplayedEntry) `json:"-"`
}

// ReplayedEntry is one dead letter that Replay moved back.
type ReplayedEntry struct {
	DeadLetter DeadLetter `json:"dead_letter"`
	// NewID is its id in DeadLetter.Stream; empty in a dry run.
	NewID string `json:"new_id,omitempty"`
	// Origin is the origin it carries there: the one it had, else its
	// source stream and original id; nil with StripOrigin.
	Origin *Origin `json:"origin,omitempty"`
	// Atomic says the append and the removal were one MULTI/EXEC.
	Atomic bool `json:"atomic"`
}

// SkippedEntry is a selected dead letter that Replay left in place.
type SkippedEntry struct {
	ID               string `json:"id"`
	DeadLetterStream string `json:"dead_letter_stream"`
	Why              string `json:"why"`
}

// ReplayResult is what Replay did.
type ReplayResult struct {
	DryRun bool `json:"dry_run,omitempty"`
	// Replayed counts the entries moved back (in a dry run: that would
	// be), and ByStream per stream they went to.
	Replayed int            `json:"replayed"`
	ByStream map[string]int `json:"by_stream"`
	// Skipped are the selected entries left in place, and why.
	Skipped []SkippedEntry `json:"skipped,omitempty"`
}

// Replay moves the dead letters of t that f selects back to the streams
// they came from, oldest first, and returns what it did, also when it
// stops on an error (then some entries may have moved; replaying again
// is safe).
//
// Each entry is appended to its source stream (DeadLetter.Stream) with its
// own fields plus its origin (safesync.OriginFieldStream and
// OriginFieldID: the source stream and original id, or the origin it
// already carried, when it was itself a replay), and removed from the
// dead-letter stream. The append and the removal are one MULTI/EXEC when
// both keys may be (always on a single server; on a cluster when they
// share a slot, as a partition and its dead-letter stream do); otherwise
// the append comes first and the removal second, so that a crash in
// between leaves the entry in both streams, and a second replay appends a
// duplicate with the same origin.
//
// A pipeline with Once (safesync.Pipeline.Once) records an entry under
// its origin, so a replayed entry applies at most once: replayed twice,
// interrupted and replayed again, or replayed although its effects had in
// fact committed. Without Once, each of these applies it again. An entry
// goes back to its whole source stream: every group reading it receives
// it, and a group that had handled it (only another group dead-lettered
// it) applies it again unless it runs Once too.
//
// Only the entries present when Replay starts are replayed: an entry that
// fails again and is dead-lettered anew during the replay waits for the
// next one. Entries without a source stream (not written by a safesync
// consumer), and those whose source key holds something else than a
// stream, are skipped. Moves are pipelined, opts.Batch per round trip, at
// most opts.Rate per second; ctx bounds the whole replay, including the
// waits.
func (o *Ops) Replay(ctx context.Context, t Target, f Filter, opts ReplayOptions) (ReplayResult, error) {
	res := ReplayResult{DryRun: opts.DryRun, ByStream: map[string]int{}}
	batch := opts.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	if opts.Rate < 0 {
		return res, fmt.Errorf("safesync/ops: ReplayOptions.Rate is negative (%v)", opts.Rate)
	}
	if opts.Rate > 0 && float64(batch) > opts.Rate {
		batch = max(1, int(opts.Rate))
	}
	types := map[string]string{}
	start := time.Now()
	err := o.eachSelected(ctx, t, f, batch, func(ds []DeadLetter) error {
		var moves []move
		for _, d := range ds {
			m, why, err := o.planMove(ctx, d, opts.StripOrigin, types)
			if err != nil {
				return err
			}
			if why != "" {
				res.Skipped = append(res.Skipped, SkippedEntry{ID: d.ID, DeadLetterStream: d.DeadLetterStream, Why: why})
				continue
			}
			moves = append(moves, m)
		}
		if !opts.DryRun {
			if err := o.runMoves(ctx, moves); err != nil {
				for _, m := range moves {
					if m.done {
						res.count(m, opts.Each)
					}
				}
				return err
			}
		}
		for _, m := range moves {
			res.count(m, opts.Each)
		}
		if opts.Rate > 0 && !opts.DryRun {
			return sleepCtx(ctx, time.Until(start.Add(time.Duration(float64(res.Replayed)/opts.Rate*float64(time.Second)))))
		}
		return nil
	})
	return res, err
}

func (r *ReplayResult) count(m move, each func(ReplayedEntry)) {
	r.Replayed++
	r.ByStream[m.d.Stream]++
	if each != nil {
		each(ReplayedEntry{DeadLetter: m.d, NewID: m.newID, Origin: m.origin, Atomic: m.atomic})
	}
}

// move is one dead letter's way back.
type move struct {
	d      DeadLetter
	fields []string // field, value, … of the entry to append
	origin *Origin
	atomic bool

	newID string
	done  bool // appended and removed
}

// planMove decides how d goes back, or why it does not.
func (o *Ops) planMove(ctx context.Context, d DeadLetter, strip bool, types map[string]string) (move, string, error) {
	if d.Stream == "" {
		return move{}, "not a safesync dead letter: no " + safesync.DeadLetterFieldStream + " field", nil
	}
	if d.Stream == d.DeadLetterStream {
		return move{}, "its source stream is its dead-letter stream", nil
	}
	typ, ok := types[d.Stream]
	if !ok {
		var err error
		if typ, err = o.keyType(ctx, d.Stream); err != nil {
			return move{}, "", err
		}
		types[d.Stream] = typ
	}
	if typ != "stream" && typ != "none" {
		return move{}, fmt.Sprintf("its source %q holds a %s, not a stream", d.Stream, typ), nil
	}
	m := move{d: d, atomic: o.client.Mode() != rueidis.ClientModeCluster || safesync.KeySlot(d.Stream) == safesync.KeySlot(d.DeadLetterStream)}
	for _, k := range d.FieldNames() {
		if k == safesync.OriginFieldStream || k == safesync.OriginFieldID {
			continue
		}
		m.fields = append(m.fields, k, d.Fields[k])
	}
	if !strip {
		m.origin = d.Origin
		if m.origin == nil {
			m.origin = &Origin{Stream: d.Stream, ID: d.OriginalID}
		}
		m.fields = append(m.fields, safesync.OriginFieldStream, m.origin.Stream, safesync.OriginFieldID, m.origin.ID)
	}
	if len(m.fields) == 0 {
		return move{}, "it has no fields of its own to replay", nil
	}
	return m, "", nil
}

func (o *Ops) xadd(m *move) rueidis.Completed {
	b := o.client.B().Xadd().Key(m.d.Stream).Id("*").FieldValue()
	for i := 0; i < len(m.fields); i += 2 {
		b = b.FieldValue(m.fields[i], m.fields[i+1])
	}
	return b.Build()
}

func (o *Ops) xdel(m *move) rueidis.Completed {
	return o.client.B().Xdel().Key(m.d.DeadLetterStream).Id(m.d.ID).Build()
}

// runMoves moves a batch: the atomic moves as MULTI/EXEC blocks pipelined
// per slot, the others as all their appends, then all their removals.
func (o *Ops) runMoves(ctx context.Context, moves []move) error {
	bySlot := map[uint16][]*move{}
	var slots []uint16
	var twoStep []*move
	for i := range moves {
		m := &moves[i]
		if !m.atomic {
			twoStep = append(twoStep, m)
			continue
		}
		s := uint16(0)
		if o.client.Mode() == rueidis.ClientModeCluster {
			s = safesync.KeySlot(m.d.Stream)
		}
		if bySlot[s] == nil {
			slots = append(slots, s)
		}
		bySlot[s] = append(bySlot[s], m)
	}
	var errs []error
	for _, s := range slots {
		errs = append(errs, o.runAtomic(ctx, bySlot[s]))
	}
	if len(twoStep) > 0 {
		errs = append(errs, o.runTwoStep(ctx, twoStep))
	}
	return errors.Join(errs...)
}

// runAtomic moves entries of one slot, each in a MULTI/EXEC of its own,
// pipelined in one round trip.
func (o *Ops) runAtomic(ctx context.Context, ms []*move) error {
	c := o.client
	cmds := make(rueidis.Commands, 0, 4*len(ms))
	for _, m := range ms {
		cmds = append(cmds, c.B().Multi().Build(), o.xadd(m), o.xdel(m), c.B().Exec().Build())
	}
	res := c.DoMulti(ctx, cmds...)
	var errs []error
	for i, m := range ms {
		if err := o.checkExec(ctx, m, res[4*i:4*i+4]); err != nil {
			errs = append(errs, fmt.Errorf("safesync/ops: replay %s of %s to %s: %w", m.d.ID, m.d.DeadLetterStream, m.d.Stream, err))
		}
	}
	return errors.Join(errs...)
}

// checkExec reads one MULTI, XADD, XDEL, EXEC block. Redis does not roll
// back a transaction whose XADD failed when it ran (the key changed type
// in between): the XDEL then removed the dead letter, which is put back.
func (o *Ops) checkExec(ctx context.Context, m *move, res []rueidis.RedisResult) error {
	for _, r := range res[:3] {
		if err := r.Error(); err != nil {
			return err // nothing ran
		}
	}
	replies, err := res[3].ToArray()
	if err != nil {
		return err
	}
	if len(replies) != 2 {
		return fmt.Errorf("EXEC returned %d replies, want 2", len(replies))
	}
	id, addErr := replies[0].ToString()
	deleted, delErr := replies[1].AsInt64()
	if addErr == nil {
		m.newID, m.done = id, true
		return delErr
	}
	if delErr != nil || deleted == 0 {
		return addErr
	}
	restore := o.client.B().Xadd().Key(m.d.DeadLetterStream).Id("*").FieldValue()
	names := make([]string, 0, len(m.d.raw))
	for k := range m.d.raw {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		restore = restore.FieldValue(k, m.d.raw[k])
	}
	if err := o.client.Do(ctx, restore.Build()).Error(); err != nil {
		return fmt.Errorf("the append failed (%v) after the removal, and putting the dead letter back failed too; its fields were %v: %w", addErr, m.d.raw, err)
	}
	return fmt.Errorf("the append failed, the dead letter was put back under a new id: %w", addErr)
}

// runTwoStep moves entries whose streams may not share a MULTI/EXEC:
// every append, then the removal of each entry appended. A crash between
// the two leaves an entry in both streams; replaying it again appends a
// duplicate with the same origin, which Once absorbs.
func (o *Ops) runTwoStep(ctx context.Context, ms []*move) error {
	adds := make(rueidis.Commands, len(ms))
	for i, m := range ms {
		adds[i] = o.xadd(m)
	}
	var errs []error
	var dels rueidis.Commands
	var appended []*move
	for i, r := range o.client.DoMulti(ctx, adds...) {
		id, err := r.ToString()
		if err != nil {
			errs = append(errs, fmt.Errorf("safesync/ops: replay %s: XADD %s: %w", ms[i].d.ID, ms[i].d.Stream, err))
			continue
		}
		ms[i].newID = id
		dels = append(dels, o.xdel(ms[i]))
		appended = append(appended, ms[i])
	}
	if len(dels) > 0 {
		for i, r := range o.client.DoMulti(ctx, dels...) {
			m := appended[i]
			if err := r.Error(); err != nil {
				errs = append(errs, fmt.Errorf("safesync/ops: replay %s: appended to %s as %s, but XDEL %s failed (replay it again; Once absorbs the duplicate): %w",
					m.d.ID, m.d.Stream, m.newID, m.d.DeadLetterStream, err))
				continue
			}
			m.done = true
		}
	}
	return errors.Join(errs...)
}

// eachSelected calls fn with the dead letters of t that f selects, oldest
// first, batch at a time; without f.IDs, only those present when it
// starts.
func (o *Ops) eachSelected(ctx context.Context, t Target, f Filter, batch int, fn func([]DeadLetter) error) error {
	if err := t.check(false); err != nil {
		return err
	}
	if !f.All && f.empty() {
		return fmt.Errorf("%w: set Filter.All to select every dead letter of %q, or a filter", ErrNoSelection, t.Name)
	}
	if len(f.IDs) > 0 {
		ds, err := o.deadLettersByID(ctx, t, f)
		if err != nil {
			return err
		}
		for len(ds) > 0 {
			n := min(batch, len(ds))
			if err := fn(ds[:n]); err != nil {
				return err
			}
			ds = ds[n:]
		}
		return nil
	}
	ends, err := o.lastIDs(ctx, t.DeadLetterStreams)
	if err != nil {
		return err
	}
	var keys []string
	for _, k := range t.DeadLetterStreams {
		if ends[k] != "" {
			keys = append(keys, k)
		}
	}
	it := o.selectDeadLetters(keys, f, nil, func(k string) string { return ends[k] })
	buf := make([]DeadLetter, 0, batch)
	for {
		d, ok, err := it.next(ctx)
		if err != nil {
			return err
		}
		if ok {
			buf = append(buf, d)
		}
		if len(buf) == batch || !ok && len(buf) > 0 {
			if err := fn(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if !ok {
			return nil
		}
	}
}

// lastIDs returns the id of the last entry of each key, "" for an empty
// or missing key.
func (o *Ops) lastIDs(ctx context.Context, keys []string) (map[string]string, error) {
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = o.client.B().Xrevrange().Key(k).End("+").Start("-").Count(1).Build()
	}
	out := map[string]string{}
	for i, r := range o.client.DoMulti(ctx, cmds...) {
		xs, err := r.AsXRange()
		if err != nil {
			return nil, keyErr("XREVRANGE", keys[i], err)
		}
		if len(xs) > 0 {
			out[keys[i]] = xs[0].ID
		}
	}
	return out, nil
}

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
