// Command outbox measures safesync's outbox relay, side by side in one run
// on the same servers and the same table:
//
//   - throughput: draining an outbox table pre-filled with n events
//     (OutboxWriter.Publish, JSON in the original's wire format) into a
//     stream, by a hand-written poll-and-XADD loop (SELECT a batch in id
//     order, one pipelined XADD per row, DELETE the batch), by the Relay,
//     and by the Relay with PlainEntries (no origin fields);
//
//   - latency from COMMIT to the entry's arrival in the stream, for events
//     committed one per transaction at a steady rate, with the relay in the
//     writer's process (woken by the commit) and in another process
//     (polling only).
//
//     go run ./outbox -redis 127.0.0.1:6379 -mysql 'root@tcp(127.0.0.1:3306)/test' -n 50000 -reps 3
//
// Each repetition refills the table for every throughput contender, in a
// rotating order, and checks afterwards that the stream holds every event
// and the table is empty. It prints medians, throughput, allocations per
// event and the ratio to the hand-written loop, then the latency
// percentiles.
package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	redisAddr = flag.String("redis", "127.0.0.1:6379", "Redis address (loopback)")
	mysqlDSN  = flag.String("mysql", "root@tcp(127.0.0.1:3306)/test", "MySQL/MariaDB DSN (loopback)")
	n         = flag.Int("n", 50_000, "events per throughput run")
	reps      = flag.Int("reps", 3, "repetitions of each throughput contender")
	batch     = flag.Int("batch", 500, "rows per batch, for every contender")
	latencyN  = flag.Int("latency-n", 400, "events per latency run, at most 30 s of them at the run's rate")
	rates     = flag.String("rates", "2,20,200", "commits per second of the latency runs, comma-separated")
	only      = flag.String("only", "", "run only the parts and contenders whose names match this regular expression")
	out       = flag.String("json", "", "also write every sample to this file, as JSON")
	cpuprof   = flag.String("cpuprofile", "", "write a CPU profile of the throughput runs to this file")

	// The polling-only relay runs in a child process started with these.
	relayOnly = flag.String("relay-only", "", "internal: run only a relay of this table until stdin closes")
	relayLock = flag.String("relay-lock", "", "internal: the relay's lock name")
)

const (
	table  = "bench_outbox"
	stream = "{bench-outbox}"
)

type contender struct {
	name string
	run  func(ctx context.Context, db *sql.DB, rdb rueidis.Client) error
}

func main() {
	flag.Parse()
	ctx := context.Background()
	db, err := sql.Open("mysql", *mysqlDSN)
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	defer db.Close()
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{*redisAddr}, DisableCache: true})
	if err != nil {
		log.Fatal(err)
	}
	defer rdb.Close()
	if *relayOnly != "" {
		if err := runRelayOnly(ctx, db, rdb); err != nil {
			log.Fatal(err)
		}
		return
	}

	var re *regexp.Regexp
	if *only != "" {
		re = regexp.MustCompile(*only)
	}
	contenders := []contender{
		{"hand-written poll-and-XADD loop", handWritten},
		{"safesync Relay", relay(false)},
		{"safesync Relay, PlainEntries", relay(true)},
	}
	if re != nil {
		contenders = slices.DeleteFunc(contenders, func(c contender) bool { return !re.MatchString(c.name) })
	}
	run := results.Run{Benchmark: "outbox", Params: map[string]string{
		"entries": strconv.Itoa(*n), "reps": strconv.Itoa(*reps), "batch": strconv.Itoa(*batch),
	}}
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
	}
	for rep := 0; rep < *reps && len(contenders) > 0; rep++ {
		for i := range contenders {
			c := contenders[(i+rep)%len(contenders)]
			elapsed, allocs, bytes, err := measure(ctx, db, rdb, c)
			if err != nil {
				log.Fatalf("%s: %v", c.name, err)
			}
			run.Add(c.name, rep+1, *n, elapsed, allocs, bytes)
			fmt.Fprintf(os.Stderr, "rep %d  %-34s %8.0f ms  %8.0f events/s\n", rep+1, c.name, ms(elapsed), float64(*n)/elapsed.Seconds())
		}
	}
	if *cpuprof != "" {
		pprof.StopCPUProfile()
	}
	if len(contenders) > 0 {
		report(contenders, &run)
	}

	var latencies []latencyResult
	for _, r := range strings.Split(*rates, ",") {
		rate, err := strconv.ParseFloat(strings.TrimSpace(r), 64)
		if err != nil || rate <= 0 {
			log.Fatalf("-rates: %q is not a positive number", r)
		}
		for _, woken := range []bool{true, false} {
			lr := latencyResult{rate: rate, woken: woken}
			if re != nil && !re.MatchString(lr.name()) {
				continue
			}
			if lr.samples, err = measureLatency(ctx, db, rdb, rate, woken); err != nil {
				log.Fatalf("%s: %v", lr.name(), err)
			}
			fmt.Fprintf(os.Stderr, "%-44s p50 %6.2f ms  p99 %7.2f ms\n", lr.name(), ms(lr.percentile(50)), ms(lr.percentile(99)))
			latencies = append(latencies, lr)
			for _, q := range []int{50, 99} {
				run.Params[fmt.Sprintf("latency %s p%d ms", lr.name(), q)] = strconv.FormatFloat(ms(lr.percentile(q)), 'f', 2, 64)
			}
		}
	}
	if len(latencies) > 0 {
		reportLatency(latencies)
	}
	if *out != "" {
		if err := run.Write(*out); err != nil {
			log.Fatal(err)
		}
	}
}

