package ops_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// ordersScenario: five entries in orders; group workers has delivered four
// (w1 three at t0, one of them acknowledged; w2 one at t0+90s); group audit
// none; three dead letters, two of workers. The clock is at t0+2m.
func ordersScenario(t *testing.T) (*server, []string) {
	s := newServer(t, ops.Config{})
	ids := s.publish("orders", 5)
	s.group("orders", "workers")
	s.group("orders", "audit")
	s.read("orders", "workers", "w1", 3)
	s.do(s.client.B().Xack().Key("orders").Group("workers").Id(ids[0]).Build())
	s.setTime(t0.Add(90 * time.Second))
	s.read("orders", "workers", "w2", 1)
	s.addDead("orders:dead", deadLetter{src: "orders", group: "workers", id: "1699999999000-0", reason: safesync.DeadLetterHandler, err: "order 1: unknown currency"})
	s.addDead("orders:dead", deadLetter{src: "orders", group: "workers", id: "1699999999000-1", reason: safesync.DeadLetterDecode, err: "invalid character"})
	s.addDead("orders:dead", deadLetter{src: "orders", group: "audit", id: "1699999999000-2", reason: safesync.DeadLetterMaxDeliveries})
	s.setTime(t0.Add(2 * time.Minute))
	return s, ids
}

func TestInspectDescribesGroupsConsumersLagPendingAndDeadLetters(t *testing.T) {
	s, ids := ordersScenario(t)
	info, err := s.ops.Inspect(context.Background(), ops.Stream("orders"))
	if err != nil {
		t.Fatal(err)
	}
	want := ops.StreamInfo{
		Name: "orders", Exists: true, Length: 5, FirstID: ids[0], LastID: ids[4],
		DeadLetters: 3, DeadLetterStreams: []string{"orders:dead"},
		Groups: []ops.GroupInfo{
			{Name: "audit", Consumers: []ops.ConsumerInfo{}, Lag: 5, LagCounted: true, LastDeliveredID: "0", DeadLetters: 1},
			{Name: "workers", Consumers: []ops.ConsumerInfo{
				// The embedded server reports no idle times; real Redis does (see integration).
				{Name: "w1", Pending: 2},
				{Name: "w2", Pending: 1},
			}, Pending: 3, Lag: 1, LagCounted: true, LastDeliveredID: ids[3],
				OldestPendingID: ids[1], OldestPendingStream: "orders", OldestPendingAge: 2 * time.Minute, DeadLetters: 2},
		},
	}
	if !reflect.DeepEqual(info, want) {
		t.Fatalf("Inspect =\n%+v\nwant\n%+v", info, want)
	}
}

func TestLagCountingStopsAtMaxExamineAndSaysSo(t *testing.T) {
	s := newServer(t, ops.Config{MaxExamine: 3})
	s.publish("orders", 5)
	s.group("orders", "workers")
	info, err := s.ops.Inspect(context.Background(), ops.Stream("orders"))
	if err != nil {
		t.Fatal(err)
	}
	if g := info.Groups[0]; g.Lag != 3 || !g.LagAtLeast || !g.LagCounted {
		t.Fatalf("group = %+v, want lag at least 3, counted", g)
	}
}

