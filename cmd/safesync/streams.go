package main

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"github.com/safesync-go/safesync/ops"
)

func init() {
	commands = append(commands, &command{
		name:     "streams",
		summary:  "list streams, or describe one: groups, consumers, lag, pending, dead letters",
		synopsis: "safesync streams [--match PATTERN] | safesync streams --stream STREAM",
		about: `Without --stream, lists every stream of the database (SCAN on every master of a
cluster): its length, groups, the lag of the group furthest behind, pending
entries over all groups, the age of the oldest pending entry, and dead
letters. The partitions of a partitioned stream are listed as one stream,
named by its logical name; dead-letter streams count with their stream.

With --stream, describes one stream (or partitioned stream): its groups with
lag, pending entries, oldest pending entry and dead letters, each group's
consumers with their pending entries and idle time, and each partition.`,
		example: `$ safesync streams
STREAM  PARTITIONS  LENGTH  GROUPS  LAG  PENDING  OLDEST PENDING  DEAD LETTERS
orders  -           1200    1       0    3        2m5s            4

$ safesync streams --stream orders --redis 10.0.0.5:6379`,
		timeout: defaultReadTimeout,
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.stream, "stream", "", "describe this stream (its key, or a partitioned stream's logical name)")
			fs.StringVar(&o.deadStream, "dead-letter-stream", "", "its dead-letter stream, when consumers were given one of their own")
			fs.StringVar(&o.match, "match", "", "list only streams whose name matches this shell `PATTERN` (orders*)")
		},
		run: runStreams,
	})
}

func runStreams(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	if o.stream != "" {
		return describeStream(ctx, a, x, g, o)
	}
	var all []ops.StreamSummary
	q := ops.StreamsQuery{Match: o.match, Limit: ops.MaxLimit}
	for {
		page, err := x.Streams(ctx, q)
		if err != nil {
			return err
		}
		all = append(all, page.Streams...)
		if page.Next == "" {
			break
		}
		q.After = page.Next
	}
	if g.json {
		if all == nil {
			all = []ops.StreamSummary{}
		}
		return writeJSON(a.stdout, all)
	}
	if len(all) == 0 {
		if o.match != "" {
			fmt.Fprintf(a.stdout, "No stream matches %q.\n", o.match)
		} else {
			fmt.Fprintln(a.stdout, "No streams.")
		}
		return nil
	}
	t := newTable(a.stdout, "STREAM", "PARTITIONS", "LENGTH", "GROUPS", "LAG", "PENDING", "OLDEST PENDING", "DEAD LETTERS")
	for _, s := range all {
		parts := "-"
		if s.Partitions > 0 {
			parts = itoa(s.Partitions)
		}
		oldest := "-"
		if s.Pending > 0 {
			oldest = human(s.OldestPendingAge)
		}
		t.row(s.Name, parts, itoa(s.Length), itoa(s.Groups), lag(s.Lag, s.LagAtLeast), itoa(s.Pending), oldest, itoa(s.DeadLetters))
	}
	t.flush()
	return nil
}

func lag(n int64, atLeast bool) string {
	if atLeast {
		return "≥" + itoa(n)
	}
	return itoa(n)
}

func describeStream(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	tg, err := a.target(ctx, x, o)
	if err != nil {
		return err
	}
	info, err := x.Inspect(ctx, tg)
	if err != nil {
		return err
	}
	if g.json {
		return writeJSON(a.stdout, info)
	}
	w := a.stdout
	if len(info.Partitions) > 0 {
		fmt.Fprintf(w, "Stream %s: %s in %d partitions\n", info.Name, plural(info.Length, "entry"), len(info.Partitions))
	} else if info.Length > 0 {
		fmt.Fprintf(w, "Stream %s: %s, first %s, last %s\n", info.Name, plural(info.Length, "entry"), info.FirstID, info.LastID)
	} else {
		fmt.Fprintf(w, "Stream %s: empty\n", info.Name)
	}
	if len(info.Partitions) > 0 && len(info.DeadLetterStreams) == len(info.Partitions) {
		fmt.Fprintf(w, "Dead letters: %d, in a dead-letter stream per partition\n", info.DeadLetters)
	} else {
		fmt.Fprintf(w, "Dead letters: %d in %s\n", info.DeadLetters, strings.Join(info.DeadLetterStreams, ", "))
	}
	if len(info.Groups) == 0 {
		fmt.Fprintln(w, "\nNo consumer groups.")
	} else {
		fmt.Fprintln(w)
		t := newTable(w, "GROUP", "CONSUMERS", "PENDING", "LAG", "OLDEST PENDING", "DEAD LETTERS")
		for _, gr := range info.Groups {
			oldest := "-"
			if gr.OldestPendingID != "" {
				oldest = human(gr.OldestPendingAge) + " (" + gr.OldestPendingID + ")"
				if len(info.Partitions) > 0 {
					oldest = human(gr.OldestPendingAge) + " (" + gr.OldestPendingStream + " " + gr.OldestPendingID + ")"
				}
			}
			dead := itoa(gr.DeadLetters)
			if info.DeadLettersByGroupPartial {
				dead = "≥" + dead
			}
			l := lag(gr.Lag, gr.LagAtLeast)
			if gr.LagCounted {
				l += "*"
			}
			t.row(gr.Name, itoa(len(gr.Consumers)), itoa(gr.Pending), l, oldest, dead)
		}
		t.flush()
		for _, gr := range info.Groups {
			if gr.LagCounted {
				fmt.Fprintln(w, "* lag counted: this Redis did not report it")
				break
			}
		}
		for _, gr := range info.Groups {
			fmt.Fprintf(w, "\nGroup %s\n", gr.Name)
			if len(gr.Consumers) == 0 {
				fmt.Fprintln(w, "  no consumers")
				continue
			}
			t := newTable(w, "  CONSUMER", "PENDING", "IDLE")
			for _, c := range gr.Consumers {
				t.row("  "+c.Name, itoa(c.Pending), human(c.Idle))
			}
			t.flush()
		}
	}
	if len(info.Partitions) > 0 {
		fmt.Fprintln(w)
		t := newTable(w, "PARTITION", "STREAM", "LENGTH", "FIRST", "LAST", "PENDING", "LAG", "DEAD LETTERS")
		for i, p := range info.Partitions {
			var pending, lagSum int64
			atLeast := false
			for _, gr := range p.Groups {
				pending += gr.Pending
				lagSum += gr.Lag
				atLeast = atLeast || gr.LagAtLeast
			}
			dead := "-"
			if len(p.DeadLetterStreams) > 0 {
				dead = itoa(p.DeadLetters)
			}
			t.row(itoa(i), p.Name, itoa(p.Length), orDash(p.FirstID), orDash(p.LastID), itoa(pending), lag(lagSum, atLeast), dead)
		}
		t.flush()
	}
	return nil
}
