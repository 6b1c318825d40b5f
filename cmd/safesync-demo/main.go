// Command safesync-demo runs safesync's whole loop end to end: it
// publishes order messages to a Redis stream (a few of them malformed),
// applies them to an accounts table with several workers through a
// Stream → Commit pipeline with exactly-once effects and optimistic
// updates or row locks, makes one worker stop mid-batch as a crashed
// worker would, and lets the others reclaim its entries. Each order's
// transaction also publishes a balance-changed event through the outbox;
// a Relay adds the committed events to a second stream, and a second
// pipeline, exactly-once and in order per account, applies them to a
// history table. Then it checks the invariants at both ends: balances add
// up exactly, every account's history holds one event per applied order,
// in order, ending at its balance, the outbox is empty, nothing is pending
// on either stream, and the dead-letter stream holds exactly the malformed
// entries. It exits 1 if any invariant fails.
//
// With no flags it needs no services: Redis is miniredis and MySQL is
// go-mysql-server, both in-process, and it finishes in a few seconds; -n
// runs more orders. The embedded MySQL engine does not isolate concurrent
// transactions, so there the orders, the relay and the history pipeline
// run one after another; on real servers they run side by side. -mysql
// and -redis point it at real servers. Every table and stream it uses
// there starts with -prefix (unique per run by default); it creates them,
// lists its tables in the marker table <prefix>_demo and its streams
// under the key <prefix>:{orders}:owner, drops them at the end (-keep
// keeps them), and refuses to run if a table or stream of those names
// exists that it did not create.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

type options struct {
	mysqlDSN    string
	redisAddr   string
	metricsAddr string
	messages    int
	malformed   int
	workers     int
	accounts    int
	batch       int
	concurrency int
	strategy    string
	crash       bool
	timeout     time.Duration
	prefix      string
	keep        bool
}

func main() {
	var o options
	flag.StringVar(&o.mysqlDSN, "mysql", "", "MySQL/MariaDB DSN (go-sql-driver/mysql); empty: the embedded engine")
	flag.StringVar(&o.redisAddr, "redis", "", "Redis address host:port; empty: the embedded server")
	flag.StringVar(&o.metricsAddr, "metrics", "", "serve Prometheus /metrics on this address (e.g. :9090) while running")
	flag.IntVar(&o.messages, "n", 1000, "order messages to publish")
	flag.IntVar(&o.malformed, "malformed", 5, "malformed messages to mix in (they must end in the dead-letter stream)")
	flag.IntVar(&o.workers, "workers", 4, "workers (consumers in one group)")
	flag.IntVar(&o.accounts, "accounts", 50, "accounts the orders are spread over")
	flag.IntVar(&o.batch, "batch", 50, "entries per transaction (1: one transaction per entry)")
	flag.IntVar(&o.concurrency, "concurrency", 0, "transactions in flight per worker (default 2; 1 with the embedded engine, which has one connection)")
	flag.StringVar(&o.strategy, "strategy", "occ", "how a handler updates the account: occ (optimistic, retried) or rowlock")
	flag.BoolVar(&o.crash, "crash", true, "make worker 1 stop mid-batch, leaving its entries for the others to reclaim")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up (and fail) after this long")
	flag.StringVar(&o.prefix, "prefix", "", "start of every table and stream name the demo uses (default safesync_demo_ and 6 random hex digits, new each run)")
	flag.BoolVar(&o.keep, "keep", false, "keep the tables and streams at the end instead of dropping them")
	flag.Parse()
	if o.prefix == "" {
		o.prefix = uniquePrefix()
	}
	if o.concurrency == 0 {
		o.concurrency = 2
		if o.mysqlDSN == "" {
			o.concurrency = 1
		}
	}
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "safesync-demo:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopTracing := startTracing()
	ok, err := run(ctx, o)
	stopTracing()
	if err != nil {
		fmt.Fprintln(os.Stderr, "safesync-demo:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

func (o options) validate() error {
	switch {
	case o.messages < 1:
		return errors.New("-n must be at least 1")
	case o.malformed < 0:
		return errors.New("-malformed must not be negative")
	case o.workers < 1:
		return errors.New("-workers must be at least 1")
	case o.workers < 2 && o.crash:
		return errors.New("-crash needs at least 2 workers (one crashes, another reclaims)")
	case o.accounts < 1:
		return errors.New("-accounts must be at least 1")
	case o.batch < 1:
		return errors.New("-batch must be at least 1")
	case o.concurrency < 1:
		return errors.New("-concurrency must be at least 1")
	case o.strategy != "occ" && o.strategy != "rowlock":
		return fmt.Errorf("-strategy %q: want occ or rowlock", o.strategy)
	}
	_, err := newNames(o.prefix)
	return err
}

// services are the database and Redis the demo runs against.
type services struct {
	db       *sql.DB
	relayDB  *sql.DB // the relay's own pool: its leader holds a connection while it runs
	rdb      rueidis.Client
	embedded bool
	closers  []func()
}

func (s *services) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

func connect(ctx context.Context, o options) (*services, error) {
	s := &services{}
	if o.mysqlDSN == "" {
		m, err := mysqltest.Start()
		if err != nil {
			return s, err
		}
		s.closers = append(s.closers, func() { m.Close() })
		if s.db, err = m.Open(); err != nil {
			return s, err
		}
		s.closers = append(s.closers, func() { s.db.Close() })
		if s.relayDB, err = sql.Open("mysql", m.DSN); err != nil {
			return s, err
		}
		s.embedded = true
	} else {
		db, err := sql.Open("mysql", o.mysqlDSN)
		if err != nil {
			return s, err
		}
		// The orders' workers and the history's one, each with its
		// transactions in flight, and a few for progress and clean-up.
		db.SetMaxOpenConns((o.workers+1)*o.concurrency + 4)
		db.SetMaxIdleConns((o.workers+1)*o.concurrency + 4)
		if err := db.PingContext(ctx); err != nil {
			db.Close()
			return s, fmt.Errorf("MySQL at -mysql does not answer: %w", err)
		}
		s.db = db
		s.closers = append(s.closers, func() { s.db.Close() })
		if s.relayDB, err = sql.Open("mysql", o.mysqlDSN); err != nil {
			return s, err
		}
	}
	s.closers = append(s.closers, func() { s.relayDB.Close() })

	addr := o.redisAddr
	if addr == "" {
		r, err := safesynctest.StartRedis()
		if err != nil {
			return s, err
		}
		s.closers = append(s.closers, r.Close)
		addr = r.Addr
	}
	// Client-side caching off: the demo reads nothing through it, and the embedded
	// Redis does not support it.
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		return s, fmt.Errorf("connect to Redis at %s: %w", addr, err)
	}
	s.rdb = rdb
	s.closers = append(s.closers, rdb.Close)
	return s, nil
}

func run(ctx context.Context, o options) (ok bool, err error) {
	n, err := newNames(o.prefix)
	if err != nil {
		return false, err
	}
	svc, err := connect(ctx, o)
	defer svc.close()
	if err != nil {
		return false, err
	}
	printMode(o, n, svc.embedded)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	metrics, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg})
	if err != nil {
		return false, err
	}
	if o.metricsAddr != "" {
		stopMetrics, err := serveMetrics(o.metricsAddr, reg)
		if err != nil {
			return false, err
		}
		defer stopMetrics()
	}

	sc := newScenario(o, n, svc, metrics, reg)
	if err := sc.prepare(ctx); err != nil {
		if errors.Is(err, errNotOurs) {
			return false, err // nothing was created or changed
		}
		return false, errors.Join(err, cleanUp(o, n, svc, false))
	}
	defer func() { err = errors.Join(err, cleanUp(o, n, svc, ok && err == nil)) }()
	if err := sc.publish(ctx); err != nil {
		return false, err
	}
	if err := sc.consume(ctx); err != nil {
		return false, err
	}
	results, err := sc.verify(context.Background())
	if err != nil {
		return false, err
	}
	sc.report(os.Stdout, results)
	ok = results.ok()
	return ok, nil
}

