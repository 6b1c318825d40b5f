package safesync

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/puddle/v2"

	"github.com/safesync-go/safesync/internal/streamid"
)

// unit is what one handler call gets: one entry for Run and ClaimStale, up
// to the batch size for RunBatch.
type unit[T any] struct {
	msgs  []Message[T]
	held  heldRef    // the in-flight record of msgs[0]; msgs[i]'s is held.at(i)
	order *unitOrder // nil without OrderBy
	// exclusive units run with no other unit running in the process: an
	// entry whose earlier attempt never ended (a crash suspect), so that
	// the process's end during it is known to be that entry's doing.
	exclusive bool
	// outcome records, by entry, what finish does with it: release it
	// (nothing recorded: it stays pending, for redelivery), keep it held
	// until its XACK has been sent (handed to the acknowledger), or settle
	// it (dead-lettered, or acknowledged by the handler itself).
	outcome    []entryOutcome
	outcomeOne [1]entryOutcome // outcome's array for a unit of one entry
}

// entryOutcome is what became of one entry of a unit; see unit.outcome.
type entryOutcome uint8

const (
	outcomePending entryOutcome = iota // left pending: released at finish
	outcomeAcking                      // handed to the acknowledger: held until its XACK is sent
	outcomeSettled                     // acknowledged or dead-lettered already: settled at finish
)

// mark records the outcome of entry i.
func (u *unit[T]) mark(i int, o entryOutcome) {
	if u.outcome == nil {
		if len(u.msgs) == 1 {
			u.outcome = u.outcomeOne[:]
		} else {
			u.outcome = make([]entryOutcome, len(u.msgs))
		}
	}
	u.outcome[i] = o
}

// outcomeOf returns the outcome recorded for entry i.
func (u *unit[T]) outcomeOf(i int) entryOutcome {
	if u.outcome == nil {
		return outcomePending
	}
	return u.outcome[i]
}

// scheduler runs units on at most Concurrency workers. A worker is a
// goroutine holding one slot of a puddle pool: it runs ready units one
// after another and ends when none is left, releasing its slot, so that a
// steady flow of entries costs no goroutine switch per entry. Units whose
// key is busy wait in the orderer, holding no slot.
//
// The reader reads ahead while fewer than readAhead entries wait to start,
// which hides the read's round trip behind the handling of the previous
// read; reclaim claims only as many units as there are free slots.
type scheduler[T any] struct {
	ctx         context.Context // once done, no unit starts
	slots       *puddle.Pool[struct{}]
	concurrency int
	readAhead   int
	order       *orderer // nil without OrderBy; used under mu
	work        func(w *worker[T], u *unit[T])
	flushAcks   func(part int, ids []string, refs []heldRef)
	workers     sync.WaitGroup

	mu      sync.Mutex
	ready   []*unit[T] // runnable, not started, in order, from head on
	head    int
	units   int // units admitted and not started (ready or blocked on a key)
	entries int // entries in those units
	running int // units running
	active  int // workers alive
	// groups record the entries admitted (see schedule_held.go): those
	// held, which are never admitted again, and those settled while
	// reads or claims sent earlier were in flight. spare are groups no
	// longer in use, for reuse; maxID is, by stream (partition) index,
	// above or equal to every id admitted.
	groups []*heldGroup
	spare  []*heldGroup
	maxID  []streamid.ID
	// reads counts the reads and claims in flight by the sequence number
	// when they were sent; settlements advance seq.
	reads   map[uint64]int
	seq     uint64
	stopped bool
	// trackHandled gives every unit a batchState, so that a batch
	// handler's own acknowledgements are known (RunBatch).
	trackHandled bool
	paused       bool          // by an outage: no unit starts
	alone        bool          // an exclusive unit is running
	changed      chan struct{} // closed when what a waiter waits for may hold
	waitRead     bool          // the reader waits for entries < readAhead
	waitFree     bool          // reclaim waits for a free slot
}

func newScheduler[T any](ctx context.Context, slots *puddle.Pool[struct{}], concurrency, readAhead int, order *orderer) *scheduler[T] {
	return &scheduler[T]{
		ctx: ctx, slots: slots, concurrency: concurrency, readAhead: readAhead, order: order,
		reads:   map[uint64]int{},
		changed: make(chan struct{}),
	}
}

// worker is one goroutine of the scheduler; acks buffers the ids of
// entries it finished, by stream (partition) index, flushed to the ackers
// in bursts, and refs their in-flight records.
type worker[T any] struct {
	acks [][]string
	refs [][]heldRef
	// direct, when set, takes the acknowledgements flush hands over
	// instead of the scheduler's acknowledgers: an inline reader sends
	// them itself, so that no XACK goes out beside its reads.
	direct  func(part int, ids []string, refs []heldRef)
	pending int       // ids in acks
	since   time.Time // when flushIfDue first saw the oldest of them
}

