package safesync

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// maxAckBatch bounds the ids of one XACK sent by an acker.
const maxAckBatch = 512

// acker acknowledges the entries whose handlers succeeded, for Run,
// ClaimStale and pipelines. Workers hand it the ids they finished in
// bursts; one goroutine sends them as XACKs, merging the bursts that
// arrived while the previous XACK was in flight, so that under load one
// XACK covers many entries (as a hand-written loop that acknowledges a
// read batch at once does) and is sent while handling goes on, and when
// idle an entry is acknowledged as soon as its handler returns.
//
// An XACK that fails because Redis cannot be reached (a lost connection, a
// server loading or failing over) is sent again, with backoff, until it
// succeeds or Run ends: the entries stay held meanwhile, so that this
// consumer does not run them again, and an outage of Redis does not make
// committed work run twice. An XACK Redis refuses (NOPERM, say), or one
// still failing when Run ends, is counted, reported by Run and its entries
// stay pending.
type acker struct {
	core *streamCore
	ctx  context.Context // values of Run's ctx, without its cancellation
	// settle is called with the in-flight records of the entries of each
	// XACK once it succeeded (acked) or failed for good.
	settle func(refs []heldRef, acked bool)
	report func(err error) // told of XACKs failing for want of Redis
	queue  chan ackBurst
	done   chan struct{}

	mu       sync.Mutex
	failures int
	lastErr  error
}

// ackBurst is entries handed over for acknowledgement at once: their ids
// and their in-flight records (refs[i] is ids[i]'s).
type ackBurst struct {
	ids  []string
	refs []heldRef
}

// pendingAcks are the entries waiting for an XACK that succeeds.
type pendingAcks struct {
	ids  []string
	refs []heldRef
}

func (p *pendingAcks) add(b ackBurst) {
	p.ids = append(p.ids, b.ids...)
	p.refs = append(p.refs, b.refs...)
}

// drop forgets the first n.
func (p *pendingAcks) drop(n int) {
	p.ids = append(p.ids[:0], p.ids[n:]...)
	p.refs = append(p.refs[:0], p.refs[n:]...)
}

func newAcker(core *streamCore, ctx context.Context, settle func(refs []heldRef, acked bool), report func(err error)) *acker {
	a := &acker{core: core, ctx: ctx, settle: settle, report: report, queue: make(chan ackBurst, 64), done: make(chan struct{})}
	go a.loop()
	return a
}

// add queues ids, whose in-flight records are refs, for acknowledgement
// and takes ownership of the slices. It blocks only while the queue is
// full, which slows handlers down to the pace Redis acknowledges at.
func (a *acker) add(ids []string, refs []heldRef) { a.queue <- ackBurst{ids, refs} }

func (a *acker) loop() {
	defer close(a.done)
	var pending pendingAcks // waiting for an XACK that succeeds
	var b readBackoff
	open := true
	for open || len(pending.ids) > 0 {
		if len(pending.ids) == 0 {
			burst, ok := <-a.queue
			if !ok {
				return
			}
			pending.add(burst)
		}
	merge:
		for open && len(pending.ids) < maxAckBatch {
			select {
			case more, ok := <-a.queue:
				if !ok {
					open = false
					break merge
				}
				pending.add(more)
			default:
				break merge
			}
		}
		n := min(len(pending.ids), maxAckBatch)
		batch := pending.ids[:n]
		ctx, cancel := context.WithTimeout(a.ctx, ackTimeout)
		_, err := a.core.ack(ctx, a.core.cfg.Stream, a.core.cfg.Group, batch)
		cancel()
		if err != nil && retryable(err) && open {
			a.report(err)
			a.core.log.Warn("safesync: acknowledgement failed; sending it again", "entries", len(batch), "error", err)
			if a.wait(&b, &pending, &open) {
				continue
			}
			// Run ends: one last try of everything below.
			ctx, cancel := context.WithTimeout(a.ctx, ackTimeout)
			_, err = a.core.ack(ctx, a.core.cfg.Stream, a.core.cfg.Group, batch)
			cancel()
		}
		b.reset()
		if err != nil {
			a.failed(err)
		}
		a.settle(pending.refs[:n], err == nil)
		pending.drop(n)
	}
}

// wait waits for the backoff before an XACK is sent again, taking in ids
// queued meanwhile. It reports false when the queue was closed (Run
// ends) instead.
func (a *acker) wait(b *readBackoff, pending *pendingAcks, open *bool) bool {
	if b.d == 0 {
		b.d = probeMin
	} else {
		b.d = min(2*b.d, probeMax)
	}
	t := time.NewTimer(b.d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case more, ok := <-a.queue:
			if !ok {
				*open = false
				return false
			}
			pending.add(more)
		}
	}
}

// retryOrFail settles ids, whose in-flight records are refs, whose XACK,
// sent with a read, failed with err: sent again by the acker when Redis
// could not be reached, else counted as failed and released. It is called
// by the reader only.
func (a *acker) retryOrFail(ids []string, refs []heldRef, err error) {
	if len(ids) > 0 && retryable(err) {
		a.add(ids, refs)
		return
	}
	a.failed(err)
	a.settle(refs, false)
}

// failed records an acknowledgement that failed for good, so that Run
// reports it.
func (a *acker) failed(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failures++
	a.lastErr = err
	a.core.log.Error("safesync: acknowledgement failed; the entries stay pending and will be redelivered", "error", err)
}

// close sends the acknowledgements still queued, stops the goroutine and
// reports the failures seen. Every add must have returned.
func (a *acker) close() error {
	close(a.queue)
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failures == 0 {
		return nil
	}
	return fmt.Errorf("safesync: %d acknowledgements failed; their entries stay pending and will be redelivered; last: %w", a.failures, a.lastErr)
}
