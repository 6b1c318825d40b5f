package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/safesync-go/safesync/bench/internal/results"
)

// render writes BENCHMARKS.md and the charts from the files in results/.
func render() error {
	var b strings.Builder
	loads, err := readLoads()
	if err != nil {
		return err
	}
	// p prints, and under each section heading the load average while its
	// figures were measured.
	p := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		if heading, ok := strings.CutSuffix(format, "\n\n"); ok && len(args) == 0 {
			b.WriteString(loadLine(loads, heading))
		}
	}
	res := func(name string) string { return filepath.Join(*resultsDir, name) }

	info, err := os.ReadFile(res("machine.txt"))
	if err != nil {
		return fmt.Errorf("no measurements yet (run without -render-only): %w", err)
	}
	p("# Benchmarks\n\n")
	p("Every figure below comes from one run of one command on the local services,\n")
	p("measured side by side (each contender against its baseline in the same run,\n")
	p("in a rotating order) and reported as medians of repeated runs:\n\n")
	p("```sh\ncd bench && go run ./report -mysql 'root@tcp(127.0.0.1:3306)/test' -redis 127.0.0.1:6379\n```\n\n")
	p("Raw outputs and JSON samples are in [`bench/results/`](bench/results/); `go run ./report -render-only`\n")
	p("rebuilds this page from them. The machine:\n\n```\n%s```\n\n", info)
	p("The command waits until the 1-minute load average is below 1 before it\n")
	p("measures; under each heading below is the load average at the start and\n")
	p("end of the measurements behind it (the benchmark itself, MariaDB and Redis\n")
	p("load the machine while they run).\n\n")
	p("The database and Redis run on the same two cores as the benchmark, so a\n")
	p("client that spends less CPU leaves more to the servers: allocations and\n")
	p("CPU per entry matter here more than on a machine with spare cores.\n\n")
	p("![throughput](bench/results/throughput.svg)\n\n")

	if err := renderWithTx(p, res("withtx.txt")); err != nil {
		return err
	}
	if err := renderStrategies(p, res("strategies.txt")); err != nil {
		return err
	}
	drain, err := results.Read(res("streamdrain.json"))
	if err != nil {
		return err
	}
	renderDrain(p, drain)
	pipe, err := results.Read(res("pipeline.json"))
	if err != nil {
		return err
	}
	prepared, err := results.Read(res("pipeline-prepared.json"))
	if err != nil {
		return err
	}
	renderPipeline(p, pipe, prepared)
	renderBatchHandlers(p, pipe)
	scale, err := renderScaling(p, res, pipe)
	if err != nil {
		return err
	}
	if err := os.WriteFile(res("throughput.svg"), []byte(throughputChart(drain, pipe)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(res("scaling.svg"), []byte(scalingChart(scale)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(*outFile, []byte(b.String()), 0o644)
}

type printer func(format string, args ...any)

func renderWithTx(p printer, path string) error {
	lines, err := parseBench(path)
	if err != nil {
		return err
	}
	p("## WithTx against hand-written database/sql\n\n")
	p("One single-row `UPDATE` per transaction on MariaDB. The `pair` benchmark runs\n")
	p("one transaction of each per iteration, alternating which goes first, and\n")
	p("reports each side's median; the table gives the median of those over the runs.\n")
	p("safesync records its metrics. Allocations come from the separate benchmarks.\n\n")
	p("| DSN | database/sql µs/tx | safesync µs/tx | ratio | allocs/tx database/sql → safesync |\n|---|---:|---:|---:|---:|\n")
	for _, mode := range []struct{ name, label string }{{"prepared", "default (server-side prepared statements)"}, {"interpolateParams", "`interpolateParams=true`"}} {
		base, _ := medianOf(lines, "BenchmarkWithTx/"+mode.name+"/pair", "database_sql-ns/tx")
		ours, _ := medianOf(lines, "BenchmarkWithTx/"+mode.name+"/pair", "safesync-ns/tx")
		ratio, _ := medianOf(lines, "BenchmarkWithTx/"+mode.name+"/pair", "ratio")
		ab, _ := medianOf(lines, "BenchmarkWithTx/"+mode.name+"/database_sql", "allocs/op")
		ao, _ := medianOf(lines, "BenchmarkWithTx/"+mode.name+"/safesync", "allocs/op")
		p("| %s | %.1f | %.1f | **%.3f** | %.0f → %.0f |\n", mode.label, base/1000, ours/1000, ratio, ab, ao)
	}
	p("\nTarget: ratio ≤ 1.05.\n\n")
	return nil
}

func renderStrategies(p printer, path string) error {
	lines, err := parseBench(path)
	if err != nil {
		return err
	}
	p("## Concurrency strategies under contention\n\n")
	p("8 workers increment counters on one hot row and spread over 64 rows; every\n")
	p("run checks that the counters add up to the increments made.\n\n")
	p("| strategy | rows | ops/s | p50 ms | p99 ms | retries/op |\n|---|---:|---:|---:|---:|---:|\n")
	for _, rows := range []string{"1", "64"} {
		for _, s := range []string{"atomic", "rowlock", "advisory", "occ"} {
			name := "BenchmarkStrategies/rows=" + rows + "/" + s
			ops, ok := medianOf(lines, name, "ops/s")
			if !ok {
				continue
			}
			p50, _ := medianOf(lines, name, "p50-ms")
			p99, _ := medianOf(lines, name, "p99-ms")
			r, _ := medianOf(lines, name, "retries/op")
			p("| %s | %s | %.0f | %.2f | %.2f | %.3f |\n", s, rows, ops, p50, p99, r)
		}
	}
	p("\n")
	return nil
}

func renderDrain(p printer, r *results.Run) {
	const hand, wm = "hand-written rueidis loop", "watermill-redisstream"
	p("## Draining a stream\n\n")
	p("%s entries pre-filled in the original's wire format, JSON-decoded, no-op\n", r.Params["entries"])
	p("handler, %s repetitions (method: [bench/README.md](bench/README.md)).\n\n", r.Params["reps"])
	p("| contender | median ms | entries/s | allocs/entry | B/entry | CPU µs/entry | CPU vs hand-written loop | vs hand-written loop | vs watermill |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	h, _ := r.Median(hand)
	w, hasW := r.Median(wm)
	handCPU := r.MedianOf(hand, results.SampleCPU)
	var loads []float64
	for _, c := range []string{hand, "safesync Run", "safesync Run, Concurrency 4", "safesync RunBatch", hand + pipelinedSuffix, "safesync Run" + pipelinedSuffix, wm} {
		s, ok := r.Median(c)
		if !ok {
			continue
		}
		for _, x := range r.Of(c) {
			loads = append(loads, x.Load)
		}
		vsW := ""
		if hasW {
			vsW = fmt.Sprintf("%.1f×", w.Seconds/s.Seconds)
		}
		cpu := r.MedianOf(c, results.SampleCPU)
		p("| %s | %.0f | %.0f | %.1f | %.0f | %.2f | %.2f× (%.2f×) | %.2f× (%.2f×) | %s |\n", c, s.Seconds*1000, s.Rate(), s.Allocs, s.Bytes,
			cpu, cpu/handCPU, r.PairedRatioOf(hand, c, results.SampleCPU), h.Seconds/s.Seconds, r.PairedRatio(hand, c), vsW)
	}
	p("\nIn parentheses: the median of per-repetition ratios. CPU is the benchmark\n")
	p("process's user + system time over each drain (Redis is another process),\n")
	p("per entry; the hand-written loop is the raw rueidis loop (`XREADGROUP COUNT\n")
	p("100`, `json.Unmarshal` of each entry, one `XACK` per read). Targets: `Run` ≥ 0.9×\n")
	p("the hand-written loop, CPU per entry ≤ 1.1× its, and ≥ 10× watermill-redisstream.\n")
	if len(loads) > 0 && slices.Max(loads) > 0 {
		p("1-minute load average after the drains: %.2f to %.2f.\n", slices.Min(loads), slices.Max(loads))
	}
	p("\n")
	if pr, ok := r.Median("safesync Run" + pipelinedSuffix); ok {
		if ph, ok := r.Median(hand + pipelinedSuffix); ok {
			cpu := r.MedianOf("safesync Run"+pipelinedSuffix, results.SampleCPU) / r.MedianOf(hand+pipelinedSuffix, results.SampleCPU)
			p("**Pipelined connections.** A rueidis connection starts in a synchronous\n")
			p("mode and switches, for good, to pipelining through background goroutines\n")
			p("once two of its commands overlap or one goes out under a ctx that can be\n")
			p("cancelled and has no deadline. A drain of a few seconds keeps the\n")
			p("synchronous mode; a long-running consumer does not (its name's lease is\n")
			p("renewed every second and its reclaim scans run beside its reads), nor does\n")
			p("any process whose client serves other goroutines. In that mode, on both\n")
			p("sides: `Run` drains at **%.2f×** the hand-written loop (%.2f×), with\n", ph.Seconds/pr.Seconds, r.PairedRatio(hand+pipelinedSuffix, "safesync Run"+pipelinedSuffix))
			p("**%.2f×** its CPU per entry.\n\n", cpu)
		}
	}
}

// pipelinedSuffix names the drains on a connection in rueidis' pipelined
// mode.
const pipelinedSuffix = ", pipelined connection"

func renderPipeline(p printer, r, prepared *results.Run) {
	p("## Stream → MariaDB pipelines\n\n")
	p("Every entry is one `UPDATE` in a transaction, then acknowledged; %s entries,\n", r.Params["entries"])
	p("%s transactions in flight for every contender, %s repetitions, DSN with\n", r.Params["concurrency"], r.Params["reps"])
	p("`interpolateParams=true`. The hand-written loops are what a team would write\n")
	p("without safesync: `XREADGROUP` → `BEGIN`/`UPDATE`/`COMMIT` → `XACK`.\n\n")
	table := func(r *results.Run) {
		p("| contender | median s | entries/s | allocs/entry | B/entry |\n|---|---:|---:|---:|---:|\n")
		for _, c := range pipelineContenders {
			if s, ok := r.Median(c); ok {
				p("| %s | %.2f | %.0f | %.1f | %.0f |\n", c, s.Seconds, s.Rate(), s.Allocs, s.Bytes)
			}
		}
	}
	table(r)
	perEntry := r.Ratio("hand-written loop", "pipeline")
	batch := r.Ratio("pipeline", "pipeline Batch(100)")
	handBatch := r.Ratio("hand-written loop", "hand-written loop, batches of 100")
	batchVsHand := r.Ratio("hand-written loop, batches of 100", "pipeline Batch(100)")
	oncePer := 1 - r.Ratio("pipeline", "pipeline + Once")
	onceBatch := 1 - r.Ratio("pipeline Batch(100)", "pipeline Batch(100) + Once")
	p("\n| measure | figure | target |\n|---|---:|---|\n")
	p("| pipeline / hand-written loop (throughput) | **%.2f×** (per repetition: %.2f×) | ≥ 0.9× |\n", perEntry, r.PairedRatio("hand-written loop", "pipeline"))
	p("| `Batch(100)` / per-entry pipeline | **%.2f×** | ≥ 5× |\n", batch)
	p("| hand-written batches of 100 / hand-written per entry | %.2f× | (what the machine allows) |\n", handBatch)
	p("| `Batch(100)` / hand-written batches of 100 | %.2f× | |\n", batchVsHand)
	p("| cost of `Once`, per entry | **%.0f%%** | ≤ 15%% |\n", oncePer*100)
	p("| cost of `Once`, batches of 100 | **%.0f%%** | ≤ 15%% |\n\n", onceBatch*100)
	handBatchVsPipeline := r.Ratio("pipeline", "hand-written loop, batches of 100")
	p("Batching gains the pipeline %.2f× and the hand-written loop %.2f×; the\n", batch, handBatch)
	p("batched pipeline runs at %.2f× the hand-written batches. The per-entry\n", batchVsHand)
	p("pipeline is the denominator of the first ratio, and it is %.2f× the\n", perEntry)
	p("hand-written per-entry loop (its acknowledgements are pipelined), so even\n")
	p("the hand-written batches reach only %.2f× the per-entry pipeline. On two\n", handBatchVsPipeline)
	p("cores shared with the client and Redis, MariaDB's CPU for the `UPDATE`\n")
	p("statements bounds a batch, whoever sends it.\n")
	p("`Once` adds a second row write to every transaction: per entry, one more\n")
	p("statement in a transaction of one (BEGIN, UPDATE, INSERT, COMMIT instead of\n")
	p("BEGIN, UPDATE, COMMIT), which is what it costs. In batches the pipeline\n")
	p("writes all records of a transaction with one multi-row `INSERT`.\n\n")
	p("With the driver's default server-side prepared statements (a prepare, an\n")
	p("execute and a close per statement), %s entries:\n\n", prepared.Params["entries"])
	table(prepared)
	p("\n")
}

var pipelineContenders = []string{
	"hand-written loop", "hand-written loop, batches of 100",
	"pipeline", "pipeline + Once", "pipeline Batch(100)", "pipeline Batch(100) + Once",
}

// scaling holds the points of the scaling chart.
type scaling struct {
	byEntries     map[string][][2]float64 // contender -> (entries, entries/s)
	byConcurrency map[string][][2]float64 // contender -> (concurrency, entries/s)
}

func renderScaling(p printer, res func(string) string, big *results.Run) (scaling, error) {
	sc := scaling{byEntries: map[string][][2]float64{}, byConcurrency: map[string][][2]float64{}}
	p("## How cost grows\n\n")
	p("![scaling](bench/results/scaling.svg)\n\n")
	p("### From 1,000 to 100,000 entries\n\n")
	p("Same pipelines, 4 transactions in flight, `interpolateParams=true`.\n\n")
	p("| entries | hand-written loop | pipeline | pipeline Batch(100) |\n|---:|---:|---:|---:|\n")
	runs := map[string]*results.Run{}
	for _, n := range []string{"1000", "10000"} {
		r, err := results.Read(res("scale-n" + n + ".json"))
		if err == nil {
			runs[n] = r
		}
	}
	runs[big.Params["entries"]] = big
	for _, n := range []string{"1000", "10000", "100000"} {
		r, ok := runs[n]
		if !ok {
			continue
		}
		row := "| " + n
		for _, c := range []string{"hand-written loop", "pipeline", "pipeline Batch(100)"} {
			s, ok := r.Median(c)
			if !ok {
				row += " | –"
				continue
			}
			row += fmt.Sprintf(" | %.0f/s (%.1f µs/entry)", s.Rate(), s.Seconds/float64(s.Entries)*1e6)
			x, _ := parseFloat(n)
			sc.byEntries[c] = append(sc.byEntries[c], [2]float64{x, s.Rate()})
		}
		p("%s |\n", row)
	}
	if cost := entryCosts(runs, "pipeline"); len(cost) > 0 {
		p("\nPer-entry cost of the pipeline, µs: %s; of `Batch(100)`: %s.", strings.Join(cost, " → "), strings.Join(entryCosts(runs, "pipeline Batch(100)"), " → "))
		p("\n")
		p("\nFrom 10,000 to 100,000 entries the cost per entry changes by at most %.0f%%:\n", 100*maxChange(runs, "10000", "100000", "pipeline", "pipeline Batch(100)"))
		p("nothing in the pipeline grows with the backlog. At 1,000 entries start-up\n")
		p("(group creation, the first reads, the statements' preparation) weighs on a\n")
		p("batched run of 10 transactions.\n\n")
	}
	p("### From 1 to 16 transactions in flight\n\n")
	p("| in flight | pipeline | pipeline Batch(100) |\n|---:|---:|---:|\n")
	for _, w := range []string{"1", "2", "4", "8", "16"} {
		r, err := results.Read(res("scale-c" + w + ".json"))
		if err != nil {
			continue
		}
		row := "| " + w
		for _, c := range []string{"pipeline", "pipeline Batch(100)"} {
			s, ok := r.Median(c)
			if !ok {
				row += " | –"
				continue
			}
			row += fmt.Sprintf(" | %.0f/s", s.Rate())
			x, _ := parseFloat(w)
			sc.byConcurrency[c] = append(sc.byConcurrency[c], [2]float64{x, s.Rate()})
		}
		p("%s |\n", row)
	}
	for _, c := range []string{"pipeline", "pipeline Batch(100)"} {
		pts := sc.byConcurrency[c]
		if len(pts) < 2 {
			continue
		}
		best := pts[0]
		for _, pt := range pts {
			if pt[1] > best[1] {
				best = pt
			}
		}
		last := pts[len(pts)-1]
		p("\n- %s: fastest with %.0f in flight, %.2f× one in flight", c, best[0], best[1]/pts[0][1])
		if last != best {
			p("; %.0f in flight gives %.2f×", last[0], last[1]/pts[0][1])
		}
		p(".")
	}
	p("\n\nPer-entry transactions gain from concurrency while the server groups their\n")
	p("commits (one log flush for several transactions); batches already give the\n")
	p("server full statements, so they gain less, and past their peak more in\n")
	p("flight only queues.\n")
	return sc, nil
}

// entryCosts returns the median µs per entry of contender c in runs, for
// 1,000, 10,000 and 100,000 entries, those present.
func entryCosts(runs map[string]*results.Run, c string) []string {
	var out []string
	for _, n := range []string{"1000", "10000", "100000"} {
		r, ok := runs[n]
		if !ok {
			continue
		}
		if s, ok := r.Median(c); ok {
			out = append(out, fmt.Sprintf("%.0f (%s)", s.Seconds/float64(s.Entries)*1e6, n))
		}
	}
	return out
}

// maxChange returns the largest relative change, over contenders cs, of
// the time per entry from the run of a entries to the run of b entries.
func maxChange(runs map[string]*results.Run, a, b string, cs ...string) float64 {
	worst := 0.0
	for _, c := range cs {
		ra, okA := runs[a]
		rb, okB := runs[b]
		if !okA || !okB {
			continue
		}
		sa, okA := ra.Median(c)
		sb, okB := rb.Median(c)
		if !okA || !okB {
			continue
		}
		x, y := sa.Seconds/float64(sa.Entries), sb.Seconds/float64(sb.Entries)
		worst = math.Max(worst, math.Abs(y-x)/x)
	}
	return worst
}

func parseFloat(s string) (float64, error) {
	var f float64
	_, err := fmt.Sscan(s, &f)
	return f, err
}
