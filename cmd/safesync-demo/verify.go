package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/safesync-go/safesync"
)

// check is one verified invariant.
type check struct {
	name string
	ok   bool
	got  string
}

type results struct {
	checks []check
}

func (r results) ok() bool {
	for _, c := range r.checks {
		if !c.ok {
			return false
		}
	}
	return true
}

// verify reads the final state back from the database and Redis.
func (sc *scenario) verify(ctx context.Context) (results, error) {
	var r results
	add := func(name string, ok bool, format string, args ...any) {
		r.checks = append(r.checks, check{name, ok, fmt.Sprintf(format, args...)})
	}
	db, rdb := sc.svc.db, sc.svc.rdb

	accts, err := safesync.Select[account](ctx, db, "SELECT * FROM "+sc.n.accounts+" ORDER BY id")
	if err != nil {
		return r, err
	}
	var sum int64
	wrong := 0
	for _, a := range accts {
		sum += a.Balance
		if (expectation{a.Balance, a.Orders, a.OrderIDs}) != sc.perAccount[a.ID] {
			wrong++
		}
	}
	add("balances sum to the published total", sum == sc.expected, "%d, expected %d", sum, sc.expected)
	add("every order applied exactly once", wrong == 0, "%d of %d accounts differ in balance, order count or order-id sum", wrong, len(accts))

	events, err := safesync.Select[historyEvent](ctx, db, "SELECT account_id, balance, orders FROM "+sc.n.history+" ORDER BY id")
	if err != nil {
		return r, err
	}
	mismatched, outOfOrder := historyOf(events, accts)
	add("history holds one event per applied order, ending at the balance", mismatched == 0, "%d events; %d of %d accounts differ in event count or last balance", len(events), mismatched, len(accts))
	add("events applied in order per account", outOfOrder == 0, "%d events whose order count is not the previous one's plus one", outOfOrder)
	outbox, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM "+sc.n.outbox)
	if err != nil {
		return r, err
	}
	add("the outbox is empty", outbox == 0, "%d rows left", outbox)

	pending, err := sc.pendingOf(ctx, sc.n.stream, sc.n.group, "")
	if err != nil {
		return r, err
	}
	eventsPending, err := sc.pendingOf(ctx, sc.n.events, sc.n.eventGroup, "")
	if err != nil {
		return r, err
	}
	add("no entry is pending", pending == 0 && eventsPending == 0, "%d pending on the orders stream, %d on the events stream", pending, eventsPending)

	xs, err := rdb.Do(ctx, rdb.B().Xrange().Key(sc.n.deadStream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		return r, err
	}
	seen := map[string]bool{}
	var strays []string
	for _, x := range xs {
		d := safesync.ParseDeadLetter(x.ID, x.FieldValues)
		if _, malformed := sc.malformedIDs[d.OriginalID]; !malformed || seen[d.OriginalID] {
			strays = append(strays, d.OriginalID)
		}
		seen[d.OriginalID] = true
	}
	deadEvents, err := rdb.Do(ctx, rdb.B().Xlen().Key(sc.n.deadEvents).Build()).AsInt64()
	if err != nil {
		return r, err
	}
	exact := len(xs) == len(sc.malformedIDs) && len(strays) == 0 && deadEvents == 0
	add("dead letters are exactly the malformed entries", exact, "%d dead letters, %d malformed published, %d unexpected, %d of events", len(xs), len(sc.malformedIDs), len(strays), deadEvents)
	return r, nil
}

// report prints the summary table and the invariants.
func (sc *scenario) report(w io.Writer, r results) {
	elapsed := sc.finished.Sub(sc.started)
	lat := sc.sortedLatencies()
	conflicts := sc.counter("coti_safesync_db_occ_conflicts_total")
	deadLetters := sc.counter("coti_safesync_queue_dead_lettered_total")
	claimed := sc.counter("coti_safesync_queue_messages_claimed_total")

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "  %s\t%s\n", k, v) }
	row("orders", fmt.Sprintf("%d (+%d malformed)", sc.o.messages, sc.o.malformed))
	row("workers", fmt.Sprintf("%d × %d in flight, batches of %d, strategy %s, exactly-once", sc.o.workers, sc.o.concurrency, sc.o.batch, sc.o.strategy))
	row("elapsed", elapsed.Round(time.Millisecond).String()+" until the orders settled")
	row("throughput", fmt.Sprintf("%.0f orders/s", float64(sc.o.messages)/elapsed.Seconds()))
	row("latency p50 / p99", fmt.Sprintf("%v / %v (first handler start to COMMIT, per order)", percentile(lat, .50).Round(time.Microsecond), percentile(lat, .99).Round(time.Microsecond)))
	row("retries", fmt.Sprintf("%d", sc.retries.Load()))
	row("OCC conflicts", fmt.Sprintf("%.0f", conflicts))
	row("entries reclaimed", fmt.Sprintf("%.0f", claimed))
	row("dead letters", fmt.Sprintf("%.0f", deadLetters))
	batches := "batches"
	if n := sc.counter("coti_safesync_outbox_relay_batches_total"); n == 1 {
		batches = "batch"
	}
	row("events", fmt.Sprintf("%d relayed in %.0f %s, applied to history by 1 worker, in order per account", sc.relayed.Load(), sc.counter("coti_safesync_outbox_relay_batches_total"), batches))
	if len(sc.phases) > 0 {
		var parts []string
		for _, p := range sc.phases {
			parts = append(parts, fmt.Sprintf("%s %v", p.name, p.end.Sub(p.start).Round(time.Millisecond)))
		}
		row("parts, one after another", strings.Join(parts, ", "))
	} else {
		row("whole loop", fmt.Sprintf("%v, orders, relay and history side by side", sc.loopEnd.Sub(sc.started).Round(time.Millisecond)))
	}
	if sc.svc.embedded {
		row("exactly-once records pruned", fmt.Sprintf("%d", sc.pruned.Load()))
	}
	tw.Flush()

	fmt.Fprintln(w)
	for _, c := range r.checks {
		mark := "ok  "
		if !c.ok {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s: %s\n", mark, c.name, c.got)
	}
	if r.ok() {
		fmt.Fprintln(w, "\nall invariants hold")
	} else {
		fmt.Fprintln(w, "\nINVARIANTS FAILED")
	}
}

// counter sums a counter of the demo's registry over all its labels.
func (sc *scenario) counter(name string) float64 {
	families, err := sc.registry.Gather()
	if err != nil {
		return 0
	}
	var total float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}
