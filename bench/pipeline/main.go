// Command pipeline measures stream → MySQL pipelines end to end: every
// entry of a pre-filled stream becomes one UPDATE in a transaction, then is
// acknowledged. It compares, side by side in one run on the same servers:
//
//   - a hand-written loop: XREADGROUP → BEGIN/UPDATE/COMMIT → XACK per
//     entry, in as many goroutines as the pipeline's concurrency;
//
//   - safesync's pipeline, one transaction per entry, with and without Once;
//
//   - safesync's pipeline in batch mode (Batch(100)), with and without Once;
//
//   - a hand-written loop that writes each batch of 100 with one multi-row
//     INSERT … ON DUPLICATE KEY UPDATE, and safesync's pipeline with a
//     batch handler (HandleBatch(100)) doing the same with InsertRows, with
//     and without Once.
//
//     go run ./pipeline -redis 127.0.0.1:6379 -mysql 'root@tcp(127.0.0.1:3306)/test' -n 100000 -reps 3
//
// Each repetition refills a fresh stream and resets the table for every
// contender, in a rotating order, and checks afterwards that the balances
// add up and nothing is pending. It prints medians, throughput,
// allocations per entry and the ratios the targets are stated in.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/bench/internal/results"
)

type order struct {
	OrderID   int64 `json:"order_id"`
	AccountID int64 `json:"account_id"`
	Amount    int64 `json:"amount"`
}

var (
	redisAddr   = flag.String("redis", "127.0.0.1:6379", "Redis address (loopback)")
	mysqlDSN    = flag.String("mysql", "root@tcp(127.0.0.1:3306)/test", "MySQL/MariaDB DSN (loopback)")
	n           = flag.Int("n", 100_000, "entries per run")
	reps        = flag.Int("reps", 3, "repetitions of each contender")
	concurrency = flag.Int("concurrency", 4, "transactions in flight, for every contender")
	batch       = flag.Int("batch", 100, "entries per transaction in batch mode")
	accounts    = flag.Int("accounts", 1000, "rows the updates spread over")
	only        = flag.String("only", "", "run only the contenders whose names match this regular expression")
	cpuprofile  = flag.String("cpuprofile", "", "write a CPU profile of the runs to this file")
	memprofile  = flag.String("memprofile", "", "write an allocation profile of the runs to this file")
	out         = flag.String("json", "", "also write every sample to this file, as JSON")
)

const (
	table   = "bench_pipeline_accounts"
	applied = "bench_pipeline_applied"
	group   = "bench"
)

type contender struct {
	name string
	run  func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error
}

type sample struct {
	elapsed       time.Duration
	allocs, bytes float64
	cpu           float64 // this process's user + system CPU, µs per entry
	xacks         float64 // XACK commands sent, per entry
}

// xackCounter counts the XACK commands sent through it, so that a run
// shows how many acknowledgements went out per entry.
type xackCounter struct {
	rueidis.Client
	n atomic.Int64
}

func (c *xackCounter) count(cmd rueidis.Completed) {
	if cs := cmd.Commands(); len(cs) > 0 && cs[0] == "XACK" {
		c.n.Add(1)
	}
}

func (c *xackCounter) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.count(cmd)
	return c.Client.Do(ctx, cmd)
}

func (c *xackCounter) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	for _, cmd := range cmds {
		c.count(cmd)
	}
	return c.Client.DoMulti(ctx, cmds...)
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuPerEntry holds each contender's samples of CPU per entry, for the
// table.
var cpuPerEntry = map[string][]float64{}

