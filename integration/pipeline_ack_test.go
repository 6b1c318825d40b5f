package integration

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// xackWatch is a rueidis client that shows every XACK to a function
// before sending it, and counts XACK commands and the ids they carry.
// Through before, a test checks what holds when an acknowledgement leaves
// (its entries committed, the database connection free) and makes Redis
// slow to answer it.
type xackWatch struct {
	rueidis.Client
	before   func(ids []string)
	commands atomic.Int64
	ids      atomic.Int64
}

func (c *xackWatch) watch(cmd rueidis.Completed) {
	cs := cmd.Commands()
	if len(cs) < 3 || cs[0] != "XACK" {
		return
	}
	ids := cs[3:] // XACK key group id…
	c.commands.Add(1)
	c.ids.Add(int64(len(ids)))
	if c.before != nil {
		c.before(ids)
	}
}

func (c *xackWatch) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.watch(cmd)
	return c.Client.Do(ctx, cmd)
}

func (c *xackWatch) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	for _, cmd := range cmds {
		c.watch(cmd)
	}
	return c.Client.DoMulti(ctx, cmds...)
}

// ackSetup is a pipeline whose handler records each entry's id in a table
// of effects, in its transaction, on a stream of n entries.
type ackSetup struct {
	db      *sql.DB // the pipeline's pool
	check   *sql.DB // another pool, to see what is committed
	effects string
	applied string
	stream  string
	n       int
}

func newAckSetup(t testing.TB, poolSize, n int) *ackSetup {
	t.Helper()
	s := &ackSetup{db: openMySQL(t, nil), check: openMySQL(t, nil), n: n}
	s.db.SetMaxOpenConns(poolSize)
	s.db.SetMaxIdleConns(poolSize)
	s.effects = createTable(t, s.check, "eff", "CREATE TABLE %s (entry_id VARBINARY(64) PRIMARY KEY) ENGINE=InnoDB")
	s.applied = dedupeTable(t, s.check)
	rdb := openRedis(t)
	s.stream = "{" + uniqueName(t, "s") + "}"
	t.Cleanup(func() {
		_ = rdb.Do(context.Background(), rdb.B().Del().Key(s.stream, s.stream+safesync.DeadLetterSuffix).Build()).Error()
	})
	cmds := make(rueidis.Commands, 0, n)
	for i := 1; i <= n; i++ {
		cmds = append(cmds, rdb.B().Xadd().Key(s.stream).Id("*").FieldValue().FieldValue("data", fmt.Sprintf(`{"order_id":%d,"account_id":1,"amount":1}`, i)).Build())
	}
	for _, r := range rdb.DoMulti(context.Background(), cmds...) {
		if err := r.Error(); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *ackSetup) pipeline(once bool, committed *atomic.Int64, observed *sync.Map) safesync.Pipeline[order] {
	insert := "INSERT INTO `" + s.effects + "` (entry_id) VALUES (?)"
	p := safesync.Stream(safesync.JSON[order]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
			_, err := tx.ExecContext(ctx, insert, msg.ID)
			return err
		}).
		AckAfter(safesync.Commit(s.db, safesync.WithMetrics(nil))).
		AfterCommit(func(_ context.Context, msgs []safesync.Message[order]) {
			for _, m := range msgs {
				if observed != nil {
					observed.Store(m.ID, true)
				}
			}
			committed.Add(int64(len(msgs)))
		})
	if once {
		p = p.Once(s.applied)
	}
	return p
}

func (s *ackSetup) config(concurrency int) safesync.StreamConfig {
	return safesync.StreamConfig{
		Stream: s.stream, Group: "workers", Consumer: "c1", Concurrency: concurrency,
		Block: 100 * time.Millisecond, ClaimIdle: time.Minute,
	}
}

// runUntilCommitted runs p until every entry has committed, or abort
// (when not nil) reports true, then stops it and returns what Run
// returned.
func (s *ackSetup) runUntilCommitted(t testing.TB, p safesync.Pipeline[order], rdb rueidis.Client, cfg safesync.StreamConfig, committed *atomic.Int64, abort func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	go func() { result <- p.Run(ctx, rdb, cfg) }()
	deadline := time.Now().Add(30 * time.Second)
	for committed.Load() < int64(s.n) && (abort == nil || !abort()) {
		select {
		case err := <-result:
			t.Fatalf("Run returned early: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d entries committed within 30 s", committed.Load(), s.n)
		}
	}
	cancel()
	return <-result
}

