// Command streamdrain measures how fast a consumer group drains a stream of
// pre-filled entries with a no-op handler and a JSON decode, for safesync's
// Consumer against a hand-written rueidis loop and watermill-redisstream, on
// one Redis, side by side in one run.
//
//	go run ./streamdrain -redis 127.0.0.1:6379 -n 100000 -reps 5
//
// Every repetition refills a fresh stream for each contender, in a rotating
// order, and checks afterwards that every entry was delivered once and
// acknowledged. It prints the median time, the throughput, allocations and
// bytes per entry (runtime.MemStats over the drain, whole process), the
// client's CPU time per entry (getrusage user + system over the drain, this
// process only: Redis is another), and the ratios of each safesync variant
// to the hand-written loop and to watermill, of time and of CPU per entry.
// The load average is printed beside each repetition and in the summary:
// on a busy machine the times mean little, CPU per entry and allocations
// more.
//
// The hand-written loop is the raw rueidis loop of the comparison: it uses
// no part of safesync, reads with XREADGROUP COUNT 100 (no BLOCK),
// json.Unmarshals each entry and sends one XACK per read.
//
// -cpuprofile and -memprofile profile the drains only: CPU samples of a
// drain carry the label contender=<name> (go tool pprof -tagfocus), and
// allocations are sampled only while a contender drains; use -only to
// profile one contender.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/bench/internal/results"
)

// order is the payload: what the Python original's json.dumps would write.
type order struct {
	OrderID int64  `json:"order_id"`
	Amount  int64  `json:"amount"`
	Note    string `json:"note"`
}

var (
	addr  = flag.String("redis", "127.0.0.1:6379", "Redis address (loopback)")
	n     = flag.Int("n", 100_000, "entries per drain")
	reps  = flag.Int("reps", 5, "repetitions of each contender")
	count = flag.Int("count", 100, "entries per read (XREADGROUP COUNT) for the batched contenders")
	only  = flag.String("only", "", `run only the contenders whose names match this regular expression ("fast": all but watermill)`)
	prof  = flag.String("cpuprofile", "", "write a CPU profile of the drains to this file (samples labelled contender=<name>)")
	mprof = flag.String("memprofile", "", "write an allocation profile of the drains to this file (allocations sampled only during drains)")
	out   = flag.String("json", "", "also write every sample to this file, as JSON")
)

// contender drains stream with a client of its own, so that how one uses
// its connections (rueidis switches a connection to background pipelining
// once it is used concurrently) does not affect the next.
type contender struct {
	name  string
	drain func(ctx context.Context, client rueidis.Client, stream string) error
	// pipelined puts the contender's connection in rueidis' pipelined
	// mode before the drain, as a long-running process's connection is
	// once two of its commands overlap (a lease renewal or a reclaim
	// scan beside a read): from then on every command goes through the
	// connection's background writer and reader goroutines.
	pipelined bool
}

type sample struct {
	elapsed       time.Duration
	allocs, bytes float64 // per entry
	cpu           float64 // µs of this process's user + system CPU per entry
	load          [3]float64
}

// memProfileRate is the allocation sampling rate during drains; outside
// them nothing is sampled, so that -memprofile shows the drains alone.
var memProfileRate = runtime.MemProfileRate

