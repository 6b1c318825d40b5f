package integration

// Outages are not poison (issue 12), against real MariaDB and Redis: the
// database cut by a loopback proxy, Redis stopped (SIGSTOP) and restarted,
// for at least 5 × MaxDeliveries × ClaimIdle in the middle of a run, for
// the per-entry pipeline and Batch, with and without Once, and for a plain
// Consumer.Run; the database down at start; a process that dies inside a
// handler. Each ends with the same exact check (outageWorkload.check):
// zero good entries dead-lettered, every good entry applied (exactly once
// with Once), the refused entries dead-lettered with their handler's text,
// nothing pending.
//
// Figures for README (Outages): go test -v -run 'TestOutage' ./integration/

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// The outage tests' consumer settings: MaxDeliveries × ClaimIdle is 0.9 s,
// so an outage of 5 s would have dead-lettered every entry in flight
// five times over under the old rule.
const (
	outageMaxDeliveries = 3
	outageClaimIdle     = 300 * time.Millisecond
	outageLength        = 5 * time.Second // ≥ 5 × outageMaxDeliveries × outageClaimIdle
	// outageWork is each handler call's work besides its SQL: 240 entries
	// take about 1.5 s at Concurrency 4, so that the outage, begun once a
	// quarter is applied, finds most of them still to do.
	outageWork = 20 * time.Millisecond
)

// middle returns how many good entries were applied as an outage begins,
// failing the test if the outage would not be in the middle of the work.
func (w *outageWorkload) middle(t *testing.T) int64 {
	t.Helper()
	applied, _, _, err := w.progress(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if applied >= int64(len(w.good))*3/4 {
		t.Fatalf("%d of %d entries applied before the outage: not in the middle of the work", applied, len(w.good))
	}
	return applied
}

// tcpProxy forwards loopback TCP connections to target. cut closes every
// connection and the listening port (new connections are refused) until
// restore opens the same port again.
type tcpProxy struct {
	t      *testing.T
	addr   string
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

func startTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{t: t, addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	go p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	for {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		if p.ln != ln { // cut meanwhile
			p.mu.Unlock()
			client.Close()
			server.Close()
			continue
		}
		p.conns[client], p.conns[server] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					if _, werr := dst.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			client.Close()
			server.Close()
			p.mu.Lock()
			delete(p.conns, client)
			delete(p.conns, server)
			p.mu.Unlock()
		}
		go pipe(server, client)
		go pipe(client, server)
	}
}

// cut closes every connection and the port.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// restore opens the port again.
func (p *tcpProxy) restore() {
	p.t.Helper()
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("proxy: listen on %s again: %v", p.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.serve(ln)
}

// outageWorkload is the tables and stream of one outage test, and what was
// published: good entries, and refused ones, whose handler returns
// Permanent.
type outageWorkload struct {
	db      *sql.DB        // direct, for the checks
	rdb     rueidis.Client // for the checks, on the consumer's Redis
	effects string         // one row per application: entry_id
	applied string         // the exactly-once table
	stream  string
	group   string

	good    map[string]bool   // entry ids
	refused map[string]string // entry id -> its handler's error text
	poison  map[string]bool   // entry ids that crash their process, checked by their test
}

func newOutageWorkload(t *testing.T, db *sql.DB, rdb rueidis.Client) *outageWorkload {
	t.Helper()
	w := &outageWorkload{db: db, rdb: rdb, group: "workers", good: map[string]bool{}, refused: map[string]string{}, poison: map[string]bool{}}
	w.effects = createTable(t, db, "eff", "CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, entry_id VARBINARY(64) NOT NULL, KEY (entry_id)) ENGINE=InnoDB")
	w.applied = dedupeTable(t, db)
	w.stream = "{" + uniqueName(t, "s") + "}"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = rdb.Do(ctx, rdb.B().Del().Key(w.stream, w.stream+safesync.DeadLetterSuffix, w.stream+":safesync:failures:"+w.group).Build()).Error()
	})
	return w
}

// publish adds n entries; every refuseEvery-th one is refused by the handler.
func (w *outageWorkload) publish(t *testing.T, n, refuseEvery int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		o := order{OrderID: int64(i), AccountID: 1, Amount: 1}
		if i%refuseEvery == 0 {
			o.Amount = -int64(i)
		}
		id := safesynctest.PublishJSON(t, w.rdb, w.stream, o)
		if o.Amount < 0 {
			w.refused[id] = refusal(o).Error()
		} else {
			w.good[id] = true
		}
	}
}