// maxWorkerAcks is how many acknowledgements a busy worker gathers before
// handing them over; an idle worker hands over what it has at once, and a
// busy one when its oldest has waited ackFlushAfter (see flushIfDue), so
// that an entry's XACK is held back by no more than that and one unit of
// other work (an entry idle past ClaimIdle while done would be claimed
// and run again elsewhere), while the acknowledgements of quick handlers
// and concurrent transactions still go out together.
const maxWorkerAcks = 128

// ackFlushAfter bounds how long a busy worker keeps acknowledgements.
const ackFlushAfter = 10 * time.Millisecond

// ack buffers entry i of u for acknowledgement; the entry stays held
// until its XACK has been sent (see settle).
func (w *worker[T]) ack(s *scheduler[T], u *unit[T], i int) {
	u.mark(i, outcomeAcking)
	part, id := u.msgs[i].part, u.msgs[i].ID
	for len(w.acks) <= part {
		w.acks = append(w.acks, nil)
		w.refs = append(w.refs, nil)
	}
	w.acks[part] = append(w.acks[part], id)
	w.refs[part] = append(w.refs[part], u.held.at(i))
	w.pending++
	if w.pending >= maxWorkerAcks {
		w.flush(s)
	}
}

// take removes and returns the ids buffered for part, and their in-flight
// records. Once none is left,
// the wait of flushIfDue starts again with the next: an inline reader
// takes its acknowledgements for its next read, and those of a read must
// not be handed to the acknowledger early because earlier ones waited
// (an XACK on its own costs a round trip, and one sent beside a read
// makes rueidis pipeline the connection through goroutines from then on).
func (w *worker[T]) take(part int) ([]string, []heldRef) {
	if part >= len(w.acks) {
		return nil, nil
	}
	ids, refs := w.acks[part], w.refs[part]
	w.acks[part], w.refs[part] = nil, nil
	w.pending -= len(ids)
	if w.pending == 0 {
		w.since = time.Time{}
	}
	return ids, refs
}

// reuse gives ids and refs, taken for part and done with (acknowledged and
// settled), back to w for its next acknowledgements of part: an inline
// reader's buffers then serve read after read.
func (w *worker[T]) reuse(part int, ids []string, refs []heldRef) {
	if part < len(w.acks) && w.acks[part] == nil {
		w.acks[part], w.refs[part] = ids[:0], refs[:0]
	}
}

// flushIfDue hands the acknowledgements over when the oldest has waited
// ackFlushAfter; now is the end of the unit just handled.
func (w *worker[T]) flushIfDue(s *scheduler[T], now time.Time) {
	switch {
	case w.pending == 0:
	case w.since.IsZero():
		w.since = now
	case now.Sub(w.since) >= ackFlushAfter:
		w.flush(s)
	}
}

func (w *worker[T]) flush(s *scheduler[T]) {
	w.since = time.Time{}
	if w.pending == 0 {
		return
	}
	for part, ids := range w.acks {
		if len(ids) == 0 {
			continue
		}
		if w.direct != nil {
			w.direct(part, ids, w.refs[part])
		} else {
			s.flushAcks(part, ids, w.refs[part])
		}
		w.acks[part], w.refs[part] = nil, nil
	}
	w.pending = 0
}

// admit takes msgs, entries of one stream (partition) in stream order,
// read or claimed by the read that readStarted numbered read, drops those
// this consumer holds (an entry reclaim handed back while this consumer
// was running it or acknowledging it) or settled after that read was
// sent, forms units of up to size entries and queues them, and starts
// workers for them when spawn is true. It reports how many entries it
// queued. unitBuf, when not nil, holds units no longer in use, reused when
// there are enough. msgs is compacted in place.
func (s *scheduler[T]) admit(msgs []Message[T], size int, key func(Message[T]) string, spawn bool, unitBuf *[]unit[T], read uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || len(msgs) == 0 {
		return 0
	}
	kept := s.dropRecorded(msgs, read)
	if len(kept) == 0 {
		return 0
	}
	held := s.hold(kept)
	n := unitCount(kept, size)
	var units []unit[T]
	if unitBuf != nil && cap(*unitBuf) >= n {
		units = (*unitBuf)[:n]
		clear(units)
	} else {
		units = make([]unit[T], n)
		if unitBuf != nil {
			*unitBuf = units
		}
	}
	var orders []unitOrder
	if s.order != nil {
		orders = make([]unitOrder, n)
	}
	for i, lo := 0, 0; i < n; i++ {
		u := &units[i]
		hi := lo + 1
		if kept[lo].isolate {
			u.exclusive = true
		} else {
			for hi < len(kept) && hi-lo < size && !kept[hi].isolate {
				hi++
			}
		}
		u.msgs = kept[lo:hi:hi]
		u.held = held.at(lo)
		lo = hi
		if size > 1 || s.trackHandled {
			st := &batchState{handled: make([]bool, len(u.msgs))}
			for j := range u.msgs {
				u.msgs[j].batch, u.msgs[j].index = st, j
			}
		}
		s.units++
		s.entries += len(u.msgs)
		if s.order != nil {
			u.order = &orders[i]
			u.order.payload = u
			for _, m := range u.msgs {
				if k := key(m); !contains(u.order.keys, k) {
					u.order.keys = append(u.order.keys, k)
				}
			}
			if !s.order.admit(u.order) {
				continue // finish of an earlier unit with its key readies it
			}
		}
		s.ready = append(s.ready, u)
	}
	if spawn {
		s.spawn()
	}
	return len(kept)
}