func main() {
	flag.Parse()
	runtime.MemProfileRate = 0 // sampled during drains only (see measure)
	ctx := context.Background()
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{*addr}, DisableCache: true})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	contenders := []contender{
		{name: "hand-written rueidis loop", drain: handLoop},
		{name: "safesync Run", drain: func(ctx context.Context, c rueidis.Client, s string) error { return safesyncRun(ctx, c, s, 1) }},
		{name: "safesync Run, Concurrency 4", drain: func(ctx context.Context, c rueidis.Client, s string) error { return safesyncRun(ctx, c, s, 4) }},
		{name: "safesync RunBatch", drain: safesyncBatch},
		{name: "hand-written rueidis loop, pipelined connection", drain: handLoop, pipelined: true},
		{name: "safesync Run, pipelined connection", drain: func(ctx context.Context, c rueidis.Client, s string) error { return safesyncRun(ctx, c, s, 1) }, pipelined: true},
		{name: "watermill-redisstream", drain: func(ctx context.Context, _ rueidis.Client, s string) error { return watermillDrain(ctx, s) }},
	}
	if *only == "fast" { // everything but watermill, which takes a minute a repetition
		contenders = contenders[:len(contenders)-1]
	} else if *only != "" {
		re := regexp.MustCompile(*only)
		contenders = slices.DeleteFunc(contenders, func(c contender) bool { return !re.MatchString(c.name) })
	}
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if *mprof != "" {
		defer writeMemProfile(*mprof)
	}
	startLoad := loadavg()
	run := results.Run{Benchmark: "streamdrain", Params: map[string]string{"entries": strconv.Itoa(*n), "reps": strconv.Itoa(*reps), "count": strconv.Itoa(*count)}}
	for rep := range *reps {
		for i := range contenders {
			c := contenders[(i+rep)%len(contenders)]
			stream := fmt.Sprintf("bench:drain:%d:%d", rep, i)
			s, err := measure(ctx, client, c, stream)
			if err != nil {
				log.Fatalf("%s, repetition %d: %v", c.name, rep+1, err)
			}
			run.Add(c.name, rep+1, *n, s.elapsed, s.allocs, s.bytes)
			run.Samples[len(run.Samples)-1].CPU = s.cpu
			run.Samples[len(run.Samples)-1].Load = s.load[0]
			fmt.Fprintf(os.Stderr, "rep %d  %-28s %8.1f ms  %8.0f entries/s  %5.2f µs CPU/entry  %5.1f allocs/entry  load %s\n",
				rep+1, c.name, ms(s.elapsed), rate(s.elapsed), s.cpu, s.allocs, formatLoad(s.load))
		}
	}
	report(contenders, &run, startLoad, loadavg())
	if *out != "" {
		if err := run.Write(*out); err != nil {
			log.Fatal(err)
		}
	}
}

// measure fills stream, drains it with c, checks that nothing is left
// pending, and deletes it.
func measure(ctx context.Context, client rueidis.Client, c contender, stream string) (sample, error) {
	defer client.Do(ctx, client.B().Del().Key(stream).Build())
	if err := fill(ctx, client, stream); err != nil {
		return sample{}, err
	}
	own, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{*addr}, DisableCache: true})
	if err != nil {
		return sample{}, err
	}
	defer own.Close()
	if err := own.Do(ctx, own.B().Ping().Build()).Error(); err != nil { // connect before the clock starts
		return sample{}, err
	}
	if c.pipelined {
		// A command under a ctx that can be cancelled and has no deadline
		// switches a rueidis connection to pipelined mode for good.
		cctx, cancel := context.WithCancel(ctx)
		err := own.Do(cctx, own.B().Ping().Build()).Error()
		cancel()
		if err != nil {
			return sample{}, err
		}
	}
	runtime.GC()
	var before, after runtime.MemStats
	var ruBefore, ruAfter syscall.Rusage
	runtime.ReadMemStats(&before)
	runtime.MemProfileRate = memProfileRate
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ruBefore); err != nil {
		return sample{}, err
	}
	start := time.Now()
	pprof.Do(ctx, pprof.Labels("contender", c.name), func(ctx context.Context) {
		err = c.drain(ctx, own, stream)
	})
	elapsed := time.Since(start)
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ruAfter); err != nil {
		return sample{}, err
	}
	runtime.MemProfileRate = 0
	runtime.ReadMemStats(&after)
	if err != nil {
		return sample{}, err
	}
	if err := checkDrained(ctx, client, stream); err != nil {
		return sample{}, err
	}
	cpu := cpuTime(ruAfter) - cpuTime(ruBefore)
	return sample{
		elapsed: elapsed,
		allocs:  float64(after.Mallocs-before.Mallocs) / float64(*n),
		bytes:   float64(after.TotalAlloc-before.TotalAlloc) / float64(*n),
		cpu:     float64(cpu.Nanoseconds()) / 1000 / float64(*n),
		load:    loadavg(),
	}, nil
}

// cpuTime is the user and system CPU time of a getrusage result.
func cpuTime(ru syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadavg returns the 1, 5 and 15 minute load averages (/proc/loadavg),
// zeros where they cannot be read.
func loadavg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	for i, f := range strings.Fields(string(b)) {
		if i == len(l) {
			break
		}
		l[i], _ = strconv.ParseFloat(f, 64)
	}
	return l
}

func formatLoad(l [3]float64) string { return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2]) }

// writeMemProfile writes the allocations sampled during the drains.
func writeMemProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	runtime.MemProfileRate = memProfileRate // the samples' scale
	runtime.GC()                            // the profile is as of the last GC
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		log.Fatal(err)
	}
}

