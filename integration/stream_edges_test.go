package integration

// Regression tests for the stream defects of issue 11 that need a real
// Redis: refusals by ACL, acknowledgements that fail.

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// aclClient creates a Redis ACL user of the test's own, allowed every
// command except those in denied (e.g. "-xack"), and returns a client
// logged in as that user. The user is deleted when the test ends.
func aclClient(t *testing.T, denied ...string) rueidis.Client {
	t.Helper()
	admin := openRedis(t)
	user := uniqueName(t, "acl")
	rules := append([]string{"reset", "on", "nopass", "~*", "&*", "+@all"}, denied...)
	if err := admin.Do(context.Background(), admin.B().AclSetuser().Username(user).Rule(rules...).Build()).Error(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	t.Cleanup(func() {
		_ = admin.Do(context.Background(), admin.B().AclDeluser().Username(user).Build()).Error()
	})
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{redisAddr(t)}, Username: user, Password: "x", DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Issue 11, item 1, on a real server: a NOPERM refusal of the group's
// creation ended Run only when its ctx ended. It must end Run at once,
// naming the command and the key.
func TestRunEndsAtOnceWhenRedisRefusesTheGroupsCreation(t *testing.T) {
	client := aclClient(t, "-xgroup")
	stream := uniqueStream(t, openRedis(t))
	c, err := safesync.NewConsumer(client, safesync.StreamConfig{Stream: stream, Group: "g", Consumer: "c", Block: 100 * time.Millisecond}, safesync.JSON[order]())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err = c.Run(ctx, func(context.Context, safesync.Message[order]) error { return nil })
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("Run = %v after %v, want a NOPERM error at once", err, time.Since(start).Round(time.Millisecond))
	}
	for _, want := range []string{"NOPERM", "XGROUP CREATE", stream} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// Issue 11, item 3: Pipeline.Run returned nil although its XACKs failed
// (they ran in the after-commit hook, and their error became a handler
// error). A failed XACK is reported by Pipeline.Run exactly as by
// Consumer.Run; the entries stay pending. The Redis user of the consumer
// may not run XACK.
func TestPipelineRunReportsFailedAcknowledgements(t *testing.T) {
	s := newPipelineSetup(t)
	client := aclClient(t, "-xack")
	for _, tc := range []struct {
		name        string
		concurrency int
		batch       int
	}{
		{"per entry, Concurrency 1", 1, 1},
		{"per entry, Concurrency 3", 3, 1},
		{"Batch(2)", 2, 2},
		{"Consumer.Run", 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream := uniqueStream(t, s.rdb)
			const n = 4
			for i := range n {
				safesynctest.PublishJSON(t, s.rdb, stream, order{OrderID: int64(i), AccountID: 1, Amount: 1})
			}
			cfg := s.config("w")
			cfg.Stream, cfg.Concurrency, cfg.ClaimIdle = stream, tc.concurrency, time.Hour
			var done atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			result := make(chan error, 1)
			go func() {
				if tc.batch == 0 {
					c, err := safesync.NewConsumer(client, cfg, safesync.JSON[order]())
					if err != nil {
						result <- err
						return
					}
					result <- c.Run(ctx, func(context.Context, safesync.Message[order]) error { done.Add(1); return nil })
					return
				}
				result <- safesync.Stream(safesync.JSON[order]()).Handle(s.apply()).AckAfter(safesync.Commit(s.db)).
					Batch(tc.batch).
					AfterCommit(func(_ context.Context, msgs []safesync.Message[order]) { done.Add(int64(len(msgs))) }).
					Run(ctx, client, cfg)
			}()
			if err := pollUntil(10*time.Second, "entries handled", func() (bool, error) { return done.Load() == n, nil }); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // the acknowledgements are sent, and refused
			cancel()
			err := <-result
			if err == nil || !strings.Contains(err.Error(), "acknowledgements failed") || !strings.Contains(err.Error(), "NOPERM") {
				t.Fatalf("Run = %v, want the failed acknowledgements reported", err)
			}
			if p := safesynctest.Pending(t, s.rdb, stream, s.group); len(p) != n {
				t.Fatalf("%d entries pending, want %d: none was acknowledged", len(p), n)
			}
		})
	}
}

// countingClient counts the commands sent through it, by name.
type countingClient struct {
	rueidis.Client
	mu     sync.Mutex
	counts map[string]int
}

func newCountingClient(c rueidis.Client) *countingClient {
	return &countingClient{Client: c, counts: map[string]int{}}
}

func (c *countingClient) note(cmds ...rueidis.Completed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		if parts := cmd.Commands(); len(parts) > 0 {
			c.counts[strings.ToUpper(parts[0])]++
		}
	}
}

