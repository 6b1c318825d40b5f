package ops_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

func TestReplayMovesEntriesBackWithTheirOrigin(t *testing.T) {
	s, all := deadScenario(t, ops.Config{})
	var each []ops.ReplayedEntry
	res, err := s.ops.Replay(context.Background(), ops.Stream("orders"), ops.Filter{Reason: "handler"},
		ops.ReplayOptions{Each: func(e ops.ReplayedEntry) { each = append(each, e) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 3 || !reflect.DeepEqual(res.ByStream, map[string]int{"orders": 3}) || len(res.Skipped) != 0 {
		t.Fatalf("result = %+v", res)
	}
	back := s.entries("orders")
	if len(back) != 3 || len(each) != 3 {
		t.Fatalf("%d entries back, %d reported; want 3", len(back), len(each))
	}
	for i, x := range back {
		orig := "1699999999000-" + string(rune('0'+2*i))
		want := map[string]string{"data": `{"id":"` + orig + `"}`, safesync.OriginFieldStream: "orders", safesync.OriginFieldID: orig}
		if !reflect.DeepEqual(x.FieldValues, want) {
			t.Errorf("entry %d = %v, want %v", i, x.FieldValues, want)
		}
		e := each[i]
		if e.NewID != x.ID || e.DeadLetter.ID != all[2*i] || *e.Origin != (ops.Origin{Stream: "orders", ID: orig}) {
			t.Errorf("reported %+v", e)
		}
		// "orders" and "orders:dead" are in different slots: on a cluster
		// (the embedded server presents itself as one) the move is two steps.
		if wantAtomic := s.client.Mode() != rueidis.ClientModeCluster; e.Atomic != wantAtomic {
			t.Errorf("Atomic = %v, want %v", e.Atomic, wantAtomic)
		}
	}
	left, _ := s.ops.DeadLetters(context.Background(), ops.Stream("orders"), ops.DeadLetterQuery{})
	if got := ids(left.Entries); !reflect.DeepEqual(got, []string{all[1], all[3], all[5]}) {
		t.Fatalf("left %v", got)
	}
}

func TestReplayKeepsTheOriginOfAnEntryReplayedBefore(t *testing.T) {
	s := newServer(t, ops.Config{})
	s.addDead("orders:dead", deadLetter{src: "orders", group: "g", id: "1700000000500-0", reason: "handler", fields: map[string]string{
		"data": "{}", safesync.OriginFieldStream: "orders", safesync.OriginFieldID: "1600000000000-0",
	}})
	if _, err := s.ops.Replay(context.Background(), ops.Stream("orders"), ops.Filter{All: true}, ops.ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	back := s.entries("orders")
	if len(back) != 1 || back[0].FieldValues[safesync.OriginFieldID] != "1600000000000-0" || back[0].FieldValues[safesync.OriginFieldStream] != "orders" {
		t.Fatalf("replayed %v, want the first origin kept", back)
	}
}

func TestReplayWithStripOriginSendsTheEntrysOwnFieldsOnly(t *testing.T) {
	s := newServer(t, ops.Config{})
	s.addDead("orders:dead", deadLetter{src: "orders", group: "g", id: "1-0", reason: "handler", fields: map[string]string{
		"data": "{}", safesync.OriginFieldStream: "orders", safesync.OriginFieldID: "1600000000000-0",
	}})
	if _, err := s.ops.Replay(context.Background(), ops.Stream("orders"), ops.Filter{All: true}, ops.ReplayOptions{StripOrigin: true}); err != nil {
		t.Fatal(err)
	}
	if back := s.entries("orders"); len(back) != 1 || !reflect.DeepEqual(back[0].FieldValues, map[string]string{"data": "{}"}) {
		t.Fatalf("replayed %v, want only data", back)
	}
}

func TestADryRunReplayMovesNothing(t *testing.T) {
	s, all := deadScenario(t, ops.Config{})
	var seen []string
	res, err := s.ops.Replay(context.Background(), ops.Stream("orders"), ops.Filter{All: true},
		ops.ReplayOptions{DryRun: true, Each: func(e ops.ReplayedEntry) { seen = append(seen, e.DeadLetter.ID) }})
	if err != nil || res.Replayed != 6 || !res.DryRun || !reflect.DeepEqual(seen, all) {
		t.Fatalf("dry run = %+v, %v, saw %v", res, err, seen)
	}
	if n := len(s.entries("orders")); n != 0 {
		t.Fatalf("%d entries replayed by a dry run", n)
	}
	if n := len(s.entries("orders:dead")); n != 6 {
		t.Fatalf("%d dead letters left, want 6", n)
	}
}

func TestReplayAndPurgeRefuseAnEmptyFilterWithoutAll(t *testing.T) {
	s, _ := deadScenario(t, ops.Config{})
	ctx := context.Background()
	if _, err := s.ops.Replay(ctx, ops.Stream("orders"), ops.Filter{}, ops.ReplayOptions{}); !errors.Is(err, ops.ErrNoSelection) {
		t.Errorf("Replay: %v, want ErrNoSelection", err)
	}
	if _, err := s.ops.Purge(ctx, ops.Stream("orders"), ops.Filter{}, ops.PurgeOptions{}); !errors.Is(err, ops.ErrNoSelection) {
		t.Errorf("Purge: %v, want ErrNoSelection", err)
	}
	if n := len(s.entries("orders:dead")); n != 6 {
		t.Fatalf("%d dead letters left, want 6", n)
	}
}

func TestReplaySkipsWhatIsNotASafesyncDeadLetterOrHasNowhereToGo(t *testing.T) {
	s := newServer(t, ops.Config{})
	foreign := s.do(s.client.B().Xadd().Key("orders:dead").Id("*").FieldValue().FieldValue("data", "{}").Build())
	fid, _ := foreign.ToString()
	s.do(s.client.B().Set().Key("text").Value("x").Build())
	blocked := s.addDead("orders:dead", deadLetter{src: "text", group: "g", id: "1-0", reason: "handler"})
	good := s.addDead("orders:dead", deadLetter{src: "orders", group: "g", id: "1-1", reason: "handler"})
	res, err := s.ops.Replay(context.Background(), ops.Stream("orders"), ops.Filter{All: true}, ops.ReplayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var skipped []string
	for _, sk := range res.Skipped {
		skipped = append(skipped, sk.ID)
	}
	if res.Replayed != 1 || !reflect.DeepEqual(skipped, []string{fid, blocked}) {
		t.Fatalf("result = %+v", res)
	}
	left, _ := s.ops.DeadLetters(context.Background(), ops.Stream("orders"), ops.DeadLetterQuery{})
	if got := ids(left.Entries); slices.Contains(got, good) || len(got) != 2 {
		t.Fatalf("left %v", got)
	}
}

func TestReplayTakesOnlyTheDeadLettersPresentWhenItStarts(t *testing.T) {
	s, _ := deadScenario(t, ops.Config{})
	var added []string
	res, err := s.ops.Replay(context.Background(), ops.Stream("orders"), ops.Filter{All: true}, ops.ReplayOptions{Batch: 1,
		Each: func(e ops.ReplayedEntry) {
			// The entry fails again at once and is dead-lettered anew.
			added = append(added, s.addDead("orders:dead", deadLetter{src: "orders", group: "g", id: e.NewID, reason: "decode"}))
		}})
	if err != nil || res.Replayed != 6 {
		t.Fatalf("%+v, %v", res, err)
	}
	left, _ := s.ops.DeadLetters(context.Background(), ops.Stream("orders"), ops.DeadLetterQuery{})
	if got := ids(left.Entries); !reflect.DeepEqual(got, added) {
		t.Fatalf("left %v, want the 6 added during the replay", got)
	}
}

func TestReplayOfPartitionsMovesEachEntryToItsPartitionInOneTransaction(t *testing.T) {
	s := newServer(t, ops.Config{})
	p, _ := safesync.NewPartitions("payments", 3)
	for i := range p.Len() {
		s.addDead(p.Stream(i)+safesync.DeadLetterSuffix, deadLetter{src: p.Stream(i), group: "g", id: "1-0", reason: "handler"})
	}
	var atomic []bool
	res, err := s.ops.Replay(context.Background(), ops.Partitioned(p), ops.Filter{All: true},
		ops.ReplayOptions{Each: func(e ops.ReplayedEntry) { atomic = append(atomic, e.Atomic) }})
	if err != nil || res.Replayed != 3 || !reflect.DeepEqual(atomic, []bool{true, true, true}) {
		t.Fatalf("%+v, %v, atomic %v", res, err, atomic)
	}
	for i := range p.Len() {
		back := s.entries(p.Stream(i))
		if len(back) != 1 || back[0].FieldValues[safesync.OriginFieldStream] != p.Stream(i) {
			t.Errorf("partition %d: %v", i, back)
		}
		if n := len(s.entries(p.Stream(i) + safesync.DeadLetterSuffix)); n != 0 {
			t.Errorf("partition %d: %d dead letters left", i, n)
		}
	}
}

// noXdel passes every command on, but fails the XDELs of the removal step
// the way a crash between the two steps would leave things: never sent.
type noXdel struct {
	rueidis.Client
}

func (c noXdel) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	if len(multi) > 0 && multi[0].Commands()[0] == "XDEL" {
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		return c.Client.DoMulti(cancelled, multi...)
	}
	return c.Client.DoMulti(ctx, multi...)
}

func TestAReplayInterruptedBetweenItsStepsIsRepeatedWithTheSameOrigin(t *testing.T) {
	s := newServer(t, ops.Config{})
	if s.client.Mode() != rueidis.ClientModeCluster {
		t.Skip("the embedded server is not seen as a cluster: every move is one transaction")
	}
	s.addDead("orders:dead", deadLetter{src: "orders", group: "g", id: "1699999999000-0", reason: "handler"})
	broken := ops.New(noXdel{s.client}, ops.Config{})
	res, err := broken.Replay(context.Background(), ops.Stream("orders"), ops.Filter{All: true}, ops.ReplayOptions{})
	if err == nil || res.Replayed != 0 {
		t.Fatalf("interrupted replay = %+v, %v; want an error and nothing counted", res, err)
	}
	if n, d := len(s.entries("orders")), len(s.entries("orders:dead")); n != 1 || d != 1 {
		t.Fatalf("after the interruption: %d entries, %d dead letters; want 1 and 1", n, d)
	}
	if _, err := s.ops.Replay(context.Background(), ops.Stream("orders"), ops.Filter{All: true}, ops.ReplayOptions{}); err != nil {
		t.Fatal(err)
	}
	back := s.entries("orders")
	if len(back) != 2 || len(s.entries("orders:dead")) != 0 {
		t.Fatalf("after the second replay: %v", back)
	}
	for _, x := range back {
		if x.FieldValues[safesync.OriginFieldID] != "1699999999000-0" {
			t.Fatalf("entry %v lacks the origin", x)
		}
	}
}

func TestReplayRespectsItsRate(t *testing.T) {
	s, _ := deadScenario(t, ops.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := s.ops.Replay(ctx, ops.Stream("orders"), ops.Filter{All: true}, ops.ReplayOptions{Rate: 0.001,
		Each: func(ops.ReplayedEntry) { cancel() }})
	// At 0.001 entries a second the replay moves one entry, then waits
	// (1000 s) until ctx is cancelled.
	if !errors.Is(err, context.Canceled) || res.Replayed != 1 {
		t.Fatalf("%+v, %v; want 1 replayed, then cancelled while waiting", res, err)
	}
}

func TestPurgeDeletesOnlyWhatItSelects(t *testing.T) {
	s, all := deadScenario(t, ops.Config{})
	ctx := context.Background()
	var seen []string
	res, err := s.ops.Purge(ctx, ops.Stream("orders"), ops.Filter{Reason: "decode"}, ops.PurgeOptions{DryRun: true,
		Each: func(d ops.DeadLetter) { seen = append(seen, d.ID) }})
	if err != nil || res.Purged != 2 || !reflect.DeepEqual(seen, []string{all[1], all[5]}) || len(s.entries("orders:dead")) != 6 {
		t.Fatalf("dry run: %+v, %v, %v", res, err, seen)
	}
	res, err = s.ops.Purge(ctx, ops.Stream("orders"), ops.Filter{Reason: "decode", Until: t0.Add(3 * time.Minute)}, ops.PurgeOptions{})
	if err != nil || res.Purged != 1 {
		t.Fatalf("purge: %+v, %v", res, err)
	}
	left, _ := s.ops.DeadLetters(ctx, ops.Stream("orders"), ops.DeadLetterQuery{})
	if got := ids(left.Entries); !reflect.DeepEqual(got, []string{all[0], all[2], all[3], all[4], all[5]}) {
		t.Fatalf("left %v", got)
	}
	res, err = s.ops.Purge(ctx, ops.Stream("orders"), ops.Filter{IDs: []string{all[0], all[3]}}, ops.PurgeOptions{})
	if err != nil || res.Purged != 2 || len(s.entries("orders:dead")) != 3 {
		t.Fatalf("purge by id: %+v, %v", res, err)
	}
}

func TestPendingEntriesComeInPagesAcrossPartitions(t *testing.T) {
	s := newServer(t, ops.Config{})
	p, _ := safesync.NewPartitions("payments", 3)
	var want []string
	for i := range p.Len() {
		s.group(p.Stream(i), "workers")
	}
	for round := range 2 {
		s.setTime(t0.Add(time.Duration(round) * time.Second))
		for i := range p.Len() {
			s.publish(p.Stream(i), 1)
			consumer := []string{"w1", "w2"}[i%2]
			id := s.read(p.Stream(i), "workers", consumer, 1)[0]
			want = append(want, id+"@"+p.Stream(i)+"@"+consumer)
		}
	}
	s.setTime(t0.Add(time.Minute))
	ctx := context.Background()
	collect := func(q ops.PendingQuery) []string {
		var got []string
		for {
			page, err := s.ops.Pending(ctx, ops.Partitioned(p), q)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page.Entries {
				got = append(got, e.ID+"@"+e.Stream+"@"+e.Consumer)
				if e.Deliveries != 1 || e.Age < 59*time.Second {
					t.Errorf("entry %+v", e)
				}
			}
			if page.Next == "" {
				return got
			}
			q.After = page.Next
		}
	}
	if got := collect(ops.PendingQuery{Group: "workers", Limit: 2}); !reflect.DeepEqual(got, want) {
		t.Fatalf("pages:\n%v\nwant\n%v", got, want)
	}
	var w2 []string
	for _, e := range want {
		if e[len(e)-2:] == "w2" {
			w2 = append(w2, e)
		}
	}
	if got := collect(ops.PendingQuery{Group: "workers", Consumer: "w2", Limit: 1}); !reflect.DeepEqual(got, w2) {
		t.Fatalf("w2's: %v, want %v", got, w2)
	}
	if got := collect(ops.PendingQuery{Group: "workers", MinIdle: 2 * time.Hour}); len(got) != 0 {
		t.Fatalf("idle 2h: %v", got)
	}
	if _, err := s.ops.Pending(ctx, ops.Partitioned(p), ops.PendingQuery{Group: "nobody"}); !errors.Is(err, ops.ErrGroupNotFound) {
		t.Fatalf("missing group: %v", err)
	}
}

func TestPurgeLeavesWhatIsNotADeadLetter(t *testing.T) {
	s := newServer(t, ops.Config{})
	s.publish("orders", 3)
	res, err := s.ops.Purge(context.Background(), ops.Target{Name: "orders", DeadLetterStreams: []string{"orders"}}, ops.Filter{All: true}, ops.PurgeOptions{})
	if err != nil || res.Purged != 0 || res.Skipped != 3 || len(s.entries("orders")) != 3 {
		t.Fatalf("%+v, %v", res, err)
	}
	if _, err := s.ops.Purge(context.Background(), ops.Target{Name: "orders", Streams: []string{"orders"}, DeadLetterStreams: []string{"orders"}}, ops.Filter{All: true}, ops.PurgeOptions{}); err == nil {
		t.Fatal("a Target naming one key as both stream and dead-letter stream was accepted")
	}
}
