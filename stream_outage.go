package safesync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Readiness reports whether the consumers that share it consume, or are
// paused by an outage of the database or of Redis. Create one with
// NewReadiness, give it to each consumer or pipeline in
// StreamConfig.Readiness, and call Ready from a readiness probe (or mount
// it: it is an http.Handler). A Readiness is safe for concurrent use.
type Readiness struct {
	mu     sync.Mutex
	paused map[*outage]string // paused consumers, and why
}

// NewReadiness returns a Readiness with no consumer paused.
func NewReadiness() *Readiness {
	return &Readiness{paused: map[*outage]string{}}
}

// ErrPaused is matched by the error Ready returns while a consumer is
// paused.
var ErrPaused = errors.New("safesync: consumer paused by an outage")

// Ready returns nil when no consumer sharing r is paused, else an error
// matching ErrPaused that names each paused consumer and the failure that
// paused it. A consumer that is not running is not paused.
func (r *Readiness) Ready() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.paused) == 0 {
		return nil
	}
	why := make([]string, 0, len(r.paused))
	for _, w := range r.paused {
		why = append(why, w)
	}
	slices.Sort(why)
	return fmt.Errorf("%w: %s", ErrPaused, strings.Join(why, "; "))
}

// ServeHTTP answers 200 "ok" when Ready returns nil, else 503 with Ready's
// error, for a readiness probe.
func (r *Readiness) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := r.Ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (r *Readiness) set(o *outage, why string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if why == "" {
		delete(r.paused, o)
	} else {
		r.paused[o] = why
	}
}

const (
	// pauseAfter is how many infrastructure failures in a row, with no
	// success between them, pause the consumer even when its probes pass
	// (a database that answers a ping but refuses transactions; a
	// dependency of Consumer.Run the consumer cannot probe).
	pauseAfter = 3
	// probeMin and probeMax bound the wait between two probes while
	// paused; it doubles from probeMin, and goes back to it after a
	// handler succeeds.
	probeMin = 100 * time.Millisecond
	probeMax = 5 * time.Second
	// probeTimeout bounds one probe.
	probeTimeout = 2 * time.Second
	// trialWindow is how long a consumer that resumed after its probes
	// passed must go without an infrastructure failure (or handle an entry)
	// to count as recovered.
	trialWindow = time.Second
)

// Outage states.
const (
	outageRunning = iota // consuming
	outagePaused         // no reads, no claims, no handler starts; probing
	outageTrying         // probes passed: consuming again, not yet recovered
)

// outage pauses a running consumer while the servers its work needs are
// down, probes them with backoff, and resumes it. Run's loops report
// failures that are not an entry's fault (report) and handlers' successes
// (succeeded), and wait while it is paused (wait).
//
// A report pauses at once when a probe fails (Redis' PING; the pipeline's
// database), or when pauseAfter failures came in a row. While paused,
// probes run with exponential backoff (probeMin to probeMax); when they
// pass, the consumer tries again: a success or a trialWindow without
// failures ends the outage, a failure pauses it again with the backoff it
// had. Pausing and resuming are logged once per outage.
type outage struct {
	log       *slog.Logger
	metrics   []*streamMetrics
	readiness *Readiness
	name      string                            // for Ready
	probes    []func(ctx context.Context) error // all must pass
	onPause   func()                            // drop work not started, cut reads short
	onResume  func()                            // re-read what was left pending

	kick chan struct{} // wakes the prober

	// reset is true while streak is 0 and delay probeMin, so that the
	// success of every handler costs no lock: succeeded has nothing to do.
	reset atomic.Bool

	mu      sync.Mutex
	state   int
	cause   error
	since   time.Time     // when the outage began
	streak  int           // infrastructure failures since the last success
	delay   time.Duration // the next wait between probes
	resumed chan struct{} // closed when the state leaves paused
}

func newOutage(log *slog.Logger, name string, readiness *Readiness, metrics []*streamMetrics, probes ...func(ctx context.Context) error) *outage {
	o := &outage{
		log: log, name: name, readiness: readiness, metrics: metrics, probes: probes,
		kick: make(chan struct{}, 1), delay: probeMin, resumed: make(chan struct{}),
	}
	o.reset.Store(true)
	return o
}

// report records a failure that is not an entry's: the database or Redis
// failing. It pauses the consumer, or has the prober check whether to.
func (o *outage) report(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.streak++
	o.reset.Store(false)
	switch o.state {
	case outagePaused:
		o.cause = err
	case outageTrying:
		o.pauseLocked(err) // the trial failed: keep the backoff
	default:
		if o.streak >= pauseAfter {
			o.pauseLocked(err)
		} else {
			o.cause = err
			o.wake() // probe now
		}
	}
}

// succeeded records that a handler succeeded: the servers work.
func (o *outage) succeeded() {
	if o.reset.Load() {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.streak = 0
	o.delay = probeMin
	o.reset.Store(true)
}

// paused reports whether the consumer is paused now.
func (o *outage) paused() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.state == outagePaused
}