func main() {
	flag.Parse()
	if *memprofile != "" {
		runtime.MemProfileRate = 4096 // enough samples for a short run
	}
	ctx := context.Background()
	db, err := sql.Open("mysql", *mysqlDSN)
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(*concurrency + 4)
	db.SetMaxIdleConns(*concurrency + 4)
	defer db.Close()
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{*redisAddr}, DisableCache: true})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	rdb := &xackCounter{Client: client}

	contenders := []contender{
		{"hand-written loop", handWritten(1)},
		{fmt.Sprintf("hand-written loop, batches of %d", *batch), handWritten(*batch)},
		{"pipeline", pipeline(1, false)},
		{"pipeline + Once", pipeline(1, true)},
		{fmt.Sprintf("pipeline Batch(%d)", *batch), pipeline(*batch, false)},
		{fmt.Sprintf("pipeline Batch(%d) + Once", *batch), pipeline(*batch, true)},
		{fmt.Sprintf("hand-written multi-row batches of %d", *batch), handWrittenMultiRow(*batch)},
		{fmt.Sprintf("HandleBatch(%d) + InsertRows", *batch), batchPipeline(*batch, false)},
		{fmt.Sprintf("HandleBatch(%d) + InsertRows + Once", *batch), batchPipeline(*batch, true)},
	}
	if *only != "" {
		re := regexp.MustCompile(*only)
		contenders = slices.DeleteFunc(contenders, func(c contender) bool { return !re.MatchString(c.name) })
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	run := results.Run{Benchmark: "pipeline", Params: map[string]string{
		"entries": strconv.Itoa(*n), "reps": strconv.Itoa(*reps), "concurrency": strconv.Itoa(*concurrency),
		"batch": strconv.Itoa(*batch), "accounts": strconv.Itoa(*accounts), "interpolateParams": strconv.FormatBool(strings.Contains(*mysqlDSN, "interpolateParams=true")),
	}}
	for rep := 0; rep < *reps; rep++ {
		for i := range contenders {
			c := contenders[(i+rep)%len(contenders)]
			s, err := measure(ctx, db, rdb, c)
			if err != nil {
				log.Fatalf("%s: %v", c.name, err)
			}
			run.Add(c.name, rep+1, *n, s.elapsed, s.allocs, s.bytes)
			cpuPerEntry[c.name] = append(cpuPerEntry[c.name], s.cpu)
			fmt.Fprintf(os.Stderr, "rep %d  %-28s %8.0f ms  %8.0f entries/s  %5.1f µs CPU/entry  %5.1f allocs/entry  %5.0f B/entry  %.3f XACK/entry  load %s\n",
				rep+1, c.name, ms(s.elapsed), float64(*n)/s.elapsed.Seconds(), s.cpu, s.allocs, s.bytes, s.xacks, loadAverage())
		}
	}
	if *memprofile != "" {
		f, err := os.Create(*memprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			log.Fatal(err)
		}
		f.Close()
	}
	report(contenders, &run)
	if *out != "" {
		if err := run.Write(*out); err != nil {
			log.Fatal(err)
		}
	}
}

// measure prepares fresh data, runs c once and verifies the outcome.
func measure(ctx context.Context, db *sql.DB, rdb *xackCounter, c contender) (sample, error) {
	stream := "{bench-pipeline}:" + strconv.FormatInt(time.Now().UnixNano(), 36)
	want, err := prepare(ctx, db, rdb, stream)
	if err != nil {
		return sample{}, err
	}
	defer rdb.Do(ctx, rdb.B().Del().Key(stream, stream+safesync.DeadLetterSuffix).Build())
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	xacks := rdb.n.Load()
	start, cpuStart := time.Now(), cpuTime()
	if err := c.run(ctx, db, rdb, stream); err != nil {
		return sample{}, err
	}
	elapsed, cpu := time.Since(start), cpuTime()-cpuStart
	runtime.ReadMemStats(&after)
	xacks = rdb.n.Load() - xacks
	got, err := safesync.Get[int64](ctx, db, "SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED) FROM "+table)
	if err != nil {
		return sample{}, err
	}
	if got != want {
		return sample{}, fmt.Errorf("balances sum to %d, want %d", got, want)
	}
	if p, err := pending(ctx, rdb, stream); err != nil || p != 0 {
		return sample{}, fmt.Errorf("%d entries pending (%v)", p, err)
	}
	return sample{
		elapsed: elapsed,
		allocs:  float64(after.Mallocs-before.Mallocs) / float64(*n),
		bytes:   float64(after.TotalAlloc-before.TotalAlloc) / float64(*n),
		cpu:     float64(cpu.Microseconds()) / float64(*n),
		xacks:   float64(xacks) / float64(*n),
	}, nil
}