func (c *countingClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.note(cmd)
	return c.Client.Do(ctx, cmd)
}

func (c *countingClient) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	c.note(cmds...)
	return c.Client.DoMulti(ctx, cmds...)
}

// count returns how many commands named name were sent.
func (c *countingClient) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[name]
}

// Issue 15, item 2: the per-entry pipeline sent one XACK per transaction
// from its after-commit hook, holding the transaction's connection. Its
// entries now go to the consumer's acknowledger after COMMIT, and the
// acknowledgements of concurrent transactions go out together.
func TestPipelineAcknowledgesConcurrentTransactionsTogether(t *testing.T) {
	s := newPipelineSetup(t)
	const n = 200
	for i := range n {
		safesynctest.PublishJSON(t, s.rdb, s.stream, order{OrderID: int64(i), AccountID: int64(i%3 + 1), Amount: 1})
	}
	client := newCountingClient(s.rdb)
	cfg := s.config("w")
	cfg.Concurrency = 4
	p := safesync.Stream(safesync.JSON[order]()).Handle(s.apply()).AckAfter(safesync.Commit(s.db))
	runUntil(t, p, client, cfg, 30*time.Second, func() bool { return len(s.pending(t)) == 0 && s.balance(t, 1)+s.balance(t, 2)+s.balance(t, 3) == n })
	if acks := client.count("XACK"); acks > n/2 {
		t.Fatalf("%d XACKs for %d entries handled 4 at a time, want at most %d", acks, n, n/2)
	} else {
		t.Logf("%d XACKs for %d entries", acks, n)
	}
}

// sameNameArgs configures a worker of TestTwoProcessesWithOneConsumerName.
type sameNameArgs struct {
	Effects, Stream, Group, Consumer string
}

func init() { workers["same-name-pipeline"] = sameNameWorker }

// sameNameWorker applies entries (one effects row each, no exactly-once
// table) until SIGTERM, or until Run fails.
func sameNameWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a sameNameArgs
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
			time.Sleep(2 * time.Millisecond)
			_, err := tx.ExecContext(ctx, "INSERT INTO `"+a.Effects+"` (entry_id) VALUES (?)", msg.ID)
			return err
		}).
		AckAfter(safesync.Commit(db))
	cfg := safesync.StreamConfig{Stream: a.Stream, Group: a.Group, Consumer: a.Consumer,
		Block: 100 * time.Millisecond, Concurrency: 2, ClaimIdle: time.Hour, Metrics: nil}
	return nil, p.Run(ctx, rdb, cfg)
}

