package safesync_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

// advisoryLockError runs WithAdvisoryLock(name) with a nil transaction: a
// name refused before any SQL returns its error, and one that is not
// refused reaches the nil transaction and panics, which is reported as
// such.
func advisoryLockError(name string) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("reached SQL (panicked on the nil tx: %v)", p)
		}
	}()
	_, err = safesync.WithAdvisoryLock(name, time.Second, safesync.NoResult(func(context.Context, *safesync.Tx) error {
		return errors.New("fn ran")
	}))(context.Background(), nil)
	return err
}

// Regression (issue 11, item 8): MariaDB cuts a lock name at its first NUL
// byte, so "p\x00a", "p\x00b" and "p" were one lock; MySQL folds names to
// lower case and refuses names it cannot store in utf8mb3, which MariaDB
// keeps apart or accepts. A name either server would alter is refused, so
// that two different names are never one lock and a name means the same
// lock on both servers.
func TestAdvisoryLockNamesTheServerWouldAlterAreRefusedBeforeAnySQL(t *testing.T) {
	tests := []struct {
		name, lock, says string
	}{
		{"a NUL byte", "p\x00a", "NUL"},
		{"a NUL byte at the end", "p\x00", "NUL"},
		{"upper-case letters", "Job:7", "upper-case"},
		{"a non-ASCII upper-case letter", "jöb:Ä", "upper-case"},
		{"invalid UTF-8", "job:\xff", "UTF-8"},
		{"a character outside the Basic Multilingual Plane", "job:😀", "U+1F600"},
		{"65 characters", strings.Repeat("n", 65), "longer than 64"},
		{"empty", "", "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, err := range []error{safesync.ValidateLockName(tt.lock), advisoryLockError(tt.lock)} {
				if !errors.Is(err, safesync.ErrInvalidLockName) || !strings.Contains(err.Error(), tt.says) {
					t.Fatalf("name %q: err = %v; want ErrInvalidLockName saying %q", tt.lock, err, tt.says)
				}
			}
		})
	}
	for _, ok := range []string{"job:7", "user:1:summary", "é-ß-€ and spaces", strings.Repeat("€", 64), "a b\tc"} {
		if err := safesync.ValidateLockName(ok); err != nil {
			t.Errorf("ValidateLockName(%q) = %v, want nil", ok, err)
		}
	}
}

func TestKeysPrintAsColumnValuePairs(t *testing.T) {
	tests := []struct {
		name string
		key  safesync.Key
		want string
	}{
		{"one integer column", safesync.Key{"id": 9}, "id=9"},
		{"columns in sorted order, strings quoted", safesync.Key{"seq": int64(4), "region": "eu west"}, `region="eu west" seq=4`},
		{"bytes quoted as text", safesync.Key{"code": []byte("A1")}, `code="A1"`},
		{"no column", safesync.Key{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.key.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if got := fmt.Sprintf("%v", tt.key); got != tt.want {
				t.Errorf("%%v = %q, want %q", got, tt.want)
			}
		})
	}
	conflict := &safesync.ConflictError{Table: "accounts", Key: safesync.Key{"id": 9}, Version: 3}
	if want := "safesync: optimistic update conflict: accounts id=9 is no longer at version 3"; conflict.Error() != want {
		t.Errorf("conflict message %q, want %q", conflict, want)
	}
}
