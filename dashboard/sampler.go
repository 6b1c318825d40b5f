package dashboard

import (
	"context"
	"sync"
	"time"

	"github.com/safesync-go/safesync/ops"
)

// sampler keeps, per stream, what the streams looked like over the last
// SampleWindow, for the charts. It runs in one goroutine that the first
// page served starts (touch), that stops by itself once no page was served
// for a whole window, and that close stops for good.
type sampler struct {
	ops      *ops.Ops
	interval time.Duration
	window   time.Duration
	match    string
	max      int
	now      func() time.Time
	logf     func(msg string, args ...any)

	mu       sync.Mutex
	series   map[string][]point // by stream name, oldest first
	lastView time.Time
	started  time.Time // when the running goroutine started
	lastErr  error     // of the last sample, nil when it succeeded
	closed   bool
	running  bool               // a goroutine samples, and has not decided to stop
	cancel   context.CancelFunc // of the last goroutine's ctx
	done     chan struct{}      // closed when the last goroutine ends
}

// sampleTimeout bounds one sample.
const sampleTimeout = 30 * time.Second

// point is one sample of a stream.
type point struct {
	At      time.Time
	Handled int64 // ops.StreamSummary.Handled
	Pending int64
	Lag     int64
	Length  int64
}

func newSampler(x *ops.Ops, o Options) *sampler {
	return &sampler{
		ops: x, interval: o.SampleInterval, window: o.SampleWindow, match: o.Match, max: o.MaxSampledStreams,
		now: o.Now, logf: o.Logger.Warn, series: map[string][]point{},
	}
}

// enabled reports whether sampling is on at all.
func (s *sampler) enabled() bool { return s.interval > 0 }

// touch records a page view, and starts sampling unless it runs, is off
// or was closed.
func (s *sampler) touch() {
	if !s.enabled() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastView = s.now()
	if s.closed || s.running {
		return
	}
	prev := s.done
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done, s.started, s.running = cancel, make(chan struct{}), s.now(), true
	go s.run(ctx, cancel, prev, s.done)
}

// run waits for the goroutine before it (prev, if not nil) to end, then
// samples every interval until ctx ends or no page was viewed for a whole
// window. Each goroutine waiting for the one before, close waits for them
// all by waiting for the last.
func (s *sampler) run(ctx context.Context, cancel context.CancelFunc, prev, done chan struct{}) {
	defer close(done)
	defer cancel()
	if prev != nil {
		<-prev
	}
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		s.sample(ctx)
		select {
		case <-ctx.Done(): // close: no other goroutine starts after this one
			s.mu.Lock()
			s.running = false
			s.mu.Unlock()
			return
		case <-t.C:
		}
		s.mu.Lock()
		idle := s.now().Sub(s.lastView) > s.window
		if idle || s.closed {
			// Decided under the lock: a touch after this starts anew.
			s.running = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// sample reads the streams once and appends a point to each one's series,
// forgetting points older than the window.
func (s *sampler) sample(ctx context.Context) {
	// A slow sample delays the next (the ticker drops ticks), never more
	// than sampleTimeout; Close ends it at once.
	ctx, cancel := context.WithTimeout(ctx, sampleTimeout)
	defer cancel()
	page, err := s.ops.Streams(ctx, ops.StreamsQuery{Match: s.match, Limit: s.max})
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if err != nil {
		if ctx.Err() == nil {
			s.logf("safesync/dashboard: sampling the streams failed", "err", err)
		}
		return
	}
	seen := map[string]bool{}
	for _, st := range page.Streams {
		seen[st.Name] = true
		s.series[st.Name] = append(s.series[st.Name], point{
			At: now, Handled: st.Handled, Pending: st.Pending, Lag: st.Lag, Length: st.Length,
		})
	}
	cut := now.Add(-s.window)
	for name, pts := range s.series {
		i := 0
		for i < len(pts) && pts[i].At.Before(cut) {
			i++
		}
		switch {
		case i == len(pts):
			delete(s.series, name)
		case i > 0:
			s.series[name] = append([]point(nil), pts[i:]...)
		}
	}
}

// close stops the sampling for good and waits for it.
func (s *sampler) close() {
	s.mu.Lock()
	s.closed = true
	done, cancel := s.done, s.cancel
	s.mu.Unlock()
	if done != nil {
		cancel()
		<-done
	}
}

// points returns a copy of the stream's samples, oldest first.
func (s *sampler) points(name string) []point {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]point(nil), s.series[name]...)
}

// state describes the sampling for the pages.
type samplingState struct {
	Enabled  bool
	Running  bool
	Since    time.Time
	Interval time.Duration
	Window   time.Duration
	Failing  bool
}

func (s *sampler) state() samplingState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return samplingState{
		Enabled: s.enabled(), Running: s.running, Since: s.started,
		Interval: s.interval, Window: s.window, Failing: s.lastErr != nil,
	}
}