// cleanUp drops what the run created on real servers, unless -keep was
// given or the run failed (then what it left is worth a look). The
// embedded engines vanish with the process.
func cleanUp(o options, n names, svc *services, ok bool) error {
	if svc.embedded && o.redisAddr == "" {
		return nil
	}
	if o.keep || !ok {
		fmt.Printf("kept tables %s and streams %s (a later run with -prefix %s replaces them)\n",
			strings.Join(n.allTables(), ", "), strings.Join(n.streams(), ", "), n.prefix)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.dropAll(ctx, svc.db, svc.rdb); err != nil {
		return fmt.Errorf("clean up: %w", err)
	}
	fmt.Printf("dropped tables %s and streams %s\n", strings.Join(n.allTables(), ", "), strings.Join(n.streams(), ", "))
	return nil
}

func printMode(o options, n names, embedded bool) {
	if embedded {
		fmt.Println("mode: embedded engines (miniredis and go-mysql-server, in this process)")
		fmt.Println("      The embedded MySQL engine does not isolate concurrent transactions, so the")
		fmt.Println("      demo gives it one connection: transactions run one at a time. Run with")
		fmt.Println("      -mysql DSN -redis ADDR to see real concurrency (lock waits, OCC conflicts);")
		fmt.Println("      integration/ proves those semantics against MariaDB.")
		fmt.Println("      For the same reason the orders, the relay and the history pipeline run")
		fmt.Println("      one after another here; on real servers they run side by side.")
		fmt.Println("      The engine also slows down as a table grows, so exactly-once records")
		fmt.Println("      older than 5s are pruned (PruneDedupe) every second.")
	} else {
		fmt.Printf("mode: MySQL at -mysql, Redis at %s\n", o.redisAddr)
	}
	if o.redisAddr == "" && o.mysqlDSN != "" {
		fmt.Println("      (Redis: embedded)")
	}
	if !embedded || o.redisAddr != "" {
		fmt.Printf("names: tables %s (listed in %s), streams %s; dropped at the end unless -keep\n",
			strings.Join(n.tables(), ", "), n.marker, strings.Join(n.streams(), ", "))
	}
}

func serveMetrics(addr string, reg *prometheus.Registry) (func(), error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return nil, fmt.Errorf("-metrics %s: %w", addr, err)
	case <-time.After(100 * time.Millisecond):
	}
	fmt.Printf("metrics: http://%s/metrics\n", addr)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
