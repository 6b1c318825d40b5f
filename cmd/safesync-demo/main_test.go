package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

// The demo is the README's first command; these runs keep it working. Each
// is the full scenario (publish, consume with a crashing worker, reclaim,
// relay the balance-changed events, apply them to history, verify) at a
// small size, and fails if any invariant fails.

// demoMainEnv makes this test binary run the demo's main instead of its
// tests, so that a test can run the demo as a program.
const demoMainEnv = "SAFESYNC_DEMO_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(demoMainEnv) == "1" {
		os.Args = append(os.Args[:1], strings.Fields(os.Getenv(demoMainEnv+"_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runDemo runs the demo's main in a child process with args and returns
// its combined output and exit code.
func runDemo(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), demoMainEnv+"=1", demoMainEnv+"_ARGS="+strings.Join(args, " "))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return out.String(), exit.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), 0
}

func smallRun(mysqlDSN, redisAddr, strategy string, concurrency int) options {
	return options{
		mysqlDSN: mysqlDSN, redisAddr: redisAddr,
		messages: 600, malformed: 3, workers: 3, accounts: 10,
		batch: 20, concurrency: concurrency, strategy: strategy,
		crash: true, timeout: 2 * time.Minute, prefix: uniquePrefix(),
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

// The embedded engine's flags (mysql_auth_server_static_file and its kin)
// must not show in the demo's -h.
func TestDemoHelpListsOnlyTheDemosFlags(t *testing.T) {
	out, code := runDemo(t, "-h")
	if code != 0 {
		t.Fatalf("-h exited %d:\n%s", code, out)
	}
	demoFlags := map[string]bool{}
	for _, f := range []string{"mysql", "redis", "metrics", "n", "malformed", "workers", "accounts", "batch", "concurrency", "strategy", "crash", "timeout", "prefix", "keep", "trace"} {
		demoFlags[f] = true
	}
	seen := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "  -") {
			continue
		}
		name := strings.Fields(strings.TrimPrefix(line, "  -"))[0]
		switch {
		case demoFlags[name]:
			seen++
		case strings.HasPrefix(name, "test."): // this test binary's own
		default:
			t.Errorf("-h lists a flag that is not the demo's: %q", line)
		}
	}
	if seen != len(demoFlags) {
		t.Errorf("-h lists %d of the demo's %d flags:\n%s", seen, len(demoFlags), out)
	}
}

// The default run fits the README's promise: first line at once, done in
// seconds. The time bound here is loose (a busy machine must not fail it);
// README says what was measured.
func TestDemoDefaultRunHoldsItsInvariants(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	out, code := runDemo(t)
	if code != 0 || !strings.Contains(out, "all invariants hold") {
		t.Fatalf("the default run exited %d:\n%s", code, out)
	}
	if !strings.HasPrefix(out, "mode: embedded engines") {
		t.Errorf("the first line is not the mode:\n%s", out)
	}
	// On the embedded engine the relay starts only once the orders have
	// settled, and the history pipeline once the relay has finished: no
	// two of them run transactions at the same time.
	var at []int
	for _, line := range []string{
		"orders → accounts",
		"all 1000 orders applied",
		"relay: outbox → events stream",
		"all 1000 events relayed",
		"events → history",
		"all 1000 events in history",
	} {
		i := strings.Index(out, line)
		if i < 0 || len(at) > 0 && i < at[len(at)-1] {
			t.Fatalf("%q is missing or out of turn in the output:\n%s", line, out)
		}
		at = append(at, i)
	}
}

