package safesync_test

// Regression tests for the stream defects an outside acceptance run found
// (issue 11), on the embedded Redis; integration/ checks the cases that
// need a real server (ACL refusals, failing acknowledgements).

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// runners are the three ways to run a consumer, plus a pipeline, each
// returning Run's error.
func runners(t *testing.T, client rueidis.Client, cfg safesync.StreamConfig) map[string]func(ctx context.Context) error {
	t.Helper()
	ok := func(context.Context, safesync.Message[item]) error { return nil }
	// The pipeline never reaches its database in these tests: nothing is
	// handled. sql.Open connects lazily.
	db, err := sql.Open("mysql", "root@tcp(127.0.0.1:1)/none")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return map[string]func(ctx context.Context) error{
		"Run": func(ctx context.Context) error { return mustConsumer(t, client, cfg).Run(ctx, ok) },
		"RunBatch": func(ctx context.Context) error {
			return mustConsumer(t, client, cfg).RunBatch(ctx, 10, func(context.Context, []safesync.Message[item]) error { return nil })
		},
		"ClaimStale": func(ctx context.Context) error { return mustConsumer(t, client, cfg).ClaimStale(ctx, ok) },
		"Pipeline.Run": func(ctx context.Context) error {
			return safesync.Stream(safesync.JSON[item]()).
				Handle(func(context.Context, *safesync.Tx, safesync.Message[item]) error { return nil }).
				AckAfter(safesync.Commit(db)).Run(ctx, client, cfg)
		},
	}
}

// Issue 11, item 1: a stream key (or dead-letter key) of another type ended
// Run only when its ctx ended: the Redis error was wrapped, and the retry
// decision did not see through the wrapping. It must end Run at once, with
// an error naming the key, its type and the command.
func TestRunEndsAtOnceWhenAKeyHoldsAnotherType(t *testing.T) {
	for _, tc := range []struct {
		name    string
		key     string // set to a string
		edit    func(*safesync.StreamConfig)
		mention []string
	}{
		{"stream", "orders", nil, []string{`"orders"`, "string", "XGROUP CREATE"}},
		{"dead-letter stream", "orders:dead", nil, []string{`"orders:dead"`, "string", "XADD"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := safesynctest.NewRedis(t)
			if err := client.Do(context.Background(), client.B().Set().Key(tc.key).Value("x").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			cfg := defectConfig(nil)
			for name, run := range runners(t, client, cfg) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				start := time.Now()
				err := run(ctx)
				cancel()
				if err == nil {
					t.Errorf("%s returned nil after %v, want an error", name, time.Since(start).Round(time.Millisecond))
					continue
				}
				if took := time.Since(start); took > time.Second {
					t.Errorf("%s took %v to fail, want at once", name, took.Round(time.Millisecond))
				}
				if !errors.Is(err, safesync.ErrWrongType) {
					t.Errorf("%s: %v does not match ErrWrongType", name, err)
				}
				for _, m := range tc.mention {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("%s: error %q does not mention %s", name, err, m)
					}
				}
			}
		})
	}
}
