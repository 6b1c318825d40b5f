package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// redisCLI runs redis-cli against the run's Redis and returns its output.
func redisCLI(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Skip("redis-cli is not installed")
	}
	host, port, err := net.SplitHostPort(redisAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

type interopOrder struct {
	OrderID int     `json:"order_id"`
	Amount  float64 `json:"amount"`
	Note    string  `json:"note"`
}

func interopConsumer(t *testing.T, client rueidis.Client, stream string) *safesync.Consumer[interopOrder] {
	t.Helper()
	t.Cleanup(func() {
		client.Do(context.Background(), client.B().Del().Key(stream, stream+safesync.DeadLetterSuffix).Build())
	})
	c, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: stream, Group: "workers", Consumer: "go", Block: 200 * time.Millisecond,
	}, safesync.JSON[interopOrder]())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An entry written by redis-cli, as the Python original writes it, decodes.
func TestStreamEntryFromRedisCLIDecodes(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "interop")
	id := redisCLI(t, "XADD", stream, "*", "data", `{"order_id": 1, "amount": 5}`)
	c := interopConsumer(t, client, stream)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != id || m.Value != (interopOrder{OrderID: 1, Amount: 5}) {
		t.Fatalf("read %s %+v, want %s {order_id 1, amount 5}", m.ID, m.Value, id)
	}
	if err := c.Ack(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// What Python's json.dumps writes decodes; its NaN is dead-lettered, not a
// crash.
func TestStreamEntriesFromPythonJSONDumpsDecode(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	script := `import json, sys
print(json.dumps({"order_id": 2, "amount": 5.5, "note": "Jos\u00e9 \U0001F600"}))
print(json.dumps({"order_id": 3, "amount": 1, "note": "caf\u00e9"}, ensure_ascii=False, separators=(",", ":")))
print(json.dumps({"order_id": 4, "amount": float("nan")}))`
	out, err := exec.Command(python, "-c", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	client := openRedis(t)
	stream := uniqueName(t, "interop")
	var ids []string
	for _, line := range lines {
		ids = append(ids, redisCLI(t, "XADD", stream, "*", "data", line))
	}
	c := interopConsumer(t, client, stream)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []interopOrder
	for len(got) < 2 {
		m, err := c.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.Value)
		if err := c.Ack(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	want := []interopOrder{{OrderID: 2, Amount: 5.5, Note: "José 😀"}, {OrderID: 3, Amount: 1, Note: "café"}}
	if got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	dead := safesynctest.DeadLetters(t, client, stream+safesync.DeadLetterSuffix)
	if len(dead) != 1 || dead[0].OriginalID != ids[2] || dead[0].Reason != safesync.DeadLetterDecode {
		t.Fatalf("dead letters = %+v, want the NaN entry %s with reason decode", dead, ids[2])
	}
}

// An entry we publish is one field, data, holding a JSON object, as
// redis-cli shows it.
func TestPublishedEntryIsOneDataFieldWithAJSONObject(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "interop")
	t.Cleanup(func() { client.Do(context.Background(), client.B().Del().Key(stream).Build()) })
	id, err := safesync.PublishJSON(context.Background(), client, stream, interopOrder{OrderID: 9, Amount: 2.5, Note: "x"})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(redisCLI(t, "--no-raw", "XRANGE", stream, "-", "+"), "\n")
	// 1) 1) "<id>"
	//    2) 1) "data"
	//       2) "{…}"
	if len(lines) != 3 || !strings.Contains(lines[0], id) || !strings.HasSuffix(lines[1], `1) "data"`) {
		t.Fatalf("XRANGE shows %q, want one entry with one field data", lines)
	}
	raw := lines[2][strings.Index(lines[2], `"`):]
	value, err := strconv.Unquote(raw)
	if err != nil {
		t.Fatalf("value %s: %v", raw, err)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(value), &obj); err != nil || obj["order_id"] != 9.0 {
		t.Fatalf("data = %s (%v), want a JSON object with order_id 9", value, err)
	}
}

// KeySlot agrees with CLUSTER KEYSLOT of a cluster-enabled redis-server
// started for the test on a loopback port.
func TestKeySlotAgreesWithRedisCluster(t *testing.T) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	cmd := exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
		"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--dir", dir, "--save", "", "--appendonly", "no")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	var client rueidis.Client
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A node without slots is not a usable cluster: talk to it as a
		// single server.
		client, err = rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{fmt.Sprintf("127.0.0.1:%d", port)},
			DisableCache: true, ForceSingleClient: true})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster-enabled redis-server on port %d did not answer: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer client.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	keys := []string{"orders", "orders:dead", "orders:{3}", "orders:{3}:dead", "{}", "{a}{b}", "a{}b{c}", "x{y", "x}y{z}"}
	for range 1000 {
		b := make([]byte, rng.IntN(24))
		for i := range b {
			b[i] = "ab{}:xyz0123456789"[rng.IntN(18)]
		}
		keys = append(keys, string(b))
	}
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = client.B().ClusterKeyslot().Key(k).Build()
	}
	for i, res := range client.DoMulti(context.Background(), cmds...) {
		want, err := res.AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		if got := safesync.KeySlot(keys[i]); int64(got) != want {
			t.Errorf("KeySlot(%q) = %d, CLUSTER KEYSLOT = %d", keys[i], got, want)
		}
	}
}
