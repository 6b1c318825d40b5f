package dashboard

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
	"github.com/safesync-go/safesync/safesynctest"
)

// clock is a test clock that moves only when told.
type clock struct {
	mu sync.Mutex
	at time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.at
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.at = c.at.Add(d)
	c.mu.Unlock()
}

// samplers counts the goroutines running a sampler.
func samplers() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return bytes.Count(buf[:n], []byte("dashboard.(*sampler).run("))
}

// waitFor waits until cond holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func newTestSampler(t *testing.T, c *clock) *sampler {
	t.Helper()
	redis, err := safesynctest.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(redis.Close)
	client, err := redis.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	if _, err := safesync.PublishJSON(context.Background(), client, "orders", map[string]int{"id": 1}); err != nil {
		t.Fatal(err)
	}
	o := Options{SampleInterval: time.Millisecond, SampleWindow: time.Minute, Now: c.now}.withDefaults()
	return newSampler(ops.New(client, ops.Config{}), o)
}

func TestSamplingStartsWithAPageStopsWhenNoOneLooksAndStopsForGoodOnClose(t *testing.T) {
	c := &clock{at: time.UnixMilli(1700000000000)}
	s := newTestSampler(t, c)
	if s.state().Running || samplers() != 0 {
		t.Fatal("sampling runs before any page was served")
	}
	s.touch()
	waitFor(t, "sampled twice", func() bool { return len(s.points("orders")) >= 2 })
	if !s.state().Running {
		t.Fatal("sampling is not running after a page")
	}

	// No page for longer than the window: sampling stops by itself.
	c.add(time.Minute + time.Second)
	waitFor(t, "stopped after a window without pages", func() bool { return !s.state().Running && samplers() == 0 })

	// The next page starts it again; Close stops it at once, waiting for it.
	s.touch()
	if !s.state().Running {
		t.Fatal("sampling did not start again with a page")
	}
	s.close()
	if s.state().Running {
		t.Fatal("sampling still runs after close returned")
	}
	// close returns once the goroutine has closed its done channel; its
	// frame may show in a stack dump until it has returned, a moment later.
	waitFor(t, "every sampler goroutine ended after close", func() bool { return samplers() == 0 })
	s.touch()
	if s.state().Running || samplers() != 0 {
		t.Fatal("a page after close started sampling again")
	}
	s.close() // idempotent
}

func TestSamplesOlderThanTheWindowAreForgotten(t *testing.T) {
	c := &clock{at: time.UnixMilli(1700000000000)}
	s := newTestSampler(t, c)
	ctx := context.Background()
	s.sample(ctx)
	c.add(30 * time.Second)
	s.sample(ctx)
	if n := len(s.points("orders")); n != 2 {
		t.Fatalf("%d points, want 2", n)
	}
	c.add(45 * time.Second) // the first is now 75 s old, the window 60 s
	s.sample(ctx)
	pts := s.points("orders")
	if len(pts) != 2 || !pts[0].At.Equal(c.now().Add(-45*time.Second)) {
		t.Fatalf("points %+v, want the last two", pts)
	}
}

func TestRatesAreHandledEntriesPerSecondAndNeverNegative(t *testing.T) {
	at := time.UnixMilli(1700000000000)
	pts := []point{
		{At: at, Handled: 100},
		{At: at.Add(10 * time.Second), Handled: 150},             // 5/s
		{At: at.Add(20 * time.Second), Handled: 120},             // trimmed: 0
		{At: at.Add(20 * time.Second), Handled: 130},             // same time: skipped
		{At: at.Add(24 * time.Second), Handled: 131, Pending: 4}, // 0.25/s
	}
	got := rates(pts)
	want := []float64{5, 0, 0.25}
	if len(got) != len(want) {
		t.Fatalf("rates %v, want %v", got, want)
	}
	for i := range want {
		if got[i].v != want[i] {
			t.Errorf("rate %d = %v, want %v", i, got[i].v, want[i])
		}
	}
	if r := currentRate(pts[:1]); r != -1 {
		t.Errorf("rate of one sample = %v, want -1 (unknown)", r)
	}
	st := samplingState{Enabled: true}
	ch := newChart("orders", pts, at.Add(30*time.Second), time.Minute, st, true)
	if len(ch.Series) != 2 || ch.Series[0].Last != "0.25" || ch.Series[0].Max != "5" || ch.Series[1].Max != "4" || ch.Span != "30s" {
		t.Errorf("chart %+v", ch)
	}
	if ch := newChart("orders", pts[:1], at, time.Minute, st, false); len(ch.Series) != 0 || !strings.Contains(ch.Note, "fills in") {
		t.Errorf("chart of one sample %+v", ch)
	}
	if ch := newChart("orders", pts, at, time.Minute, samplingState{}, false); len(ch.Series) != 0 || ch.Note != "sampling is off" {
		t.Errorf("chart with sampling off %+v", ch)
	}
}

func TestTokensExpireAndOnlyTheirKeyMakesThem(t *testing.T) {
	c := &clock{at: time.UnixMilli(1700000000000)}
	key := []byte("0123456789abcdef0123456789abcdef")
	tk, err := newTokens(key, time.Hour, c.now)
	if err != nil {
		t.Fatal(err)
	}
	tok := tk.issue()
	if err := tk.check(tok); err != nil {
		t.Fatalf("a fresh token: %v", err)
	}
	replica, _ := newTokens(key, time.Hour, c.now)
	if err := replica.check(tok); err != nil {
		t.Errorf("a replica with the same key refused it: %v", err)
	}
	other, _ := newTokens(nil, time.Hour, c.now)
	if err := other.check(tok); err != errTokenBad {
		t.Errorf("a handler with its own key: %v, want errTokenBad", err)
	}
	at, mac, _ := strings.Cut(tok, ".")
	for _, bad := range []string{"", "garbage", at + ".", "1" + at + "." + mac, at + "." + mac + "x"} {
		if err := tk.check(bad); err == nil {
			t.Errorf("check(%q) = nil", bad)
		}
	}
	c.add(time.Hour + time.Second)
	if err := tk.check(tok); err != errTokenExpired {
		t.Errorf("a token older than its TTL: %v, want errTokenExpired", err)
	}
}

func TestTimesAreReadAsDurationsAgoOrUTCTimes(t *testing.T) {
	now := time.Date(2024, 5, 2, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"90m":                  now.Add(-90 * time.Minute),
		"3d":                   now.Add(-72 * time.Hour),
		"2024-05-01":           time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC),
		"2024-05-01 12:30":     time.Date(2024, 5, 1, 12, 30, 0, 0, time.UTC),
		"2024-05-01T12:30:05Z": time.Date(2024, 5, 1, 12, 30, 5, 0, time.UTC),
	} {
		got, err := parseWhen(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseWhen("yesterday", now); err == nil {
		t.Error("parseWhen(yesterday) succeeded")
	}
}

func TestNumbersAndDurationsReadLikeAPerson(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1\u202f000", 1234567: "1\u202f234\u202f567", -4500: "-4\u202f500"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
	for v, want := range map[float64]string{-1: "-", 0: "0", 0.25: "0.25", 3.5: "3.5", 120.4: "120"} {
		if got := perSecond(v); got != want {
			t.Errorf("perSecond(%v) = %q, want %q", v, got, want)
		}
	}
	if got := human(100 * time.Hour); got != "4d4h" {
		t.Errorf("human(100h) = %q", got)
	}
}