// Issue 11, item 5: two processes given one consumer name (the README used
// to suggest the host name) shared one pending list, each re-reading and
// applying again what the other was handling. Started together with the
// same name, one of them now fails at start with ErrConsumerNameInUse and
// the other applies every entry once.
func TestTwoProcessesWithOneConsumerName(t *testing.T) {
	db := openMySQL(t, nil)
	rdb := openRedis(t)
	effects := createTable(t, db, "eff", "CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, entry_id VARBINARY(64) NOT NULL) ENGINE=InnoDB")
	stream := uniqueStream(t, rdb)
	const n = 300
	for i := range n {
		safesynctest.PublishJSON(t, rdb, stream, order{OrderID: int64(i), AccountID: 1, Amount: 1})
	}
	args := sameNameArgs{Effects: effects, Stream: stream, Group: "workers", Consumer: "host-1"}
	procs := []*workerProc{startWorker(t, "same-name-pipeline", args), startWorker(t, "same-name-pipeline", args)}

	// One fails at start, once it has seen the other renew the lease.
	var refused, survivor *workerProc
	deadline := time.After(20 * time.Second)
	for refused == nil {
		select {
		case err := <-procs[0].done:
			procs[0].done <- err
			refused, survivor = procs[0], procs[1]
		case err := <-procs[1].done:
			procs[1].done <- err
			refused, survivor = procs[1], procs[0]
		case <-deadline:
			t.Fatalf("both processes still run after 20 s with one consumer name")
		}
	}
	if err := waitExit(refused, time.Second); err == nil || !strings.Contains(refused.stderr.String(), "consumer name in use") {
		t.Fatalf("the refused process ended with %v, stderr:\n%s", err, refused.stderr.String())
	}
	if err := pollUntil(60*time.Second, "every entry applied", func() (bool, error) {
		return countRows(t, db, effects) >= n && len(safesynctest.Pending(t, rdb, stream, "workers")) == 0, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := survivor.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	survivor.wait(t, 30*time.Second, nil)
	var rows, distinct int64
	if err := db.QueryRow("SELECT COUNT(*), COUNT(DISTINCT entry_id) FROM `"+effects+"`").Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != n || distinct != n {
		t.Fatalf("%d effects for %d distinct entries, want %d of each: no entry applied twice", rows, distinct, n)
	}
}

// Issue 11, item 6: Batch(n) with Once failed at Run for n > 21,845 (MySQL
// error 1390: the multi-row INSERT of the exactly-once records had more
// than 65,535 placeholders). The records are inserted in chunks, so every
// batch size works.
func TestOnceBatchLargerThanThePlaceholderLimit(t *testing.T) {
	s := newPipelineSetup(t)
	const n = 22_000
	ctx := context.Background()
	for lo := 0; lo < n; lo += 1000 {
		var cmds rueidis.Commands
		for i := lo; i < min(lo+1000, n); i++ {
			data, _ := json.Marshal(order{OrderID: int64(i), AccountID: int64(i%3 + 1), Amount: 1})
			cmds = append(cmds, s.rdb.B().Xadd().Key(s.stream).Id("*").FieldValue().FieldValue("data", string(data)).Build())
		}
		for _, res := range s.rdb.DoMulti(ctx, cmds...) {
			if err := res.Error(); err != nil {
				t.Fatal(err)
			}
		}
	}
	var committed atomic.Int64
	p := safesync.Stream(safesync.JSON[order]()).Handle(s.apply()).AckAfter(safesync.Commit(s.db)).
		Once(s.applied).Batch(n).
		AfterCommit(func(_ context.Context, msgs []safesync.Message[order]) { committed.Add(int64(len(msgs))) })
	runUntilDone(t, p, s.rdb, s.config("w"), time.Minute, func() bool { return committed.Load() == n && len(s.pending(t)) == 0 })
	if got := countRows(t, s.db, s.applied); got != n {
		t.Fatalf("%d exactly-once records, want %d", got, n)
	}
	if sum := s.balance(t, 1) + s.balance(t, 2) + s.balance(t, 3); sum != n {
		t.Fatalf("balances sum to %d, want %d", sum, n)
	}
}

// runUntilDone runs p with cfg until done reports true, failing the test
// if Run returns first, with an error or not, or timeout passes.
func runUntilDone(t *testing.T, p safesync.Pipeline[order], rdb rueidis.Client, cfg safesync.StreamConfig, timeout time.Duration, done func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	go func() { result <- p.Run(ctx, rdb, cfg) }()
	deadline := time.Now().Add(timeout)
	for !done() {
		select {
		case err := <-result:
			t.Fatalf("Run returned before the work was done: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-result
			t.Fatalf("not done within %v", timeout)
		}
	}
	cancel()
	if err := <-result; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
