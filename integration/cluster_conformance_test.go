package integration

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync/safesynctest"
)

// The harness gives a cluster of three masters with a replica each, and a
// cluster client that routes every key to the master of its slot.
func TestClusterHarnessHasThreeMastersWithReplicas(t *testing.T) {
	c := openSharedCluster(t)
	masters, err := c.masters()
	if err != nil {
		t.Fatal(err)
	}
	if len(masters) != 3 {
		t.Fatalf("%d masters (%v), want 3", len(masters), masters)
	}
	rc := c.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seen := map[int]bool{}
	for i := range 30 {
		key := "harness:{" + strconv.Itoa(i) + "}"
		if err := rc.Do(ctx, rc.B().Set().Key(key).Value("v").Build()).Error(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		m, err := c.masterOf(key)
		if err != nil {
			t.Fatal(err)
		}
		seen[m] = true
		if got, err := c.cli(m, "GET", key); err != nil || got != "v" {
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
		NewClient: func(t *testing.T) rueidis.Client { return c.client(t) },
	})
}

// The partitioned-stream cases on a Redis Cluster: each partition in its
// own slot, read by its own blocking XREADGROUP.
func TestClusterPartitionConformance(t *testing.T) {
	c := openSharedCluster(t)
	safesynctest.RunPartitionConformance(t, safesynctest.StreamTarget{
		NewClient: func(t *testing.T) rueidis.Client { return c.client(t) },
	})
}
