package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// The worker needs real MySQL (row locks and optimistic updates under
// concurrency) and Redis: these tests run with SAFESYNC_MYSQL_DSN and
// SAFESYNC_REDIS_ADDR, each in a database and on a stream of its own.

func services(t *testing.T) (*sql.DB, string, rueidis.Client, string) {
	t.Helper()
	dsn, addr := os.Getenv("SAFESYNC_MYSQL_DSN"), os.Getenv("SAFESYNC_REDIS_ADDR")
	if dsn == "" || addr == "" {
		if os.Getenv("SAFESYNC_REQUIRE_SERVICES") == "1" {
			t.Fatal("SAFESYNC_REQUIRE_SERVICES=1 but SAFESYNC_MYSQL_DSN or SAFESYNC_REDIS_ADDR is not set")
		}
		t.Skip("SAFESYNC_MYSQL_DSN and SAFESYNC_REDIS_ADDR not set; the worker needs real MySQL and Redis")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "orders_worker_" + hex.EncodeToString(b[:])
	admin, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec("DROP DATABASE " + name) })
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DBName = name
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rdb.Do(context.Background(), rdb.B().Del().Key(name, name+safesync.DeadLetterSuffix).Build())
		rdb.Close()
	})
	for _, ddl := range Schema {
		if _, err := db.Exec(ddl); err != nil {
			t.Fatal(err)
		}
	}
	return db, cfg.FormatDSN(), rdb, name
}

func TestTwoWorkersApplyEveryOrderOnce(t *testing.T) {
	db, _, rdb, stream := services(t)
	ctx := context.Background()
	if err := safesync.CreateDedupeTable(ctx, db, AppliedTable); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, "INSERT INTO accounts (id, balance) VALUES (1, 100000), (2, 100000), (3, 50)")
	mustExec(t, db, "INSERT INTO stock (sku, on_hand) VALUES ('tea', 1000), ('cup', 1000)")

	const n = 200
	var want struct{ spent, tea, cup int64 }
	for i := int64(1); i <= n; i++ {
		o := Order{OrderID: i, AccountID: 1 + i%2, SKU: []string{"tea", "cup"}[i%2], Quantity: 1 + i%3, Amount: 10 + i%7}
		publish(t, rdb, stream, o)
		want.spent += o.Amount
		if o.SKU == "tea" {
			want.tea += o.Quantity
		} else {
			want.cup += o.Quantity
		}
	}
	// Two orders the worker must refuse: they go to the dead-letter stream.
	publish(t, rdb, stream, Order{OrderID: n + 1, AccountID: 3, SKU: "tea", Quantity: 1, Amount: 500}) // balance 50
	publish(t, rdb, stream, Order{OrderID: n + 2, AccountID: 1, SKU: "gold", Quantity: 1, Amount: 1})  // unknown sku

	metrics, reg := safesynctest.NewMetrics(t)
	policy := safesync.Backoff(2*time.Millisecond, 50)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, consumer := range []string{"worker-a", "worker-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- Pipeline(db, policy).Run(runCtx, rdb, safesync.StreamConfig{
				Stream: stream, Group: "orders-worker", Consumer: consumer, Concurrency: 4, Metrics: metrics,
			})
		}()
	}
	// Settled: every good order recorded as applied, both refused ones
	// dead-lettered, nothing pending.
	deadline := time.Now().Add(time.Minute)
	for get[int64](t, db, "SELECT COUNT(*) FROM "+AppliedTable) < n ||
		len(safesynctest.DeadLetters(t, rdb, stream+safesync.DeadLetterSuffix)) < 2 ||
		len(safesynctest.Pending(t, rdb, stream, "orders-worker")) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the workers did not settle every order within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	}

	var got struct{ spent, tea, cup int64 }
	balances, err := safesync.Select[int64](ctx, db, "SELECT balance FROM accounts WHERE id IN (1, 2)")
	if err != nil {
		t.Fatal(err)
	}
	got.spent = 200000 - balances[0] - balances[1]
	got.tea = 1000 - get[int64](t, db, "SELECT on_hand FROM stock WHERE sku = 'tea'")
	got.cup = 1000 - get[int64](t, db, "SELECT on_hand FROM stock WHERE sku = 'cup'")
	if got != want {
		t.Errorf("spent, tea, cup = %+v, want %+v", got, want)
	}
	if b := get[int64](t, db, "SELECT balance FROM accounts WHERE id = 3"); b != 50 {
		t.Errorf("account 3 balance %d, want 50 untouched", b)
	}
	dead := safesynctest.DeadLetters(t, rdb, stream+safesync.DeadLetterSuffix)
	if len(dead) != 2 || !strings.Contains(dead[0].Fields["data"], `"order_id":201`) || !strings.Contains(dead[1].Fields["data"], `"order_id":202`) {
		t.Errorf("dead letters %+v, want the two refused orders", dead)
	}
	if acked := safesynctest.MetricValue(t, reg, "coti_safesync_queue_messages_ack_total", map[string]string{"stream": stream}); acked < n {
		t.Errorf("%v entries acknowledged in the metrics, want at least %d", acked, n)
	}
	// The metrics were given once, in StreamConfig: they reach the
	// pipeline's transactions too.
	if commits := safesynctest.MetricValue(t, reg, "coti_safesync_db_transactions_total", map[string]string{"label": "order", "outcome": "commit"}); commits < 1 {
		t.Errorf("%v order transactions committed in the metrics given to StreamConfig, want some", commits)
	}
	if p := safesynctest.Pending(t, rdb, stream, "orders-worker"); len(p) != 0 {
		t.Errorf("%d entries pending", len(p))
	}
	if applied := get[int64](t, db, "SELECT COUNT(*) FROM "+AppliedTable); applied != n {
		t.Errorf("%d entries recorded as applied, want %d", applied, n)
	}
}