// reset drops and creates the outbox table and deletes the stream.
func reset(ctx context.Context, db *sql.DB, rdb rueidis.Client) error {
	if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
		return err
	}
	if err := safesync.CreateOutboxTable(ctx, db, table); err != nil {
		return err
	}
	return rdb.Do(ctx, rdb.B().Del().Key(stream).Build()).Error()
}

// fill publishes n events through the outbox, 1,000 per transaction.
func fill(ctx context.Context, db *sql.DB) error {
	w := safesync.ToOutbox[order](table, stream)
	for lo := 0; lo < *n; lo += 1000 {
		events := make([]order, 0, 1000)
		for i := lo; i < min(lo+1000, *n); i++ {
			events = append(events, order{OrderID: int64(i + 1), AccountID: int64(1 + i%1000), Amount: int64(1 + i%7)})
		}
		if _, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			return w.Publish(ctx, tx, events...)
		}), safesync.WithMetrics(nil))(ctx); err != nil {
			return err
		}
	}
	return nil
}

// measure fills the table, runs c once and verifies the outcome.
func measure(ctx context.Context, db *sql.DB, rdb rueidis.Client, c contender) (time.Duration, float64, float64, error) {
	if err := reset(ctx, db, rdb); err != nil {
		return 0, 0, 0, err
	}
	if err := fill(ctx, db); err != nil {
		return 0, 0, 0, err
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	if err := c.run(ctx, db, rdb); err != nil {
		return 0, 0, 0, err
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	left, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM "+table)
	if err != nil || left != 0 {
		return 0, 0, 0, fmt.Errorf("%d rows left in the outbox (%v)", left, err)
	}
	xs, err := rdb.Do(ctx, rdb.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		return 0, 0, 0, err
	}
	if len(xs) != *n {
		return 0, 0, 0, fmt.Errorf("the stream holds %d entries, want %d", len(xs), *n)
	}
	for i, x := range xs {
		var o order
		if err := json.Unmarshal([]byte(x.FieldValues[safesync.DataField]), &o); err != nil || o.OrderID != int64(i+1) {
			return 0, 0, 0, fmt.Errorf("entry %d is order %d (%v), want %d: out of order", i, o.OrderID, err, i+1)
		}
	}
	return elapsed, float64(after.Mallocs-before.Mallocs) / float64(*n), float64(after.TotalAlloc-before.TotalAlloc) / float64(*n), nil
}

// handWritten is what a team would write without safesync: select a batch
// in id order, add each row to its stream with one pipelined XADD per row,
// delete the batch, until the table is empty.
func handWritten(ctx context.Context, db *sql.DB, rdb rueidis.Client) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	deleteFull, err := conn.PrepareContext(ctx, deleteQuery(*batch))
	if err != nil {
		return err
	}
	defer deleteFull.Close()
	selectBatch := fmt.Sprintf("SELECT id, stream, data FROM %s ORDER BY id LIMIT %d", table, *batch)
	for {
		rows, err := conn.QueryContext(ctx, selectBatch)
		if err != nil {
			return err
		}
		var ids []any
		cmds := make(rueidis.Commands, 0, *batch)
		for rows.Next() {
			var id int64
			var key, data string
			if err := rows.Scan(&id, &key, &data); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
			cmds = append(cmds, rdb.B().Xadd().Key(key).Id("*").FieldValue().FieldValue("data", data).Build())
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		for _, r := range rdb.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return err
			}
		}
		if len(ids) == *batch {
			_, err = deleteFull.ExecContext(ctx, ids...)
		} else {
			_, err = conn.ExecContext(ctx, deleteQuery(len(ids)), ids...)
		}
		if err != nil {
			return err
		}
	}
}