func refusal(o order) error {
	return fmt.Errorf("order %d: amount %d is negative", o.OrderID, o.Amount)
}

// apply is the handler's effect: one effects row, after a little work, so
// that outages find transactions in flight; a negative amount is refused
// for good.
func (w *outageWorkload) apply(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
	if msg.Value.Amount < 0 {
		return safesync.Permanent(refusal(msg.Value))
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(outageWork):
	}
	_, err := tx.ExecContext(ctx, "INSERT INTO `"+w.effects+"` (entry_id) VALUES (?)", msg.ID)
	return err
}

// progress reports how many good entries have an effect, how many entries
// are pending and dead-lettered; it does not fail while servers are down.
func (w *outageWorkload) progress(ctx context.Context) (applied, pending, dead int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.db.QueryRowContext(ctx, "SELECT COUNT(DISTINCT entry_id) FROM `"+w.effects+"`").Scan(&applied); err != nil {
		return 0, 0, 0, err
	}
	if pending, err = xpendingCount(ctx, w.rdb, w.stream, w.group); err != nil {
		return 0, 0, 0, err
	}
	dead, err = w.rdb.Do(ctx, w.rdb.B().Xlen().Key(w.stream+safesync.DeadLetterSuffix).Build()).AsInt64()
	return applied, pending, dead, err
}