func TestConcurrentCreditsAllLand(t *testing.T) {
	db, _, _, _ := services(t)
	mustExec(t, db, "INSERT INTO accounts (id, balance) VALUES (1, 0)")
	metrics, reg := safesynctest.NewMetrics(t)
	policy := safesync.Backoff(time.Millisecond, 100)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				if _, err := Credit(db, policy, metrics, 1, 5)(context.Background()); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if b := get[int64](t, db, "SELECT balance FROM accounts WHERE id = 1"); b != 400 {
		t.Errorf("balance %d, want 400", b)
	}
	commits := safesynctest.MetricValue(t, reg, "coti_safesync_db_transactions_total", map[string]string{"label": "credit", "outcome": "commit"})
	if commits != 80 {
		t.Errorf("%v credit transactions committed, want 80", commits)
	}
	t.Logf("%v retries on conflicts", safesynctest.MetricValue(t, reg, "coti_safesync_db_retries_total", nil))
}

// run is main without flags and signals: it returns nil when ctx ends.
func TestRunStopsWhenCtxEnds(t *testing.T) {
	_, dsn, _, stream := services(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), dsn, os.Getenv("SAFESYNC_REDIS_ADDR"), stream, "test", "127.0.0.1:0")
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after its ctx ended")
	}
}

func publish(t *testing.T, rdb rueidis.Client, stream string, o Order) {
	t.Helper()
	if _, err := safesync.PublishJSON(context.Background(), rdb, stream, o); err != nil {
		t.Fatal(err)
	}
}

func mustExec(t *testing.T, db *sql.DB, query string) {
	t.Helper()
	if _, err := db.Exec(query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func get[T any](t *testing.T, db *sql.DB, query string) T {
	t.Helper()
	v, err := safesync.Get[T](context.Background(), db, query)
	if err != nil && !errors.Is(err, safesync.ErrNoRows) {
		t.Fatal(err)
	}
	return v
}

func TestConsumerNameIsThePodsElseHostAndIndexElseHostAndPid(t *testing.T) {
	host, _ := os.Hostname()
	cases := []struct {
		name, pod, index, want string
	}{
		{"on Kubernetes", "orders-worker-7d9f-x2k4q", "3", "orders-worker-7d9f-x2k4q"},
		{"several workers on a host", "", "3", host + "-3"},
		{"nothing set", "", "", host + "-" + strconv.Itoa(os.Getpid())},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("POD_NAME", c.pod)
			t.Setenv("WORKER_INDEX", c.index)
			if got := ConsumerName(); got != c.want {
				t.Errorf("ConsumerName() = %q, want %q", got, c.want)
			}
		})
	}
}
