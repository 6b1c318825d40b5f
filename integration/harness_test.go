// Package integration tests safesync against real MySQL/MariaDB and Redis.
//
// Services are found in this order:
//  1. SAFESYNC_MYSQL_DSN (a go-sql-driver/mysql DSN) and SAFESYNC_REDIS_ADDR
//     (host:port);
//  2. otherwise, when a Docker engine answers, dockertest starts mysql:8.4
//     and redis:7 once for the whole run and removes them at the end;
//  3. otherwise every test that needs a service skips with one line.
//
// SAFESYNC_REQUIRE_SERVICES=1 turns that skip into a failure, so CI cannot
// pass by skipping. Tests create uniquely named tables and streams and drop
// them when they end.
package integration

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/ory/dockertest/v3"
	"github.com/redis/rueidis"
)

const (
	envMySQLDSN        = "SAFESYNC_MYSQL_DSN"
	envRedisAddr       = "SAFESYNC_REDIS_ADDR"
	envRequireServices = "SAFESYNC_REQUIRE_SERVICES"
	// envStartServers=1 lets tests start servers of their own: the Redis
	// Cluster tests' six redis-server nodes and the fault tests' private
	// redis-server. Without it those tests skip (or fail, with
	// envRequireServices=1).
	envStartServers = "SAFESYNC_START_SERVERS"
)

// services is what the run found, resolved once.
var services struct {
	once      sync.Once
	mysqlDSN  string
	redisAddr string
	missing   string // why services are unavailable, when they are
	pool      *dockertest.Pool
	started   []*dockertest.Resource
}

func TestMain(m *testing.M) {
	if name := os.Getenv(envWorker); name != "" {
		os.Exit(runWorker(name))
	}
	code := m.Run()
	stopSharedCluster()
	stopContainers()
	os.Exit(code)
}

func resolveServices() {
	services.once.Do(func() {
		services.mysqlDSN = os.Getenv(envMySQLDSN)
		services.redisAddr = os.Getenv(envRedisAddr)
		if services.mysqlDSN != "" && services.redisAddr != "" {
			return
		}
		if err := startContainers(); err != nil {
			services.missing = fmt.Sprintf("set %s and %s, or run a Docker engine (%v)", envMySQLDSN, envRedisAddr, err)
		}
	})
}

// startContainers starts whichever of MySQL and Redis the environment did
// not name, with dockertest.
func startContainers() error {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return fmt.Errorf("no Docker client: %w", err)
	}
	if err := pool.Client.Ping(); err != nil {
		return fmt.Errorf("no Docker engine answers: %w", err)
	}
	pool.MaxWait = 2 * time.Minute
	services.pool = pool
	if services.mysqlDSN == "" {
		res, err := pool.RunWithOptions(&dockertest.RunOptions{
			Repository: "mysql", Tag: "8.4",
			Env: []string{"MYSQL_ALLOW_EMPTY_PASSWORD=yes", "MYSQL_DATABASE=test"},
		})
		if err != nil {
			return fmt.Errorf("start mysql:8.4: %w", err)
		}
		services.started = append(services.started, res)
		_ = res.Expire(1800)
		dsn := fmt.Sprintf("root@tcp(%s)/test", res.GetHostPort("3306/tcp"))
		if err := pool.Retry(func() error { return pingMySQL(dsn) }); err != nil {
			return fmt.Errorf("mysql:8.4 did not become ready: %w", err)
		}
		services.mysqlDSN = dsn
	}
	if services.redisAddr == "" {
		res, err := pool.RunWithOptions(&dockertest.RunOptions{Repository: "redis", Tag: "7"})
		if err != nil {
			return fmt.Errorf("start redis:7: %w", err)
		}
		services.started = append(services.started, res)
		_ = res.Expire(1800)
		addr := res.GetHostPort("6379/tcp")
		if err := pool.Retry(func() error { return pingRedis(addr) }); err != nil {
			return fmt.Errorf("redis:7 did not become ready: %w", err)
		}
		services.redisAddr = addr
	}
	return nil
}