func TestHistoryOfFindsEveryKindOfWrongHistory(t *testing.T) {
	accts := []account{{ID: 1, Balance: 30, Orders: 3}, {ID: 2, Balance: 5, Orders: 1}}
	good := []historyEvent{
		{AccountID: 1, Balance: 10, Orders: 1},
		{AccountID: 2, Balance: 5, Orders: 1},
		{AccountID: 1, Balance: 25, Orders: 2},
		{AccountID: 1, Balance: 30, Orders: 3},
	}
	cases := []struct {
		name                   string
		events                 []historyEvent
		mismatched, outOfOrder int
	}{
		{"a complete history in order", good, 0, 0},
		{"an event missing", []historyEvent{good[0], good[1], good[3]}, 1, 1},
		{"an event twice", []historyEvent{good[0], good[1], good[2], good[2], good[3]}, 1, 1},
		{"two events swapped", []historyEvent{good[0], good[1], good[3], good[2]}, 1, 2},
		{"a last balance that differs", []historyEvent{good[0], good[1], good[2], {AccountID: 1, Balance: 31, Orders: 3}}, 1, 0},
		{"no event of an account", []historyEvent{good[0], good[2], good[3]}, 1, 0},
		{"an event of an account that does not exist", append(good[:4:4], historyEvent{AccountID: 9, Balance: 1, Orders: 1}), 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, o := historyOf(c.events, accts)
			if m != c.mismatched || o != c.outOfOrder {
				t.Errorf("historyOf = %d mismatched, %d out of order; want %d, %d", m, o, c.mismatched, c.outOfOrder)
			}
		})
	}
}

func TestDemoRefusesBadPrefixes(t *testing.T) {
	for _, prefix := range []string{"a-b", "x;DROP", "1abc", strings.Repeat("p", 60)} {
		o := smallRun("", "", "occ", 1)
		o.prefix = prefix
		if err := o.validate(); err == nil {
			t.Errorf("-prefix %q accepted", prefix)
		}
	}
}

// realServers returns the real servers of the integration tests' variables, or
// skips (failing instead when SAFESYNC_REQUIRE_SERVICES=1).
func realServers(t *testing.T) (dsn, addr string) {
	dsn, addr = os.Getenv("SAFESYNC_MYSQL_DSN"), os.Getenv("SAFESYNC_REDIS_ADDR")
	if dsn == "" || addr == "" {
		if os.Getenv("SAFESYNC_REQUIRE_SERVICES") == "1" {
			t.Fatal("SAFESYNC_REQUIRE_SERVICES=1 but SAFESYNC_MYSQL_DSN or SAFESYNC_REDIS_ADDR is not set")
		}
		t.Skip("SAFESYNC_MYSQL_DSN and SAFESYNC_REDIS_ADDR not set; skipping the demo on real services")
	}
	return dsn, addr
}

// TestDemoOnRealServices runs both strategies on the real servers and
// checks that each run removed what it created and nothing else.
func TestDemoOnRealServices(t *testing.T) {
	dsn, addr := realServers(t)
	db, rdb := connectReal(t, dsn, addr)
	for _, strategy := range []string{"occ", "rowlock"} {
		t.Run(strategy, func(t *testing.T) {
			o := smallRun(dsn, addr, strategy, 2)
			n, _ := newNames(o.prefix)
			// A neighbour with a similar name, which must survive.
			neighbour := o.prefix + "_accounts_other"
			mustExec(t, db, "CREATE TABLE "+neighbour+" (id INT PRIMARY KEY)")
			t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + neighbour) })
			neighbourKey := n.stream + ":other"
			do(t, rdb, rdb.B().Set().Key(neighbourKey).Value("x").Build())
			t.Cleanup(func() { rdb.Do(context.Background(), rdb.B().Del().Key(neighbourKey).Build()) })

			ok, err := run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				t.Fatal("an invariant failed; see the report above")
			}
			for _, table := range n.allTables() {
				if tableExists(t, db, table) {
					t.Errorf("table %s is left after the run", table)
				}
			}
			for _, key := range n.keys() {
				if keyExists(t, rdb, key) {
					t.Errorf("key %s is left after the run", key)
				}
			}
			if !tableExists(t, db, neighbour) || !keyExists(t, rdb, neighbourKey) {
				t.Errorf("the run removed %s or %s, which it did not create", neighbour, neighbourKey)
			}
		})
	}
}