// unitCount is the number of units admit forms of msgs: runs of up to
// size entries, each crash suspect a unit of its own.
func unitCount[T any](msgs []Message[T], size int) int {
	n, run := 0, 0
	for i := range msgs {
		switch {
		case msgs[i].isolate:
			n++
			run = 0
		case run == 0 || run == size:
			n++
			run = 1
		default:
			run++
		}
	}
	return n
}

func contains(keys []string, k string) bool {
	for _, have := range keys {
		if have == k {
			return true
		}
	}
	return false
}

// spawn starts workers for the ready units that no live worker is about to
// take, while slots are free. Called with mu held.
func (s *scheduler[T]) spawn() {
	for s.canPop() && s.active-s.running < s.readyLen() && s.active < s.concurrency {
		slot, err := s.slots.TryAcquire(context.Background())
		if err != nil {
			return
		}
		s.active++
		s.workers.Add(1)
		go s.runWorker(slot)
	}
}

func (s *scheduler[T]) runWorker(slot *puddle.Resource[struct{}]) {
	defer s.workers.Done()
	var w worker[T]
	for {
		u := s.next(&w, slot)
		if u == nil {
			return
		}
		s.work(&w, u)
		s.finish(u)
	}
}

// next returns the next ready unit, or nil when there is none or the
// scheduler stopped. Before returning nil it hands over the worker's
// acknowledgements, then releases its slot and stops counting it as alive,
// both under mu, so that admit, seeing no live worker, finds the slot free.
func (s *scheduler[T]) next(w *worker[T], slot *puddle.Resource[struct{}]) *unit[T] {
	for flushed := false; ; flushed = true {
		s.mu.Lock()
		if s.canPop() {
			u := s.pop()
			s.mu.Unlock()
			return u
		}
		if flushed || w.pending == 0 {
			slot.Release()
			s.active--
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		w.flush(s) // nothing to do: acknowledge what is done, then look again
	}
}

// runHere runs ready units on the calling goroutine, holding a slot like a
// worker, until none is left; an inline reader uses it. It waits for the
// slot while a worker holds it. It reports whether every unit admitted so
// far has finished.
func (s *scheduler[T]) runHere(ctx context.Context, w *worker[T]) bool {
	slot, err := s.slots.Acquire(ctx)
	if err != nil {
		return false // ctx ended: what is queued is dropped at stop
	}
	s.mu.Lock()
	s.active++
	s.mu.Unlock()
	for {
		u := s.take()
		if u == nil {
			break
		}
		s.work(w, u)
		s.finish(u)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	slot.Release()
	s.active--
	s.spawn() // for units admitted meanwhile by reclaim
	return s.units == 0 && s.running == 0 && s.active == 0
}

// take pops the next ready unit, or returns nil when there is none or the
// scheduler stopped.
func (s *scheduler[T]) take() *unit[T] {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.canPop() {
		return nil
	}
	return s.pop()
}

func (s *scheduler[T]) readyLen() int { return len(s.ready) - s.head }

// canPop reports whether the next ready unit may start now: the
// scheduler runs, no exclusive unit is running, and the next unit, if
// exclusive, would run alone. Called with mu held.
func (s *scheduler[T]) canPop() bool {
	if s.stopped || s.paused || s.alone || s.readyLen() == 0 || s.ctx.Err() != nil {
		return false
	}
	return !s.ready[s.head].exclusive || s.running == 0
}

// pop removes the first ready unit and counts it running. Called with mu
// held.
func (s *scheduler[T]) pop() *unit[T] {
	u := s.ready[s.head]
	s.ready[s.head] = nil
	s.head++
	if s.head == len(s.ready) { // empty: reuse the array from its start
		s.ready, s.head = s.ready[:0], 0
	}
	s.units--
	s.entries -= len(u.msgs)
	s.running++
	s.alone = u.exclusive
	if u.order != nil {
		u.order.running = true
	}
	s.signal()
	return u
}

// finish records that u ran, releases its entries that were not handed
// over for acknowledgement (they stay pending, for redelivery), and
// readies the units that waited for its keys.
func (s *scheduler[T]) finish(u *unit[T]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	for i, m := range u.msgs {
		o := u.outcomeOf(i)
		if o == outcomePending && m.batch != nil && m.batch.isHandled(m.index) {
			o = outcomeSettled // the batch handler acknowledged or dead-lettered it
		}
		switch o {
		case outcomePending:
			s.releaseRef(u.held.at(i))
		case outcomeSettled:
			s.settleRef(u.held.at(i))
		}
	}
	if s.order != nil {
		for _, next := range s.order.finish(u.order) {
			s.ready = append(s.ready, next.payload.(*unit[T]))
		}
	}
	if u.exclusive {
		s.alone = false
	}
	s.spawn()
	s.signal()
}

// pause starts no unit until resume, and drops the units waiting to
// start, releasing their entries: they stay pending under this consumer,
// which re-reads them when it resumes. Running units go on.
func (s *scheduler[T]) pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = true
	var dropped []*unit[T]
	if s.order != nil {
		for _, uo := range s.order.dropWaiting() {
			dropped = append(dropped, uo.payload.(*unit[T]))
		}
	} else {
		dropped = s.ready[s.head:]
	}
	for _, u := range dropped {
		for i := range u.msgs {
			s.releaseRef(u.held.at(i))
		}
	}
	clear(s.ready)
	s.ready, s.head = s.ready[:0], 0
	s.units, s.entries = 0, 0
	s.signal()
}

// resume lets units start again.
func (s *scheduler[T]) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = false
	s.spawn()
	s.signal()
}

