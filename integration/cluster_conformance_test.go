package integration

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// The harness gives a cluster of three masters with a replica each, and a
// cluster client that routes every key to the master of its slot.
func TestClusterHarnessHasThreeMastersWithReplicas(t *testing.T) {
	c := openSharedCluster(t)
	masters, err := c.Masters()
	if err != nil {
		t.Fatal(err)
	}
	if len(masters) != 3 {
		t.Fatalf("%d masters (%v), want 3", len(masters), masters)
	}
	rc := clusterClient(t, c)
	seen := map[int]bool{}
	for i := range 30 {
		key := "harness:{" + strconv.Itoa(i) + "}"
		// Each command has its own generous deadline: one shared by the 30
		// keys and the 60 redis-cli processes between them ran out on a
		// loaded machine although every command succeeded.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rc.Do(ctx, rc.B().Set().Key(key).Value("v").Build()).Error(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		m, err := c.MasterOf(key)
		if err != nil {
			t.Fatal(err)
		}
		seen[m] = true
		if got, err := c.CLI(m, "GET", key); err != nil || got != "v" {
			t.Fatalf("GET %s on its master %d: %q, %v", key, m, got, err)
		}
		_ = rc.Do(ctx, rc.B().Del().Key(key).Build()).Error()
	}
	if len(seen) != 3 {
		t.Fatalf("30 tagged keys reached %d masters, want 3", len(seen))
	}
}

// The stream conformance suite on a Redis Cluster, through a rueidis
// cluster client. Every case's stream has a hash tag shared with its
// dead-letter stream.
func TestClusterStreamConformance(t *testing.T) {
	c := openSharedCluster(t)
	safesynctest.RunStreamConformance(t, safesynctest.StreamTarget{
		NewClient: func(t *testing.T) rueidis.Client { return clusterClient(t, c) },
	})
}

// The partitioned-stream cases on a Redis Cluster: each partition in its
// own slot, read by its own blocking XREADGROUP.
func TestClusterPartitionConformance(t *testing.T) {
	c := openSharedCluster(t)
	safesynctest.RunPartitionConformance(t, safesynctest.StreamTarget{
		NewClient: func(t *testing.T) rueidis.Client { return clusterClient(t, c) },
	})
}

// Three partitions sit on the three masters of a fresh cluster.
func TestClusterThreePartitionsSitOnThreeMasters(t *testing.T) {
	c := openSharedCluster(t)
	p, err := safesync.NewPartitions("orders", 3)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, k := range p.Streams() {
		m, err := c.MasterOf(k)
		if err != nil {
			t.Fatal(err)
		}
		seen[m] = true
	}
	if len(seen) != 3 {
		t.Fatalf("partitions %v sit on %d masters, want 3", p.Streams(), len(seen))
	}
}

// A dead-letter stream in another slot than its stream cannot share a
// MULTI/EXEC with it on a cluster: the move falls back to XADD then XACK,
// and still moves every entry and leaves nothing pending.
func TestClusterDeadLetterToAnotherSlotFallsBackToTwoCommands(t *testing.T) {
	c := openSharedCluster(t)
	rdb := clusterClient(t, c)
	stream := "{" + uniqueName(t, "dl") + "}"
	dead := "{" + uniqueName(t, "dead") + "}"
	if safesync.KeySlot(stream) == safesync.KeySlot(dead) {
		t.Skip("the two random names share a slot; nothing to test this time")
	}
	t.Cleanup(func() {
		for _, k := range []string{stream, dead} {
			_ = rdb.Do(context.Background(), rdb.B().Del().Key(k).Build()).Error()
		}
	})
	for i := range 10 {
		if _, err := safesync.PublishJSON(context.Background(), rdb, stream, order{OrderID: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	m, _ := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	cons, err := safesync.NewConsumer(rdb, safesync.StreamConfig{
		Stream: stream, Group: "workers", Consumer: "c1", DeadLetterStream: dead,
		Block: 100 * time.Millisecond, Metrics: m,
	}, safesync.JSON[order]())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	handled := 0
	err = cons.Run(ctx, func(ctx context.Context, msg safesync.Message[order]) error {
		if handled++; handled == 10 {
			cancel()
		}
		return safesync.Permanent(errors.New("refused"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if handled != 10 {
		t.Fatalf("%d entries handled, want 10", handled)
	}
	if p := safesynctest.Pending(t, rdb, stream, "workers"); len(p) != 0 {
		t.Errorf("%d entries still pending: %v", len(p), p)
	}
	letters := safesynctest.DeadLetters(t, rdb, dead)
	if len(letters) != 10 {
		t.Fatalf("%d dead letters in %s, want 10", len(letters), dead)
	}
	for _, d := range letters {
		if d.Stream != stream || d.Reason != safesync.DeadLetterHandler {
			t.Errorf("dead letter %+v: want from %s with reason %s", d, stream, safesync.DeadLetterHandler)
		}
	}
}