// fill adds n entries in the original's wire format and creates the group
// at the start of the stream.
func fill(ctx context.Context, client rueidis.Client, stream string) error {
	if err := client.Do(ctx, client.B().Del().Key(stream).Build()).Error(); err != nil {
		return err
	}
	const chunk = 1000
	for i := 0; i < *n; i += chunk {
		cmds := make(rueidis.Commands, 0, chunk)
		for j := i; j < min(i+chunk, *n); j++ {
			b, _ := json.Marshal(order{OrderID: int64(j), Amount: 5, Note: "bench"})
			cmds = append(cmds, client.B().Xadd().Key(stream).Id("*").FieldValue().FieldValue("data", string(b)).Build())
		}
		for _, r := range client.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return err
			}
		}
	}
	return client.Do(ctx, client.B().XgroupCreate().Key(stream).Group("g").Id("0").Build()).Error()
}

func checkDrained(ctx context.Context, client rueidis.Client, stream string) error {
	summary, err := client.Do(ctx, client.B().Xpending().Key(stream).Group("g").Build()).ToArray()
	if err != nil {
		return err
	}
	if p, _ := summary[0].AsInt64(); p != 0 {
		return fmt.Errorf("%d entries still pending", p)
	}
	groups, err := client.Do(ctx, client.B().XinfoGroups().Key(stream).Build()).ToArray()
	if err != nil {
		return err
	}
	info, err := groups[0].AsMap()
	if err != nil {
		return err
	}
	entriesRead := info["entries-read"]
	if read, _ := entriesRead.AsInt64(); read != int64(*n) {
		return fmt.Errorf("group read %d entries, want %d", read, *n)
	}
	return nil
}

// handLoop is the reference: XREADGROUP COUNT n, decode each entry, one
// XACK for the batch, until the stream is drained.
func handLoop(ctx context.Context, client rueidis.Client, stream string) error {
	ids := make([]string, 0, *count)
	for done := 0; done < *n; {
		xs, err := client.Do(ctx, client.B().Xreadgroup().Group("g", "hand").Count(int64(*count)).
			Streams().Key(stream).Id(">").Build()).AsXRead()
		if err != nil {
			return err
		}
		entries := xs[stream]
		if len(entries) == 0 {
			return errors.New("stream empty before the end")
		}
		ids = ids[:0]
		for _, e := range entries {
			var o order
			if err := json.Unmarshal([]byte(e.FieldValues["data"]), &o); err != nil {
				return err
			}
			ids = append(ids, e.ID)
		}
		if err := client.Do(ctx, client.B().Xack().Key(stream).Group("g").Id(ids...).Build()).Error(); err != nil {
			return err
		}
		done += len(entries)
	}
	return nil
}

var metrics = func() *safesync.Metrics {
	m, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		log.Fatal(err)
	}
	return m
}()

func streamConfig(stream string, concurrency int) safesync.StreamConfig {
	return safesync.StreamConfig{
		Stream: stream, Group: "g", Consumer: "safesync",
		Count: *count, Concurrency: concurrency,
		Metrics: metrics,
	}
}

// safesyncRun drains with Consumer.Run: the handler is called per entry,
// up to concurrency at a time, and the consumer acknowledges.
func safesyncRun(ctx context.Context, client rueidis.Client, stream string, concurrency int) error {
	c, err := safesync.NewConsumer(client, streamConfig(stream, concurrency), safesync.JSON[order]())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var handled atomic.Int64
	err = c.Run(ctx, func(context.Context, safesync.Message[order]) error {
		if handled.Add(1) == int64(*n) {
			cancel() // Run acknowledges the last entries before it returns
		}
		return nil
	})
	if handled.Load() != int64(*n) {
		return fmt.Errorf("handled %d entries", handled.Load())
	}
	return err
}

// safesyncBatch drains with Consumer.RunBatch: the handler gets up to count
// entries and acknowledges them with one Ack.
func safesyncBatch(ctx context.Context, client rueidis.Client, stream string) error {
	c, err := safesync.NewConsumer(client, streamConfig(stream, 1), safesync.JSON[order]())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var handled atomic.Int64
	err = c.RunBatch(ctx, *count, func(ctx context.Context, msgs []safesync.Message[order]) error {
		if err := c.Ack(ctx, msgs...); err != nil {
			return err
		}
		if handled.Add(int64(len(msgs))) == int64(*n) {
			cancel()
		}
		return nil
	})
	if handled.Load() != int64(*n) {
		return fmt.Errorf("handled %d entries", handled.Load())
	}
	return err
}

// dataUnmarshaller reads the original's wire format (one field "data")
// into a watermill message, instead of watermill's own format.
type dataUnmarshaller struct{}

func (dataUnmarshaller) Unmarshal(values map[string]any) (*message.Message, error) {
	data, ok := values["data"].(string)
	if !ok {
		return nil, errors.New("no data field")
	}
	return message.NewMessage("", []byte(data)), nil
}

