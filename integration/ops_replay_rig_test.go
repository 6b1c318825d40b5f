package integration

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// These tests dead-letter entries with a failing handler, fix it, and
// replay the dead letters with the safesync command (built from this
// workspace) or the ops API, on real MySQL and Redis and on the local
// Redis Cluster, and check that every entry's effects were applied
// exactly once by a pipeline with Once.

// replayOrder is the message of the replay tests. While the handler is
// broken, "bad" orders fail permanently (reason handler) and "flaky" ones
// fail until they are dead-lettered after MaxDeliveries (reason
// max_deliveries).
type replayOrder struct {
	ID   int    `json:"id"`
	Kind string `json:"kind"`
}

// replayRig is a pipeline with Once over a stream (or a partitioned one)
// whose handler inserts one row per application into an effects table.
type replayRig struct {
	t       *testing.T
	db      *sql.DB
	client  rueidis.Client
	addrs   []string // of the Redis the command connects to
	effects string
	applied string
	target  ops.Target
	ops     *ops.Ops
	broken  atomic.Bool
	orders  []replayOrder
}

func newReplayRig(t *testing.T, client rueidis.Client, addrs []string, target ops.Target) *replayRig {
	t.Helper()
	r := &replayRig{t: t, db: openMySQL(t, nil), client: client, addrs: addrs, target: target, ops: ops.New(client, ops.Config{})}
	r.effects = createTable(t, r.db, "effects", "CREATE TABLE %s (n BIGINT AUTO_INCREMENT PRIMARY KEY, order_id BIGINT NOT NULL) ENGINE=InnoDB")
	r.applied = dedupeTable(t, r.db)
	t.Cleanup(func() {
		keys := append(append([]string{}, target.Streams...), target.DeadLetterStreams...)
		for _, k := range keys {
			_ = client.Do(context.Background(), client.B().Del().Key(k).Build()).Error()
		}
	})
	return r
}

func (r *replayRig) pipeline() safesync.Pipeline[replayOrder] {
	return safesync.Stream(safesync.JSON[replayOrder]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[replayOrder]) error {
			if r.broken.Load() {
				switch msg.Value.Kind {
				case "bad":
					return safesync.Permanent(fmt.Errorf("order %d: unknown currency", msg.Value.ID))
				case "flaky":
					return fmt.Errorf("order %d: tax service timed out", msg.Value.ID)
				}
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO `"+r.effects+"` (order_id) VALUES (?)", msg.Value.ID)
			return err
		}).
		AckAfter(safesync.Commit(r.db)).
		Once(r.applied)
}

func (r *replayRig) config(deadLetterStream string) safesync.StreamConfig {
	m, _ := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	return safesync.StreamConfig{
		Group: "workers", Consumer: "w1", Block: 50 * time.Millisecond,
		ClaimIdle: 150 * time.Millisecond, ClaimInterval: 50 * time.Millisecond, MaxDeliveries: 2,
		DeadLetterStream: deadLetterStream, Metrics: m,
	}
}

// run runs the pipeline until the test ends.
func (r *replayRig) run(start func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- start(ctx) }()
	r.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("pipeline: %v", err)
		}
	})
}

// publish adds n orders, every third bad and every fifth other one flaky,
// through publish, and waits until the pipeline has used them up.
func (r *replayRig) publish(n int, publish func(o replayOrder) error) {
	r.t.Helper()
	for i := range n {
		o := replayOrder{ID: len(r.orders) + 1, Kind: "good"}
		switch {
		case i%3 == 2:
			o.Kind = "bad"
		case i%5 == 4:
			o.Kind = "flaky"
		}
		if err := publish(o); err != nil {
			r.t.Fatal(err)
		}
		r.orders = append(r.orders, o)
	}
}

