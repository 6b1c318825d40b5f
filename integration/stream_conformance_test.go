package integration

import (
	"testing"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync/safesynctest"
)

// The stream conformance suite on the run's Redis; the root package runs
// the same suite on the embedded one.
func TestStreamConformance(t *testing.T) {
	redisAddr(t) // skip, or fail, before running the cases when Redis is missing
	safesynctest.RunStreamConformance(t, safesynctest.StreamTarget{
		NewClient: func(t *testing.T) rueidis.Client { return openRedis(t) },
	})
}