// wait returns at once when the consumer is not paused, else when it
// resumes; false when ctx ended first.
func (o *outage) wait(ctx context.Context) bool {
	o.mu.Lock()
	if o.state != outagePaused {
		o.mu.Unlock()
		return ctx.Err() == nil
	}
	ch := o.resumed
	o.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// err returns nil, or why the consumer is paused.
func (o *outage) err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.state != outagePaused {
		return nil
	}
	return fmt.Errorf("%w: %s since %s: %v", ErrPaused, o.name, o.since.Format(time.RFC3339), o.cause)
}

func (o *outage) wake() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// pauseLocked pauses the consumer; o.mu is held.
func (o *outage) pauseLocked(cause error) {
	o.cause = cause
	if o.state == outagePaused {
		return
	}
	first := o.state == outageRunning
	o.state = outagePaused
	o.resumed = make(chan struct{})
	if first {
		o.since = time.Now()
		o.log.Warn("safesync: paused: a server the consumer needs is unavailable; no reads until it answers again",
			"error", cause)
	}
	o.readiness.set(o, fmt.Sprintf("%s since %s: %v", o.name, o.since.Format(time.RFC3339), cause))
	for _, m := range o.metrics {
		m.setPaused(true)
	}
	if o.onPause != nil {
		o.onPause()
	}
	o.wake()
}

// leavePauseLocked lets the consumer consume again, on trial; o.mu is held.
func (o *outage) leavePauseLocked() {
	o.state = outageTrying
	close(o.resumed)
	o.readiness.set(o, "")
	for _, m := range o.metrics {
		m.setPaused(false)
	}
	if o.onResume != nil {
		o.onResume()
	}
}

// probe runs every probe, and returns the first failure.
func (o *outage) probe(ctx context.Context) error {
	for _, p := range o.probes {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := p(pctx)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// loop is the prober: it runs until ctx ends.
func (o *outage) loop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.kick:
		}
		o.mu.Lock()
		state := o.state
		o.mu.Unlock()
		switch state {
		case outageRunning: // a failure was reported: are the servers up?
			if err := o.probe(ctx); err != nil && ctx.Err() == nil {
				o.mu.Lock()
				if o.state == outageRunning {
					o.pauseLocked(err)
				}
				o.mu.Unlock()
			}
		case outagePaused:
			o.probeUntilUp(ctx)
		}
	}
}

// probeUntilUp probes with backoff until the probes pass, then lets the
// consumer try again, and ends the outage after trialWindow unless it
// paused again meanwhile (a failure of the trial).
func (o *outage) probeUntilUp(ctx context.Context) {
	for {
		o.mu.Lock()
		d := o.delay
		o.delay = min(2*o.delay, probeMax)
		o.reset.Store(false)
		o.mu.Unlock()
		if !sleep(ctx, d) {
			return
		}
		err := o.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		o.mu.Lock()
		if err != nil {
			o.cause = err
			o.readiness.set(o, fmt.Sprintf("%s since %s: %v", o.name, o.since.Format(time.RFC3339), err))
			o.mu.Unlock()
			continue
		}
		o.leavePauseLocked()
		o.mu.Unlock()
		break
	}
	if !sleep(ctx, trialWindow) {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.state == outageTrying {
		o.recoverLocked()
	}
}

// recoverLocked ends the outage; o.mu is held.
func (o *outage) recoverLocked() {
	o.state = outageRunning
	o.log.Info("safesync: resumed: the servers answer again", "paused_for", time.Since(o.since).Round(time.Millisecond))
}

// close clears the consumer's paused state from its Readiness and gauge,
// when Run returns.
func (o *outage) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.readiness.set(o, "")
	for _, m := range o.metrics {
		m.setPaused(false)
	}
	if o.state == outagePaused {
		close(o.resumed)
	}
	o.state = outageRunning
}

// setHooks sets what pausing and resuming do to the running engine (nil:
// nothing); when the consumer is paused already, pause runs now.
func (o *outage) setHooks(pause, resume func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.onPause, o.onResume = pause, resume
	if pause != nil && o.state == outagePaused {
		pause()
	}
}

// retry calls fn until it succeeds, returning nil, or fails in a way
// transient does not accept, returning that error. A transient failure is
// an outage: it is reported, and the next call waits until the consumer
// is not paused, then for a backoff that grows while failures repeat. It
// returns nil when ctx ends first.
func (o *outage) retry(ctx context.Context, log *slog.Logger, what string, fn func(ctx context.Context) error, transient func(error) bool) error {
	var b readBackoff
	for logged := false; ; {
		err := fn(ctx)
		if err == nil || ended(ctx, err) {
			return nil
		}
		if !transient(err) {
			return err
		}
		o.report(err)
		if !logged {
			logged = true
			log.Warn("safesync: cannot "+what+" yet; waiting", "error", err)
		}
		if !o.wait(ctx) || !b.wait(ctx) {
			return nil
		}
	}
}
