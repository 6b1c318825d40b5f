package integration

import (
	"testing"

	"github.com/safesync-go/safesync/internal/badinput"
)

// The bad-input table on real MariaDB and Redis.

func TestBadEntriesAreDeadLetteredAndTheirNeighboursHandled(t *testing.T) {
	badinput.RunEntries(t, openRedis(t), openMySQL(t, nil))
}

func TestBadCallsFailBeforeAnythingRuns(t *testing.T) {
	badinput.RunCalls(t, openRedis(t), openMySQL(t, nil))
}
