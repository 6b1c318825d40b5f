package safesync_test

import (
	"os"
	"strings"
	"testing"

	"github.com/safesync-go/safesync/internal/badinput"
	"github.com/safesync-go/safesync/safesynctest"
)

// The bad-input table on the embedded engines; integration/ runs the same
// table on real MariaDB and Redis.

func TestBadEntriesAreDeadLetteredAndTheirNeighboursHandled(t *testing.T) {
	badinput.RunEntries(t, safesynctest.NewRedis(t), safesynctest.NewMySQL(t))
}

func TestBadCallsFailBeforeAnythingRuns(t *testing.T) {
	badinput.RunCalls(t, safesynctest.NewRedis(t), safesynctest.NewMySQL(t))
}

func TestREADMEListsEveryBadInputRow(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range badinput.Names() {
		if !strings.Contains(string(readme), "| "+name+" |") {
			t.Errorf("README.md's bad-input table has no row %q", name)
		}
	}
}