// waitApplied waits until at least n good entries have an effect.
func (w *outageWorkload) waitApplied(t *testing.T, n int64, timeout time.Duration) {
	t.Helper()
	if err := pollUntil(timeout, fmt.Sprintf("%d entries applied", n), func() (bool, error) {
		applied, _, _, err := w.progress(context.Background())
		return err == nil && applied >= n, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// waitDone waits until every good entry has an effect, nothing is pending
// and every refused entry is dead-lettered; it returns how long that took.
func (w *outageWorkload) waitDone(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := pollUntil(timeout, "all entries settled", func() (bool, error) {
		applied, pending, dead, err := w.progress(context.Background())
		return err == nil && applied == int64(len(w.good)) && pending == 0 && dead >= int64(len(w.refused)), nil
	}); err != nil {
		applied, pending, dead, perr := w.progress(context.Background())
		t.Fatalf("%v: %d of %d applied, %d pending, %d dead letters for %d refused (%v)", err, applied, len(w.good), pending, dead, len(w.refused), perr)
	}
	return time.Since(start)
}

// check asserts the end state: every good entry applied (exactly once with
// once, at least once without), no refused one applied, the refused ones
// and only they dead-lettered, each with its handler's text, nothing
// pending, no failure record left.
func (w *outageWorkload) check(t *testing.T, once bool) (duplicates int) {
	t.Helper()
	ctx := context.Background()
	rows, err := w.db.QueryContext(ctx, "SELECT entry_id, COUNT(*) FROM `"+w.effects+"` GROUP BY entry_id")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		seen[id] = n
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	for id := range w.good {
		switch n := seen[id]; {
		case n == 0:
			t.Errorf("good entry %s never applied", id)
		case n > 1 && once:
			t.Errorf("good entry %s applied %d times with Once", id, n)
		case n > 1:
			duplicates += n - 1
			t.Logf("entry %s applied %d times (at-least-once without Once)", id, n)
		}
	}
	for id := range w.refused {
		if seen[id] > 0 {
			t.Errorf("refused entry %s applied", id)
		}
	}
	for id := range w.poison {
		if seen[id] > 0 {
			t.Errorf("poison entry %s applied", id)
		}
	}
	dead := safesynctest.DeadLetters(t, w.rdb, w.stream+safesync.DeadLetterSuffix)
	var goodDead []string
	deadSeen := map[string]int{}
	for _, d := range dead {
		deadSeen[d.OriginalID]++
		text, refused := w.refused[d.OriginalID]
		if w.poison[d.OriginalID] {
			continue
		}
		if !refused {
			goodDead = append(goodDead, fmt.Sprintf("%s (%s: %s)", d.OriginalID, d.Reason, d.Error))
			continue
		}
		if d.Reason != safesync.DeadLetterHandler || d.Error != text || d.Failures != 1 || d.Consumer == "" || d.LastFail.IsZero() {
			t.Errorf("dead letter of refused entry %s = %+v, want reason handler, error %q, 1 failure, consumer and time", d.OriginalID, d, text)
		}
	}
	if len(goodDead) > 0 {
		slices.Sort(goodDead)
		t.Errorf("%d good entries dead-lettered: %v", len(goodDead), goodDead)
	}
	for id := range w.refused {
		if deadSeen[id] != 1 {
			t.Errorf("refused entry %s dead-lettered %d times, want once", id, deadSeen[id])
		}
	}
	if p := safesynctest.Pending(t, w.rdb, w.stream, w.group); len(p) != 0 {
		t.Errorf("%d entries still pending, first %+v", len(p), p[0])
	}
	if n, err := w.rdb.Do(ctx, w.rdb.B().Hlen().Key(w.stream+":safesync:failures:"+w.group).Build()).AsInt64(); err != nil || n != 0 {
		t.Errorf("failure records left: %d fields (%v)", n, err)
	}
	return duplicates
}

// outageVariant is one way to consume: a pipeline (per entry or Batch,
// with or without Once) or a plain Consumer.Run whose handler runs its own
// transaction.
type outageVariant struct {
	name        string
	once        bool
	batch       int  // 0: Consumer.Run
	handleBatch bool // a HandleBatch handler that names the entry at fault
}

var outageVariants = []outageVariant{
	{"pipeline with Once", true, 1, false},
	{"pipeline", false, 1, false},
	{"Batch(8) with Once", true, 8, false},
	{"Batch(8)", false, 8, false},
	{"HandleBatch, Batch(8) with Once", true, 8, true},
	{"Consumer.Run", false, 0, false},
}

// outageRun is one running consumer of an outage test.
type outageRun struct {
	reg       *prometheus.Registry
	readiness *safesync.Readiness
	stop      func() error
}

// start runs v on w's stream with the consumer's client rdb and database
// db until stop is called.
func (v outageVariant) start(t *testing.T, w *outageWorkload, db *sql.DB, rdb rueidis.Client) *outageRun {
	t.Helper()
	m, reg := safesynctest.NewMetrics(t)
	r := &outageRun{reg: reg, readiness: safesync.NewReadiness()}
	cfg := safesync.StreamConfig{
		Stream: w.stream, Group: w.group, Consumer: "c1",
		Block: 100 * time.Millisecond, Count: 16, Concurrency: 4,
		ClaimIdle: outageClaimIdle, ClaimInterval: 100 * time.Millisecond,
		MaxDeliveries: outageMaxDeliveries, ShutdownGrace: 5 * time.Second,
		Metrics: m, Readiness: r.readiness, Logger: outageLogger(t),
	}
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() {
		if v.batch == 0 {
			c, err := safesync.NewConsumer(rdb, cfg, safesync.JSON[order]())
			if err != nil {
				result <- err
				return
			}
			result <- c.Run(ctx, func(ctx context.Context, msg safesync.Message[order]) error {
				_, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
					return w.apply(ctx, tx, msg)
				}), safesync.WithMetrics(m))(ctx)
				return err
			})
			return
		}
		p := safesync.Stream(safesync.JSON[order]()).Handle(w.apply).AckAfter(safesync.Commit(db))
		if v.handleBatch {
			// Every error, an outage's included, comes back wrapped in
			// FailEntry: only the entry's own failures may count.
			p = safesync.Stream(safesync.JSON[order]()).HandleBatch(func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
				for _, msg := range msgs {
					if err := w.apply(ctx, tx, msg); err != nil {
						return safesync.FailEntry(msg, err)
					}
				}
				return nil
			}).AckAfter(safesync.Commit(db))
		}
		p = p.Retry(safesync.Backoff(50*time.Millisecond, 3)).Batch(v.batch)
		if v.once {
			p = p.Once(w.applied)
		}
		result <- p.Run(ctx, rdb, cfg)
	}()
	var once sync.Once
	var err error
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-result:
			case <-time.After(time.Minute):
				err = errors.New("Run did not return within a minute of its ctx's end")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// failures returns handler_failures_total by kind.
