package safesync

import "sync"

// orderer keeps per-key order among units (one entry, or one batch). Every
// key has a lane, the queue of admitted
// units that contain it, in admission order; a unit runs when it is at the
// head of all its lanes, so two units sharing a key never overlap and run
// in the order they were admitted. Admission follows stream order, since
// one goroutine reads and admits. The earliest unit admitted and not yet
// finished is always at the head of its lanes, so the orderer never
// deadlocks.
type orderer struct {
	mu      sync.Mutex
	lanes   map[string][]*unitOrder
	stopped bool
}

// unitOrder is a unit's bookkeeping in the orderer.
type unitOrder struct {
	keys    []string // distinct keys of the unit's entries
	blocked int      // lanes in which the unit is not yet at the head
	started bool     // released to run: at the head of all its lanes
	running bool     // taken by a worker (set by the scheduler, under its lock)
	payload any      // the unit itself, handed back by finish
}

func newOrderer() *orderer {
	return &orderer{lanes: map[string][]*unitOrder{}}
}

// admit queues u in the lanes of its keys and reports whether it may start
// now. Once stopped, nothing may start.
func (o *orderer) admit(u *unitOrder) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range u.keys {
		lane := o.lanes[k]
		if len(lane) > 0 {
			u.blocked++
		}
		o.lanes[k] = append(lane, u)
	}
	if u.blocked == 0 && !o.stopped {
		u.started = true
		return true
	}
	return false
}

// finish removes u, which ran, from the heads of its lanes and returns the
// units that may start now.
func (o *orderer) finish(u *unitOrder) []*unitOrder {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stopped {
		return nil
	}
	var ready []*unitOrder
	for _, k := range u.keys {
		lane := o.lanes[k]
		// u is the head of each of its lanes.
		lane[0] = nil
		lane = lane[1:]
		if len(lane) == 0 {
			delete(o.lanes, k)
			continue
		}
		o.lanes[k] = lane
		next := lane[0]
		next.blocked--
		if next.blocked == 0 && !next.started && !o.stopped {
			next.started = true
			ready = append(ready, next)
		}
	}
	return ready
}

// dropWaiting removes every unit not running from the lanes, and returns
// them; the running units stay at the heads of their lanes, so that their
// finish works as usual. The caller holds the scheduler's lock, under
// which running is set.
func (o *orderer) dropWaiting() []*unitOrder {
	o.mu.Lock()
	defer o.mu.Unlock()
	seen := map[*unitOrder]bool{}
	var dropped []*unitOrder
	for k, lane := range o.lanes {
		kept := lane[:0]
		for _, u := range lane {
			switch {
			case u.running:
				kept = append(kept, u)
			case !seen[u]:
				seen[u] = true
				dropped = append(dropped, u)
			}
		}
		clear(lane[len(kept):])
		if len(kept) == 0 {
			delete(o.lanes, k)
		} else {
			o.lanes[k] = kept
		}
	}
	return dropped
}

// stop prevents any further start; the units still queued never run.
func (o *orderer) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stopped = true
	clear(o.lanes)
}