// A per-entry pipeline acknowledges an entry only once its COMMIT has
// returned, and not on the transaction's connection: the pool has one
// connection, and while each XACK is about to be sent (Redis made slow to
// answer) the entries it carries are visible from another connection, the
// AfterCommit observer has seen them, and the pipeline's one connection
// can be taken from the pool. An XACK sent inside the transaction, or from
// a hook that still holds the connection, fails the test.
func TestPipelineAcksAfterCommitWithTheConnectionReleased(t *testing.T) {
	for _, once := range []bool{false, true} {
		t.Run(fmt.Sprintf("Once %v", once), func(t *testing.T) {
			s := newAckSetup(t, 1, 60)
			var committed atomic.Int64
			var observed sync.Map
			var mu sync.Mutex
			var problems []string
			problem := func(format string, args ...any) {
				mu.Lock()
				defer mu.Unlock()
				if len(problems) < 10 {
					problems = append(problems, fmt.Sprintf(format, args...))
				}
			}
			failed := func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(problems) > 0
			}
			rdb := &xackWatch{Client: openRedis(t)}
			rdb.before = func(ids []string) {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				for _, id := range ids {
					if _, ok := observed.Load(id); !ok {
						problem("XACK of %s before AfterCommit saw it", id)
					}
				}
				n, err := safesync.Get[int64](ctx, s.check, "SELECT COUNT(*) FROM `"+s.effects+"` WHERE entry_id IN (?"+strings.Repeat(", ?", len(ids)-1)+")", anySlice(ids)...)
				if err != nil || n != int64(len(ids)) {
					problem("XACK of %d entries, %d of them committed (%v)", len(ids), n, err)
				}
				// The pool's only connection is free: the transaction
				// gave it back before its entries went to be acknowledged.
				conn, err := s.db.Conn(ctx)
				if err != nil {
					problem("the pipeline's connection is held while its XACK is sent: %v", err)
				} else {
					conn.Close()
				}
				time.Sleep(20 * time.Millisecond) // Redis slow to answer
			}
			runErr := s.runUntilCommitted(t, s.pipeline(once, &committed, &observed), rdb, s.config(4), &committed, failed)
			if failed() {
				t.Fatalf("after %d XACK commands for %d entries:\n%s", rdb.commands.Load(), s.n, strings.Join(problems, "\n"))
			}
			if runErr != nil {
				t.Fatalf("Run: %v", runErr)
			}
			if n, err := xpendingCount(context.Background(), rdb, s.stream, "workers"); err != nil || n != 0 {
				t.Fatalf("XPENDING count = %d, %v; want 0 once Run returned", n, err)
			}
			if got := countRows(t, s.check, s.effects); got != int64(s.n) {
				t.Fatalf("%d effects, want %d", got, s.n)
			}
			t.Logf("%d XACK commands for %d entries", rdb.commands.Load(), s.n)
		})
	}
}

// The acknowledgements of concurrent transactions go out together: with
// eight transactions in flight and Redis slow to answer each XACK, one
// XACK carries the entries of several transactions, where an XACK per
// transaction would send one command per entry. The acknowledgements
// handed over when Run's ctx ends are sent before Run returns: nothing is
// pending the moment it has returned.
func TestPipelineCoalescesAcksOfConcurrentTransactions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		xackDelay time.Duration
		atMost    float64 // XACK commands per entry
	}{
		{"Redis slow to answer", 20 * time.Millisecond, 0.25},
		{"Redis at full speed", 0, 0.75},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAckSetup(t, 8, 400)
			var committed atomic.Int64
			rdb := &xackWatch{Client: openRedis(t)}
			rdb.before = func([]string) { time.Sleep(tc.xackDelay) }
			if err := s.runUntilCommitted(t, s.pipeline(false, &committed, nil), rdb, s.config(8), &committed, nil); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if n, err := xpendingCount(context.Background(), rdb, s.stream, "workers"); err != nil || n != 0 {
				t.Fatalf("XPENDING count = %d, %v; want 0 once Run returned", n, err)
			}
			commands, ids := rdb.commands.Load(), rdb.ids.Load()
			t.Logf("%d XACK commands for %d entries (%d ids), %.3f per entry", commands, s.n, ids, float64(commands)/float64(s.n))
			if ids < int64(s.n) {
				t.Fatalf("XACKs carried %d ids, want at least %d", ids, s.n)
			}
			if float64(commands) > tc.atMost*float64(s.n) {
				t.Fatalf("%d XACK commands for %d entries, want at most %.2f per entry", commands, s.n, tc.atMost)
			}
		})
	}
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// BenchmarkPipelinePerEntry measures what a per-entry pipeline allocates
// and how many XACK commands it sends per entry, with and without Once, on
// the real servers: one op is one entry (an INSERT in its own
// transaction), and allocs/op counts the whole process while the pipeline
// drains b.N entries, Run's start and end included. Run it with
//
//	go test -run '^$' -bench PipelinePerEntry -benchtime 5000x ./integration/
func BenchmarkPipelinePerEntry(b *testing.B) {
	for _, once := range []bool{false, true} {
		for _, concurrency := range []int{4, 8} {
			b.Run(fmt.Sprintf("Once=%v/Concurrency=%d", once, concurrency), func(b *testing.B) {
				s := newAckSetup(b, concurrency+2, b.N)
				rdb := &xackWatch{Client: openRedis(b)}
				var committed atomic.Int64
				p := s.pipeline(once, &committed, nil)
				b.ReportAllocs()
				b.ResetTimer()
				if err := s.runUntilCommitted(b, p, rdb, s.config(concurrency), &committed, nil); err != nil {
					b.Fatalf("Run: %v", err)
				}
				b.StopTimer()
				b.ReportMetric(float64(rdb.commands.Load())/float64(b.N), "XACK/op")
			})
		}
	}
}