func (r *outageRun) failures(t *testing.T) string {
	var parts []string
	for _, kind := range []string{safesync.FailureInfrastructure, safesync.FailureContention, safesync.FailureError, safesync.FailurePermanent, safesync.FailurePanic, safesync.FailureCrash} {
		if n := safesynctest.MetricValue(t, r.reg, "coti_safesync_queue_handler_failures_total", map[string]string{"kind": kind}); n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%v", kind, n))
		}
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// readCommands counts the commands that take entries: reads and claims.
func readCommands(c *countingClient) int { return c.count("XREADGROUP") + c.count("XAUTOCLAIM") }

// waitPaused waits until the Readiness reports a pause, and returns when.
func waitPaused(t *testing.T, r *safesync.Readiness, timeout time.Duration) time.Time {
	t.Helper()
	if err := pollUntil(timeout, "the consumer paused", func() (bool, error) { return r.Ready() != nil, nil }); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// The database cut (connections closed, the port refusing new ones) for
// 5 s in the middle of a run, for each way to consume: no good entry is
// dead-lettered, every one is applied (exactly once with Once), the
// refused ones are dead-lettered with their handler's text, and nothing
// is left pending. Pipelines pause while the database is down (their
// Readiness says so), and issue no reads or claims while paused.
func TestOutageDatabaseCutDeadLettersNoGoodEntry(t *testing.T) {
	direct := openMySQL(t, nil)
	mcfg, err := mysql.ParseDSN(mysqlDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range outageVariants {
		t.Run(v.name, func(t *testing.T) {
			proxy := startTCPProxy(t, mcfg.Addr)
			db := openMySQL(t, func(c *mysql.Config) { c.Addr, c.Timeout = proxy.addr, 2*time.Second })
			rdb := newCountingClient(openRedis(t))
			w := newOutageWorkload(t, direct, rdb.Client)
			w.publish(t, 240, 24)
			run := v.start(t, w, db, rdb)
			w.waitApplied(t, 40, time.Minute)
			before := w.middle(t)

			cutAt := time.Now()
			proxy.cut()
			readsWhilePaused := -1
			var pausedAfter time.Duration
			if v.batch > 0 { // a pipeline probes its database
				pausedAt := waitPaused(t, run.readiness, outageLength)
				pausedAfter = pausedAt.Sub(cutAt)
				time.Sleep(200 * time.Millisecond) // reads in flight at the pause end
				reads := readCommands(rdb)
				time.Sleep(time.Until(cutAt.Add(outageLength)))
				readsWhilePaused = readCommands(rdb) - reads
				if readsWhilePaused != 0 {
					t.Errorf("%d reads and claims while paused, want none", readsWhilePaused)
				}
			} else {
				time.Sleep(outageLength)
			}
			proxy.restore()
			restoredAt := time.Now()
			recovery := w.waitDone(t, 2*time.Minute)
			if err := run.stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := run.readiness.Ready(); err != nil {
				t.Errorf("Ready after the outage = %v", err)
			}
			dup := w.check(t, v.once)
			paused := "not probed (Consumer.Run)"
			if v.batch > 0 {
				paused = fmt.Sprintf("paused %v after the cut, %d reads while paused", pausedAfter.Round(time.Millisecond), readsWhilePaused)
			}
			t.Logf("%s: database cut for %v with %d of %d applied; %s; all settled %v after it came back; %d duplicate effects; handler failures %s",
				v.name, restoredAt.Sub(cutAt).Round(time.Millisecond), before, len(w.good), paused,
				recovery.Round(time.Millisecond), dup, run.failures(t))
		})
	}
}

// The database unreachable when Run starts, and for 10 s: Run waits (its
// Readiness reports the pause, it reads nothing), does not fail and
// dead-letters nothing, and applies everything once the database answers.
func TestOutageDatabaseDownAtStart(t *testing.T) {
	direct := openMySQL(t, nil)
	mcfg, err := mysql.ParseDSN(mysqlDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []outageVariant{outageVariants[0], outageVariants[1], outageVariants[4]} {
		t.Run(v.name, func(t *testing.T) {
			proxy := startTCPProxy(t, mcfg.Addr)
			db := openMySQL(t, func(c *mysql.Config) { c.Addr, c.Timeout = proxy.addr, 2*time.Second })
			proxy.cut()
			rdb := newCountingClient(openRedis(t))
			w := newOutageWorkload(t, direct, rdb.Client)
			w.publish(t, 60, 12)
			run := v.start(t, w, db, rdb)
			if v.batch > 0 {
				waitPaused(t, run.readiness, 5*time.Second)
			}
			time.Sleep(10 * time.Second)
			if v.batch > 0 {
				if err := run.readiness.Ready(); !errors.Is(err, safesync.ErrPaused) {
					t.Errorf("Ready with the database down = %v, want ErrPaused", err)
				}
				if n := readCommands(rdb); n != 0 {
					t.Errorf("%d reads and claims before the database was reachable, want none", n)
				}
			}
			proxy.restore()
			recovery := w.waitDone(t, time.Minute)
			if err := run.stop(); err != nil {
				t.Errorf("Run: %v", err)
			}
			w.check(t, v.once)
			t.Logf("%s: database down for the first 10 s; all settled %v after it came up; handler failures %s", v.name, recovery.Round(time.Millisecond), run.failures(t))
		})
	}
}

// Redis stopped (SIGSTOP: the server hangs, connections stay open) or
// restarted (SIGTERM, down, started again on the same port and files) for
// 5 s in the middle of a run, for each way to consume: no good entry is
// dead-lettered, every one is applied (exactly once with Once), the
// refused ones are dead-lettered with their text, nothing is left
// pending, and Run reports no failed acknowledgement: those that failed
// for want of Redis were sent again once it answered.
func TestOutageRedisStoppedDeadLettersNoGoodEntry(t *testing.T) {
	for _, how := range []string{"SIGSTOP", "restart"} {
		for _, v := range outageVariants {
			t.Run(how+"/"+v.name, func(t *testing.T) {
				db := openMySQL(t, nil)
				server := startPrivateRedis(t)
				rdb := newCountingClient(server.client())
				check := server.client()
				w := newOutageWorkload(t, db, check)
				w.publish(t, 240, 24)
				run := v.start(t, w, db, rdb)
				w.waitApplied(t, 40, time.Minute)
				before := w.middle(t)

				stoppedAt := time.Now()
				switch how {
				case "SIGSTOP":
					if err := server.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
						t.Fatal(err)
					}
				case "restart":
					server.stop()
				}
				// The consumer notices, and pauses (the outage may then last
				// longer than outageLength on a loaded machine).
				pausedAfter := waitPaused(t, run.readiness, 2*outageLength).Sub(stoppedAt)
				time.Sleep(200 * time.Millisecond) // reads in flight at the pause end
				reads := readCommands(rdb)
				time.Sleep(time.Until(stoppedAt.Add(outageLength)))
				if n := readCommands(rdb) - reads; n != 0 {
					t.Errorf("%d reads and claims sent while paused, want none", n)
				}
				switch how {
				case "SIGSTOP":
					if err := server.cmd.Process.Signal(syscall.SIGCONT); err != nil {
						t.Fatal(err)
					}
				case "restart":
					server.start()
				}
				backAt := time.Now()
				recovery := w.waitDone(t, 2*time.Minute)
				if err := run.stop(); err != nil {
					t.Errorf("Run: %v", err)
				}
				dup := w.check(t, v.once)
				paused := safesynctest.MetricValue(t, run.reg, "coti_safesync_queue_paused", nil)
				if paused != 0 {
					t.Errorf("paused gauge = %v after the outage, want 0", paused)
				}
				t.Logf("%s %s: Redis down for %v with %d of %d applied; paused %v after it went down; all settled %v after it came back; %d duplicate effects; handler failures %s",
					how, v.name, backAt.Sub(stoppedAt).Round(time.Millisecond), before, len(w.good), pausedAfter.Round(time.Millisecond),
					recovery.Round(time.Millisecond), dup, run.failures(t))
			})
		}
	}
}

// crashArgs configures the worker of TestOutageCrashInsideTheHandler.
type crashArgs struct {
	Effects, Applied, Stream, Group string
	Poison                          int64 // the order whose handler ends the process
}

func init() { workers["crash-in-handler"] = crashWorker }

// crashWorker applies entries exactly once, four at a time, and ends its
// process with os.Exit in the handler of the poison order: no deferred
// call runs, nothing is acknowledged, the name's lease is not released.
func crashWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a crashArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	db, rdb, err := workerServices()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	defer rdb.Close()
	p := safesync.Stream(safesync.JSON[order]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
			if msg.Value.OrderID == a.Poison {
				os.Exit(3) // a crash: stack overflow, OOM, a fatal error
			}
			time.Sleep(10 * time.Millisecond)
			_, err := tx.ExecContext(ctx, "INSERT INTO `"+a.Effects+"` (entry_id) VALUES (?)", msg.ID)
			return err
		}).
		AckAfter(safesync.Commit(db)).Once(a.Applied)
	cfg := safesync.StreamConfig{Stream: a.Stream, Group: a.Group, Consumer: "crasher",
		Block: 100 * time.Millisecond, Concurrency: 4, ClaimIdle: time.Hour, MaxDeliveries: 2}
	return nil, p.Run(ctx, rdb, cfg)
}

// A handler that ends its process (os.Exit here; a stack overflow, the OOM
// killer or a fatal runtime error alike) no longer loops forever, the
// original's defect 5: restarted each time, the worker runs the entry
// alone once its earlier attempt is found unended, counts each crash
// during such a run as one of the entry's own failures, and dead-letters
// it after MaxDeliveries, with reason and error saying so. The entries
// handled beside it when it crashed are not counted: each is applied,
// exactly once.
func TestOutageCrashInsideTheHandler(t *testing.T) {
	db := openMySQL(t, nil)
	rdb := openRedis(t)
	w := newOutageWorkload(t, db, rdb)
	const n, poison = 40, 10
	var poisonID string
	for i := 1; i <= n; i++ {
		id := safesynctest.PublishJSON(t, rdb, w.stream, order{OrderID: int64(i), AccountID: 1, Amount: 1})
		if i == poison {
			poisonID = id
			w.poison[id] = true
		} else {
			w.good[id] = true
		}
	}
	args := crashArgs{Effects: w.effects, Applied: w.applied, Stream: w.stream, Group: w.group, Poison: poison}
	start := time.Now()
	crashes := 0
	for {
		proc := startWorker(t, "crash-in-handler", args)
		var exitErr error
		for exited := false; !exited; {
			select {
			case exitErr = <-proc.done:
				proc.done <- exitErr
				exited = true
			case <-time.After(50 * time.Millisecond):
			}
			if !exited && len(safesynctest.DeadLetters(t, rdb, w.stream+safesync.DeadLetterSuffix)) > 0 {
				recovery := w.waitDone(t, time.Minute)
				_ = proc.cmd.Process.Signal(syscall.SIGTERM)
				proc.wait(t, 30*time.Second, nil)
				t.Logf("the poison entry crashed its process %d times; dead-lettered %v after the first start; the rest settled %v later",
					crashes, time.Since(start).Round(time.Millisecond), recovery.Round(time.Millisecond))
				dead := safesynctest.DeadLetters(t, rdb, w.stream+safesync.DeadLetterSuffix)
				if len(dead) != 1 {
					t.Fatalf("%d dead letters, want the poison entry's only", len(dead))
				}
				d := dead[0]
				if d.OriginalID != poisonID || d.Reason != safesync.DeadLetterMaxDeliveries || d.Failures != 2 ||
					!strings.Contains(d.Error, "crash") || !strings.Contains(d.Error, `"crasher"`) {
					t.Fatalf("dead letter %+v; want the poison entry %s, max_deliveries after 2 crashes", d, poisonID)
				}
				w.check(t, true)
				return
			}
		}
		var exit *exec.ExitError
		if !errors.As(exitErr, &exit) || exit.ExitCode() != 3 {
			t.Fatalf("worker ended with %v, want exit code 3 (the crash)\nstderr: %s", exitErr, proc.stderr.String())
		}
		if crashes++; crashes > 8 {
			t.Fatalf("the worker crashed %d times and the poison entry is still not dead-lettered", crashes)
		}
	}
}

// Waiting out outages does not hide mistakes: a pipeline whose
// exactly-once table does not exist still fails at once, naming it.
func TestOutageConfigurationErrorsStillFailAtOnce(t *testing.T) {
	db := openMySQL(t, nil)
	rdb := openRedis(t)
	stream := uniqueStream(t, rdb)
	missing := uniqueName(t, "missing")
	p := safesync.Stream(safesync.JSON[order]()).
		Handle(func(context.Context, *safesync.Tx, safesync.Message[order]) error { return nil }).
		AckAfter(safesync.Commit(db)).Once(missing)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := p.Run(ctx, rdb, safesync.StreamConfig{Stream: stream, Group: "g", Consumer: "c", Block: 100 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), missing) || time.Since(start) > 2*time.Second {
		t.Fatalf("Run = %v after %v, want an error naming the missing table %s at once", err, time.Since(start).Round(time.Millisecond), missing)
	}
}

// outageLogger returns a logger to the test's log when SAFESYNC_OUTAGE_LOG
// is set, else nil (silent).
func outageLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SAFESYNC_OUTAGE_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
