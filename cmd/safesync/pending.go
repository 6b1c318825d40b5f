package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/safesync-go/safesync/ops"
)

func init() {
	commands = append(commands, &command{
		name:     "pending",
		summary:  "a group's pending entries, per consumer, oldest first",
		synopsis: "safesync pending --stream STREAM --group GROUP [--consumer NAME] [--min-idle D] [--limit N] [--after CURSOR]",
		about: `Shows a consumer group's pending entries (delivered, not acknowledged): each
consumer with its pending count and idle time, then the oldest entries with
their consumer, idle time since their last delivery, delivery count and age.
An entry delivered many times is on its way to the dead-letter stream.`,
		example: `$ safesync pending --stream orders --group workers --limit 2
CONSUMER  PENDING  IDLE
w1        2        1m30s
w2        1        5s

ID               CONSUMER  IDLE   DELIVERIES  AGE
1700000000000-0  w1        1m30s  3           2m
1700000000000-1  w1        1m30s  1           2m
more: --after 1700000000000-1@orders`,
		timeout: defaultReadTimeout,
		flags: func(fs *flag.FlagSet, o *options) {
			streamFlag(fs, o)
			fs.StringVar(&o.group, "group", "", "the consumer `GROUP` (required)")
			fs.StringVar(&o.consumer, "consumer", "", "only the entries of this consumer")
			fs.DurationVar(&o.minIdle, "min-idle", 0, "only entries idle at least this long")
			fs.IntVar(&o.limit, "limit", 20, "list at most this many entries")
			fs.StringVar(&o.after, "after", "", "go on after this `CURSOR` (printed after a full page)")
		},
		run: runPending,
	})
}

func runPending(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	if o.group == "" {
		return usagef("--group is required (see the groups with: safesync streams --stream %s)", orDash(o.stream))
	}
	tg, err := a.target(ctx, x, o)
	if err != nil {
		return err
	}
	info, err := x.Inspect(ctx, tg)
	if err != nil {
		return err
	}
	var group *ops.GroupInfo
	for i := range info.Groups {
		if info.Groups[i].Name == o.group {
			group = &info.Groups[i]
		}
	}
	if group == nil {
		return fmt.Errorf("%w: %q has no group %q (see the groups with: safesync streams --stream %s)", ops.ErrGroupNotFound, tg.Name, o.group, o.stream)
	}
	page, err := x.Pending(ctx, tg, ops.PendingQuery{Group: o.group, Consumer: o.consumer, MinIdle: o.minIdle, After: o.after, Limit: max(o.limit, 1)})
	if err != nil {
		return err
	}
	if g.json {
		return writeJSON(a.stdout, struct {
			Stream    string             `json:"stream"`
			Group     string             `json:"group"`
			Pending   int64              `json:"pending"`
			Consumers []ops.ConsumerInfo `json:"consumers"`
			Entries   []ops.PendingEntry `json:"entries"`
			Next      string             `json:"next,omitempty"`
		}{tg.Name, o.group, group.Pending, group.Consumers, page.Entries, page.Next})
	}
	w := a.stdout
	if len(group.Consumers) == 0 {
		fmt.Fprintf(w, "Group %s of %s has no consumers.\n", o.group, tg.Name)
	} else {
		t := newTable(w, "CONSUMER", "PENDING", "IDLE")
		for _, c := range group.Consumers {
			t.row(c.Name, itoa(c.Pending), human(c.Idle))
		}
		t.flush()
	}
	fmt.Fprintln(w)
	if len(page.Entries) == 0 {
		fmt.Fprintln(w, "No pending entries.")
		return nil
	}
	header := []string{"ID", "CONSUMER", "IDLE", "DELIVERIES", "AGE"}
	if tg.Partitioned() {
		header = append([]string{"STREAM"}, header...)
	}
	t := newTable(w, header...)
	for _, e := range page.Entries {
		cells := []string{e.ID, e.Consumer, human(e.Idle), itoa(e.Deliveries), human(e.Age)}
		if tg.Partitioned() {
			cells = append([]string{e.Stream}, cells...)
		}
		t.row(cells...)
	}
	t.flush()
	if page.Next != "" {
		fmt.Fprintf(w, "more: --after %s\n", page.Next)
	}
	return nil
}