func stopContainers() {
	for _, r := range services.started {
		if err := services.pool.Purge(r); err != nil {
			fmt.Fprintf(os.Stderr, "integration: remove container %s: %v\n", r.Container.Name, err)
		}
	}
}

func pingMySQL(dsn string) error {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

func pingRedis(addr string) error {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Do(ctx, c.B().Ping().Build()).Error()
}

// unavailable skips the test, or fails it when services are required.
func unavailable(tb testing.TB, what, why string) {
	tb.Helper()
	msg := fmt.Sprintf("integration: %s not available: %s", what, why)
	if os.Getenv(envRequireServices) == "1" {
		tb.Fatal(msg + " (" + envRequireServices + "=1)")
	}
	tb.Skip(msg)
}

// mayStartServers skips the test (fails it with SAFESYNC_REQUIRE_SERVICES=1)
// unless SAFESYNC_START_SERVERS=1 allows it to start servers of its own.
func mayStartServers(tb testing.TB, what string) {
	tb.Helper()
	if os.Getenv(envStartServers) != "1" {
		unavailable(tb, what, "this test starts servers of its own; set "+envStartServers+"=1 to let it")
	}
}

// mysqlDSN returns the DSN of the run's MySQL, or skips/fails the test.
func mysqlDSN(tb testing.TB) string {
	tb.Helper()
	resolveServices()
	if services.mysqlDSN == "" {
		unavailable(tb, "MySQL", services.missing)
	}
	return services.mysqlDSN
}

// redisAddr returns the address of the run's Redis, or skips/fails the test.
func redisAddr(tb testing.TB) string {
	tb.Helper()
	resolveServices()
	if services.redisAddr == "" {
		unavailable(tb, "Redis", services.missing)
	}
	return services.redisAddr
}

// openMySQL opens a pool on the run's MySQL, closed when the test ends.
// edit, if not nil, adjusts the parsed DSN first.
func openMySQL(tb testing.TB, edit func(*mysql.Config)) *sql.DB {
	tb.Helper()
	cfg, err := mysql.ParseDSN(mysqlDSN(tb))
	if err != nil {
		tb.Fatalf("integration: %s: %v", envMySQLDSN, err)
	}
	if edit != nil {
		edit(cfg)
	}
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		// The environment named this server: failing to reach it is an
		// error, not a reason to skip.
		tb.Fatalf("integration: MySQL at %s does not answer: %v", cfg.Addr, err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// openRedis returns a rueidis client on the run's Redis, closed when the
// test ends.
func openRedis(tb testing.TB) rueidis.Client {
	tb.Helper()
	addr := redisAddr(tb)
	if err := pingRedis(addr); err != nil {
		tb.Fatalf("integration: Redis at %s does not answer: %v", addr, err)
	}
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

var nameUnsafe = regexp.MustCompile(`[^a-z0-9_]+`)

// uniqueName returns a name for a table or stream no other test or run
// uses: prefix, part of the test name and random hex, at most 64 bytes.
func uniqueName(tb testing.TB, prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := "_" + hex.EncodeToString(b[:])
	base := prefix + "_" + nameUnsafe.ReplaceAllString(strings.ToLower(tb.Name()), "_")
	if max := 64 - len(suffix); len(base) > max {
		base = base[:max]
	}
	return base + suffix
}

// createTable creates a uniquely named table from ddl, in which %s stands
// for the (backtick-quoted) name, and drops it when the test ends.
func createTable(tb testing.TB, db *sql.DB, prefix, ddl string) string {
	tb.Helper()
	name := uniqueName(tb, prefix)
	if _, err := db.Exec(fmt.Sprintf(ddl, "`"+name+"`")); err != nil {
		tb.Fatalf("create table %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if _, err := db.Exec("DROP TABLE IF EXISTS `" + name + "`"); err != nil {
			tb.Errorf("drop table %s: %v", name, err)
		}
	})
	return name
}
