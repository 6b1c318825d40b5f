package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// replayAllExactlyOnce is the main scenario, on any rig: dead-letter,
// fix, replay --all; replay again; replay the same dead letters again, as
// after an interruption between appending and removing.
func replayAllExactlyOnce(t *testing.T, r *replayRig) {
	r.broken.Store(true)
	r.publish(30, r.publishOne)
	dead := r.waitSettled()
	if got, want := reasons(dead), map[string]int{"handler": r.count("bad"), "max_deliveries": r.count("flaky")}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dead letters by reason = %v, want %v", got, want)
	}
	r.checkApplied("good")

	r.broken.Store(false) // the handler is fixed
	out := r.mustCLI("dead", "replay", "--stream", r.target.Name, "--all")
	if !strings.Contains(out, fmt.Sprintf("Replayed %d dead letters", len(dead))) {
		t.Fatalf("replay said:\n%s", out)
	}
	if left := r.waitSettled(); len(left) != 0 {
		t.Fatalf("%d dead letters after the replay", len(left))
	}
	r.checkApplied("good", "bad", "flaky")

	// Replaying again finds nothing to replay.
	if out := r.mustCLI("dead", "replay", "--stream", r.target.Name, "--all"); !strings.Contains(out, "nothing to replay") {
		t.Fatalf("second replay said:\n%s", out)
	}
	// The same dead letters replayed once more (a replay stopped between
	// its append and its removal leaves them so) apply nothing twice.
	r.restore(dead)
	r.mustCLI("dead", "replay", "--stream", r.target.Name, "--all")
	if left := r.waitSettled(); len(left) != 0 {
		t.Fatalf("%d dead letters after the third replay", len(left))
	}
	r.checkApplied("good", "bad", "flaky")
}

func TestReplayAllAppliesEveryDeadLetterExactlyOnce(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "ops")
	r := newReplayRig(t, client, []string{redisAddr(t)}, ops.Stream(stream))
	cfg := r.config("")
	cfg.Stream = stream
	r.run(func(ctx context.Context) error { return r.pipeline().Run(ctx, client, cfg) })
	replayAllExactlyOnce(t, r)
}

func TestReplayFiltersReplayOnlyWhatTheyMatchAndPurgeAsksForYes(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "ops")
	r := newReplayRig(t, client, []string{redisAddr(t)}, ops.Stream(stream))
	cfg := r.config("")
	cfg.Stream = stream
	r.run(func(ctx context.Context) error { return r.pipeline().Run(ctx, client, cfg) })
	r.broken.Store(true)
	r.publish(15, r.publishOne)
	for range 3 {
		if _, err := safesync.Publish(context.Background(), client, stream, map[string]string{"data": "not json"}); err != nil {
			t.Fatal(err)
		}
	}
	dead := r.waitSettled()
	if got := reasons(dead); got["decode"] != 3 || got["handler"] != r.count("bad") || got["max_deliveries"] != r.count("flaky") {
		t.Fatalf("dead letters by reason = %v", got)
	}
	r.broken.Store(false)

	r.mustCLI("dead", "replay", "--stream", stream, "--reason", "handler")
	r.waitSettled()
	r.checkApplied("good", "bad")
	r.mustCLI("dead", "replay", "--stream", stream, "--reason", "max_deliveries", "--since", "1h")
	left := r.waitSettled()
	r.checkApplied("good", "bad", "flaky")
	if got := reasons(left); len(got) != 1 || got["decode"] != 3 {
		t.Fatalf("left %v, want the 3 that cannot be decoded", got)
	}

	out, code := r.cli("dead", "purge", "--stream", stream, "--all")
	if code != 2 || !strings.Contains(out, "--yes") {
		t.Fatalf("purge without --yes: exit %d\n%s", code, out)
	}
	if n := len(r.waitSettled()); n != 3 {
		t.Fatalf("purge without --yes left %d dead letters, want 3", n)
	}
	r.mustCLI("dead", "purge", "--stream", stream, "--reason", "decode", "--dry-run")
	if n := len(r.waitSettled()); n != 3 {
		t.Fatalf("purge --dry-run left %d dead letters, want 3", n)
	}
	if out := r.mustCLI("dead", "purge", "--stream", stream, "--error", "CANNOT DECODE", "--yes"); !strings.Contains(out, "Deleted 3 dead letters") {
		t.Fatalf("purge --yes said:\n%s", out)
	}
	if n := len(r.waitSettled()); n != 0 {
		t.Fatalf("%d dead letters left after purge --yes", n)
	}
	r.checkApplied("good", "bad", "flaky")
}

