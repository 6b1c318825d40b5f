package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// The outbox fault tests: writer processes commit events through an
// outbox (some transactions roll back on purpose) while relay processes
// are SIGKILLed and restarted, their MySQL connections are killed and,
// in the second test, Redis is restarted; a Once pipeline downstream
// applies the events. Each ends with outboxFault.check: every committed
// event in its stream and applied exactly once, no rolled-back event
// anywhere, each key's events in commit order in the stream and in the
// order they were applied.

const (
	outboxFaultWriters    = 4
	outboxFaultPerWriter  = 5000 // committed events per writer
	outboxFaultKeys       = 40
	outboxFaultPartitions = 4
	outboxFaultRelays     = 2
	outboxFaultKills      = 12 // SIGKILLs of relay processes, at least
)

// outboxWriterArgs configures a writer process.
type outboxWriterArgs struct {
	Table, Keys, Truth, Partitions string
	P                              int
	Writer, Events                 int
	Rate                           float64 // transactions per second, at most
}

// outboxWriterResult is what a writer process reports.
type outboxWriterResult struct {
	Committed  int
	RolledBack []string // events published by transactions that rolled back
}

// outboxRelayArgs configures a relay process.
type outboxRelayArgs struct {
	DSN, RedisAddr, Table, Lock, Leaders string
	Hold                                 time.Duration // pause after each batch's XADD, before its rows are deleted
}

func init() {
	workers["outbox-writer"] = outboxWriterWorker
	workers["outbox-relay"] = outboxRelayWorker
}

var errRollBackOnPurpose = errors.New("rolled back on purpose")

// outboxWriterWorker commits Events events, one per transaction: each
// transaction increments its key's sequence number (a row lock: the
// transactions of one key serialise), publishes the event carrying it,
// and records it in the truth table; one in ten rolls back after
// publishing instead.
func outboxWriterWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a outboxWriterArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	db, rdb, err := workerServices()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rdb.Close()
	parts, err := safesync.NewPartitions(a.Partitions, a.P)
	if err != nil {
		return nil, err
	}
	w := safesync.ToOutboxPartitioned(a.Table, parts, func(e event) string { return e.Key })
	policy := safesync.Exponential(5*time.Millisecond, 200*time.Millisecond).WithMaxAttempts(50).WithMetrics(nil)
	var res outboxWriterResult
	start := time.Now()
	for n := 0; res.Committed < a.Events; n++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if wait := time.Until(start.Add(time.Duration(float64(n) / a.Rate * float64(time.Second)))); wait > 0 {
			time.Sleep(wait)
		}
		key := "key" + strconv.Itoa(mathrand.IntN(outboxFaultKeys))
		id := fmt.Sprintf("w%d-%d", a.Writer, n)
		rollback := mathrand.IntN(10) == 0
		_, err := safesync.Retry(policy, safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			if _, err := tx.ExecContext(ctx, "UPDATE `"+a.Keys+"` SET seq = seq + 1 WHERE k = ?", key); err != nil {
				return err
			}
			seq, err := safesync.Get[int64](ctx, tx, "SELECT seq FROM `"+a.Keys+"` WHERE k = ?", key)
			if err != nil {
				return err
			}
			if err := w.Publish(ctx, tx, event{Key: key, Seq: seq, Event: id}); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO `"+a.Truth+"` (event, k, seq) VALUES (?, ?, ?)", id, key, seq); err != nil {
				return err
			}
			if rollback {
				return errRollBackOnPurpose
			}
			return nil
		}), safesync.WithMetrics(nil)))(ctx)
		switch {
		case rollback && errors.Is(err, errRollBackOnPurpose):
			res.RolledBack = append(res.RolledBack, id)
		case err != nil:
			return nil, err
		default:
			res.Committed++
		}
	}
	return res, nil
}

