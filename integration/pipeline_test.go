package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// order is the message of these tests, in the original framework's wire
// format.
type order struct {
	OrderID   int64 `json:"order_id"`
	AccountID int64 `json:"account_id"`
	Amount    int64 `json:"amount"`
}

// pipelineSetup is a real MySQL accounts table (ids 1..3, balance 0), an
// exactly-once table and a unique stream on real Redis.
type pipelineSetup struct {
	db       *sql.DB
	rdb      rueidis.Client
	accounts string
	applied  string
	stream   string
	group    string
}

func newPipelineSetup(t *testing.T) *pipelineSetup {
	t.Helper()
	s := &pipelineSetup{db: openMySQL(t, nil), rdb: openRedis(t), group: "workers"}
	s.accounts = createTable(t, s.db, "acct", "CREATE TABLE %s (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB")
	if _, err := s.db.Exec("INSERT INTO `" + s.accounts + "` (id, balance) VALUES (1, 0), (2, 0), (3, 0)"); err != nil {
		t.Fatal(err)
	}
	s.applied = dedupeTable(t, s.db)
	s.stream = uniqueStream(t, s.rdb)
	return s
}

// uniqueStream returns a stream name with a hash tag (so that it and its
// dead-letter stream share a slot), deleted with its dead letters when the
// test ends.
func uniqueStream(t *testing.T, rdb rueidis.Client) string {
	name := "{" + uniqueName(t, "s") + "}"
	t.Cleanup(func() {
		_ = rdb.Do(context.Background(), rdb.B().Del().Key(name, name+safesync.DeadLetterSuffix).Build()).Error()
	})
	return name
}

func (s *pipelineSetup) config(consumer string) safesync.StreamConfig {
	m, _ := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	return safesync.StreamConfig{
		Stream: s.stream, Group: s.group, Consumer: consumer,
		Block: 100 * time.Millisecond, ClaimIdle: 300 * time.Millisecond, ClaimInterval: 100 * time.Millisecond,
		MaxDeliveries: 3, Metrics: m,
	}
}

func (s *pipelineSetup) apply() safesync.TxHandler[order] {
	return func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		_, err := tx.ExecContext(ctx, "UPDATE `"+s.accounts+"` SET balance = balance + ? WHERE id = ?", msg.Value.Amount, msg.Value.AccountID)
		return err
	}
}