// On Redis 7 the consumers' idle times, the lag and a key of another type
// are reported as the server sees them.
func TestInspectOnRealRedis(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "ops")
	ctx := context.Background()
	t.Cleanup(func() { _ = client.Do(ctx, client.B().Del().Key(stream, stream+":text").Build()).Error() })
	for range 3 {
		if _, err := safesync.Publish(ctx, client, stream, map[string]string{"data": "{}"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Do(ctx, client.B().XgroupCreate().Key(stream).Group("g").Id("0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := client.Do(ctx, client.B().Xreadgroup().Group("g", "c").Count(1).Streams().Key(stream).Id(">").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // so that the consumer has been idle a little
	o := ops.New(client, ops.Config{})
	info, err := o.Inspect(ctx, ops.Stream(stream))
	if err != nil {
		t.Fatal(err)
	}
	g := info.Groups[0]
	if g.Lag != 2 || g.Pending != 1 || len(g.Consumers) != 1 || g.Consumers[0].Idle <= 0 || g.Consumers[0].Pending != 1 {
		t.Fatalf("group = %+v", g)
	}
	if err := client.Do(ctx, client.B().Set().Key(stream+":text").Value("x").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Inspect(ctx, ops.Stream(stream+":text")); !errors.Is(err, ops.ErrWrongType) {
		t.Fatalf("Inspect of a string: %v, want ErrWrongType", err)
	}
}

func TestReplayOnTheClusterAcrossPartitions(t *testing.T) {
	c := openSharedCluster(t)
	client := clusterClient(t, c)
	p, err := safesync.NewPartitions(uniqueName(t, "ops"), 3)
	if err != nil {
		t.Fatal(err)
	}
	r := newReplayRig(t, client, c.Addrs(), ops.Partitioned(p))
	cfg := r.config("")
	r.run(func(ctx context.Context) error { return r.pipeline().RunPartitioned(ctx, client, p, cfg) })
	replayAllExactlyOnce(t, r)

	// safesync streams finds the partitions on every master and lists them
	// as one stream.
	var list []ops.StreamSummary
	if err := json.Unmarshal([]byte(r.mustCLI("streams", "--json", "--match", p.Name())), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != p.Name() || list[0].Partitions != 3 || list[0].Length < int64(len(r.orders)) || list[0].DeadLetters != 0 {
		t.Fatalf("streams = %+v", list)
	}
}

// noXdel passes every command on, except the XDELs of a replay's removal
// step, which it fails as if the replay had crashed before sending them.
type noXdel struct{ rueidis.Client }

func (c noXdel) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	if len(multi) > 0 && multi[0].Commands()[0] == "XDEL" {
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		return c.Client.DoMulti(cancelled, multi...)
	}
	return c.Client.DoMulti(ctx, multi...)
}

func TestAReplayInterruptedBetweenItsTwoStepsOnTheClusterAppliesNothingTwice(t *testing.T) {
	c := openSharedCluster(t)
	client := clusterClient(t, c)
	stream := "{" + uniqueName(t, "ops") + "}"
	dead := "{" + uniqueName(t, "opsdead") + "}"
	if safesync.KeySlot(stream) == safesync.KeySlot(dead) {
		t.Skip("the two names share a slot by chance")
	}
	r := newReplayRig(t, client, c.Addrs(), ops.Target{Name: stream, Streams: []string{stream}, DeadLetterStreams: []string{dead}})
	cfg := r.config(dead)
	cfg.Stream = stream
	r.run(func(ctx context.Context) error { return r.pipeline().Run(ctx, client, cfg) })
	r.broken.Store(true)
	r.publish(20, r.publishOne)
	deadLetters := r.waitSettled()
	r.broken.Store(false)

	// The replay appends every entry, then stops before removing any.
	var moved []ops.ReplayedEntry
	res, err := ops.New(noXdel{client}, ops.Config{}).Replay(context.Background(), r.target, ops.Filter{All: true},
		ops.ReplayOptions{Each: func(e ops.ReplayedEntry) { moved = append(moved, e) }})
	if err == nil || res.Replayed != 0 {
		t.Fatalf("interrupted replay = %+v, %v; want an error, nothing counted as done", res, err)
	}
	if left := r.waitSettled(); len(left) != len(deadLetters) {
		t.Fatalf("%d dead letters after the interruption, want all %d still there", len(left), len(deadLetters))
	}
	r.checkApplied("good", "bad", "flaky") // the appended entries were applied

	out := r.mustCLI("dead", "replay", "--stream", stream, "--dead-letter-stream", dead, "--all")
	if !strings.Contains(out, fmt.Sprintf("Replayed %d dead letters", len(deadLetters))) {
		t.Fatalf("replay said:\n%s", out)
	}
	if left := r.waitSettled(); len(left) != 0 {
		t.Fatalf("%d dead letters after the repeated replay", len(left))
	}
	r.checkApplied("good", "bad", "flaky")
	xs, err := client.Do(context.Background(), client.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	if want := len(r.orders) + 2*len(deadLetters); len(xs) != want {
		t.Fatalf("%d entries in the stream, want %d: the orders and each dead letter appended twice", len(xs), want)
	}
}
