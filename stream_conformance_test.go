package safesync_test

import (
	"testing"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync/safesynctest"
)

// The stream conformance suite on the embedded Redis; integration/ runs the
// same suite on a real server.
func TestStreamConformanceEmbedded(t *testing.T) {
	srv, err := safesynctest.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	safesynctest.RunStreamConformance(t, safesynctest.StreamTarget{
		Embedded: true,
		NewClient: func(t *testing.T) rueidis.Client {
			c, err := srv.Client()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return c
		},
	})
}

// The partitioned-stream cases on the embedded Redis; integration/ runs
// them on a Redis Cluster.
func TestPartitionConformanceEmbedded(t *testing.T) {
	srv, err := safesynctest.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	safesynctest.RunPartitionConformance(t, safesynctest.StreamTarget{
		Embedded: true,
		NewClient: func(t *testing.T) rueidis.Client {
			c, err := srv.Client()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return c
		},
	})
}