// prepare resets the tables and fills stream with n entries; it returns
// the sum the balances must reach.
func prepare(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) (int64, error) {
	for _, q := range []string{
		"DROP TABLE IF EXISTS " + table,
		"DROP TABLE IF EXISTS " + applied,
		"CREATE TABLE " + table + " (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return 0, err
		}
	}
	if err := safesync.CreateDedupeTable(ctx, db, applied); err != nil {
		return 0, err
	}
	for lo := 1; lo <= *accounts; lo += 500 {
		q := "INSERT INTO " + table + " (id, balance) VALUES "
		for id := lo; id < lo+500 && id <= *accounts; id++ {
			if id > lo {
				q += ", "
			}
			q += fmt.Sprintf("(%d, 0)", id)
		}
		if _, err := db.ExecContext(ctx, q); err != nil {
			return 0, err
		}
	}
	var want int64
	cmds := make(rueidis.Commands, 0, 1000)
	for i := 1; i <= *n; i++ {
		o := order{OrderID: int64(i), AccountID: int64(1 + i%*accounts), Amount: int64(1 + i%7)}
		want += o.Amount
		data, _ := json.Marshal(o)
		cmds = append(cmds, rdb.B().Xadd().Key(stream).Id("*").FieldValue().FieldValue("data", string(data)).Build())
		if len(cmds) == cap(cmds) || i == *n {
			for _, r := range rdb.DoMulti(ctx, cmds...) {
				if err := r.Error(); err != nil {
					return 0, err
				}
			}
			cmds = cmds[:0]
		}
	}
	err := rdb.Do(ctx, rdb.B().XgroupCreate().Key(stream).Group(group).Id("0").Build()).Error()
	return want, err
}

func pending(ctx context.Context, rdb rueidis.Client, stream string) (int64, error) {
	res, err := rdb.Do(ctx, rdb.B().Xpending().Key(stream).Group(group).Build()).ToArray()
	if err != nil || len(res) == 0 {
		return 0, err
	}
	return res[0].AsInt64()
}

const update = "UPDATE " + table + " SET balance = balance + ? WHERE id = ?"

// handWritten is what a team would write without safesync: per
// goroutine, read entries, and apply them in transactions of perTx entries
// (BEGIN, one UPDATE each, COMMIT), then acknowledge them with one XACK.
func handWritten(perTx int) func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
	return handWrittenWorkers("hand-", perTx, handWrittenWorker)
}

// handWrittenMultiRow is handWritten with one multi-row INSERT … ON
// DUPLICATE KEY UPDATE per transaction instead of an UPDATE per entry.
func handWrittenMultiRow(perTx int) func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
	return handWrittenWorkers("hand-multi-", perTx, handWrittenMultiRowWorker)
}

// handWrittenWorkers runs worker in *concurrency goroutines, consumers
// named prefix and their number, and returns the first error.
func handWrittenWorkers(prefix string, perTx int, worker func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream, consumer string, perTx int) error) func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
	return func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
		var wg sync.WaitGroup
		errs := make(chan error, *concurrency)
		for w := 0; w < *concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := worker(ctx, db, rdb, stream, prefix+strconv.Itoa(w), perTx); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		return <-errs
	}
}

const upsertHead = "INSERT INTO " + table + " (id, balance) VALUES "
const upsertTail = " ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance)"