// waitSettled waits until the pipeline's group has consumed every entry
// (lag and pending 0) and returns the dead letters then.
func (r *replayRig) waitSettled() []ops.DeadLetter {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		info, err := r.ops.Inspect(context.Background(), r.target)
		if err != nil {
			r.t.Fatal(err)
		}
		settled := false
		for _, g := range info.Groups {
			settled = settled || g.Name == "workers" && g.Lag == 0 && g.Pending == 0
		}
		if settled {
			page, err := r.ops.DeadLetters(context.Background(), r.target, ops.DeadLetterQuery{Limit: ops.MaxLimit})
			if err != nil {
				r.t.Fatal(err)
			}
			return page.Entries
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("not settled after 60s: %+v", info.Groups)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// applications returns how many times each order was applied.
func (r *replayRig) applications() map[int]int {
	r.t.Helper()
	rows, err := r.db.Query("SELECT order_id, COUNT(*) FROM `" + r.effects + "` GROUP BY order_id")
	if err != nil {
		r.t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]int{}
	for rows.Next() {
		var id, n int
		if err := rows.Scan(&id, &n); err != nil {
			r.t.Fatal(err)
		}
		out[id] = n
	}
	if err := rows.Err(); err != nil {
		r.t.Fatal(err)
	}
	return out
}

// checkApplied fails unless the orders of the kinds given were applied
// exactly once each and the others never.
func (r *replayRig) checkApplied(kinds ...string) {
	r.t.Helper()
	got := r.applications()
	for _, o := range r.orders {
		want := 0
		for _, k := range kinds {
			if o.Kind == k {
				want = 1
			}
		}
		if got[o.ID] != want {
			r.t.Errorf("order %d (%s) applied %d times, want %d", o.ID, o.Kind, got[o.ID], want)
		}
	}
}

func (r *replayRig) count(kind string) int {
	n := 0
	for _, o := range r.orders {
		if o.Kind == kind {
			n++
		}
	}
	return n
}

// restore adds copies of dead letters back to their dead-letter streams,
// as they were before a replay: the state a replay leaves when it stops
// between appending an entry and removing its dead letter.
func (r *replayRig) restore(ds []ops.DeadLetter) {
	r.t.Helper()
	for _, d := range ds {
		b := r.client.B().Xadd().Key(d.DeadLetterStream).Id("*").FieldValue().
			FieldValue(safesync.DeadLetterFieldStream, d.Stream).
			FieldValue(safesync.DeadLetterFieldGroup, d.Group).
			FieldValue(safesync.DeadLetterFieldID, d.OriginalID).
			FieldValue(safesync.DeadLetterFieldReason, d.Reason)
		for k, v := range d.Fields {
			b = b.FieldValue(k, v)
		}
		if err := r.client.Do(context.Background(), b.Build()).Error(); err != nil {
			r.t.Fatal(err)
		}
	}
}

// cli runs the safesync command on the rig's Redis and returns its output
// and exit code.
func (r *replayRig) cli(args ...string) (string, int) {
	r.t.Helper()
	var full []string
	for _, a := range r.addrs {
		full = append(full, "--redis", a)
	}
	cmd := exec.Command(safesyncCommand(r.t), append(full, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit):
		return out.String(), exit.ExitCode()
	}
	r.t.Fatalf("safesync %v: %v", args, err)
	return "", -1
}

func (r *replayRig) mustCLI(args ...string) string {
	r.t.Helper()
	out, code := r.cli(args...)
	if code != 0 {
		r.t.Fatalf("safesync %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// safesyncCommand builds the safesync command of this workspace for the
// test and returns its path.
func safesyncCommand(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "safesync")
	build := exec.Command("go", "build", "-o", bin, "github.com/safesync-go/safesync/cmd/safesync")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build safesync: %v\n%s", err, out)
	}
	return bin
}

func reasons(ds []ops.DeadLetter) map[string]int {
	out := map[string]int{}
	for _, d := range ds {
		out[d.Reason]++
	}
	return out
}

// publishOne publishes o to the rig's stream, or to its partition.
func (r *replayRig) publishOne(o replayOrder) error {
	fields, err := safesync.EncodeJSON(o)
	if err != nil {
		return err
	}
	key := r.target.Streams[o.ID%len(r.target.Streams)]
	_, err = safesync.Publish(context.Background(), r.client, key, fields)
	return err
}
