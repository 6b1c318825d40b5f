package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

func init() {
	commands = append(commands,
		&command{
			name:     "dead list",
			summary:  "list dead letters, filtered and paged",
			synopsis: "safesync dead list --stream STREAM [--reason R] [--group G] [--since T] [--until T] [--error TEXT] [--id ID]... [--limit N] [--after CURSOR]",
			about: `Lists the dead letters of a stream (of every partition of a partitioned
stream), oldest first: when each was dead-lettered, why, by which group,
after how many deliveries, the entry it is a copy of, and its error.`,
			example: `$ safesync dead list --stream orders --reason handler --since 24h
ID               DEAD-LETTERED        REASON   GROUP    DELIVERIES  SOURCE                    ERROR
1700000300000-0  2023-11-14 22:18:20  handler  workers  1           orders 1700000000000-2    order 3: unknown currency "XYZ"`,
			timeout: defaultReadTimeout,
			flags: func(fs *flag.FlagSet, o *options) {
				streamFlag(fs, o)
				selectionFlags(fs, o)
				fs.IntVar(&o.limit, "limit", 50, "list at most this many")
				fs.StringVar(&o.after, "after", "", "go on after this `CURSOR` (printed after a full page)")
			},
			run: runDeadList,
		},
		&command{
			name:     "dead show",
			summary:  "show one dead letter: its fields, payload, reason, error, deliveries and times",
			synopsis: "safesync dead show --stream STREAM --id ID",
			about:    `Shows one dead letter in full, its JSON payload pretty-printed.`,
			example:  `$ safesync dead show --stream orders --id 1700000300000-0`,
			timeout:  defaultReadTimeout,
			flags: func(fs *flag.FlagSet, o *options) {
				streamFlag(fs, o)
				fs.Var(&o.ids, "id", "the dead letter's `ID` (required; see safesync dead list)")
			},
			run: runDeadShow,
		},
		&command{
			name:     "dead replay",
			summary:  "move dead letters back to their stream, exactly once with Once",
			synopsis: "safesync dead replay --stream STREAM (--all | --id ID... | --reason R | --group G | --since T | --until T | --error TEXT) [--dry-run] [--rate N] [--strip-origin]",
			about: `Moves the selected dead letters back to the streams they came from, oldest
first, each with its origin (the source stream and original id). A pipeline
with Once applies an origin at most once: replaying an entry twice, replaying
again after an interrupted replay, or replaying an entry whose effects had in
fact committed, applies nothing twice. Without Once, each of these applies it
again. Every group reading the stream receives the entry again.

The append and the removal from the dead-letter stream are one MULTI/EXEC on
a single Redis, and on a cluster when both keys share a slot (a partition and
its dead-letter stream always do); otherwise the append comes first, so an
interruption duplicates rather than loses. Only the entries present when the
replay starts are replayed. Fix the handler first: an entry that fails again
is dead-lettered again, origin kept.

Consumers of the original Python framework reject entries with fields other
than "data": to replay to a stream they read, add --strip-origin, which gives
up exactly-once.`,
			example: `$ safesync dead replay --stream orders --reason handler --dry-run
$ safesync dead replay --stream orders --all --rate 500`,
			flags: func(fs *flag.FlagSet, o *options) {
				streamFlag(fs, o)
				fs.BoolVar(&o.all, "all", false, "select every dead letter")
				selectionFlags(fs, o)
				fs.BoolVar(&o.dryRun, "dry-run", false, "list what would be replayed, move nothing")
				fs.Float64Var(&o.rate, "rate", 0, "replay at most `N` entries a second (default: no limit)")
				fs.BoolVar(&o.stripOrigin, "strip-origin", false, "replay without origin fields, for consumers of the original framework;\nOnce can then not recognise replays: an entry replayed twice applies twice")
			},
			run: runDeadReplay,
		},
		&command{
			name:     "dead purge",
			summary:  "delete dead letters for good (asks for --yes)",
			synopsis: "safesync dead purge --stream STREAM (--all | --id ID... | --reason R | --group G | --since T | --until T | --error TEXT) (--dry-run | --yes)",
			about: `Deletes the selected dead letters for good. It refuses without --yes, and
says how many it would delete; --dry-run lists them instead.`,
			example: `$ safesync dead purge --stream orders --reason decode --until 2024-05-01 --dry-run
$ safesync dead purge --stream orders --reason decode --until 2024-05-01 --yes`,
			flags: func(fs *flag.FlagSet, o *options) {
				streamFlag(fs, o)
				fs.BoolVar(&o.all, "all", false, "select every dead letter")
				selectionFlags(fs, o)
				fs.BoolVar(&o.dryRun, "dry-run", false, "list what would be deleted, delete nothing")
				fs.BoolVar(&o.yes, "yes", false, "really delete")
			},
			run: runDeadPurge,
		},
	)
}