// outboxRelayWorker runs a relay until SIGTERM, recording in the leaders
// table (pid, 0) when it starts, so that the test knows it handles SIGTERM,
// and (pid, time) each time it becomes the leader.
func outboxRelayWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a outboxRelayArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	db, err := sql.Open("mysql", a.DSN)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	root, err := sql.Open("mysql", os.Getenv(envMySQLDSN))
	if err != nil {
		return nil, err
	}
	defer root.Close()
	// A relay restarted while Redis restarts finds it down: rueidis dials
	// when the client is made, so wait for Redis as a supervised process
	// would be restarted until it comes up.
	var rdb rueidis.Client
	for {
		rdb, err = rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{a.RedisAddr}, DisableCache: true})
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer rdb.Close()
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		return nil, err
	}
	relay, err := safesync.NewRelay(db, rdb, safesync.RelayConfig{
		Table: a.Table, LockName: a.Lock, BatchSize: 100, PollMax: 100 * time.Millisecond, Metrics: m,
		AfterXADD: func(context.Context, []safesync.RelayedEvent) { time.Sleep(a.Hold) },
	})
	if err != nil {
		return nil, err
	}
	if _, err := root.ExecContext(ctx, "INSERT INTO `"+a.Leaders+"` (pid, led_at) VALUES (?, 0)", os.Getpid()); err != nil {
		return nil, err
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		leading := false
		for watchCtx.Err() == nil {
			if now := relay.Leading(); now != leading {
				leading = now
				if leading {
					at := time.Now().UnixNano()
					for watchCtx.Err() == nil {
						if _, err := root.ExecContext(watchCtx, "INSERT INTO `"+a.Leaders+"` (pid, led_at) VALUES (?, ?)", os.Getpid(), at); err == nil {
							break
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	err = relay.Run(ctx)
	stopWatch()
	wg.Wait()
	return nil, err
}

// outboxFault is the tables, streams and processes of one outbox fault
// test.
type outboxFault struct {
	t                                     *testing.T
	root                                  *sql.DB
	rdb                                   rueidis.Client
	redisAddr                             string
	relayDSN                              string // as the test's private MySQL user
	user                                  string
	outbox, keys, truth, leaders, effects string
	applied, lock                         string
	parts                                 safesync.Partitions

	relays  []*workerProc
	started []time.Time // when each relay process was started
}

func newOutboxFault(t *testing.T, rdb rueidis.Client, redisAddr string) *outboxFault {
	t.Helper()
	f := &outboxFault{t: t, root: openMySQL(t, nil), rdb: rdb, redisAddr: redisAddr}
	f.user = privateMySQLUser(t, f.root)
	cfg, err := mysql.ParseDSN(mysqlDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User, cfg.Passwd = f.user, ""
	f.relayDSN = cfg.FormatDSN()
	f.outbox = outboxTable(t, f.root)
	f.keys = createTable(t, f.root, "keys", "CREATE TABLE %s (k VARCHAR(32) PRIMARY KEY, seq BIGINT NOT NULL) ENGINE=InnoDB")
	for i := range outboxFaultKeys {
		if _, err := f.root.Exec("INSERT INTO `"+f.keys+"` (k, seq) VALUES (?, 0)", "key"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	f.truth = createTable(t, f.root, "truth", "CREATE TABLE %s (event VARCHAR(64) PRIMARY KEY, k VARCHAR(32) NOT NULL, seq BIGINT NOT NULL) ENGINE=InnoDB")
	f.leaders = createTable(t, f.root, "leaders", "CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, pid BIGINT NOT NULL, led_at BIGINT NOT NULL) ENGINE=InnoDB")
	// No unique key: an event applied twice shows as a second row.
	f.effects = createTable(t, f.root, "eff", "CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, event VARCHAR(64) NOT NULL, k VARCHAR(32) NOT NULL, seq BIGINT NOT NULL) ENGINE=InnoDB")
	f.applied = dedupeTable(t, f.root)
	f.lock = uniqueLockName()
	f.parts, err = safesync.NewPartitions(uniqueName(t, "obf"), outboxFaultPartitions)
	if err != nil {
		t.Fatal(err)
	}
	var dead []string
	for _, s := range f.parts.Streams() {
		dead = append(dead, s+safesync.DeadLetterSuffix)
	}
	deleteKeysAtEnd(t, rdb, append(f.parts.Streams(), dead...)...)
	return f
}

func (f *outboxFault) startRelay(i int) {
	f.relays[i] = startWorker(f.t, "outbox-relay", outboxRelayArgs{
		DSN: f.relayDSN, RedisAddr: f.redisAddr, Table: f.outbox, Lock: f.lock, Leaders: f.leaders, Hold: 3 * time.Millisecond,
	})
	f.started[i] = time.Now()
}

// leader returns the relay process that reported leadership last, or -1.
// With connections being killed, leadership moves often: this is a guess.
func (f *outboxFault) leader() int {
	pid, err := safesync.Get[int64](context.Background(), f.root, "SELECT pid FROM `"+f.leaders+"` WHERE led_at > 0 ORDER BY id DESC LIMIT 1")
	if err != nil {
		return -1
	}
	for i, p := range f.relays {
		if int64(p.cmd.Process.Pid) == pid {
			return i
		}
	}
	return -1
}

// killRelay SIGKILLs relay i and starts it again.
func (f *outboxFault) killRelay(i int) {
	t := f.t
	if err := f.relays[i].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		exit := waitExit(f.relays[i], time.Second)
		t.Fatalf("kill relay %d: %v (it ended by itself: %v)\nstderr:\n%s", i, err, exit, f.relays[i].stderr.String())
	}
	if err := waitExit(f.relays[i], 30*time.Second); err == nil {
		t.Fatalf("relay %d exited cleanly after SIGKILL", i)
	}
	f.startRelay(i)
}

// killConnections kills one random MySQL connection of the relays.
func (f *outboxFault) killConnection(ctx context.Context, side *sql.Conn) bool {
	ids, err := safesync.Select[int64](ctx, side, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()", f.user)
	if err != nil {
		f.t.Fatal(err)
	}
	if len(ids) == 0 {
		return false
	}
	if _, err := side.ExecContext(ctx, fmt.Sprintf("KILL %d", ids[mathrand.IntN(len(ids))])); err != nil {
		if mysqlErrorNumber(err) == 1094 { // unknown thread: it ended by itself
			return false
		}
		f.t.Fatal(err)
	}
	return true
}

// consume runs the downstream pipeline until stop is called: each event
// is applied once (Once), its key's events one at a time in stream order
// (OrderBy), as a row of the effects table.
func (f *outboxFault) consume() (stop func() error) {
	m, _ := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	p := safesync.Stream(safesync.JSON[event]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[event]) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO `"+f.effects+"` (event, k, seq) VALUES (?, ?, ?)", msg.Value.Event, msg.Value.Key, msg.Value.Seq)
			return err
		}).
		AckAfter(safesync.Commit(f.root, safesync.WithMetrics(nil))).
		Once(f.applied).
		Batch(16).
		Retry(safesync.Exponential(5*time.Millisecond, 200*time.Millisecond).WithMaxAttempts(20).WithMetrics(nil)).
		OrderBy(func(msg safesync.Message[event]) string { return msg.Value.Key })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- p.RunPartitioned(ctx, f.rdb, f.parts, safesync.StreamConfig{
			Group: "downstream", Consumer: "c", Block: 100 * time.Millisecond, Count: 64, Concurrency: 4,
			ClaimIdle: 5 * time.Second, ClaimInterval: 500 * time.Millisecond, MaxDeliveries: 1000, Metrics: m,
		})
	}()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
}

// run is the scenario: writers, relays and the downstream pipeline, with
// relay SIGKILLs and MySQL connection kills throughout, and outage (the
// relays' MySQL or Redis gone for a while) twice while the writers run.
func (f *outboxFault) run(what string, outage func()) {
	t := f.t
	ctx := context.Background()
	stopConsumer := f.consume()
	defer func() {
		if err := stopConsumer(); err != nil {
			t.Errorf("downstream Run: %v", err)
		}
	}()
	f.relays = make([]*workerProc, outboxFaultRelays)
	f.started = make([]time.Time, outboxFaultRelays)
	for i := range f.relays {
		f.startRelay(i)
	}
	writers := make([]*workerProc, outboxFaultWriters)
	for i := range writers {
		writers[i] = startWorker(t, "outbox-writer", outboxWriterArgs{
			Table: f.outbox, Keys: f.keys, Truth: f.truth, Partitions: f.parts.Name(), P: f.parts.Len(),
			Writer: i, Events: outboxFaultPerWriter, Rate: 300,
		})
	}
	writing := func() bool {
		for _, w := range writers {
			select {
			case err := <-w.done:
				w.done <- err
			default:
				return true
			}
		}
		return false
	}

	side := sideConn(t)
	start := time.Now()
	kills, connKills := 0, 0
	var waiting []int64 // rows in the outbox at the end of each outage
	nextKill := time.Now().Add(time.Second)
	for writing() {
		time.Sleep(time.Duration(50+mathrand.IntN(150)) * time.Millisecond)
		if f.killConnection(ctx, side) {
			connKills++
		}
		if time.Now().After(nextKill) {
			i := mathrand.IntN(len(f.relays))
			if l := f.leader(); l >= 0 && mathrand.IntN(3) > 0 {
				i = l
			}
			f.killRelay(i)
			kills++
			nextKill = time.Now().Add(time.Duration(700+mathrand.IntN(900)) * time.Millisecond)
		}
		if len(waiting) < 2 && time.Since(start) > time.Duration(5+10*len(waiting))*time.Second {
			outage()
			waiting = append(waiting, countRows(t, f.root, f.outbox))
		}
	}
	writeTime := time.Since(start)
	var committed int
	var rolledBack []string
	for _, w := range writers {
		var res outboxWriterResult
		w.wait(t, time.Minute, &res)
		committed += res.Committed
		rolledBack = append(rolledBack, res.RolledBack...)
	}
	// The kills go on until enough have landed, if the writers were quick.
	for kills < outboxFaultKills {
		f.killRelay(mathrand.IntN(len(f.relays)))
		kills++
		time.Sleep(200 * time.Millisecond)
	}
	if len(waiting) < 2 {
		t.Fatalf("only %d %s during the writes (%v)", len(waiting), what, writeTime)
	}
	if err := pollUntil(3*time.Minute, "every committed event applied", func() (bool, error) {
		n, err := safesync.Get[int64](ctx, f.root, "SELECT COUNT(*) FROM `"+f.effects+"`")
		left, err2 := safesync.Get[int64](ctx, f.root, "SELECT COUNT(*) FROM `"+f.outbox+"`")
		return n >= int64(committed) && left == 0, errors.Join(err, err2)
	}); err != nil {
		t.Fatal(err)
	}
	drained := time.Since(start)
	// A relay started just now may still be in the runtime's start-up,
	// before it handles SIGTERM.
	for _, p := range f.relays {
		if err := pollUntil(time.Minute, "relay started", func() (bool, error) {
			n, err := safesync.Get[int64](ctx, f.root, "SELECT COUNT(*) FROM `"+f.leaders+"` WHERE pid = ? AND led_at = 0", p.cmd.Process.Pid)
			return n > 0, err
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range f.relays {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("stop relay %d: %v", i, err)
		}
	}
	for _, p := range f.relays {
		p.wait(t, time.Minute, nil)
	}
	if err := stopConsumer(); err != nil {
		t.Errorf("downstream Run: %v", err)
	}
	entries := f.check(committed, rolledBack)

	t.Logf("%d events committed, %d rolled back; %d stream entries (%d added again after a relay stopped between XADD and delete); written in %v, all applied after %v; %d relay SIGKILLs, %d relay MySQL connections killed; rows waiting in the outbox at the end of each of the %s: %v",
		committed, len(rolledBack), entries, entries-committed, writeTime.Round(time.Millisecond), drained.Round(time.Millisecond), kills, connKills, what, waiting)
	if committed != outboxFaultWriters*outboxFaultPerWriter {
		t.Errorf("%d events committed, want %d", committed, outboxFaultWriters*outboxFaultPerWriter)
	}
	if len(rolledBack) == 0 {
		t.Errorf("no transaction rolled back")
	}
	if kills < outboxFaultKills || connKills < 20 {
		t.Errorf("%d SIGKILLs and %d connection kills; want at least %d and 20", kills, connKills, outboxFaultKills)
	}
	for _, n := range waiting {
		if n < 100 {
			t.Errorf("only %d rows waited in the outbox at the end of an outage (%v): the relays did not stop relaying", n, waiting)
		}
	}
	if entries == committed {
		t.Errorf("no event was added twice: no relay stopped between XADD and delete, so Once was not put to the test")
	}
}

// check asserts the end state and returns the number of stream entries.
func (f *outboxFault) check(committed int, rolledBack []string) int {
	t := f.t
	ctx := context.Background()
	type row struct {
		Event string `db:"event"`
		K     string `db:"k"`
		Seq   int64  `db:"seq"`
	}
	truth, err := safesync.Select[row](ctx, f.root, "SELECT event, k, seq FROM `"+f.truth+"`")
	if err != nil {
		t.Fatal(err)
	}
	if len(truth) != committed {
		t.Errorf("truth table: %d events, writers committed %d", len(truth), committed)
	}
	want := map[string]row{}
	for _, r := range truth {
		want[r.Event] = r
	}
	wasRolledBack := map[string]bool{}
	for _, e := range rolledBack {
		wasRolledBack[e] = true
		if _, ok := want[e]; ok {
			t.Errorf("event %s both rolled back and committed", e)
		}
	}
	finalSeq := map[string]int64{}
	keys, err := safesync.Select[row](ctx, f.root, "SELECT '' AS event, k, seq FROM `"+f.keys+"`")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		finalSeq[k.K] = k.Seq
	}

	// The streams: every committed event, nothing else; in each partition
	// the first entry of each key's events in sequence order.
	entries := 0
	seen := map[string]bool{}
	for i, stream := range f.parts.Streams() {
		xs, err := f.rdb.Do(ctx, f.rdb.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
		if err != nil {
			t.Fatal(err)
		}
		entries += len(xs)
		next := map[string]int64{}
		for _, e := range decodeEvents(t, xs) {
			if wasRolledBack[e.Event] {
				t.Fatalf("rolled-back event %s is in %s", e.Event, stream)
			}
			w, ok := want[e.Event]
			if !ok || w.K != e.Key || w.Seq != e.Seq {
				t.Fatalf("entry %+v of %s is no committed event", e, stream)
			}
			if f.parts.For(e.Key) != i {
				t.Fatalf("event %s of key %s in partition %d", e.Event, e.Key, i)
			}
			if seen[e.Event] {
				continue
			}
			seen[e.Event] = true
			if e.Seq != next[e.Key]+1 {
				t.Fatalf("%s: key %s's event %d first appears after %d: out of commit order", stream, e.Key, e.Seq, next[e.Key])
			}
			next[e.Key] = e.Seq
		}
	}
	if len(seen) != committed {
		t.Errorf("%d distinct events in the streams, want %d", len(seen), committed)
	}

	// Downstream: each committed event applied once, each key's in order.
	effects, err := safesync.Select[row](ctx, f.root, "SELECT event, k, seq FROM `"+f.effects+"` ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	if len(effects) != committed {
		t.Errorf("%d effects for %d committed events", len(effects), committed)
	}
	last := map[string]int64{}
	applied := map[string]bool{}
	for _, e := range effects {
		if applied[e.Event] {
			t.Fatalf("event %s applied twice", e.Event)
		}
		applied[e.Event] = true
		if _, ok := want[e.Event]; !ok {
			t.Fatalf("applied event %s was not committed (rolled back: %v)", e.Event, wasRolledBack[e.Event])
		}
		if e.Seq != last[e.K]+1 {
			t.Fatalf("key %s: event %d applied after %d", e.K, e.Seq, last[e.K])
		}
		last[e.K] = e.Seq
	}
	for k, s := range finalSeq {
		if last[k] != s {
			t.Errorf("key %s: applied up to %d, committed up to %d", k, last[k], s)
		}
	}
	if n := countRows(t, f.root, f.applied); n != int64(committed) {
		t.Errorf("exactly-once table: %d rows, want %d", n, committed)
	}
	for _, stream := range f.parts.Streams() {
		if n, err := xpendingCount(ctx, f.rdb, stream, "downstream"); err != nil || n != 0 {
			t.Errorf("%s: XPENDING count = %d, %v; want 0", stream, n, err)
		}
	}
	return entries
}

// Four writer processes commit 20,000 events through an outbox, one in ten
// of their transactions rolling back on purpose, while the two relay
// processes are SIGKILLed (the leader two times in three) and restarted
// at least twelve times and their MySQL connections are killed every
// 50–200 ms; each relay pauses 3 ms between a batch's XADD and the delete
// of its rows, so that kills land there too. Twice, MySQL is gone for the
// relays for two seconds: their account is locked and every connection
// of theirs killed, so that they cannot connect, while the writers go on.
func TestFaultOutboxRelayKillsDeliverEveryCommittedEventOnceInOrder(t *testing.T) {
	rdb := openRedis(t)
	f := newOutboxFault(t, rdb, redisAddr(t))
	side := sideConn(t)
	ctx := context.Background()
	account := fmt.Sprintf("'%s'@'%%'", f.user)
	f.run("MySQL outages", func() {
		if _, err := side.ExecContext(ctx, "ALTER USER "+account+" ACCOUNT LOCK"); err != nil {
			t.Fatal(err)
		}
		for f.killConnection(ctx, side) {
		}
		time.Sleep(2 * time.Second)
		if _, err := side.ExecContext(ctx, "ALTER USER "+account+" ACCOUNT UNLOCK"); err != nil {
			t.Fatal(err)
		}
	})
}

// The same, with the relays' and the pipeline's Redis server stopped and
// started again twice while the writers run (instead of the MySQL
// outages).
func TestFaultOutboxRedisRestartsDeliverEveryCommittedEventOnceInOrder(t *testing.T) {
	server := startPrivateRedis(t)
	rdb := server.client()
	f := newOutboxFault(t, rdb, server.addr)
	f.run("Redis restarts", func() {
		server.stop()
		time.Sleep(time.Second) // the relays and the pipeline meet a dead server
		server.start()
	})
}

// Two relay processes; the leader is SIGKILLed five times, each time with
// the other one standing by (in GET_LOCK for at least a second), and the
// test measures how long the standby takes to lead: the server frees the
// lock when the killed process's socket closes.
func TestFaultOutboxStandbyTakesOverPromptlyAfterSIGKILL(t *testing.T) {
	rdb := openRedis(t)
	f := newOutboxFault(t, rdb, redisAddr(t))
	f.relays = make([]*workerProc, 2)
	f.started = make([]time.Time, 2)
	ctx := context.Background()
	leaderSince := func(after int64) (pid, at int64, err error) {
		type leader struct {
			Pid   int64 `db:"pid"`
			LedAt int64 `db:"led_at"`
		}
		ls, err := safesync.Select[leader](ctx, f.root, "SELECT pid, led_at FROM `"+f.leaders+"` WHERE led_at > ? ORDER BY id", after)
		if err != nil || len(ls) == 0 {
			return 0, 0, err
		}
		if len(ls) > 1 {
			return 0, 0, fmt.Errorf("leadership changed %d times after one kill: %+v", len(ls), ls)
		}
		return ls[0].Pid, ls[0].LedAt, nil
	}
	f.startRelay(0)
	var pid, at int64
	if err := pollUntil(30*time.Second, "relay 0 leads", func() (bool, error) {
		var err error
		pid, at, err = leaderSince(0)
		return pid != 0, err
	}); err != nil {
		t.Fatal(err)
	}
	f.startRelay(1)
	var took []time.Duration
	for range 5 {
		time.Sleep(1500 * time.Millisecond) // the other relay stands by in GET_LOCK
		i := slices.IndexFunc(f.relays, func(p *workerProc) bool { return int64(p.cmd.Process.Pid) == pid })
		if i < 0 {
			t.Fatalf("the leader, pid %d, is none of the relays", pid)
		}
		killed := time.Now()
		f.killRelay(i)
		if err := pollUntil(10*time.Second, "the standby leads", func() (bool, error) {
			var err error
			pid, at, err = leaderSince(killed.UnixNano())
			return pid != 0, err
		}); err != nil {
			t.Fatal(err)
		}
		if pid == int64(f.relays[i].cmd.Process.Pid) {
			t.Fatalf("the restarted relay leads, not the standby")
		}
		took = append(took, time.Duration(at-killed.UnixNano()))
	}
	slices.Sort(took)
	t.Logf("takeover after SIGKILL of the leader, 5 times: %v (median %v)", took, took[2])
}
