package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// lineWriter collects what is written and signals each write.
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestServeServesTheDashboardUnderItsPrefixUntilInterrupted(t *testing.T) {
	s := newScenario(t)
	out := &lineWriter{wrote: make(chan struct{}, 1)}
	var stderr bytes.Buffer
	a := &app{stdout: out, stderr: &stderr, now: func() time.Time { return now }, connect: connect,
		getenv: func(k string) string {
			if k == envRedisAddr {
				return s.srv.Addr()
			}
			return ""
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exit := make(chan int, 1)
	go func() { exit <- a.run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--prefix", "ops"}) }()

	var base string
	re := regexp.MustCompile(`http://(127\.0\.0\.1:\d+)/ops/`)
	for base == "" {
		select {
		case <-out.wrote:
			if m := re.FindStringSubmatch(out.String()); m != nil {
				base = "http://" + m[1]
			}
		case code := <-exit:
			t.Fatalf("serve exited %d before serving:\n%s%s", code, out.String(), stderr.String())
		}
	}
	if !strings.Contains(out.String(), "(read-only)") {
		t.Errorf("serve did not say it is read-only: %s", out.String())
	}
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/ops/"); code != http.StatusOK || !strings.Contains(body, `href="stream?name=orders"`) || !strings.Contains(body, "payments") {
		t.Errorf("GET /ops/: %d\n%s", code, body)
	}
	if code, body := get("/"); code != http.StatusOK || !strings.Contains(body, `href="stream?name=orders"`) {
		t.Errorf("GET / (redirected to /ops/): %d\n%s", code, body)
	}
	if code, body := get("/ops/dead?stream=orders"); code != http.StatusOK || strings.Contains(body, `id="replay-all"`) {
		t.Errorf("GET /ops/dead: %d, or it shows actions\n%s", code, body)
	}
	if strings.Contains(out.String(), s.srv.Addr()) {
		t.Errorf("serve printed the Redis address: %s", out.String())
	}
	resp, err := http.Post(base+"/ops/purge", "application/x-www-form-urlencoded", strings.NewReader("stream=orders&confirm=yes"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST purge to a read-only dashboard: %d", resp.StatusCode)
	}

	cancel()
	if code := <-exit; code != exitOK {
		t.Errorf("serve exited %d after the interrupt:\n%s", code, stderr.String())
	}
	if !strings.Contains(out.String(), "stopped serving") {
		t.Errorf("serve did not say it stopped: %s", out.String())
	}
}