func runDeadList(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	tg, err := a.target(ctx, x, o)
	if err != nil {
		return err
	}
	page, err := x.DeadLetters(ctx, tg, ops.DeadLetterQuery{Filter: o.filter(a.now()), After: o.after, Limit: max(o.limit, 1)})
	if err != nil {
		return err
	}
	if g.json {
		return writeJSON(a.stdout, page)
	}
	if len(page.Entries) == 0 {
		if page.Next != "" {
			fmt.Fprintf(a.stdout, "None found among the first %d; more: --after %s\n", page.Examined, page.Next)
			return nil
		}
		fmt.Fprintf(a.stdout, "No dead letters of %s match.\n", tg.Name)
		return nil
	}
	deadLetterTable(a, tg, page.Entries)
	if page.Next != "" {
		fmt.Fprintf(a.stdout, "more: --after %s\n", page.Next)
	}
	return nil
}

// deadLetterTable prints dead letters, one a line.
func deadLetterTable(a *app, tg ops.Target, ds []ops.DeadLetter) {
	multi := len(tg.DeadLetterStreams) > 1
	header := []string{"ID", "DEAD-LETTERED", "REASON", "GROUP", "DELIVERIES", "SOURCE", "ERROR"}
	if multi {
		header = append([]string{"DEAD-LETTER STREAM"}, header...)
	}
	t := newTable(a.stdout, header...)
	for _, d := range ds {
		cells := []string{d.ID, stamp(d.DeadLetteredAt), orDash(d.Reason), orDash(d.Group), itoa(d.Deliveries),
			orDash(strings.TrimSpace(d.Stream + " " + d.OriginalID)), orDash(clip(d.Error, 60))}
		if multi {
			cells = append([]string{d.DeadLetterStream}, cells...)
		}
		t.row(cells...)
	}
	t.flush()
}

func runDeadShow(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	if len(o.ids) != 1 {
		return usagef("--id is required, once: the dead letter's id (list them with: safesync dead list --stream %s)", orDash(o.stream))
	}
	tg, err := a.target(ctx, x, o)
	if err != nil {
		return err
	}
	d, err := x.DeadLetter(ctx, tg, o.ids[0])
	if err != nil {
		return err
	}
	if g.json {
		return writeJSON(a.stdout, d)
	}
	w := a.stdout
	fmt.Fprintf(w, "Dead letter %s of %s\n", d.ID, d.DeadLetterStream)
	t := newTable(w)
	row := func(k, v string) {
		if v != "" {
			t.row("  "+k, v)
		}
	}
	row("dead-lettered", stamp(d.DeadLetteredAt))
	row("reason", d.Reason)
	row("stream", d.Stream)
	row("original id", d.OriginalID)
	row("group", d.Group)
	row("consumer", d.Consumer)
	row("deliveries", itoa(d.Deliveries))
	if d.Failures > 0 {
		row("failures", itoa(d.Failures))
	}
	if !d.FirstFailure.IsZero() {
		row("first failure", stamp(d.FirstFailure))
	}
	if !d.LastFailure.IsZero() {
		row("last failure", stamp(d.LastFailure))
	}
	if d.Origin != nil {
		row("origin", d.Origin.Stream+" "+d.Origin.ID+" (replayed before)")
	}
	row("error", d.Error)
	t.flush()
	fmt.Fprintln(w, "Fields:")
	for _, k := range d.FieldNames() {
		v := d.Fields[k]
		var buf bytes.Buffer
		if json.Valid([]byte(v)) && json.Indent(&buf, []byte(v), "    ", "  ") == nil && strings.ContainsAny(v, "{[") {
			fmt.Fprintf(w, "  %s:\n    %s\n", k, buf.String())
			continue
		}
		fmt.Fprintf(w, "  %s: %s\n", k, v)
	}
	return nil
}

// selected checks that the selection flags select something.
func (o *options) selected(verb string) error {
	f := o.filter(time.Time{})
	if !f.All && len(f.IDs) == 0 && f.Reason == "" && f.Group == "" && o.since.text == "" && o.until.text == "" && f.ErrorContains == "" {
		return usagef("select the dead letters to %s: --all, or --id, --reason, --group, --since, --until, --error (see safesync dead %s -h)", verb, verb)
	}
	return nil
}

