package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// faultPipelineArgs configures a worker process of the fault tests.
type faultPipelineArgs struct {
	Accounts, Effects, Applied, Stream, Group, Consumer string
	Stats                                               string        // Redis hash the worker counts into
	Work, AckDelay                                      time.Duration // see faultPipeline
}

// Fields of the stats hash.
const (
	statCalls       = "handler_calls"     // handler calls, rolled back or not
	statSkipped     = "once_skipped"      // entries committed without their handler running: already applied
	statRedelivered = "redelivered_calls" // handler calls for an entry delivered before
	statRetry       = "retry:"            // + reason: attempts retried
	statGaveUp      = "not_retried:"      // + kind: failed attempts not retried (left pending)
	statLost        = "lost_lock_seen"    // attempts that failed with ErrLockLost
	statRunning     = "pid:"              // + consumer: pid of its latest process to reach the pipeline
)

func init() { workers["fault-pipeline"] = faultPipelineWorker }

// faultPipelineWorker runs the exactly-once pipeline of the fault tests
// until SIGTERM, counting what happens in a Redis hash: a worker killed with
// SIGKILL cannot report anything at its end.
func faultPipelineWorker(ctx context.Context, raw json.RawMessage) (any, error) {
	var a faultPipelineArgs
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, err
	}
	db, rdb, err := workerServices()
	if err != nil {
		return nil, err
	}
	defer db.Close()
	defer rdb.Close()
	count := func(field string, n int64) {
		_ = rdb.Do(context.Background(), rdb.B().Hincrby().Key(a.Stats).Field(field).Increment(n).Build()).Error()
	}
	w := &faultWorkload{accounts: a.Accounts, effects: a.Effects}
	p := faultPipeline(w, db, a.Applied, a.Work, a.AckDelay, count)
	if err := rdb.Do(ctx, rdb.B().Hset().Key(a.Stats).FieldValue().FieldValue(statRunning+a.Consumer, strconv.Itoa(os.Getpid())).Build()).Error(); err != nil {
		return nil, err
	}
	return nil, p.Run(ctx, rdb, faultStreamConfig(a.Stream, a.Group, a.Consumer))
}

// faultPipeline is the pipeline under test: batches of up to 8 entries,
// exactly-once through applied, retried by the default classifier, every
// handler call, retry, unretried failure and skipped entry counted.
//
// work, when not 0, is how long each handler call takes besides its SQL, so
// that faults find transactions in flight; ackDelay is a pause between each
// COMMIT and its acknowledgement, so that kills also land there, where only
// Once keeps a redelivered entry from being applied twice.
func faultPipeline(w *faultWorkload, db *sql.DB, applied string, work, ackDelay time.Duration, count func(field string, n int64)) safesync.Pipeline[order] {
	var ran sync.Map // entry ids whose handler ran in this process and did not commit yet
	policy := safesync.Exponential(5*time.Millisecond, 200*time.Millisecond).WithMaxAttempts(20).WithMetrics(nil).
		WithClassifier(func(err error) (string, bool) {
			if errors.Is(err, safesync.ErrLockLost) {
				count(statLost, 1)
			}
			reason, retry := safesync.DefaultClassifier(err)
			if !retry {
				kind := errorKind(err)
				if kind == "other" {
					kind += "(" + truncateText(err.Error(), 200) + ")"
				}
				count(statGaveUp+kind, 1)
			}
			return reason, retry
		}).
		WithOnRetry(func(e safesync.RetryEvent) { count(statRetry+e.Reason, 1) })
	return safesync.Stream(safesync.JSON[order]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
			count(statCalls, 1)
			if msg.Deliveries > 1 {
				count(statRedelivered, 1)
			}
			ran.Store(msg.ID, true)
			if work > 0 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(work):
				}
			}
			return w.apply(ctx, tx, msg)
		}).
		AckAfter(safesync.Commit(db, safesync.WithMetrics(nil))).
		Once(applied).
		Batch(8).
		Retry(policy).
		AfterCommit(func(_ context.Context, msgs []safesync.Message[order]) {
			var skipped int64
			for _, m := range msgs {
				if _, ok := ran.LoadAndDelete(m.ID); !ok {
					skipped++
				}
			}
			if skipped > 0 {
				count(statSkipped, skipped)
			}
			time.Sleep(ackDelay)
		})
}

// readStats returns the stats hash as numbers.
func readStats(t *testing.T, rdb rueidis.Client, key string) map[string]int {
	t.Helper()
	m, err := rdb.Do(context.Background(), rdb.B().Hgetall().Key(key).Build()).AsIntMap()
	if err != nil {
		t.Fatalf("HGETALL %s: %v", key, err)
	}
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = int(v)
	}
	return out
}

