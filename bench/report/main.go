// Command report regenerates every benchmark figure from one run on the
// local services and writes BENCHMARKS.md with its charts:
//
//	cd bench && go run ./report -mysql 'root@tcp(127.0.0.1:3306)/test' -redis 127.0.0.1:6379
//
// It runs, one after another so that none disturbs another: the WithTx
// overhead and strategy benchmarks (go test -bench in ../integration), the
// stream drain (./streamdrain), the stream → MySQL pipelines (./pipeline,
// with and without interpolateParams; the first also measures the batch
// handlers, beside the per-entry pipeline they are compared with), and the
// scaling runs (1,000 to
// 100,000 entries; 1 to 16 transactions in flight). Raw outputs and JSON go
// to results/; -render-only rebuilds BENCHMARKS.md and the charts from
// them without measuring again.
package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"
)

var (
	mysqlDSN   = flag.String("mysql", "root@tcp(127.0.0.1:3306)/test", "MySQL/MariaDB DSN (loopback)")
	redisAddr  = flag.String("redis", "127.0.0.1:6379", "Redis address (loopback)")
	resultsDir = flag.String("results", "results", "directory for raw results and charts")
	outFile    = flag.String("out", "../BENCHMARKS.md", "the report to write")
	renderOnly = flag.Bool("render-only", false, "do not measure; render from the existing results")
	quick      = flag.Bool("quick", false, "fewer entries and repetitions (for checking the tooling, not for figures)")
	quietBelow = flag.Float64("quiet-below", 1, "before measuring, wait (up to 10 minutes) until the 1-minute load average is below this; 0 does not wait")
)

// step is one measurement: a command and the file its output goes to.
type step struct {
	name string
	dir  string // relative to the bench module
	args []string
	out  string // raw output file in results/
}

func main() {
	flag.Parse()
	if err := os.MkdirAll(*resultsDir, 0o755); err != nil {
		log.Fatal(err)
	}
	if !*renderOnly {
		if err := measure(); err != nil {
			log.Fatal(err)
		}
	}
	if err := render(); err != nil {
		log.Fatal(err)
	}
}

func interpolated(dsn string) string {
	if strings.Contains(dsn, "?") {
		return dsn + "&interpolateParams=true"
	}
	return dsn + "?interpolateParams=true"
}

func steps() []step {
	n, reps, drainReps, txCount, stratCount, scaleN := "100000", "3", "5", "10", "5", "20000"
	if *quick {
		n, reps, drainReps, txCount, stratCount, scaleN = "5000", "1", "1", "1", "1", "2000"
	}
	ip := interpolated(*mysqlDSN)
	res := func(name string) string { return filepath.Join(*resultsDir, name) }
	s := []step{
		{"WithTx overhead", "..", []string{"go", "test", "-run", "^$", "-bench", "BenchmarkWithTx", "-benchtime", "2000x", "-count", txCount, "./integration/"}, "withtx.txt"},
		{"strategies under contention", "..", []string{"go", "test", "-run", "^$", "-bench", "BenchmarkStrategies", "-benchtime", "2000x", "-count", stratCount, "./integration/"}, "strategies.txt"},
		{"stream drain", ".", []string{"go", "run", "./streamdrain", "-redis", *redisAddr, "-n", n, "-reps", drainReps, "-json", res("streamdrain.json")}, "streamdrain.txt"},
		{"pipeline, interpolateParams", ".", []string{"go", "run", "./pipeline", "-redis", *redisAddr, "-mysql", ip, "-n", n, "-reps", reps, "-json", res("pipeline.json")}, "pipeline.txt"},
		{"pipeline, server-side prepared statements", ".", []string{"go", "run", "./pipeline", "-redis", *redisAddr, "-mysql", *mysqlDSN, "-n", scaleN, "-reps", reps, "-json", res("pipeline-prepared.json")}, "pipeline-prepared.txt"},
	}
	scaleOnly := `^(hand-written loop|pipeline|pipeline Batch\(100\))$`
	for _, entries := range []string{"1000", "10000"} {
		if *quick && entries == "10000" {
			continue
		}
		s = append(s, step{"scaling: " + entries + " entries", ".", []string{"go", "run", "./pipeline", "-redis", *redisAddr, "-mysql", ip, "-n", entries, "-reps", reps, "-only", scaleOnly, "-json", res("scale-n" + entries + ".json")}, "scale-n" + entries + ".txt"})
	}
	for _, w := range []string{"1", "2", "4", "8", "16"} {
		s = append(s, step{"scaling: concurrency " + w, ".", []string{"go", "run", "./pipeline", "-redis", *redisAddr, "-mysql", ip, "-n", scaleN, "-reps", reps, "-concurrency", w, "-only", `^(pipeline|pipeline Batch\(100\))$`, "-json", res("scale-c" + w + ".json")}, "scale-c" + w + ".txt"})
	}
	return s
}

