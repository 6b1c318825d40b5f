package safesync

import (
	"context"
	"fmt"
)

// maxAckBatch bounds the ids of one XACK sent by an acker.
const maxAckBatch = 512

// acker acknowledges the entries whose handlers succeeded, for Run and
// ClaimStale. Handlers hand it ids; one goroutine sends them as XACKs,
// taking every id that arrived while the previous XACK was in flight, so
// that under load one XACK covers many entries (as a hand-written loop that
// acknowledges a read batch at once does), and when idle each entry is
// acknowledged as soon as its handler returns.
type acker struct {
	core *streamCore
	ctx  context.Context // values of Run's ctx, without its cancellation
	ids  chan string
	done chan struct{}

	failures int
	lastErr  error
}

func newAcker(core *streamCore, ctx context.Context) *acker {
	a := &acker{core: core, ctx: ctx, ids: make(chan string, 2*maxAckBatch), done: make(chan struct{})}
	go a.loop()
	return a
}

// add queues id for acknowledgement. It blocks only while the queue is
// full, which slows handlers down to the pace Redis acknowledges at.
func (a *acker) add(id string) { a.ids <- id }

func (a *acker) loop() {
	defer close(a.done)
	batch := make([]string, 0, maxAckBatch)
	for id := range a.ids {
		batch = append(batch[:0], id)
	fill:
		for len(batch) < maxAckBatch {
			select {
			case id, ok := <-a.ids:
				if !ok {
					break fill
				}
				batch = append(batch, id)
			default:
				break fill
			}
		}
		ctx, cancel := context.WithTimeout(a.ctx, ackTimeout)
		_, err := a.core.ack(ctx, a.core.cfg.Stream, a.core.cfg.Group, batch)
		cancel()
		if err != nil {
			a.failures++
			a.lastErr = err
			a.core.log.Error("safesync: acknowledgement failed; the entries stay pending and will be redelivered", "count", len(batch), "error", err)
		}
	}
}

// close sends the acknowledgements still queued, stops the goroutine and
// reports the failures seen. Every add must have returned.
func (a *acker) close() error {
	close(a.ids)
	<-a.done
	if a.failures == 0 {
		return nil
	}
	return fmt.Errorf("safesync: %d acknowledgements failed; their entries stay pending and will be redelivered; last: %w", a.failures, a.lastErr)
}
