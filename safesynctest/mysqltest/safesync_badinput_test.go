package mysqltest_test

import (
	"testing"

	"github.com/safesync-go/safesync/internal/badinput"
	"github.com/safesync-go/safesync/safesynctest"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

// The bad-input table on the embedded engines; integration/ runs the same
// table on real MariaDB and Redis.

func TestBadEntriesAreDeadLetteredAndTheirNeighboursHandled(t *testing.T) {
	badinput.RunEntries(t, safesynctest.NewRedis(t), mysqltest.New(t))
}

func TestBadCallsFailBeforeAnythingRuns(t *testing.T) {
	badinput.RunCalls(t, safesynctest.NewRedis(t), mysqltest.New(t))
}
