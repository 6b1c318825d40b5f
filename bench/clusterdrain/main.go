// Command clusterdrain measures how fast a consumer group drains a
// partitioned stream on a Redis Cluster of three masters (each with a
// replica), with a JSON decode and a no-op handler per entry:
//
//   - safesync, 1 partition: a PartitionedConsumer over one partition,
//     so one master serves every read;
//
//   - safesync, 3 partitions: the same over three partitions, one per
//     master, one reader each, handler slots shared;
//
//   - hand-written loop, 1 and 3 partitions: per partition, a goroutine
//     running XREADGROUP COUNT n, json.Unmarshal of each entry, one XACK
//     of the batch, on the same cluster client.
//
//     go run ./clusterdrain -n 100000 -reps 5
//
// Without -cluster it starts the cluster itself (redis-server and redis-cli
// on PATH, loopback ports, a temporary directory) and stops it at the end.
// Every repetition refills fresh partitions for each contender, in a
// rotating order, and checks afterwards that every entry was read once and
// nothing is pending. It prints medians and the ratios: 3 partitions
// against 1 (scaling) and safesync against the hand-written loop.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/bench/internal/results"
	"github.com/safesync-go/safesync/internal/rediscluster"
)

type order struct {
	OrderID int64  `json:"order_id"`
	Amount  int64  `json:"amount"`
	Note    string `json:"note"`
}

var (
	clusterAddrs = flag.String("cluster", "", "comma-separated cluster node addresses; empty: start a cluster of 6 nodes on loopback")
	n            = flag.Int("n", 100_000, "entries per drain, over all partitions")
	reps         = flag.Int("reps", 5, "repetitions of each contender")
	count        = flag.Int("count", 100, "entries per read (XREADGROUP COUNT)")
	concurrency  = flag.Int("concurrency", 4, "safesync handler Concurrency, shared by the partitions")
	out          = flag.String("json", "", "also write every sample to this file, as JSON")
)

type contender struct {
	name       string
	partitions int
	drain      func(ctx context.Context, client rueidis.Client, p safesync.Partitions) error
}

func main() {
	flag.Parse()
	addrs := strings.Split(*clusterAddrs, ",")
	if *clusterAddrs == "" {
		if why := rediscluster.Missing(); why != "" {
			log.Fatalf("%s; install it or pass -cluster", why)
		}
		c, err := rediscluster.Start()
		if err != nil {
			log.Fatal(err)
		}
		defer c.Stop()
		addrs = c.Addrs()
	}
	ctx := context.Background()
	client, err := newClient(addrs)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	contenders := []contender{
		{"safesync, 1 partition", 1, safesyncDrain},
		{"safesync, 3 partitions", 3, safesyncDrain},
		{"hand-written loop, 1 partition", 1, handDrain},
		{"hand-written loop, 3 partitions", 3, handDrain},
	}
	run := results.Run{Benchmark: "clusterdrain", Params: map[string]string{
		"entries": strconv.Itoa(*n), "reps": strconv.Itoa(*reps), "count": strconv.Itoa(*count), "concurrency": strconv.Itoa(*concurrency)}}
	for rep := range *reps {
		for i := range contenders {
			c := contenders[(i+rep)%len(contenders)]
			name := fmt.Sprintf("bench:cdrain:%d:%d", rep, i)
			elapsed, err := measure(ctx, client, addrs, c, name)
			if err != nil {
				log.Fatalf("%s, repetition %d: %v", c.name, rep+1, err)
			}
			run.Add(c.name, rep+1, *n, elapsed, 0, 0)
			fmt.Fprintf(os.Stderr, "rep %d  %-32s %8.1f ms  %8.0f entries/s\n", rep+1, c.name, ms(elapsed), rate(elapsed))
		}
	}
	report(contenders, &run)
	if *out != "" {
		if err := run.Write(*out); err != nil {
			log.Fatal(err)
		}
	}
}

func newClient(addrs []string) (rueidis.Client, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: addrs, DisableCache: true})
	if err != nil {
		return nil, err
	}
	if c.Mode() != rueidis.ClientModeCluster {
		c.Close()
		return nil, fmt.Errorf("client mode %s, want cluster", c.Mode())
	}
	return c, nil
}

// measure fills the partitions of a fresh logical stream, drains them with
// c on a client of its own, checks, and deletes them.
func measure(ctx context.Context, client rueidis.Client, addrs []string, c contender, name string) (time.Duration, error) {
	p, err := safesync.NewPartitions(name, c.partitions)
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, k := range p.Streams() {
			client.Do(ctx, client.B().Del().Key(k).Build())
		}
	}()
	if err := fill(ctx, client, p); err != nil {
		return 0, err
	}
	own, err := newClient(addrs)
	if err != nil {
		return 0, err
	}
	defer own.Close()
	for _, k := range p.Streams() { // connect to every master before the clock starts
		if err := own.Do(ctx, own.B().Xlen().Key(k).Build()).Error(); err != nil {
			return 0, err
		}
	}
	runtime.GC()
	start := time.Now()
	if err := c.drain(ctx, own, p); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	return elapsed, checkDrained(ctx, client, p)
}