func measure() error {
	env := append(os.Environ(), "SAFESYNC_MYSQL_DSN="+*mysqlDSN, "SAFESYNC_REDIS_ADDR="+*redisAddr, "SAFESYNC_REQUIRE_SERVICES=1")
	info, err := machine()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*resultsDir, "machine.txt"), []byte(info), 0o644); err != nil {
		return err
	}
	if *quietBelow > 0 {
		waitQuiet(*quietBelow, 10*time.Minute)
	}
	loads := map[string]stepLoad{}
	for _, st := range steps() {
		start, startLoad := time.Now(), loadAverage()
		fmt.Fprintf(os.Stderr, "== %s: %s\n", st.name, strings.Join(st.args, " "))
		cmd := exec.Command(st.args[0], st.args[1:]...)
		cmd.Dir = st.dir
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w\n%s", st.name, err, out.String())
		}
		if err := os.WriteFile(filepath.Join(*resultsDir, st.out), out.Bytes(), 0o644); err != nil {
			return err
		}
		loads[st.out] = stepLoad{Start: startLoad, End: loadAverage()}
		if err := writeLoads(loads); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "   done in %v, load average %.2f → %.2f\n", time.Since(start).Round(time.Second), startLoad, loads[st.out].End)
	}
	return nil
}

// machine describes the machine and the servers' versions.
func machine() (string, error) {
	var b strings.Builder
	cpu := "unknown"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	fmt.Fprintf(&b, "cpu: %s\ncores: %d\ngo: %s %s/%s\n", cpu, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	db, err := sql.Open("mysql", *mysqlDSN)
	if err != nil {
		return "", err
	}
	defer db.Close()
	var version string
	if err := db.QueryRow("SELECT VERSION()").Scan(&version); err != nil {
		return "", fmt.Errorf("MySQL: %w", err)
	}
	fmt.Fprintf(&b, "mysql: %s\n", version)
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{*redisAddr}, DisableCache: true})
	if err != nil {
		return "", err
	}
	defer rdb.Close()
	infoText, err := rdb.Do(context.Background(), rdb.B().Info().Section("server").Build()).ToString()
	if err != nil {
		return "", fmt.Errorf("read the Redis server version: %w", err)
	}
	for _, line := range strings.Split(infoText, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			fmt.Fprintf(&b, "redis: %s\n", v)
		}
	}
	fmt.Fprintf(&b, "date: %s\n", time.Now().UTC().Format("2006-01-02"))
	return b.String(), nil
}

// benchLine is one line of go test -bench output.
type benchLine struct {
	name    string
	metrics map[string]float64
}

// parseBench reads go test -bench output into lines, name without the
// -GOMAXPROCS suffix.
func parseBench(path string) ([]benchLine, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []benchLine
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		bl := benchLine{name: name, metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				bl.metrics[f[i+1]] = v
			}
		}
		out = append(out, bl)
	}
	return out, nil
}

// medianOf returns the median of metric over the lines named name.
func medianOf(lines []benchLine, name, metric string) (float64, bool) {
	var v []float64
	for _, l := range lines {
		if l.name == name {
			if x, ok := l.metrics[metric]; ok {
				v = append(v, x)
			}
		}
	}
	if len(v) == 0 {
		return 0, false
	}
	slices.Sort(v)
	return v[len(v)/2], true
}

// waitQuiet waits until the 1-minute load average is below limit, or for
// at most max, saying so.
func waitQuiet(limit float64, max time.Duration) {
	deadline := time.Now().Add(max)
	for l := loadAverage(); l >= limit; l = loadAverage() {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "== the load average is still %.2f after %v; measuring anyway\n", l, max)
			return
		}
		fmt.Fprintf(os.Stderr, "== waiting for the load average (%.2f) to fall below %.2f\n", l, limit)
		time.Sleep(15 * time.Second)
	}
	fmt.Fprintf(os.Stderr, "== load average %.2f: measuring\n", loadAverage())
}