// handWrittenMultiRowWorker applies each chunk with one multi-row upsert.
func handWrittenMultiRowWorker(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream, consumer string, perTx int) error {
	return handWrittenLoop(ctx, db, rdb, stream, consumer, perTx, func(tx *sql.Tx, chunk []rueidis.XRangeEntry) error {
		args := make([]any, 0, 2*len(chunk))
		var q strings.Builder
		q.WriteString(upsertHead)
		for i, e := range chunk {
			var o order
			if err := json.Unmarshal([]byte(e.FieldValues["data"]), &o); err != nil {
				return err
			}
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?)")
			args = append(args, o.AccountID, o.Amount)
		}
		q.WriteString(upsertTail)
		_, err := tx.ExecContext(ctx, q.String(), args...)
		return err
	})
}

// handWrittenWorker applies each chunk with one UPDATE an entry.
func handWrittenWorker(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream, consumer string, perTx int) error {
	return handWrittenLoop(ctx, db, rdb, stream, consumer, perTx, func(tx *sql.Tx, chunk []rueidis.XRangeEntry) error {
		for _, e := range chunk {
			var o order
			if err := json.Unmarshal([]byte(e.FieldValues["data"]), &o); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, update, o.Amount, o.AccountID); err != nil {
				return err
			}
		}
		return nil
	})
}

// handWrittenLoop reads entries until the stream is drained and applies
// them perTx at a time: BEGIN, apply, COMMIT, then one XACK of the chunk.
func handWrittenLoop(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream, consumer string, perTx int, apply func(tx *sql.Tx, chunk []rueidis.XRangeEntry) error) error {
	for {
		res, err := rdb.Do(ctx, rdb.B().Xreadgroup().Group(group, consumer).Count(int64(max(perTx, 10))).Streams().Key(stream).Id(">").Build()).AsXRead()
		if rueidis.IsRedisNil(err) {
			return nil // drained
		}
		if err != nil {
			return err
		}
		entries := res[stream]
		if len(entries) == 0 {
			return nil
		}
		for len(entries) > 0 {
			chunk := entries[:min(perTx, len(entries))]
			entries = entries[len(chunk):]
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if err := apply(tx, chunk); err != nil {
				tx.Rollback()
				return err
			}
			if err := tx.Commit(); err != nil {
				return err
			}
			ids := make([]string, len(chunk))
			for i, e := range chunk {
				ids[i] = e.ID
			}
			if err := rdb.Do(ctx, rdb.B().Xack().Key(stream).Group(group).Id(ids...).Build()).Error(); err != nil {
				return err
			}
		}
	}
}

// pipeline runs safesync's pipeline, one UPDATE an entry, until every
// entry was committed and acknowledged.
func pipeline(batchSize int, once bool) func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
	apply := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		_, err := tx.ExecContext(ctx, update, msg.Value.Amount, msg.Value.AccountID)
		return err
	}
	return runPipeline(batchSize, once, func(m *safesync.Metrics, db *sql.DB) safesync.Pipeline[order] {
		return safesync.Stream(safesync.JSON[order]()).Handle(apply).AckAfter(safesync.Commit(db, safesync.WithMetrics(m)))
	})
}

// credit is a row of the accounts table as a batch adds to it.
type credit struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
}

// batchPipeline runs safesync's pipeline with a batch handler that writes
// each batch with one multi-row INSERT … ON DUPLICATE KEY UPDATE.
func batchPipeline(batchSize int, once bool) func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
	apply := func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[order]) error {
		rows := make([]credit, len(msgs))
		for i, m := range msgs {
			rows[i] = credit{ID: m.Value.AccountID, Balance: m.Value.Amount}
		}
		_, err := safesync.InsertRows(ctx, tx, table, rows, safesync.OnDuplicateAdd("balance"))
		return err
	}
	return runPipeline(batchSize, once, func(m *safesync.Metrics, db *sql.DB) safesync.Pipeline[order] {
		return safesync.Stream(safesync.JSON[order]()).HandleBatch(apply).AckAfter(safesync.Commit(db, safesync.WithMetrics(m)))
	})
}

