package main

import (
	"context"
	"os"
	"testing"
	"time"
)

// The demo is the README's first command; these runs keep it working. Each
// is the full scenario (publish, consume with a crashing worker, reclaim,
// verify) at a small size, and fails if any invariant fails.

func smallRun(mysqlDSN, redisAddr, strategy string, concurrency int) options {
	return options{
		mysqlDSN: mysqlDSN, redisAddr: redisAddr,
		messages: 600, malformed: 3, workers: 3, accounts: 10,
		batch: 20, concurrency: concurrency, strategy: strategy,
		crash: true, timeout: 2 * time.Minute,
	}
}

func TestDemoOnEmbeddedEngines(t *testing.T) {
	ok, err := run(context.Background(), smallRun("", "", "occ", 1))
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatal("an invariant failed; see the report above")
	}
}

// TestDemoOnRealServices runs both strategies on the services named by the
// integration tests' variables, and skips without them (failing instead
// when SAFESYNC_REQUIRE_SERVICES=1).
func TestDemoOnRealServices(t *testing.T) {
	dsn, addr := os.Getenv("SAFESYNC_MYSQL_DSN"), os.Getenv("SAFESYNC_REDIS_ADDR")
	if dsn == "" || addr == "" {
		if os.Getenv("SAFESYNC_REQUIRE_SERVICES") == "1" {
			t.Fatal("SAFESYNC_REQUIRE_SERVICES=1 but SAFESYNC_MYSQL_DSN or SAFESYNC_REDIS_ADDR is not set")
		}
		t.Skip("SAFESYNC_MYSQL_DSN and SAFESYNC_REDIS_ADDR not set; skipping the demo on real services")
	}
	for _, strategy := range []string{"occ", "rowlock"} {
		t.Run(strategy, func(t *testing.T) {
			ok, err := run(context.Background(), smallRun(dsn, addr, strategy, 2))
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Fatal("an invariant failed; see the report above")
			}
		})
	}
}