func (s *pipelineSetup) balance(t *testing.T, id int64) int64 {
	t.Helper()
	v, err := safesync.Get[int64](context.Background(), s.db, "SELECT balance FROM `"+s.accounts+"` WHERE id = ?", id)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (s *pipelineSetup) pending(t *testing.T) []safesynctest.PendingEntry {
	return safesynctest.Pending(t, s.rdb, s.stream, s.group)
}

// runUntil runs p with cfg until done reports true, within timeout.
func runUntil(t *testing.T, p safesync.Pipeline[order], rdb rueidis.Client, cfg safesync.StreamConfig, timeout time.Duration, done func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() { result <- p.Run(ctx, rdb, cfg) }()
	deadline := time.Now().Add(timeout)
	for !done() {
		if time.Now().After(deadline) {
			cancel()
			<-result
			t.Fatalf("not done within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-result; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// killArgs configures the worker that dies between COMMIT and XACK.
type killArgs struct {
	Accounts, Applied, Stream, Group string
	Once                             bool
}

func init() { workers["pipeline-kill-after-commit"] = killAfterCommitWorker }

// killAfterCommitWorker applies entries and SIGKILLs its own process from
// the after-commit hook of the first transaction: the COMMIT is durable,
// the XACK never happens.
func killAfterCommitWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a killArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	db, rdb, err := workerServices()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	defer rdb.Close()
	s := &pipelineSetup{db: db, rdb: rdb, accounts: a.Accounts, applied: a.Applied, stream: a.Stream, group: a.Group}
	p := safesync.Stream(safesync.JSON[order]()).Handle(s.apply()).AckAfter(safesync.Commit(db)).
		AfterCommit(func(context.Context, []safesync.Message[order]) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		})
	if a.Once {
		p = p.Once(a.Applied)
	}
	cfg := s.config("doomed")
	cfg.ClaimIdle = time.Hour
	return nil, p.Run(ctx, rdb, cfg)
}

func TestKillBetweenCommitAndAck(t *testing.T) {
	for _, once := range []bool{true, false} {
		name := "at-least-once without Once"
		if once {
			name = "exactly-once with Once"
		}
		t.Run(name, func(t *testing.T) {
			s := newPipelineSetup(t)
			id := safesynctest.PublishJSON(t, s.rdb, s.stream, order{OrderID: 1, AccountID: 1, Amount: 5})
			w := startWorker(t, "pipeline-kill-after-commit", killArgs{Accounts: s.accounts, Applied: s.applied, Stream: s.stream, Group: s.group, Once: once})
			err := waitExit(w, 30*time.Second)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("worker ended with %v, want SIGKILL\nstderr: %s", err, w.stderr.String())
			}
			// The COMMIT landed, the XACK did not.
			if got := s.balance(t, 1); got != 5 {
				t.Fatalf("balance after the kill = %d, want 5 (committed)", got)
			}
			if p := s.pending(t); len(p) != 1 || p[0].ID != id || p[0].Consumer != "doomed" {
				t.Fatalf("pending after the kill = %+v, want %s under doomed", p, id)
			}
			// Another worker reclaims the entry.
			var handled atomic.Int64
			apply := s.apply()
			p := safesync.Stream(safesync.JSON[order]()).Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
				handled.Add(1)
				return apply(ctx, tx, msg)
			}).AckAfter(safesync.Commit(s.db))
			if once {
				p = p.Once(s.applied)
			}
			runUntil(t, p, s.rdb, s.config("rescuer"), 20*time.Second, func() bool { return len(s.pending(t)) == 0 })
			got := s.balance(t, 1)
			if once && (got != 5 || handled.Load() != 0) {
				t.Fatalf("with Once: balance = %d, handler ran %d times after recovery; want 5 and 0", got, handled.Load())
			}
			if !once && (got != 10 || handled.Load() != 1) {
				t.Fatalf("without Once: balance = %d, handler ran %d times; the documented duplicate (10, 1) did not show", got, handled.Load())
			}
		})
	}
}

// waitExit waits for the worker process to end and returns its error.
func waitExit(w *workerProc, timeout time.Duration) error {
	select {
	case err := <-w.done:
		w.done <- err
		return err
	case <-time.After(timeout):
		_ = w.cmd.Process.Kill()
		return errors.New("worker still running")
	}
}

func TestPipelineHandlerErrorLeavesEntryPendingAndRowUnchanged(t *testing.T) {
	s := newPipelineSetup(t)
	safesynctest.PublishJSON(t, s.rdb, s.stream, order{OrderID: 1, AccountID: 2, Amount: 7})
	var fail atomic.Bool
	fail.Store(true)
	apply := s.apply()
	p := safesync.Stream(safesync.JSON[order]()).Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if err := apply(ctx, tx, msg); err != nil {
			return err
		}
		if fail.Load() {
			return errors.New("downstream unavailable")
		}
		return nil
	}).AckAfter(safesync.Commit(s.db)).Once(s.applied)
	cfg := s.config("w1")
	runUntil(t, p, s.rdb, cfg, 10*time.Second, func() bool {
		p := s.pending(t)
		return len(p) == 1 && p[0].Deliveries >= 2
	})
	if got := s.balance(t, 2); got != 0 {
		t.Fatalf("balance after failures = %d, want 0 (rolled back)", got)
	}
	fail.Store(false)
	runUntil(t, p, s.rdb, cfg, 10*time.Second, func() bool { return len(s.pending(t)) == 0 })
	if got := s.balance(t, 2); got != 7 {
		t.Fatalf("balance = %d, want 7: applied exactly once", got)
	}
}

