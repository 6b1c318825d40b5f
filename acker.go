package safesync

import (
	"context"
	"fmt"
	"sync"
)

// maxAckBatch bounds the ids of one XACK sent by an acker.
const maxAckBatch = 512

// acker acknowledges the entries whose handlers succeeded, for Run and
// ClaimStale. Workers hand it the ids they finished in bursts; one
// goroutine sends them as XACKs, merging the bursts that arrived while the
// previous XACK was in flight, so that under load one XACK covers many
// entries (as a hand-written loop that acknowledges a read batch at once
// does) and is sent while handling goes on, and when idle an entry is
// acknowledged as soon as its handler returns.
type acker struct {
	core    *streamCore
	ctx     context.Context    // values of Run's ctx, without its cancellation
	release func(ids []string) // called with the ids of each XACK once sent
	ids     chan []string
	done    chan struct{}

	mu       sync.Mutex
	failures int
	lastErr  error
}

func newAcker(core *streamCore, ctx context.Context, release func(ids []string)) *acker {
	a := &acker{core: core, ctx: ctx, release: release, ids: make(chan []string, 64), done: make(chan struct{})}
	go a.loop()
	return a
}

// add queues ids for acknowledgement and takes ownership of the slice. It
// blocks only while the queue is full, which slows handlers down to the
// pace Redis acknowledges at.
func (a *acker) add(ids []string) { a.ids <- ids }

func (a *acker) loop() {
	defer close(a.done)
	batch := make([]string, 0, maxAckBatch)
	for ids := range a.ids {
		batch = append(batch[:0], ids...)
	merge:
		for len(batch) < maxAckBatch {
			select {
			case more, ok := <-a.ids:
				if !ok {
					break merge
				}
				batch = append(batch, more...)
			default:
				break merge
			}
		}
		ctx, cancel := context.WithTimeout(a.ctx, ackTimeout)
		_, err := a.core.ack(ctx, a.core.cfg.Stream, a.core.cfg.Group, batch)
		cancel()
		if err != nil {
			a.failed(err)
		}
		a.release(batch)
	}
}

// failed records an acknowledgement that failed elsewhere (sent with a
// read), so that Run reports it. It is called by the reader only.
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
	close(a.ids)
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failures == 0 {
		return nil
	}
	return fmt.Errorf("safesync: %d acknowledgements failed; their entries stay pending and will be redelivered; last: %w", a.failures, a.lastErr)
}
