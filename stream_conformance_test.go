package safesync_test

import (
	"testing"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync/safesynctest"
)

// The stream conformance suite on the embedded Redis; integration/ runs the
// same suite on a real server.
func TestStreamConformanceEmbedded(t *testing.T) {
	safesynctest.RunStreamConformance(t, embeddedTarget(t))
}

// The partitioned-stream cases on the embedded Redis; integration/ runs
// them on a Redis Cluster.
func TestPartitionConformanceEmbedded(t *testing.T) {
	safesynctest.RunPartitionConformance(t, embeddedTarget(t))
}

// embeddedTarget starts an embedded Redis for the test and returns the
// conformance target that gives each case its own client on it.
func embeddedTarget(t *testing.T) safesynctest.StreamTarget {
	srv, err := safesynctest.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return safesynctest.StreamTarget{
		Embedded: true,
		NewClient: func(t *testing.T) rueidis.Client {
			c, err := srv.Client()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return c
		},
	}
}