func TestPipelineBatchWithOneBadEntryDeadLettersItAfterMaxDeliveries(t *testing.T) {
	s := newPipelineSetup(t)
	var ids []string
	for i := 1; i <= 10; i++ {
		o := order{OrderID: int64(i), AccountID: 3, Amount: 1}
		if i == 4 {
			o.AccountID = 99 // the handler cannot apply this one
		}
		ids = append(ids, safesynctest.PublishJSON(t, s.rdb, s.stream, o))
	}
	apply := s.apply()
	p := safesync.Stream(safesync.JSON[order]()).Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if msg.Value.AccountID == 99 {
			return errors.New("no such account")
		}
		return apply(ctx, tx, msg)
	}).AckAfter(safesync.Commit(s.db)).Once(s.applied).Batch(10)
	cfg := s.config("w1")
	cfg.Count = 10
	dead := s.stream + safesync.DeadLetterSuffix
	runUntil(t, p, s.rdb, cfg, 20*time.Second, func() bool {
		return len(s.pending(t)) == 0 && len(safesynctest.DeadLetters(t, s.rdb, dead)) == 1
	})
	if got := s.balance(t, 3); got != 9 {
		t.Fatalf("balance = %d, want 9: the nine good entries applied once each", got)
	}
	d := safesynctest.DeadLetters(t, s.rdb, dead)[0]
	if d.OriginalID != ids[3] || d.Reason != safesync.DeadLetterMaxDeliveries || d.Failures != cfg.MaxDeliveries || d.Error != "no such account" {
		t.Fatalf("dead letter = %+v, want %s with reason %s after %d failures of its own, with the handler's error", d, ids[3], safesync.DeadLetterMaxDeliveries, cfg.MaxDeliveries)
	}
}

func TestPythonProducerToGoPipeline(t *testing.T) {
	s := newPipelineSetup(t)
	// Exactly what Python's json.dumps writes, added with redis-cli as a
	// Python worker using redis-py's XADD would.
	payloads := []string{
		pythonJSONDumps(t, `{"order_id": 1, "account_id": 1, "amount": 5}`),
		pythonJSONDumps(t, `{"order_id": 2, "account_id": 2, "amount": 12, "note": "caf\u00e9"}`),
	}
	for _, p := range payloads {
		out, err := exec.Command("redis-cli", "-h", redisHost(t), "-p", redisPort(t), "XADD", s.stream, "*", "data", p).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli XADD: %v: %s", err, out)
		}
	}
	p := safesync.Stream(safesync.JSON[order]()).Handle(s.apply()).AckAfter(safesync.Commit(s.db)).Once(s.applied)
	runUntil(t, p, s.rdb, s.config("w1"), 10*time.Second, func() bool {
		return s.balance(t, 1) == 5 && s.balance(t, 2) == 12 && len(s.pending(t)) == 0
	})
}

// pythonJSONDumps re-serialises a JSON object with python3's json.dumps
// when python3 is installed, and otherwise returns it as given (already in
// json.dumps style: ", " and ": " separators, ASCII escapes).
func pythonJSONDumps(t *testing.T, obj string) string {
	if _, err := exec.LookPath("python3"); err != nil {
		return obj
	}
	out, err := exec.Command("python3", "-c", "import json,sys; print(json.dumps(json.loads(sys.argv[1])))", obj).Output()
	if err != nil {
		t.Fatalf("python3 json.dumps: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func redisHost(t *testing.T) string {
	addr := redisAddr(t)
	return addr[:strings.LastIndexByte(addr, ':')]
}

func redisPort(t *testing.T) string {
	addr := redisAddr(t)
	return addr[strings.LastIndexByte(addr, ':')+1:]
}
