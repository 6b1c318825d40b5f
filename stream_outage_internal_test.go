package safesync

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The outage detector: a failure with a failing probe pauses at once; the
// pause shows in the gauge and the Readiness, logs once, holds waiters,
// probes with backoff, and ends by itself once the probe passes and a
// trial window goes by without failures.
func TestOutagePausesProbesAndResumes(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(MetricsOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	sm := m.forStream("orders", "workers")
	ready := NewReadiness()
	var down atomic.Bool
	var probes atomic.Int64
	down.Store(true)
	o := newOutage(log, `consumer "c"`, ready, []*streamMetrics{sm}, func(context.Context) error {
		probes.Add(1)
		if down.Load() {
			return errors.New("connection refused")
		}
		return nil
	})
	var paused, resumed atomic.Int64
	o.setHooks(func() { paused.Add(1) }, func() { resumed.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go o.loop(ctx)

	if err := ready.Ready(); err != nil {
		t.Fatalf("Ready before any failure = %v", err)
	}
	o.report(errors.New("dial tcp: connection refused"))
	waitUntil(t, "paused", o.paused)
	if err := ready.Ready(); !errors.Is(err, ErrPaused) || !strings.Contains(err.Error(), `consumer "c"`) {
		t.Fatalf("Ready while paused = %v", err)
	}
	if v := gaugeValue(t, reg, "coti_safesync_queue_paused"); v != 1 {
		t.Fatalf("paused gauge = %v, want 1", v)
	}
	waitCtx, cancelWait := context.WithTimeout(ctx, 300*time.Millisecond)
	if o.wait(waitCtx) {
		t.Fatal("wait returned true while paused")
	}
	cancelWait()
	// More failures while paused change nothing.
	o.report(errors.New("again"))
	time.Sleep(400 * time.Millisecond)
	if n := probes.Load(); n < 2 || n > 6 {
		t.Fatalf("%d probes in 0.7 s of pause, want a few (backoff from 100 ms)", n)
	}
	down.Store(false)
	if !o.wait(ctx) {
		t.Fatal("wait did not return once the probe passed")
	}
	waitUntil(t, "recovered", func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.state == outageRunning
	})
	if err := ready.Ready(); err != nil {
		t.Fatalf("Ready after recovery = %v", err)
	}
	if v := gaugeValue(t, reg, "coti_safesync_queue_paused"); v != 0 {
		t.Fatalf("paused gauge = %v, want 0", v)
	}
	if paused.Load() != 1 || resumed.Load() != 1 {
		t.Fatalf("pause hook ran %d times, resume hook %d; want once each", paused.Load(), resumed.Load())
	}
	logs := buf.String()
	if strings.Count(logs, "safesync: paused") != 1 || strings.Count(logs, "safesync: resumed") != 1 {
		t.Fatalf("want one pause and one resume line, got:\n%s", logs)
	}
}

// When the probes pass, failures in a row still pause (a database that
// answers a ping but fails transactions; Consumer.Run, which cannot probe
// its handler's dependencies), and a failure during the trial pauses again
// with the backoff it had, without logging again.
func TestOutagePausesAfterFailuresInARowEvenWhenProbesPass(t *testing.T) {
	var buf syncBuffer
	o := newOutage(slog.New(slog.NewTextHandler(&buf, nil)), "c", nil, nil, func(context.Context) error { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go o.loop(ctx)
	for i := 1; i < pauseAfter; i++ {
		o.report(errors.New("BEGIN failed"))
	}
	time.Sleep(50 * time.Millisecond)
	if o.paused() {
		t.Fatalf("paused after %d failures with passing probes, want %d", pauseAfter-1, pauseAfter)
	}
	o.report(errors.New("BEGIN failed"))
	if !o.paused() {
		t.Fatalf("not paused after %d failures in a row", pauseAfter)
	}
	if !o.wait(ctx) {
		t.Fatal("not resumed for a trial")
	}
	o.report(errors.New("BEGIN failed again")) // the trial fails
	if !o.paused() {
		t.Fatal("a failure during the trial did not pause again")
	}
	o.mu.Lock()
	delay := o.delay
	o.mu.Unlock()
	if delay <= probeMin {
		t.Fatalf("the backoff went back to %v after a failed trial", delay)
	}
	o.succeeded()
	if !o.wait(ctx) {
		t.Fatal("not resumed")
	}
	o.succeeded()
	time.Sleep(trialWindow + 200*time.Millisecond)
	if logs := buf.String(); strings.Count(logs, "safesync: paused") != 1 || strings.Count(logs, "safesync: resumed") != 1 {
		t.Fatalf("want one pause and one resume line for the outage, got:\n%s", logs)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gaugeValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				v += m.GetGauge().GetValue()
			}
		}
	}
	return v
}
