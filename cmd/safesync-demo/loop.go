package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/safesync-go/safesync"
)

// The loop: orders → accounts (+ events into the outbox) → relay → events
// stream → history. On real servers its three parts run side by side. The
// embedded MySQL engine does not isolate concurrent transactions, and the
// relay needs a connection of its own (its leader holds one while it
// runs), so there they run one after another: the orders until they
// settle, then the relay until it has emptied the outbox, then the
// history pipeline. Only one connection writes at any time.

// phase is a part of the loop that ran on its own, for the report.
type phase struct {
	name       string
	start, end time.Time
}

// runners runs functions on goroutines of their own and collects their
// errors.
type runners struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (r *runners) start(name string, fn func() error) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := fn(); err != nil {
			r.mu.Lock()
			r.errs = append(r.errs, fmt.Errorf("%s: %w", name, err))
			r.mu.Unlock()
		}
	}()
}

// wait waits for every function to return and joins their errors.
func (r *runners) wait() error {
	r.wg.Wait()
	return errors.Join(r.errs...)
}

// consume runs the loop until every order and every event is settled,
// crashing orders worker 1 part of the way through, and prints progress
// every second.
func (sc *scenario) consume(ctx context.Context) error {
	relay, err := sc.newRelay()
	if err != nil {
		return err
	}
	policy := safesync.Exponential(2*time.Millisecond, 100*time.Millisecond).WithMaxAttempts(30).
		WithOnRetry(func(safesync.RetryEvent) { sc.retries.Add(1) })
	deadline := time.Now().Add(sc.o.timeout)
	sc.started = time.Now()
	defer func() { // a run cut short still reports its times
		now := time.Now()
		if sc.finished.IsZero() {
			sc.finished = now
		}
		if sc.loopEnd.IsZero() {
			sc.loopEnd = now
		}
	}()

	if !sc.svc.embedded {
		fmt.Println("orders → accounts + outbox → relay → events → history, side by side:")
		runCtx, stop := context.WithCancel(ctx)
		defer stop()
		var all runners
		all.start("relay", func() error { return relay.Run(runCtx) })
		all.start("history", func() error { return sc.historyPipeline(policy).Run(runCtx, sc.svc.rdb, sc.historyConfig()) })
		sc.startOrders(runCtx, &all, policy)
		_, err := sc.waitFor(ctx, deadline, sc.loopSettled)
		stop()
		return errors.Join(err, all.wait())
	}

	// Embedded: one part at a time, each stopped (its transactions ended)
	// before the next starts.
	part := func(name, title string, check func(context.Context) (bool, string, error), start func(ctx context.Context, r *runners)) (bool, error) {
		fmt.Println(title)
		runCtx, stop := context.WithCancel(ctx)
		defer stop()
		var r runners
		p := phase{name: name, start: time.Now()}
		start(runCtx, &r)
		settled, err := sc.waitFor(ctx, deadline, check)
		stop()
		err = errors.Join(err, r.wait())
		p.end = time.Now()
		sc.phases = append(sc.phases, p)
		return settled, err
	}
	withPrune := func(ctx context.Context, r *runners) {
		r.start("prune", func() error { sc.prune(ctx); return nil })
	}
	settled, err := part("orders", "orders → accounts, each order's transaction adding its event to the outbox:", sc.ordersSettled,
		func(ctx context.Context, r *runners) { sc.startOrders(ctx, r, policy); withPrune(ctx, r) })
	if err != nil || !settled {
		return err
	}
	settled, err = part("relay", "relay: outbox → events stream (only now: the embedded engine must not run its transactions beside the workers'):", sc.relayDone,
		func(ctx context.Context, r *runners) { r.start("relay", func() error { return relay.Run(ctx) }) })
	if err != nil || !settled {
		return err
	}
	_, err = part("history", "events → history, exactly once and in order per account:", sc.historySettled,
		func(ctx context.Context, r *runners) {
			r.start("history", func() error { return sc.historyPipeline(policy).Run(ctx, sc.svc.rdb, sc.historyConfig()) })
			withPrune(ctx, r)
		})
	return err
}

// startOrders starts the orders workers; worker 1 crashes part of the way
// through when -crash is set.
func (sc *scenario) startOrders(ctx context.Context, r *runners, policy safesync.RetryPolicy) {
	pipeline := func(h safesync.TxHandler[order]) safesync.Pipeline[order] {
		return safesync.Stream(safesync.JSON[order]()).
			Handle(h).
			AckAfter(safesync.Commit(sc.svc.db, safesync.Label("demo"))).
			Once(sc.n.applied).
			Batch(sc.o.batch).
			Retry(policy).
			AfterCommit(sc.afterCommit)
	}
	for w := 1; w <= sc.o.workers; w++ {
		p, wctx := pipeline(sc.handler()), ctx
		if w == 1 && sc.o.crash {
			var crash context.CancelFunc
			wctx, crash = context.WithCancel(ctx)
			p = pipeline(sc.crashingHandler(crash))
		}
		r.start(fmt.Sprintf("worker-%d", w), func() error { return p.Run(wctx, sc.svc.rdb, sc.config(w)) })
	}
}