// release stops holding the entries refs, whose XACK failed: they are
// pending, for redelivery.
func (s *scheduler[T]) release(refs []heldRef) {
	if len(refs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range refs {
		s.releaseRef(r)
	}
}

// settle stops holding the entries refs, acknowledged: a read or claim
// sent before may still return them, and admit drops them.
func (s *scheduler[T]) settle(refs []heldRef) {
	if len(refs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range refs {
		s.settleRef(r)
	}
}

// readStarted records that a read or claim is about to be sent, and
// returns its number for admit and readDone.
func (s *scheduler[T]) readStarted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads[s.seq]++
	return s.seq
}

// readDone records that what the read numbered read returned has been
// admitted or dropped, and forgets the settlements that no read still in
// flight was sent before.
func (s *scheduler[T]) readDone(read uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reads[read]--; s.reads[read] <= 0 {
		delete(s.reads, read)
	}
	if len(s.reads) == 0 {
		s.forget(0)
	} else {
		s.forget(s.oldestRead())
	}
}

// signal wakes the waiters whose condition may hold now. Called with mu
// held.
func (s *scheduler[T]) signal() {
	if (s.waitRead && (s.stopped || s.entries < s.readAhead)) || (s.waitFree && (s.stopped || s.free() > 0)) {
		close(s.changed)
		s.changed = make(chan struct{})
		s.waitRead, s.waitFree = false, false
	}
}

// free is the number of units that could start at once. Called with mu
// held.
func (s *scheduler[T]) free() int {
	return max(0, s.concurrency-s.running-s.units)
}

// waitToRead waits until fewer than readAhead entries wait to start, and
// reports false when ctx ended or the scheduler stopped first.
func (s *scheduler[T]) waitToRead(ctx context.Context) bool {
	for {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return false
		}
		if s.entries < s.readAhead {
			s.mu.Unlock()
			return true
		}
		s.waitRead = true
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// waitFreeSlots waits until at least one unit could start at once and
// returns how many, or 0 when ctx ended or the scheduler stopped first.
func (s *scheduler[T]) waitFreeSlots(ctx context.Context) int {
	for {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return 0
		}
		if n := s.free(); n > 0 {
			s.mu.Unlock()
			return n
		}
		s.waitFree = true
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0
		}
	}
}

// stop lets running units finish but starts no other: the units still
// waiting are dropped, and their entries stay pending.
func (s *scheduler[T]) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	for _, u := range s.ready[s.head:] {
		for i := range u.msgs {
			s.releaseRef(u.held.at(i))
		}
	}
	s.ready, s.head = nil, 0
	if s.order != nil {
		s.order.stop()
	}
	s.units, s.entries = 0, 0
	close(s.changed)
	s.changed = make(chan struct{})
}
