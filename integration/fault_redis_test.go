package integration

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// privateRedis is a redis-server of the test's own on a loopback port,
// keeping every write in an append-only file fsynced at each command, so
// that a restart loses nothing that was acknowledged.
type privateRedis struct {
	t    *testing.T
	addr string
	dir  string
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// startPrivateRedis starts redis-server on a free loopback port; it is
// killed when the test ends. The test skips when SAFESYNC_START_SERVERS is
// not 1 or redis-server is not installed (and fails under
// SAFESYNC_REQUIRE_SERVICES=1).
func startPrivateRedis(t *testing.T) *privateRedis {
	t.Helper()
	mayStartServers(t, "a private redis-server")
	if _, err := exec.LookPath("redis-server"); err != nil {
		unavailable(t, "redis-server", err.Error())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := &privateRedis{t: t, addr: addr, dir: t.TempDir()}
	r.start()
	t.Cleanup(func() {
		if r.cmd != nil {
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// start runs redis-server on r's port and directory and waits until it
// answers.
func (r *privateRedis) start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.addr)
	r.out.Reset()
	r.cmd = exec.Command("redis-server",
		"--bind", "127.0.0.1", "--port", port, "--dir", r.dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "",
		"--daemonize", "no", "--protected-mode", "yes")
	r.cmd.Stdout = &r.out
	r.cmd.Stderr = &r.out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.done = make(chan error, 1)
	go func() { r.done <- r.cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for pingRedis(r.addr) != nil {
		select {
		case err := <-r.done:
			r.cmd = nil
			r.t.Fatalf("redis-server on %s exited: %v\n%s", r.addr, err, r.out.String())
		default:
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s does not answer after 20 s\n%s", r.addr, r.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM (redis-server then flushes its append-only file and
// exits) and waits for the process to end.
func (r *privateRedis) stop() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		r.t.Fatalf("SIGTERM redis-server: %v", err)
	}
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Fatalf("redis-server ended with %v\n%s", err, r.out.String())
		}
	case <-time.After(30 * time.Second):
		r.t.Fatalf("redis-server still running 30 s after SIGTERM\n%s", r.out.String())
	}
	r.cmd = nil
}

// client returns a rueidis client on r, closed at the end of the test.
func (r *privateRedis) client() rueidis.Client {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.addr}, DisableCache: true})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(c.Close)
	return c
}

const (
	restartEntries   = 1500 // published before the first restart, and as many after it
	restartMalformed = 3    // of each half
)

// Three consumers apply entries exactly once while their Redis server is
// stopped with SIGTERM and started again on the same port and directory,
// twice: reads, acknowledgements and reclaims fail while it is down and
// resume when it is back; entries committed but not acknowledged meanwhile
// stay pending and are found applied when they come back.
func TestFaultRedisRestartAppliesEveryEntryExactlyOnce(t *testing.T) {
	db := openMySQL(t, nil)
	server := startPrivateRedis(t)
	rdb := server.client()
	w := newFaultWorkload(t, db, rdb)
	w.publish(t, 1, restartEntries, randomMalformed(1, restartEntries, restartMalformed))

	stats := newCounter()
	p := faultPipeline(w, db, w.applied, 2*time.Millisecond, 0, stats.count)
	stop := runConsumers(p, rdb, w, 3)
	defer stop()

	ctx := context.Background()
	waitApplied := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			applied, _, _, err := w.progress(ctx)
			if err == nil && applied >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d entries applied after 2 minutes, want %d (%v)", applied, n, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	start := time.Now()
	var appliedAtRestart []int64
	restart := func() {
		t.Helper()
		applied, _, _, err := w.progress(ctx)
		if err != nil {
			t.Fatal(err)
		}
		appliedAtRestart = append(appliedAtRestart, applied)
		server.stop()
		time.Sleep(500 * time.Millisecond) // the consumers meet a dead server
		server.start()
	}

	waitApplied(restartEntries / 4)
	restart()
	w.publish(t, restartEntries+1, restartEntries, randomMalformed(restartEntries+1, restartEntries, restartMalformed))
	waitApplied(restartEntries + restartEntries/4)
	restart()
	w.waitDone(t, 3*time.Minute)
	elapsed := time.Since(start)
	runErrs := stop()
	for _, err := range runErrs {
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	w.check(t)

	s := stats.snapshot()
	t.Logf("restarts with %v entries applied; done in %v; handler calls %d for %d entries; %d entries committed without re-running; stats %s",
		appliedAtRestart, elapsed.Round(time.Millisecond), s[statCalls], len(w.good), s[statSkipped], mapString(s))
	if s[statSkipped] == 0 {
		t.Errorf("no entry was committed without re-running: no COMMIT was left unacknowledged by the restarts, so Once was not put to the test")
	}
	for i, a := range appliedAtRestart {
		if a == 0 || a >= int64(len(w.good)) {
			t.Errorf("restart %d came with %d of %d entries applied: not in the middle of the work", i+1, a, len(w.good))
		}
	}
}