// statsKey returns a unique Redis key for a stats hash, deleted at the end.
func statsKey(t *testing.T, rdb rueidis.Client) string {
	key := uniqueName(t, "stats")
	t.Cleanup(func() { _ = rdb.Do(context.Background(), rdb.B().Del().Key(key).Build()).Error() })
	return key
}

const (
	killEntries   = 5000
	killMalformed = 7
	killWorkers   = 4
	killTimes     = 12
)

// Four worker processes apply 5,000 entries exactly once while a random one
// of them is SIGKILLed at a random moment, at least ten times, and started
// again under its name. Killed workers leave entries pending under their
// names (handled or not, committed or not); the restarted worker re-reads
// them and the others reclaim them after ClaimIdle.
func TestFaultWorkerKillsApplyEveryEntryExactlyOnce(t *testing.T) {
	db := openMySQL(t, nil)
	rdb := openRedis(t)
	w := newFaultWorkload(t, db, rdb)
	stats := statsKey(t, rdb)
	w.publish(t, 1, killEntries, randomMalformed(1, killEntries, killMalformed))

	args := func(i int) faultPipelineArgs {
		return faultPipelineArgs{Accounts: w.accounts, Effects: w.effects, Applied: w.applied,
			Stream: w.stream, Group: w.group, Consumer: fmt.Sprintf("worker-%d", i), Stats: stats, Work: 2 * time.Millisecond, AckDelay: 10 * time.Millisecond}
	}
	procs := make([]*workerProc, killWorkers)
	for i := range procs {
		procs[i] = startWorker(t, "fault-pipeline", args(i))
	}

	deadline := time.Now().Add(4 * time.Minute)
	// runningNow returns the workers whose current process runs the
	// pipeline (not one still in its start-up).
	runningNow := func() []int {
		pids := readStats(t, rdb, stats)
		var out []int
		for i, p := range procs {
			if pids[statRunning+args(i).Consumer] == p.cmd.Process.Pid {
				out = append(out, i)
			}
		}
		return out
	}
	start := time.Now()
	// The kills begin once entries are being applied.
	if err := pollUntil(2*time.Minute, "entries applied", func() (bool, error) {
		applied, _, _, err := w.progress(context.Background())
		return applied > 0, err
	}); err != nil {
		t.Fatal(err)
	}
	var killedAt []int64 // entries applied at each kill
	for len(killedAt) < killTimes && time.Now().Before(deadline) {
		time.Sleep(time.Duration(200+rand.IntN(1000)) * time.Millisecond)
		applied, _, _, err := w.progress(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if applied == int64(len(w.good)) {
			break
		}
		ready := runningNow()
		if len(ready) == 0 {
			continue
		}
		i := ready[rand.IntN(len(ready))]
		if err := procs[i].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("kill worker %d: %v", i, err)
		}
		err = waitExit(procs[i], 30*time.Second)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("worker %d ended with %v, want SIGKILL\nstderr: %s", i, err, procs[i].stderr.String())
		}
		killedAt = append(killedAt, applied)
		procs[i] = startWorker(t, "fault-pipeline", args(i))
	}
	if len(killedAt) < 10 {
		t.Fatalf("only %d kills landed before the work was done (applied counts at the kills: %v); the test needs at least 10", len(killedAt), killedAt)
	}

	w.waitDone(t, 3*time.Minute)
	elapsed := time.Since(start)
	// A worker stops cleanly on SIGTERM once it is running; one started
	// just now may still be in the runtime's start-up.
	for len(runningNow()) < killWorkers {
		if time.Now().After(deadline) {
			t.Fatalf("only workers %v run their pipeline", runningNow())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, p := range procs {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("stop worker %d: %v", i, err)
		}
	}
	for _, p := range procs {
		p.wait(t, time.Minute, nil)
	}
	w.check(t)

	s := readStats(t, rdb, stats)
	for k := range s {
		if strings.HasPrefix(k, statRunning) {
			delete(s, k)
		}
	}
	t.Logf("%d SIGKILLs at %v of %d entries applied; done in %v; handler calls %d for %d entries; %d entries committed without re-running (already applied); stats %s",
		len(killedAt), killedAt, len(w.good), elapsed.Round(time.Millisecond), s[statCalls], len(w.good), s[statSkipped], mapString(s))
	if s[statRedelivered] == 0 {
		t.Errorf("no handler call was for a redelivered entry: the kills interrupted nothing")
	}
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