// fill adds n entries over the partitions, by key, and creates the group
// on each.
func fill(ctx context.Context, client rueidis.Client, p safesync.Partitions) error {
	const chunk = 1000
	for i := 0; i < *n; i += chunk {
		cmds := make(rueidis.Commands, 0, chunk)
		for j := i; j < min(i+chunk, *n); j++ {
			b, _ := json.Marshal(order{OrderID: int64(j), Amount: 5, Note: "bench"})
			k := p.Stream(p.For(strconv.Itoa(j)))
			cmds = append(cmds, client.B().Xadd().Key(k).Id("*").FieldValue().FieldValue("data", string(b)).Build())
		}
		for _, r := range client.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return err
			}
		}
	}
	for _, k := range p.Streams() {
		if err := client.Do(ctx, client.B().XgroupCreate().Key(k).Group("g").Id("0").Build()).Error(); err != nil {
			return err
		}
	}
	return nil
}

func checkDrained(ctx context.Context, client rueidis.Client, p safesync.Partitions) error {
	var read int64
	for _, k := range p.Streams() {
		summary, err := client.Do(ctx, client.B().Xpending().Key(k).Group("g").Build()).ToArray()
		if err != nil {
			return err
		}
		if n, _ := summary[0].AsInt64(); n != 0 {
			return fmt.Errorf("%s: %d entries still pending", k, n)
		}
		groups, err := client.Do(ctx, client.B().XinfoGroups().Key(k).Build()).ToArray()
		if err != nil {
			return err
		}
		info, err := groups[0].AsMap()
		if err != nil {
			return err
		}
		entriesRead := info["entries-read"]
		r, _ := entriesRead.AsInt64()
		read += r
	}
	if read != int64(*n) {
		return fmt.Errorf("the groups read %d entries, want %d", read, *n)
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

// safesyncDrain drains with PartitionedConsumer.Run.
func safesyncDrain(ctx context.Context, client rueidis.Client, p safesync.Partitions) error {
	c, err := safesync.NewPartitionedConsumer(client, p, safesync.StreamConfig{
		Group: "g", Consumer: "safesync", Count: *count, Concurrency: *concurrency, Metrics: metrics,
	}, safesync.JSON[order]())
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

// handDrain runs, per partition, a goroutine with the reference loop:
// XREADGROUP COUNT n (no BLOCK), decode each entry, one XACK for the batch,
// until the partition is empty.
func handDrain(ctx context.Context, client rueidis.Client, p safesync.Partitions) error {
	var wg sync.WaitGroup
	errs := make([]error, p.Len())
	var total atomic.Int64
	for i, stream := range p.Streams() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids := make([]string, 0, *count)
			for {
				xs, err := client.Do(ctx, client.B().Xreadgroup().Group("g", "hand").Count(int64(*count)).
					Streams().Key(stream).Id(">").Build()).AsXRead()
				if rueidis.IsRedisNil(err) {
					return
				}
				if err != nil {
					errs[i] = err
					return
				}
				entries := xs[stream]
				if len(entries) == 0 {
					return
				}
				ids = ids[:0]
				for _, e := range entries {
					var o order
					if err := json.Unmarshal([]byte(e.FieldValues["data"]), &o); err != nil {
						errs[i] = err
						return
					}
					ids = append(ids, e.ID)
				}
				if err := client.Do(ctx, client.B().Xack().Key(stream).Group("g").Id(ids...).Build()).Error(); err != nil {
					errs[i] = err
					return
				}
				total.Add(int64(len(entries)))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if total.Load() != int64(*n) {
		return fmt.Errorf("handled %d entries", total.Load())
	}
	return nil
}

func report(contenders []contender, run *results.Run) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "contender\tmedian ms\tentries/s\t\n")
	for _, c := range contenders {
		s, _ := run.Median(c.name)
		fmt.Fprintf(w, "%s\t%.1f\t%.0f\t\n", c.name, ms(s.Elapsed()), s.Rate())
	}
	w.Flush()
	s1, s3 := "safesync, 1 partition", "safesync, 3 partitions"
	h1, h3 := "hand-written loop, 1 partition", "hand-written loop, 3 partitions"
	line := func(label, base, contender string) {
		fmt.Printf("%s: %.2fx (median of repetitions: %.2fx)\n", label, run.Ratio(base, contender), run.PairedRatio(base, contender))
	}
	fmt.Println()
	line("scaling, safesync 3 partitions / 1 partition", s1, s3)
	line("scaling, hand-written 3 partitions / 1 partition", h1, h3)
	line("safesync / hand-written, 3 partitions", h3, s3)
	line("safesync / hand-written, 1 partition", h1, s1)
	fmt.Printf("\n%d entries per drain, %d repetitions, COUNT %d, safesync Concurrency %d, GOMAXPROCS %d, %s\n",
		*n, *reps, *count, *concurrency, runtime.GOMAXPROCS(0), runtime.Version())
}

func ms(d time.Duration) float64   { return float64(d) / float64(time.Millisecond) }
func rate(d time.Duration) float64 { return float64(*n) / d.Seconds() }