func TestInspectSumsAPartitionedStreamAndDescribesEachPartition(t *testing.T) {
	s := newServer(t, ops.Config{})
	p, err := safesync.NewPartitions("payments", 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Len() {
		s.publish(p.Stream(i), i+1) // 1, 2 and 3 entries
		s.group(p.Stream(i), "workers")
		s.read(p.Stream(i), "workers", "w1", 1)
	}
	s.read(p.Stream(2), "workers", "w2", 1)
	s.addDead(p.Stream(1)+safesync.DeadLetterSuffix, deadLetter{src: p.Stream(1), group: "workers", id: "1-0", reason: "handler"})
	s.setTime(t0.Add(time.Minute))

	info, err := s.ops.Inspect(context.Background(), ops.Partitioned(p))
	if err != nil {
		t.Fatal(err)
	}
	if info.Length != 6 || len(info.Partitions) != 3 || info.DeadLetters != 1 || info.FirstID != "" {
		t.Fatalf("info = %+v", info)
	}
	if len(info.Groups) != 1 {
		t.Fatalf("groups = %+v", info.Groups)
	}
	g := info.Groups[0]
	wantConsumers := []ops.ConsumerInfo{{Name: "w1", Pending: 3}, {Name: "w2", Pending: 1}}
	if g.Pending != 4 || g.Lag != 2 || !reflect.DeepEqual(g.Consumers, wantConsumers) || g.DeadLetters != 1 ||
		g.OldestPendingAge != time.Minute || g.LastDeliveredID != "" {
		t.Fatalf("group = %+v", g)
	}
	for i, part := range info.Partitions {
		if part.Name != p.Stream(i) || part.Length != int64(i+1) || part.Groups[0].Pending != []int64{1, 1, 2}[i] ||
			part.DeadLetters != []int64{0, 1, 0}[i] || part.DeadLetterStreams[0] != p.Stream(i)+safesync.DeadLetterSuffix {
			t.Errorf("partition %d = %+v", i, part)
		}
	}
}

func TestInspectOfAMissingStreamIsEmpty(t *testing.T) {
	s := newServer(t, ops.Config{})
	info, err := s.ops.Inspect(context.Background(), ops.Stream("nothing"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Exists || info.Length != 0 || len(info.Groups) != 0 {
		t.Fatalf("info = %+v", info)
	}
}

func TestResolveFindsStreamsDeadLetterStreamsAndPartitions(t *testing.T) {
	s := newServer(t, ops.Config{})
	s.publish("orders", 1)
	s.addDead("orders:dead", deadLetter{src: "orders", group: "g", id: "1-0", reason: "handler"})
	p, _ := safesync.NewPartitions("payments", 4)
	s.publish(p.Stream(0), 1)
	s.addDead(p.Stream(3)+safesync.DeadLetterSuffix, deadLetter{src: p.Stream(3), group: "g", id: "1-0", reason: "handler"})
	s.addDead("gone:dead", deadLetter{src: "gone", group: "g", id: "1-0", reason: "handler"})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		want ops.Target
	}{
		{"orders", ops.Stream("orders")},
		{"orders:dead", ops.Target{Name: "orders", Streams: []string{"orders"}, DeadLetterStreams: []string{"orders:dead"}}},
		{"payments", ops.Partitioned(p)},
		{"gone", ops.Stream("gone")},
	} {
		got, err := s.ops.Resolve(ctx, tc.name)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%q) = %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	if _, err := s.ops.Resolve(ctx, "nothing"); !errors.Is(err, ops.ErrStreamNotFound) {
		t.Errorf("Resolve(nothing) = %v, want ErrStreamNotFound", err)
	}
}

func TestStreamsGroupsPartitionsAndDeadLetterStreams(t *testing.T) {
	s, _ := ordersScenario(t)
	p, _ := safesync.NewPartitions("payments", 3)
	for i := range p.Len() {
		s.publish(p.Stream(i), 2)
		s.group(p.Stream(i), "workers")
	}
	s.addDead(p.Stream(2)+safesync.DeadLetterSuffix, deadLetter{src: p.Stream(2), group: "workers", id: "1-0", reason: "handler"})
	// A dead-letter stream of a name of its own, found by its content.
	s.publish("invoices", 1)
	s.addDead("failed-invoices", deadLetter{src: "invoices", group: "billing", id: "1-0", reason: "handler"})
	s.addDead("failed-invoices", deadLetter{src: "invoices", group: "billing", id: "1-1", reason: "handler"})
	// Dead letters whose stream is gone.
	s.addDead("gone:dead", deadLetter{src: "gone", group: "g", id: "1-0", reason: "decode"})

	page, err := s.ops.Streams(context.Background(), ops.StreamsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		name                string
		parts               int
		length, dead, pend  int64
		groups              int
		deadLetterStreams   []string
		oldestPendingMinute bool
	}
	var got []row
	for _, st := range page.Streams {
		got = append(got, row{st.Name, st.Partitions, st.Length, st.DeadLetters, st.Pending, st.Groups, st.Target.DeadLetterStreams, st.OldestPendingAge == 2*time.Minute})
	}
	want := []row{
		{"gone", 0, 0, 1, 0, 0, []string{"gone:dead"}, false},
		{"invoices", 0, 1, 2, 0, 0, []string{"failed-invoices"}, false},
		{"orders", 0, 5, 3, 3, 2, []string{"orders:dead"}, true},
		{"payments", 3, 6, 1, 0, 1, ops.Partitioned(p).DeadLetterStreams, false},
	}
	if !reflect.DeepEqual(got, want) || page.Next != "" {
		t.Fatalf("Streams =\n%+v\nwant\n%+v (next %q)", got, want, page.Next)
	}
	if o := page.Streams[2]; o.Lag != 5 {
		t.Errorf("orders lag = %d, want 5 (audit's)", o.Lag)
	}

	first, err := s.ops.Streams(context.Background(), ops.StreamsQuery{Limit: 2})
	if err != nil || len(first.Streams) != 2 || first.Next != "invoices" {
		t.Fatalf("first page = %+v, %v", first, err)
	}
	second, err := s.ops.Streams(context.Background(), ops.StreamsQuery{Limit: 2, After: first.Next})
	if err != nil || len(second.Streams) != 2 || second.Streams[0].Name != "orders" || second.Next != "" {
		t.Fatalf("second page = %+v, %v", second, err)
	}
	matched, err := s.ops.Streams(context.Background(), ops.StreamsQuery{Match: "pay*"})
	if err != nil || len(matched.Streams) != 1 || matched.Streams[0].Name != "payments" {
		t.Fatalf("pay* = %+v, %v", matched, err)
	}
}