func runDeadReplay(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	if err := o.selected("replay"); err != nil {
		return err
	}
	if o.rate < 0 {
		return usagef("--rate must not be negative")
	}
	tg, err := a.target(ctx, x, o)
	if err != nil {
		return err
	}
	if o.stripOrigin && !o.dryRun {
		fmt.Fprintln(a.stderr, "safesync: --strip-origin: the replayed entries carry no origin, so Once cannot recognise them: an entry replayed twice, or one whose effects had committed, is applied twice.")
	}
	entries := []ops.ReplayedEntry{}
	opts := ops.ReplayOptions{DryRun: o.dryRun, Rate: o.rate, StripOrigin: o.stripOrigin}
	if g.json || o.dryRun { // the entries are printed; otherwise only counted
		opts.Each = func(e ops.ReplayedEntry) { entries = append(entries, e) }
	}
	res, err := x.Replay(ctx, tg, o.filter(a.now()), opts)
	if g.json {
		jerr := writeJSON(a.stdout, struct {
			ops.ReplayResult
			Entries []ops.ReplayedEntry `json:"entries"`
		}{res, entries})
		if err == nil {
			err = jerr
		}
		return replayErr(err, res.Replayed)
	}
	w := a.stdout
	switch {
	case res.Replayed == 0 && len(res.Skipped) == 0 && err == nil:
		fmt.Fprintf(w, "No dead letters of %s match; nothing to replay.\n", tg.Name)
		return nil
	case o.dryRun:
		fmt.Fprintf(w, "Would replay %s of %s:\n", plural(res.Replayed, "dead letter"), tg.Name)
		t := newTable(w, "ID", "REASON", "GROUP", "SOURCE", "ORIGIN")
		for _, e := range entries {
			origin := "none (--strip-origin)"
			if e.Origin != nil {
				origin = e.Origin.Stream + " " + e.Origin.ID
			}
			t.row(e.DeadLetter.ID, orDash(e.DeadLetter.Reason), orDash(e.DeadLetter.Group), e.DeadLetter.Stream+" "+e.DeadLetter.OriginalID, origin)
		}
		t.flush()
	default:
		fmt.Fprintf(w, "Replayed %s of %s:\n", plural(res.Replayed, "dead letter"), tg.Name)
		byStream(a, res.ByStream)
		if !o.stripOrigin && res.Replayed > 0 {
			fmt.Fprintln(w, "Each carries its origin: a pipeline with Once applies it at most once, however often it is replayed.")
		}
	}
	if len(res.Skipped) > 0 {
		fmt.Fprintf(w, "Skipped %d:\n", len(res.Skipped))
		t := newTable(w, "ID", "DEAD-LETTER STREAM", "WHY")
		for _, s := range res.Skipped {
			t.row(s.ID, s.DeadLetterStream, s.Why)
		}
		t.flush()
	}
	if o.dryRun {
		fmt.Fprintln(w, "Nothing was moved (--dry-run).")
	}
	return replayErr(err, res.Replayed)
}

func byStream(a *app, counts map[string]int) {
	names := make([]string, 0, len(counts))
	for k := range counts {
		names = append(names, k)
	}
	sort.Strings(names)
	t := newTable(a.stdout, "  STREAM", "ENTRIES")
	for _, k := range names {
		t.row("  "+k, itoa(counts[k]))
	}
	t.flush()
}

// replayErr says, for a replay that stopped, that running it again is
// safe.
func replayErr(err error, done int) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("safesync: replay stopped after %s: %w\nRunning the same command again is safe: entries already moved are gone from the dead-letter stream, and one appended but not removed is appended again with the same origin, which Once absorbs", plural(done, "entry"), err)
}

func runDeadPurge(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	if err := o.selected("purge"); err != nil {
		return err
	}
	tg, err := a.target(ctx, x, o)
	if err != nil {
		return err
	}
	f := o.filter(a.now())
	if !o.yes && !o.dryRun {
		res, err := x.Purge(ctx, tg, f, ops.PurgeOptions{DryRun: true})
		if err != nil {
			return err
		}
		if res.Purged == 0 {
			fmt.Fprintf(a.stdout, "No dead letters of %s match; nothing to purge.\n", tg.Name)
			return nil
		}
		return usagef("purge would delete %s of %s for good; run it again with --yes to do so (with --dry-run to list them)", plural(res.Purged, "dead letter"), tg.Name)
	}
	var purged []ops.DeadLetter
	opts := ops.PurgeOptions{DryRun: o.dryRun}
	if g.json || o.dryRun { // the entries are printed; otherwise only counted
		opts.Each = func(d ops.DeadLetter) { purged = append(purged, d) }
	}
	res, err := x.Purge(ctx, tg, f, opts)
	if g.json {
		if purged == nil {
			purged = []ops.DeadLetter{}
		}
		jerr := writeJSON(a.stdout, struct {
			ops.PurgeResult
			Entries []ops.DeadLetter `json:"entries"`
		}{res, purged})
		if err == nil {
			err = jerr
		}
		return purgeErr(err, res.Purged)
	}
	w := a.stdout
	switch {
	case res.Purged == 0 && err == nil:
		fmt.Fprintf(w, "No dead letters of %s match; nothing to purge.\n", tg.Name)
	case o.dryRun:
		fmt.Fprintf(w, "Would delete %s of %s:\n", plural(res.Purged, "dead letter"), tg.Name)
		deadLetterTable(a, tg, purged)
		fmt.Fprintln(w, "Nothing was deleted (--dry-run).")
	default:
		fmt.Fprintf(w, "Deleted %s of %s.\n", plural(res.Purged, "dead letter"), tg.Name)
	}
	if res.Skipped > 0 {
		fmt.Fprintf(w, "Left %s that a safesync consumer did not write (no %s field).\n", plural(res.Skipped, "entry"), safesync.DeadLetterFieldStream)
	}
	return purgeErr(err, res.Purged)
}

func purgeErr(err error, done int) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("safesync: purge stopped after %s: %w", plural(done, "entry"), err)
}
