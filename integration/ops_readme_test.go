package integration

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// TestOperatingSessionForREADME records the session shown in the README's
// Operating section into the file named by SAFESYNC_README_SESSION, and
// skips without it. It uses the stream "orders" (and "orders:dead") of the
// run's Redis, refuses to run if either exists, and deletes both at the end.
func TestOperatingSessionForREADME(t *testing.T) {
	file := os.Getenv("SAFESYNC_README_SESSION")
	if file == "" {
		t.Skip("set SAFESYNC_README_SESSION=FILE to record the README's session of the safesync command")
	}
	client := openRedis(t)
	stream := "orders"
	n, err := client.Do(context.Background(), client.B().Exists().Key(stream, stream+safesync.DeadLetterSuffix).Build()).AsInt64()
	if err != nil || n != 0 {
		t.Fatalf("%q or its dead letters exist already (%v); the session needs them to itself", stream, err)
	}
	r := newReplayRig(t, client, []string{redisAddr(t)}, ops.Stream(stream))
	cfg := r.config("")
	cfg.Stream = stream
	cfg.Consumer = "worker-1"
	r.run(func(ctx context.Context) error { return r.pipeline().Run(ctx, client, cfg) })
	r.broken.Store(true)
	r.publish(12, r.publishOne)
	// An entry no fix can decode.
	if _, err := safesync.Publish(context.Background(), client, stream, map[string]string{"data": `{"id": 13, "kind": good}`}); err != nil {
		t.Fatal(err)
	}
	r.waitSettled()
	// A second group, whose consumer took three entries and stopped.
	ctx := context.Background()
	_ = client.Do(ctx, client.B().XgroupCreate().Key(stream).Group("audit").Id("0").Build()).Error()
	_ = client.Do(ctx, client.B().Xreadgroup().Group("audit", "audit-1").Count(3).Streams().Key(stream).Id(">").Build()).Error()
	bin := safesyncCommand(t)
	var transcript strings.Builder
	sh := func(line string) {
		args := splitLine(line)
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"SAFESYNC_REDIS_ADDR=" + redisAddr(t)}
		out, _ := cmd.CombinedOutput()
		transcript.WriteString("$ safesync " + line + "\n" + string(out) + "\n")
	}
	sh("streams --match 'orders*'")
	sh("streams --stream orders")
	sh("pending --stream orders --group audit")
	sh("dead list --stream orders")
	page, _ := r.ops.DeadLetters(ctx, ops.Stream(stream), ops.DeadLetterQuery{Filter: ops.Filter{Reason: "max_deliveries"}})
	sh("dead show --stream orders --id " + page.Entries[0].ID)
	r.broken.Store(false)
	sh("dead replay --stream orders --reason handler --dry-run")
	sh("dead replay --stream orders --reason handler")
	sh("dead replay --stream orders --reason max_deliveries")
	r.waitSettled()
	sh("dead replay --stream orders --reason handler")
	sh("dead purge --stream orders --all")
	sh("dead purge --stream orders --reason decode --yes")
	sh("streams --stream orders")
	r.checkApplied("good", "bad", "flaky")
	if err := os.WriteFile(file, []byte(transcript.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// splitLine splits a command line on spaces, keeping 'quoted words' whole.
func splitLine(line string) []string {
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