// waitFor calls check every 200 ms, printing its progress line every
// second, until it reports done (then it prints its final line and
// returns true), ctx ends, or deadline passes (then it says so and returns
// false, leaving verify to report what failed).
func (sc *scenario) waitFor(ctx context.Context, deadline time.Time, check func(context.Context) (done bool, line string, err error)) (bool, error) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	lastPrint := time.Now()
	for {
		done, line, err := check(ctx)
		if err != nil {
			return false, err
		}
		if done {
			fmt.Printf("  %6.1fs  %s\n", time.Since(sc.started).Seconds(), line)
			return true, nil
		}
		if time.Since(lastPrint) >= time.Second {
			lastPrint = time.Now()
			fmt.Printf("  %6.1fs  %s\n", time.Since(sc.started).Seconds(), line)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-timeout.C:
			fmt.Printf("timed out after %v: %s\n", sc.o.timeout, line)
			return false, nil
		case <-tick.C:
		}
	}
}

// ordersSettled reports whether every order is applied, every malformed
// entry dead-lettered and nothing pending on the orders stream.
func (sc *scenario) ordersSettled(ctx context.Context) (bool, string, error) {
	applied, pending, dead, err := sc.orderProgress(ctx)
	if err != nil {
		return false, "", err
	}
	sc.noteCrash(ctx)
	total := int64(sc.o.messages)
	if applied == total && dead == int64(sc.o.malformed) && pending == 0 {
		sc.finished = time.Now()
		return true, fmt.Sprintf("all %d orders applied, %d dead letters, nothing pending", applied, dead), nil
	}
	rate := float64(applied) / time.Since(sc.started).Seconds()
	return false, fmt.Sprintf("applied %6d/%d  pending %5d  dead letters %d  %7.0f orders/s", applied, total, pending, dead, rate), nil
}

// relayDone reports whether the relay has added an event for every order.
// It asks nothing of the database: in embedded mode the relay is the only
// one to use it meanwhile.
func (sc *scenario) relayDone(context.Context) (bool, string, error) {
	relayed, total := sc.relayed.Load(), int64(sc.o.messages)
	if relayed >= total {
		return true, fmt.Sprintf("all %d events relayed to %s", relayed, sc.n.events), nil
	}
	return false, fmt.Sprintf("relayed %6d/%d", relayed, total), nil
}

// historySettled reports whether every event is in history (or
// dead-lettered, which verify reports) and nothing is pending on the
// events stream.
func (sc *scenario) historySettled(ctx context.Context) (bool, string, error) {
	history, pending, dead, err := sc.eventProgress(ctx)
	if err != nil {
		return false, "", err
	}
	total := int64(sc.o.messages)
	if history+dead >= total && pending == 0 {
		return true, fmt.Sprintf("all %d events in history, %d dead letters, nothing pending", history, dead), nil
	}
	return false, fmt.Sprintf("history %6d/%d  pending %5d  dead letters %d", history, total, pending, dead), nil
}

// loopSettled is ordersSettled, relayDone and historySettled at once, with
// the outbox empty, for real servers, where the three run side by side.
func (sc *scenario) loopSettled(ctx context.Context) (bool, string, error) {
	applied, pending, dead, err := sc.orderProgress(ctx)
	if err != nil {
		return false, "", err
	}
	sc.noteCrash(ctx)
	history, eventsPending, eventsDead, err := sc.eventProgress(ctx)
	if err != nil {
		return false, "", err
	}
	total := int64(sc.o.messages)
	ordersDone := applied == total && dead == int64(sc.o.malformed) && pending == 0
	if ordersDone && sc.finished.IsZero() {
		sc.finished = time.Now()
	}
	if ordersDone && sc.relayed.Load() >= total && history+eventsDead >= total && eventsPending == 0 {
		outbox, err := safesync.Get[int64](ctx, sc.svc.db, "SELECT COUNT(*) FROM "+sc.n.outbox)
		if err != nil {
			return false, "", err
		}
		if outbox == 0 {
			sc.loopEnd = time.Now()
			return true, fmt.Sprintf("all %d orders applied (%d dead letters), relayed and in history, nothing pending", applied, dead), nil
		}
	}
	return false, fmt.Sprintf("orders %6d/%d  pending %5d  dead letters %d  │  events relayed %6d  in history %6d  pending %5d",
		applied, total, pending, dead, sc.relayed.Load(), history, eventsPending), nil
}
