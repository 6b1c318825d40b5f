package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// t0 is the embedded server's clock when the scenario starts: entry ids
// start at 1700000000000-0.
var t0 = time.UnixMilli(1700000000000).UTC()

// now is the clock of the commands: two minutes after t0.
var now = t0.Add(2 * time.Minute)

// scenario is an embedded Redis holding:
//
//   - orders: five entries; group workers has delivered four (w1 three at
//     t0, one acknowledged; w2 one at t0+90s), group audit none;
//     orders:dead holds four dead letters written as a consumer writes
//     them, one a replayed entry that failed again;
//   - payments, partitioned in three: two entries each, group workers has
//     delivered one of each to w1; partition 1 has a dead letter;
//   - notes: a stream without groups.
type scenario struct {
	t      *testing.T
	srv    *miniredis.Miniredis
	client rueidis.Client
	dead   []string // ids of orders:dead
}

func newScenario(t *testing.T) *scenario {
	srv := miniredis.RunT(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	s := &scenario{t: t, srv: srv, client: client}
	srv.SetTime(t0)

	var orders []string
	for i := range 5 {
		orders = append(orders, s.add("orders", "data", `{"order_id":`+strconv.Itoa(101+i)+`,"currency":"EUR"}`))
	}
	s.do("XGROUP", "CREATE", "orders", "workers", "0")
	s.do("XGROUP", "CREATE", "orders", "audit", "0")
	s.do("XREADGROUP", "GROUP", "workers", "w1", "COUNT", "3", "STREAMS", "orders", ">")
	s.do("XACK", "orders", "workers", orders[0])
	srv.SetTime(t0.Add(90 * time.Second))
	s.do("XREADGROUP", "GROUP", "workers", "w2", "COUNT", "1", "STREAMS", "orders", ">")

	first, last := t0.Add(-10*time.Minute), t0.Add(-time.Minute)
	for i, d := range []struct {
		reason, group, err, data string
		failures                 int
		origin                   bool
	}{
		{safesync.DeadLetterHandler, "workers", `order 95: unknown currency "XYZ"`, `{"order_id":95,"currency":"XYZ","lines":[{"sku":"A-1","qty":2}]}`, 1, false},
		{safesync.DeadLetterDecode, "workers", "json: cannot unmarshal string into Go struct field Order.order_id of type int", `{"order_id":"96"}`, 1, false},
		{safesync.DeadLetterMaxDeliveries, "audit", "Error 1205: Lock wait timeout exceeded; try restarting transaction", `{"order_id":97,"currency":"EUR"}`, 10, false},
		{safesync.DeadLetterHandler, "workers", `order 98: unknown currency "ABC"`, `{"order_id":98,"currency":"ABC"}`, 1, true},
	} {
		srv.SetTime(t0.Add(time.Duration(i*10) * time.Second))
		fields := []string{
			safesync.DeadLetterFieldStream, "orders",
			safesync.DeadLetterFieldGroup, d.group,
			safesync.DeadLetterFieldID, "1699999000000-" + strconv.Itoa(i),
			safesync.DeadLetterFieldReason, d.reason,
			safesync.DeadLetterFieldDeliveries, strconv.Itoa(d.failures + 1),
			safesync.DeadLetterFieldError, d.err,
			safesync.DeadLetterFieldConsumer, "w1",
			safesync.DeadLetterFieldFailures, strconv.Itoa(d.failures),
			safesync.DeadLetterFieldFirstFail, first.Format(safesync.DeadLetterTimeFormat),
			safesync.DeadLetterFieldLastFail, last.Format(safesync.DeadLetterTimeFormat),
			"data", d.data,
		}
		if d.origin {
			fields = append(fields, safesync.OriginFieldStream, "orders", safesync.OriginFieldID, "1699998000000-0")
		}
		s.dead = append(s.dead, s.add("orders:dead", fields...))
	}

	srv.SetTime(t0)
	p, err := safesync.NewPartitions("payments", 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Len() {
		s.add(p.Stream(i), "data", `{"payment_id":`+strconv.Itoa(2*i)+`}`)
		s.add(p.Stream(i), "data", `{"payment_id":`+strconv.Itoa(2*i+1)+`}`)
		s.do("XGROUP", "CREATE", p.Stream(i), "workers", "0")
		s.do("XREADGROUP", "GROUP", "workers", "w1", "COUNT", "1", "STREAMS", p.Stream(i), ">")
	}
	s.add(p.Stream(1)+safesync.DeadLetterSuffix,
		safesync.DeadLetterFieldStream, p.Stream(1), safesync.DeadLetterFieldGroup, "workers",
		safesync.DeadLetterFieldID, "1699999500000-0", safesync.DeadLetterFieldReason, safesync.DeadLetterHandler,
		safesync.DeadLetterFieldDeliveries, "1", safesync.DeadLetterFieldError, "card declined",
		"data", `{"payment_id":99}`)
	s.add("notes", "text", "hello")

	srv.SetTime(now)
	return s
}

func (s *scenario) do(args ...string) rueidis.RedisResult {
	s.t.Helper()
	r := s.client.Do(context.Background(), s.client.B().Arbitrary(args...).Build())
	if err := r.Error(); err != nil {
		s.t.Fatalf("%v: %v", args, err)
	}
	return r
}

func (s *scenario) add(stream string, fields ...string) string {
	s.t.Helper()
	id, err := s.do(append([]string{"XADD", stream, "*"}, fields...)...).ToString()
	if err != nil {
		s.t.Fatal(err)
	}
	return id
}

// run runs one command line against the scenario and returns its
// transcript: the command, its output, its errors and its exit code.
func (s *scenario) run(line string, env map[string]string) string {
	var stdout, stderr bytes.Buffer
	a := &app{
		stdout: &stdout, stderr: &stderr, now: func() time.Time { return now }, connect: connect,
		getenv: func(k string) string {
			if v, ok := env[k]; ok {
				return v
			}
			if k == envRedisAddr {
				return s.srv.Addr()
			}
			return ""
		},
	}
	code := a.run(context.Background(), splitArgs(line))
	var b strings.Builder
	b.WriteString("$ safesync " + line + "\n")
	b.WriteString(stdout.String())
	if stderr.Len() > 0 {
		b.WriteString("[stderr]\n" + stderr.String())
	}
	b.WriteString("[exit " + strconv.Itoa(code) + "]\n")
	return strings.ReplaceAll(b.String(), s.srv.Addr(), "REDIS")
}

// splitArgs splits a command line on spaces, keeping 'quoted words' whole.
func splitArgs(line string) []string {
	var out []string
	for i, part := range strings.Split(line, "'") {
		if i%2 == 1 {
			out = append(out, part)
			continue
		}
		out = append(out, strings.Fields(part)...)
	}
	return out
}

// golden compares got with testdata/name.golden, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to write it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (rerun with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// The sessions: each runs its command lines in order on a fresh scenario;
// its transcript is the golden file of the same name.
var sessions = []struct {
	name  string
	lines []string
}{
	{"help", []string{"-h", "help dead list", "dead", "streams -h", "pending -h", "dead list -h", "dead show -h", "dead replay -h", "dead purge -h"}},
	{"streams", []string{"streams", "streams --match 'pay*'", "streams --stream orders", "streams --stream payments", "--redis REDIS streams --match nothing"}},
	{"streams_json", []string{"streams --json", "streams --stream orders --json"}},
	{"pending", []string{"pending --stream orders --group workers", "pending --stream orders --group workers --limit 1 --json",
		"pending --stream orders --group workers --limit 1 --after 1700000000000-1@orders", "pending --stream orders --group workers --consumer w2",
		"pending --stream payments --group workers"}},
	{"dead_list", []string{"dead list --stream orders", "dead list --stream orders --reason handler --since 100s", "dead list --stream orders --limit 2",
		"dead list --stream orders --error 'lock wait' --json", "dead list --stream orders --group audit --until 2023-11-14T22:13:45Z",
		"dead list --stream payments", "dead list --stream orders:dead --reason none"}},
	{"dead_show", []string{"dead show --stream orders --id DEAD0", "dead show --stream orders --id DEAD3", "dead show --stream orders --id DEAD0 --json"}},
	{"dead_replay", []string{"dead replay --stream orders", "dead replay --stream orders --all --dry-run", "dead replay --stream orders --reason handler",
		"dead list --stream orders", "dead replay --stream orders --reason handler", "dead replay --stream orders --id DEAD1 --json",
		"dead replay --stream payments --all", "streams"}},
	{"dead_purge", []string{"dead purge --stream orders --all", "dead purge --stream orders --reason decode --dry-run",
		"dead purge --stream orders --reason decode --yes", "dead purge --stream orders --reason decode --yes", "dead purge --stream orders --all --yes --json",
		"dead list --stream orders"}},
	{"errors", []string{"frobnicate", "streams --bogus", "streams extra", "streams --stream nothing", "pending --stream orders",
		"pending --stream orders --group nobody", "dead show --stream orders", "dead show --stream orders --id 1-0", "dead list",
		"dead list --stream orders --since yesterday", "dead list --stream orders --after garbage", "--redis 127.0.0.1:1 streams",
		"dead replay --stream orders --all --rate -1"}},
	{"serve", []string{"serve -h", "serve --listen nowhere", "serve --listen 0.0.0.0:0", "serve --listen '[::]:8080'",
		"serve --listen 127.0.0.1:0 --match '['", "serve --listen 127.0.0.1:0 --sample-interval 1h"}},
}

func TestSessionsMatchTheirGoldenTranscripts(t *testing.T) {
	for _, sess := range sessions {
		t.Run(sess.name, func(t *testing.T) {
			s := newScenario(t)
			var out strings.Builder
			for i, line := range sess.lines {
				for j, id := range s.dead {
					line = strings.ReplaceAll(line, "DEAD"+strconv.Itoa(j), id)
				}
				line = strings.ReplaceAll(line, "REDIS", s.srv.Addr())
				if i > 0 {
					out.WriteString("\n")
				}
				out.WriteString(s.run(line, nil))
			}
			golden(t, sess.name, out.String())
		})
	}
}

func TestRedisAddressesComeFromFlagsThenTheEnvironment(t *testing.T) {
	a := &app{getenv: func(k string) string {
		if k == envRedisAddr {
			return "a:1, b:2"
		}
		return ""
	}}
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{nil, "a:1,b:2"},
		{[]string{"c:3", "d:4,e:5"}, "c:3,d:4,e:5"},
	} {
		if got := strings.Join(a.redisAddrs(globals{redis: tc.flags}), ","); got != tc.want {
			t.Errorf("flags %v: %s, want %s", tc.flags, got, tc.want)
		}
	}
	a.getenv = func(string) string { return "" }
	if got := a.redisAddrs(globals{}); len(got) != 1 || got[0] != defaultRedisAddr {
		t.Errorf("no flag, no env: %v", got)
	}
}

func TestDurationsReadLikeAPerson(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 850 * time.Millisecond: "850ms", 12 * time.Second: "12s", 5*time.Minute + 30*time.Second: "5m30s",
		time.Hour: "1h", 3*time.Hour + 5*time.Minute: "3h5m", 100 * time.Hour: "4d4h",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestErrorsMapToTheirExitCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{usagef("bad"), exitUsage},
		{fmt.Errorf("x: %w", ops.ErrNoSelection), exitUsage},
		{fmt.Errorf("x: %w", ops.ErrStreamNotFound), exitNotFound},
		{fmt.Errorf("x: %w", ops.ErrGroupNotFound), exitNotFound},
		{fmt.Errorf("x: %w", ops.ErrDeadLetterNotFound), exitNotFound},
		{fmt.Errorf("x: %w", context.Canceled), exitInterrupted},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), exitFailed},
		{&unreachableError{addrs: []string{"a:1"}, err: errors.New("refused")}, exitUnreachable},
		{&net.OpError{Op: "dial", Err: errors.New("refused")}, exitUnreachable},
		{errors.New("WRONGTYPE"), exitFailed},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