func deleteQuery(rows int) string {
	return "DELETE FROM " + table + " WHERE id IN (" + strings.TrimSuffix(strings.Repeat("?, ", rows), ", ") + ")"
}

// relay runs a Relay until it has relayed every row and deleted them.
func relay(plain bool) func(ctx context.Context, db *sql.DB, rdb rueidis.Client) error {
	return func(ctx context.Context, db *sql.DB, rdb rueidis.Client) error {
		m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
		if err != nil {
			return err
		}
		var relayed atomic.Int64
		done := make(chan struct{})
		r, err := safesync.NewRelay(db, rdb, safesync.RelayConfig{
			Table: table, BatchSize: *batch, PlainEntries: plain, Metrics: m, LockName: lockName(),
			AfterXADD: func(_ context.Context, events []safesync.RelayedEvent) {
				if relayed.Add(int64(len(events))) == int64(*n) {
					close(done)
				}
			},
		})
		if err != nil {
			return err
		}
		runCtx, cancel := context.WithCancel(ctx)
		result := make(chan error, 1)
		go func() { result <- r.Run(runCtx) }()
		select {
		case <-done:
		case err := <-result:
			cancel()
			return errors.Join(errors.New("relay stopped early"), err)
		}
		// Run deletes the last batch's rows before it returns.
		cancel()
		return <-result
	}
}

func lockName() string {
	return "bench_outbox_" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// latencyResult is one latency run: events committed at rate per second,
// with the relay woken by the commits or polling only.
type latencyResult struct {
	rate    float64
	woken   bool
	samples []time.Duration // sorted
}

func (l latencyResult) name() string {
	mode := "polling only (relay in another process)"
	if l.woken {
		mode = "woken by the commit"
	}
	return fmt.Sprintf("latency %g/s, %s", l.rate, mode)
}

func (l latencyResult) percentile(p int) time.Duration {
	if len(l.samples) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(p)/100*float64(len(l.samples)))) - 1
	return l.samples[max(i, 0)]
}