// A table or stream with the demo's names that the demo did not create
// stops the run before anything is created or changed.
func TestDemoRefusesWhatItDidNotCreate(t *testing.T) {
	dsn, addr := realServers(t)
	db, rdb := connectReal(t, dsn, addr)
	cases := []struct {
		name  string
		setUp func(t *testing.T, n names)
	}{
		{"an accounts table of someone else's", func(t *testing.T, n names) {
			mustExec(t, db, "CREATE TABLE "+n.accounts+" (id INT PRIMARY KEY, note VARCHAR(10))")
			mustExec(t, db, "INSERT INTO "+n.accounts+" VALUES (1, 'mine')")
		}},
		{"an exactly-once table of someone else's", func(t *testing.T, n names) {
			if err := safesync.CreateDedupeTable(context.Background(), db, n.applied); err != nil {
				t.Fatal(err)
			}
		}},
		{"a marker table without the demo's comment", func(t *testing.T, n names) {
			mustExec(t, db, "CREATE TABLE "+n.marker+" (table_name VARCHAR(64) PRIMARY KEY)")
			mustExec(t, db, "INSERT INTO "+n.marker+" VALUES (?)", n.accounts)
			mustExec(t, db, "CREATE TABLE "+n.accounts+" (id INT PRIMARY KEY)")
		}},
		{"an outbox of someone else's", func(t *testing.T, n names) {
			if err := safesync.CreateOutboxTable(context.Background(), db, n.outbox); err != nil {
				t.Fatal(err)
			}
		}},
		{"a history table of someone else's", func(t *testing.T, n names) {
			mustExec(t, db, "CREATE TABLE "+n.history+" (id INT PRIMARY KEY)")
			mustExec(t, db, "INSERT INTO "+n.history+" VALUES (3)")
		}},
		{"a stream of someone else's", func(t *testing.T, n names) {
			do(t, rdb, rdb.B().Xadd().Key(n.stream).Id("*").FieldValue().FieldValue("data", "{}").Build())
		}},
		{"a dead-letter stream of someone else's", func(t *testing.T, n names) {
			do(t, rdb, rdb.B().Xadd().Key(n.deadStream).Id("*").FieldValue().FieldValue("data", "{}").Build())
		}},
		{"an events stream of someone else's", func(t *testing.T, n names) {
			do(t, rdb, rdb.B().Xadd().Key(n.events).Id("*").FieldValue().FieldValue("data", "{}").Build())
		}},
		{"an events dead-letter stream of someone else's", func(t *testing.T, n names) {
			do(t, rdb, rdb.B().Xadd().Key(n.deadEvents).Id("*").FieldValue().FieldValue("data", "{}").Build())
		}},
		{"an owner key of someone else's", func(t *testing.T, n names) {
			do(t, rdb, rdb.B().Set().Key(n.ownerKey).Value("mine").Build())
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := smallRun(dsn, addr, "occ", 2)
			n, _ := newNames(o.prefix)
			t.Cleanup(func() {
				for _, table := range n.allTables() {
					db.Exec("DROP TABLE IF EXISTS " + table)
				}
				rdb.Do(context.Background(), rdb.B().Del().Key(n.keys()...).Build())
			})
			c.setUp(t, n)
			before := snapshot(t, db, rdb, n)

			_, err := run(context.Background(), o)
			if !errors.Is(err, errNotOurs) {
				t.Fatalf("run = %v, want an error saying the demo did not create it", err)
			}
			if after := snapshot(t, db, rdb, n); after != before {
				t.Errorf("the refused run changed the servers:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// A run with -keep leaves its tables and streams; the next run with the
// same prefix recognises them as the demo's, replaces them, and drops them
// at its end.
func TestDemoReplacesWhatAnEarlierRunKept(t *testing.T) {
	dsn, addr := realServers(t)
	db, rdb := connectReal(t, dsn, addr)
	o := smallRun(dsn, addr, "occ", 2)
	o.messages, o.crash, o.workers = 100, false, 1
	n, _ := newNames(o.prefix)
	t.Cleanup(func() {
		for _, table := range n.allTables() {
			db.Exec("DROP TABLE IF EXISTS " + table)
		}
		rdb.Do(context.Background(), rdb.B().Del().Key(n.keys()...).Build())
	})
	o.keep = true
	if ok, err := run(context.Background(), o); err != nil || !ok {
		t.Fatalf("first run: ok %v, %v", ok, err)
	}
	if !tableExists(t, db, n.accounts) || !keyExists(t, rdb, n.stream) {
		t.Fatal("-keep did not keep the tables and the stream")
	}
	o.keep = false
	if ok, err := run(context.Background(), o); err != nil || !ok {
		t.Fatalf("second run: ok %v, %v", ok, err)
	}
	if tableExists(t, db, n.accounts) || keyExists(t, rdb, n.stream) {
		t.Fatal("the second run left its tables or stream")
	}
}

// TestDemoRefusesOnEmbeddedEngines checks the refusal without services:
// the demo pointed at an embedded MySQL (by DSN) that holds a table of its
// names.
func TestDemoRefusesOnEmbeddedEngines(t *testing.T) {
	srv, err := mysqltest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	db, err := srv.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	redis, err := safesynctest.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer redis.Close()
	o := smallRun(srv.DSN, redis.Addr, "occ", 1)
	n, _ := newNames(o.prefix)
	mustExec(t, db, "CREATE TABLE "+n.applied+" (id INT PRIMARY KEY)")
	mustExec(t, db, "INSERT INTO "+n.applied+" VALUES (7)")

	_, err = run(context.Background(), o)
	if !errors.Is(err, errNotOurs) {
		t.Fatalf("run = %v, want an error saying the demo did not create it", err)
	}
	if v, err := safesync.Get[int](context.Background(), db, "SELECT id FROM "+n.applied); err != nil || v != 7 {
		t.Errorf("the table the demo did not create now reads %d, %v", v, err)
	}
	if tableExists(t, db, n.accounts) || tableExists(t, db, n.marker) {
		t.Error("the refused run created tables")
	}
}

func connectReal(t *testing.T, dsn, addr string) (*sql.DB, rueidis.Client) {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rdb.Close)
	return db, rdb
}

func mustExec(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func do(t *testing.T, rdb rueidis.Client, cmd rueidis.Completed) {
	t.Helper()
	if err := rdb.Do(context.Background(), cmd).Error(); err != nil {
		t.Fatal(err)
	}
}

func tableExists(t *testing.T, db *sql.DB, table string) bool {
	t.Helper()
	n, err := safesync.Get[int](context.Background(), db,
		"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?", table)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func keyExists(t *testing.T, rdb rueidis.Client, key string) bool {
	t.Helper()
	n, err := rdb.Do(context.Background(), rdb.B().Exists().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// snapshot describes the demo's tables (which exist, their row counts)
// and keys (which exist, their types and lengths).
func snapshot(t *testing.T, db *sql.DB, rdb rueidis.Client, n names) string {
	t.Helper()
	var b strings.Builder
	for _, table := range n.allTables() {
		if !tableExists(t, db, table) {
			b.WriteString(table + ": absent; ")
			continue
		}
		rows, err := safesync.Get[int](context.Background(), db, "SELECT COUNT(*) FROM "+table)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(table + ": " + strconv.Itoa(rows) + " rows; ")
	}
	for _, key := range n.keys() {
		typ, err := rdb.Do(context.Background(), rdb.B().Type().Key(key).Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(key + ": " + typ)
		if typ == "stream" {
			n, err := rdb.Do(context.Background(), rdb.B().Xlen().Key(key).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(" of " + strconv.FormatInt(n, 10))
		}
		b.WriteString("; ")
	}
	return b.String()
}
