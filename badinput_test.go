package safesync_test

import (
	"os"
	"strings"
	"testing"

	"github.com/safesync-go/safesync/internal/badinput"
)

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
