package safesynctest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// StreamTarget is a Redis server for RunStreamConformance.
type StreamTarget struct {
	// NewClient returns a new client on the server, closed when t ends.
	// Every call within one test must reach the same server. Calling Close
	// on a client earlier must be harmless.
	NewClient func(t *testing.T) rueidis.Client
	// Embedded marks the embedded Redis (EmbeddedRedis, miniredis): the
	// cases where it behaves differently from Redis are skipped there, each
	// saying how it differs.
	Embedded bool
}

// RunStreamConformance checks the stream layer against a server: group
// creation, publish/read/ack, count and block, own-pending-first on
// restart, competing consumers, reclaim (idle time, cursor beyond the first
// thousand pending entries, deleted entries), dead letters (max deliveries,
// undecodable entries, permanent failures), shutdown (interrupting a
// blocking read, acknowledging exactly the finished handlers, no goroutine
// left behind), per-key ordering, panics, ack failures and metrics.
//
// Every case uses streams of its own, named after the test with a random
// suffix, and deletes them when it ends, so a shared server can be used.
// Cases do not run in parallel with each other.
func RunStreamConformance(t *testing.T, target StreamTarget) {
	s := &suite{target: target}
	for _, c := range conformanceCases {
		t.Run(c.name, func(t *testing.T) {
			if c.differs != "" && target.Embedded {
				t.Skip("the embedded Redis differs from Redis here: " + c.differs)
			}
			c.run(t, s)
		})
	}
}

// conformanceCase is one case of the suite. differs, when set, says how the
// embedded Redis differs from Redis in what the case checks; the case then
// runs on Redis only.
type conformanceCase struct {
	name    string
	differs string
	run     func(t *testing.T, s *suite)
}

type suite struct {
	target StreamTarget
}

// env is what one case works with.
type env struct {
	t       *testing.T
	client  rueidis.Client
	stream  string
	metrics *safesync.Metrics
	reg     *prometheus.Registry
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9]+`)

// newEnv returns a client and a fresh stream name whose stream and
// dead-letter stream are deleted when t ends.
func (s *suite) newEnv(t *testing.T) *env {
	t.Helper()
	client := s.target.NewClient(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := strings.Trim(unsafeName.ReplaceAllString(t.Name(), "-"), "-")
	if len(name) > 80 {
		name = name[len(name)-80:]
	}
	stream := "safesync-conformance:{" + name + "-" + hex.EncodeToString(b[:]) + "}"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = client.Do(ctx, client.B().Del().Key(stream, stream+safesync.DeadLetterSuffix).Build()).Error()
	})
	reg := prometheus.NewRegistry()
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, client: client, stream: stream, metrics: m, reg: reg}
}

// config returns a configuration for consumer name on the env's stream,
// with a short block and claim settings that never reclaim within a case
// unless it changes them.
func (e *env) config(consumer string) safesync.StreamConfig {
	return safesync.StreamConfig{
		Stream: e.stream, Group: "workers", Consumer: consumer,
		Block:     200 * time.Millisecond,
		ClaimIdle: time.Hour, ClaimInterval: time.Hour,
		ShutdownGrace: 5 * time.Second,
		Metrics:       e.metrics,
	}
}

// order is the payload the cases publish.
type order struct {
	OrderID int    `json:"order_id"`
	Amount  int    `json:"amount"`
	Key     string `json:"key,omitempty"`
}

func (e *env) consumer(cfg safesync.StreamConfig, opts ...safesync.ConsumerOption[order]) *safesync.Consumer[order] {
	e.t.Helper()
	c, err := safesync.NewConsumer(e.client, cfg, safesync.JSON[order](), opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// publish adds n orders numbered from first and returns their ids.
func (e *env) publish(first, n int) []string {
	e.t.Helper()
	cmds := make(rueidis.Commands, n)
	for i := range n {
		fields, err := safesync.EncodeJSON(order{OrderID: first + i, Amount: 5})
		if err != nil {
			e.t.Fatal(err)
		}
		cmds[i] = e.client.B().Xadd().Key(e.stream).Id("*").FieldValue().FieldValue(safesync.DataField, fields[safesync.DataField]).Build()
	}
	ids := make([]string, n)
	for i, r := range e.client.DoMulti(context.Background(), cmds...) {
		id, err := r.ToString()
		if err != nil {
			e.t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

// metric returns the value of a counter or gauge, or the sample count of a
// histogram, named name with the given labels, summed over other labels.
func (e *env) metric(name string, labels map[string]string) float64 {
	e.t.Helper()
	v, _ := e.metricSum(name, labels)
	return v
}

// metricSum is metric, plus the sum of a histogram's samples.
func (e *env) metricSum(name string, labels map[string]string) (value, sum float64) {
	e.t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for k, want := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == k && lp.GetValue() == want)
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				value += m.Counter.GetValue()
			case m.Gauge != nil:
				value += m.Gauge.GetValue()
			case m.Histogram != nil:
				value += float64(m.Histogram.GetSampleCount())
				sum += m.Histogram.GetSampleSum()
			}
		}
	}
	return value, sum
}

// running is a consumer loop running in the background.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

// start runs loop in the background; stop cancels it and returns its error.
func start(loop func(ctx context.Context) error) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- loop(ctx) }()
	return r
}

// stop cancels the loop and waits up to 10 s for it to return.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("consumer did not return within 10s of being stopped")
		return nil
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// recorder collects handled messages.
type recorder struct {
	mu   sync.Mutex
	msgs []safesync.Message[order]
}

func (r *recorder) add(m safesync.Message[order]) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, len(r.msgs))
	for i, m := range r.msgs {
		ids[i] = m.ID
	}
	return ids
}

func (r *recorder) handler(err error) safesync.Handler[order] {
	return func(_ context.Context, m safesync.Message[order]) error {
		r.add(m)
		return err
	}
}

var errTemporary = errors.New("temporary failure")

func pendingIDs(t *testing.T, client rueidis.Client, stream string) []string {
	var ids []string
	for _, p := range Pending(t, client, stream, "workers") {
		ids = append(ids, p.ID)
	}
	return ids
}
