package integration

import (
	"sync"
	"testing"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync/internal/rediscluster"
)

// redisCluster is the local cluster of the cluster tests.
type redisCluster = rediscluster.Cluster

// sharedCluster is the cluster most cluster tests share, started on first
// use and stopped by TestMain.
var sharedCluster struct {
	once    sync.Once
	c       *redisCluster
	err     error
	missing string
}

// openSharedCluster returns the run's shared cluster, starting it on first
// use, or skips the test (fails it with SAFESYNC_REQUIRE_SERVICES=1) when
// redis-server or redis-cli is missing, or SAFESYNC_START_SERVERS is not 1.
func openSharedCluster(tb testing.TB) *redisCluster {
	tb.Helper()
	mayStartServers(tb, "Redis Cluster")
	sharedCluster.once.Do(func() {
		if sharedCluster.missing = rediscluster.Missing(); sharedCluster.missing != "" {
			return
		}
		sharedCluster.c, sharedCluster.err = rediscluster.Start()
	})
	if sharedCluster.missing != "" {
		unavailable(tb, "Redis Cluster", sharedCluster.missing)
	}
	if sharedCluster.err != nil {
		tb.Fatalf("integration: start Redis Cluster: %v", sharedCluster.err)
	}
	return sharedCluster.c
}

// openOwnCluster starts a cluster for one test, stopped when it ends; for
// tests that kill nodes.
func openOwnCluster(tb testing.TB) *redisCluster {
	tb.Helper()
	mayStartServers(tb, "Redis Cluster")
	if why := rediscluster.Missing(); why != "" {
		unavailable(tb, "Redis Cluster", why)
	}
	c, err := rediscluster.Start()
	if err != nil {
		tb.Fatalf("integration: start Redis Cluster: %v", err)
	}
	tb.Cleanup(c.Stop)
	return c
}

func stopSharedCluster() {
	if sharedCluster.c != nil {
		sharedCluster.c.Stop()
	}
}

// clusterClient returns a rueidis cluster client on c, closed when the
// test ends.
func clusterClient(tb testing.TB, c *redisCluster) rueidis.Client {
	tb.Helper()
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: c.Addrs(), ShuffleInit: true, DisableCache: true})
	if err != nil {
		tb.Fatalf("integration: connect to Redis Cluster: %v", err)
	}
	if rc.Mode() != rueidis.ClientModeCluster {
		rc.Close()
		tb.Fatalf("integration: client mode is %s, want cluster", rc.Mode())
	}
	tb.Cleanup(rc.Close)
	return rc
}