// Once works the same whether the driver prepares statements or puts the
// arguments into their text (interpolateParams=true, where the pipeline
// runs its exactly-once inserts unprepared): each entry's effect once, an
// entry recorded by an earlier transaction acknowledged without running
// the handler, names with quotes and backslashes recorded byte for byte,
// nothing pending.
func TestPipelineOnceWithAndWithoutInterpolatedParameters(t *testing.T) {
	for _, interpolate := range []bool{false, true} {
		t.Run(fmt.Sprintf("interpolateParams=%v", interpolate), func(t *testing.T) {
			const n = 20
			s := newAckSetup(t, 4, n)
			s.db = openMySQL(t, func(c *mysql.Config) { c.InterpolateParams = interpolate })
			ctx := context.Background()
			rdb := openRedis(t)
			group := `g'); DROP TABLE x; -- \` + "\\'"
			if err := rdb.Do(ctx, rdb.B().XgroupCreate().Key(s.stream).Group(group).Id("0").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			first, err := rdb.Do(ctx, rdb.B().Xrange().Key(s.stream).Start("-").End("+").Count(1).Build()).AsXRange()
			if err != nil || len(first) != 1 {
				t.Fatalf("XRANGE: %v, %v", first, err)
			}
			// The first entry was applied by an earlier transaction.
			if _, err := s.check.Exec("INSERT INTO `"+s.applied+"` (consumer_group, stream, entry_id) VALUES (?, ?, ?)", group, s.stream, first[0].ID); err != nil {
				t.Fatal(err)
			}
			var committed, handled atomic.Int64
			insert := "INSERT INTO `" + s.effects + "` (entry_id) VALUES (?)"
			p := safesync.Stream(safesync.JSON[order]()).
				Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
					handled.Add(1)
					_, err := tx.ExecContext(ctx, insert, msg.ID)
					return err
				}).
				AckAfter(safesync.Commit(s.db, safesync.WithMetrics(nil))).
				AfterCommit(func(_ context.Context, msgs []safesync.Message[order]) { committed.Add(int64(len(msgs))) }).
				Once(s.applied)
			cfg := s.config(4)
			cfg.Group = group
			if err := s.runUntilCommitted(t, p, rdb, cfg, &committed, nil); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if n, err := xpendingCount(ctx, rdb, s.stream, group); err != nil || n != 0 {
				t.Fatalf("XPENDING count = %d, %v; want 0", n, err)
			}
			if got := handled.Load(); got != n-1 {
				t.Fatalf("the handler ran %d times, want %d (not for the entry recorded before)", got, n-1)
			}
			if got := countRows(t, s.check, s.effects); got != n-1 {
				t.Fatalf("%d effects, want %d", got, n-1)
			}
			rows, err := safesync.Get[int64](ctx, s.check, "SELECT COUNT(*) FROM `"+s.applied+"` WHERE consumer_group = ? AND stream = ?", group, s.stream)
			if err != nil || rows != n {
				t.Fatalf("%d exactly-once records of the group, %v; want %d", rows, err, n)
			}
		})
	}
}