// watermillDrain drains with a watermill-redisstream subscriber in a
// consumer group, acknowledging each message after decoding it.
func watermillDrain(ctx context.Context, stream string) error {
	rdb := goredis.NewClient(&goredis.Options{Addr: *addr})
	defer rdb.Close()
	sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
		Client:        rdb,
		Unmarshaller:  dataUnmarshaller{},
		Consumer:      "watermill",
		ConsumerGroup: "g",
		OldestId:      "0",
		BlockTime:     100 * time.Millisecond,
		ClaimInterval: time.Hour,
		MaxIdleTime:   time.Hour,

		DisableIndefiniteInitialBlock: true,
	}, watermill.NopLogger{})
	if err != nil {
		return err
	}
	msgs, err := sub.Subscribe(ctx, stream)
	if err != nil {
		return err
	}
	for range *n {
		m, ok := <-msgs
		if !ok {
			return errors.New("subscription closed early")
		}
		var o order
		if err := json.Unmarshal(m.Payload, &o); err != nil {
			return err
		}
		m.Ack()
	}
	// The subscriber acknowledges in the background: wait for the last.
	deadline := time.Now().Add(10 * time.Second)
	for pending(ctx, rdb, stream) > 0 {
		if time.Now().After(deadline) {
			return errors.New("acknowledgements still pending after 10s")
		}
		time.Sleep(100 * time.Microsecond)
	}
	return sub.Close()
}

func pending(ctx context.Context, rdb *goredis.Client, stream string) int64 {
	p, err := rdb.XPending(ctx, stream, "g").Result()
	if err != nil {
		return -1
	}
	return p.Count
}

func report(contenders []contender, run *results.Run, startLoad, endLoad [3]float64) {
	const hand, wm = "hand-written rueidis loop", "watermill-redisstream"
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "contender\tmedian ms\tentries/s\tallocs/entry\tB/entry\tCPU µs/entry\tload during reps\t\n")
	for _, c := range contenders {
		s, _ := run.Median(c.name)
		lo, hi := loadRange(run, c.name)
		fmt.Fprintf(w, "%s\t%.1f\t%.0f\t%.1f\t%.0f\t%.2f\t%.2f–%.2f\t\n", c.name, ms(s.Elapsed()), rate(s.Elapsed()), s.Allocs, s.Bytes, medianCPU(run, c.name), lo, hi)
	}
	w.Flush()
	_, hasHand := run.Median(hand)
	_, hasWM := run.Median(wm)
	fmt.Println()
	for _, c := range contenders {
		if c.name == hand || c.name == wm {
			continue
		}
		line := c.name + ":"
		if base := hand + ", pipelined connection"; c.pipelined && c.drain != nil && base != c.name {
			if _, ok := run.Median(base); ok {
				line += fmt.Sprintf("  %.2fx the hand-written loop on a pipelined connection;  CPU/entry %.2fx its", run.Ratio(base, c.name), medianCPU(run, c.name)/medianCPU(run, base))
			}
		}
		if hasHand {
			line += fmt.Sprintf("  %.2fx the hand-written loop (median of repetitions: %.2fx);  CPU/entry %.2fx the raw loop's (median of repetitions: %.2fx)",
				run.Ratio(hand, c.name), run.PairedRatio(hand, c.name), medianCPU(run, c.name)/medianCPU(run, hand), pairedCPU(run, hand, c.name))
		}
		if hasWM {
			line += fmt.Sprintf("  %.1fx watermill-redisstream", run.Ratio(wm, c.name))
		}
		fmt.Println(line)
	}
	fmt.Printf("\n%d entries per drain, %d repetitions, COUNT %s, GOMAXPROCS %d, %s\n",
		*n, *reps, strconv.Itoa(*count), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Printf("load average (1, 5, 15 min): %s at the start, %s at the end\n", formatLoad(startLoad), formatLoad(endLoad))
	fmt.Println("CPU: this process's user + system time over each drain (getrusage), per entry; the raw loop is the hand-written one")
}

func medianCPU(run *results.Run, contender string) float64 {
	return run.MedianOf(contender, results.SampleCPU)
}

func pairedCPU(run *results.Run, base, contender string) float64 {
	return run.PairedRatioOf(base, contender, results.SampleCPU)
}

// loadRange is the lowest and highest 1-minute load average seen after a
// contender's drains.
func loadRange(run *results.Run, contender string) (lo, hi float64) {
	for i, s := range run.Of(contender) {
		if i == 0 || s.Load < lo {
			lo = s.Load
		}
		hi = max(hi, s.Load)
	}
	return lo, hi
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func rate(d time.Duration) float64 { return float64(*n) / d.Seconds() }