// measureLatency commits latencyN events (at most 30 s of them), one per
// transaction, at rate per second, and returns for each the time from its COMMIT to its arrival in
// the stream (seen by a blocked XREAD), sorted.
func measureLatency(ctx context.Context, db *sql.DB, rdb rueidis.Client, rate float64, woken bool) ([]time.Duration, error) {
	if err := reset(ctx, db, rdb); err != nil {
		return nil, err
	}
	lock := lockName()
	var stopRelay func() error
	if woken {
		r, err := safesync.NewRelay(db, rdb, safesync.RelayConfig{Table: table, LockName: lock, Metrics: nil})
		if err != nil {
			return nil, err
		}
		runCtx, cancel := context.WithCancel(ctx)
		result := make(chan error, 1)
		go func() { result <- r.Run(runCtx) }()
		stopRelay = sync.OnceValue(func() error { cancel(); return <-result })
		for !r.Leading() {
			time.Sleep(time.Millisecond)
		}
	} else {
		var err error
		if stopRelay, err = startRelayProcess(lock); err != nil {
			return nil, err
		}
	}
	defer stopRelay()

	events := min(*latencyN, max(int(rate*30), 1))
	arrived := make(map[int64]time.Time, events)
	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	var reader sync.WaitGroup
	reader.Add(1)
	var readErr error
	go func() {
		defer reader.Done()
		readErr = readArrivals(readCtx, rdb, arrived)
	}()
	time.Sleep(50 * time.Millisecond) // the reader's first XREAD is blocked

	committed := make([]time.Time, events)
	w := safesync.ToOutbox[order](table, stream)
	start := time.Now()
	for i := range events {
		if wait := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); wait > 0 {
			time.Sleep(wait)
		}
		_, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			// Registered before Publish's own hook, which wakes the relay.
			tx.AfterCommit(func(context.Context) error { committed[i] = time.Now(); return nil })
			return w.Publish(ctx, tx, order{OrderID: int64(i), AccountID: 1, Amount: 1})
		}), safesync.WithMetrics(nil))(ctx)
		if err != nil {
			return nil, err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		got := len(arrived)
		mu.Unlock()
		if got == events {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d events arrived within 30 s (%v)", got, events, readErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopReading()
	reader.Wait()
	out := make([]time.Duration, 0, events)
	for i, c := range committed {
		out = append(out, arrived[int64(i)].Sub(c))
	}
	slices.Sort(out)
	return out, stopRelay()
}

var mu sync.Mutex // guards the arrivals map

// readArrivals records when each event arrives in the stream, with
// blocking XREADs from the stream's start, until ctx ends.
func readArrivals(ctx context.Context, rdb rueidis.Client, arrived map[int64]time.Time) error {
	last := "0"
	for ctx.Err() == nil {
		res, err := rdb.Do(ctx, rdb.B().Xread().Count(1000).Block(1000).Streams().Key(stream).Id(last).Build()).AsXRead()
		now := time.Now()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		for _, x := range res[stream] {
			var o order
			if err := json.Unmarshal([]byte(x.FieldValues[safesync.DataField]), &o); err != nil {
				mu.Unlock()
				return err
			}
			if _, seen := arrived[o.OrderID]; !seen {
				arrived[o.OrderID] = now
			}
			last = x.ID
		}
		mu.Unlock()
	}
	return nil
}

// startRelayProcess starts this program as a relay of the table in a child
// process and waits until it leads; stop ends it.
func startRelayProcess(lock string) (stop func() error, err error) {
	cmd := exec.Command(os.Args[0], "-relay-only", table, "-relay-lock", lock, "-redis", *redisAddr, "-mysql", *mysqlDSN)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "leading" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("relay process: %q, %v", line, err)
	}
	var once sync.Once
	var waitErr error
	return func() error {
		once.Do(func() {
			stdin.Close()
			waitErr = cmd.Wait()
		})
		return waitErr
	}, nil
}

// runRelayOnly is the child process: a relay with the default polling,
// which prints "leading" once it leads and stops when stdin closes.
func runRelayOnly(ctx context.Context, db *sql.DB, rdb rueidis.Client) error {
	r, err := safesync.NewRelay(db, rdb, safesync.RelayConfig{Table: *relayOnly, LockName: *relayLock})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // returns when stdin closes
		cancel()
	}()
	go func() {
		for !r.Leading() && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		fmt.Println("leading")
	}()
	return r.Run(ctx)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func report(contenders []contender, run *results.Run) {
	fmt.Printf("\n%d events drained from the outbox table into one stream, batches of %d, %d repetitions, medians; GOMAXPROCS %d, %s\n\n",
		*n, *batch, *reps, runtime.GOMAXPROCS(0), runtime.Version())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "contender\tmedian ms\tevents/s\tallocs/event\tB/event\tvs hand-written (paired)\t")
	base := contenders[0].name
	for _, c := range contenders {
		s, ok := run.Median(c.name)
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.1f\t%.0f\t%.2f× (%.2f×)\t\n", c.name, s.Seconds*1000, s.Rate(), s.Allocs, s.Bytes,
			run.Ratio(base, c.name), run.PairedRatio(base, c.name))
	}
	tw.Flush()
}

func reportLatency(ls []latencyResult) {
	fmt.Printf("\nCOMMIT to arrival in the stream, one event per transaction, default polling (%v doubling to %v)\n\n", safesync.DefaultRelayPollMin, safesync.DefaultRelayPollMax)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tevents\tp50 ms\tp99 ms\tmax ms\t")
	for _, l := range ls {
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t\n", l.name(), len(l.samples), ms(l.percentile(50)), ms(l.percentile(99)), ms(l.percentile(100)))
	}
	tw.Flush()
}