// runPipeline runs the pipeline build returns, in batches of batchSize,
// until every entry was committed and acknowledged.
func runPipeline(batchSize int, once bool, build func(*safesync.Metrics, *sql.DB) safesync.Pipeline[order]) func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
	return func(ctx context.Context, db *sql.DB, rdb rueidis.Client, stream string) error {
		m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
		if err != nil {
			return err
		}
		var committed atomic.Int64
		done := make(chan struct{})
		p := build(m, db).
			Batch(batchSize).
			AfterCommit(func(_ context.Context, msgs []safesync.Message[order]) {
				if committed.Add(int64(len(msgs))) == int64(*n) {
					close(done)
				}
			})
		if once {
			p = p.Once(applied)
		}
		runCtx, cancel := context.WithCancel(ctx)
		result := make(chan error, 1)
		go func() {
			result <- p.Run(runCtx, rdb, safesync.StreamConfig{
				Stream: stream, Group: group, Consumer: "pipeline",
				Count: max(batchSize, 10) * *concurrency, Concurrency: *concurrency,
				Block: 100 * time.Millisecond, ClaimIdle: time.Hour, Metrics: m,
			})
		}()
		select {
		case <-done:
		case err := <-result:
			cancel()
			return errors.Join(errors.New("pipeline stopped early"), err)
		}
		// The last acknowledgements follow the last commits; Run flushes
		// them before it returns.
		cancel()
		return <-result
	}
}

// loadAverage returns the 1-minute load average, or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func report(contenders []contender, run *results.Run) {
	fmt.Printf("\n%d entries, one UPDATE each, concurrency %d, %d repetitions, medians; GOMAXPROCS %d, %s\n\n", *n, *concurrency, *reps, runtime.GOMAXPROCS(0), runtime.Version())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "contender\tmedian ms\tentries/s\tallocs/entry\tB/entry\tclient CPU µs/entry\t")
	for _, c := range contenders {
		s, ok := run.Median(c.name)
		if !ok {
			continue
		}
		cpu := slices.Sorted(slices.Values(cpuPerEntry[c.name]))
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.1f\t%.0f\t%.1f\t\n", c.name, s.Seconds*1000, s.Rate(), s.Allocs, s.Bytes, cpu[len(cpu)/2])
	}
	tw.Flush()
	ratio := func(label, contender, base string) {
		if r := run.Ratio(base, contender); !math.IsNaN(r) {
			fmt.Printf("%-44s %.2f×\n", label, r)
		}
	}
	fmt.Println()
	ratio("pipeline throughput / hand-written loop", "pipeline", "hand-written loop")
	bn := fmt.Sprintf("pipeline Batch(%d)", *batch)
	ratio("batch throughput / per-entry pipeline", bn, "pipeline")
	ratio("hand-written: batches / per entry", fmt.Sprintf("hand-written loop, batches of %d", *batch), "hand-written loop")
	ratio("batch pipeline / hand-written batches", bn, fmt.Sprintf("hand-written loop, batches of %d", *batch))
	ratio("Once throughput / plain (per entry)", "pipeline + Once", "pipeline")
	ratio("Once throughput / plain (batch)", bn+" + Once", bn)
	multi := fmt.Sprintf("hand-written multi-row batches of %d", *batch)
	hb := fmt.Sprintf("HandleBatch(%d) + InsertRows", *batch)
	ratio("hand-written: multi-row / single-row batches", multi, fmt.Sprintf("hand-written loop, batches of %d", *batch))
	ratio("HandleBatch + InsertRows / hand multi-row", hb, multi)
	ratio("HandleBatch + InsertRows + Once / hand multi-row", hb+" + Once", multi)
	ratio("HandleBatch + InsertRows + Once / pipeline", hb+" + Once", "pipeline")
	ratio("HandleBatch + InsertRows / pipeline", hb, "pipeline")
	ratio("hand multi-row / pipeline", multi, "pipeline")
}
