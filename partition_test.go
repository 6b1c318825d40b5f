package safesync_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

func mustPartitions(t *testing.T, name string, n int) safesync.Partitions {
	t.Helper()
	p, err := safesync.NewPartitions(name, n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The keys are part of the storage format: pinned, and the same for a
// partition index whatever P is.
func TestPartitionKeysArePinnedAndDoNotDependOnP(t *testing.T) {
	want := []string{"orders:{0.1}", "orders:{1.0}", "orders:{2.0}", "orders:{3.12}",
		"orders:{4.23}", "orders:{5.22}", "orders:{6.3}", "orders:{7.3}"}
	if got := mustPartitions(t, "orders", 8).Streams(); !slices.Equal(got, want) {
		t.Fatalf("keys of 8 partitions: %q, want %q", got, want)
	}
	small := mustPartitions(t, "orders", 3).Streams()
	large := mustPartitions(t, "orders", 100).Streams()
	if !slices.Equal(small, large[:3]) {
		t.Fatalf("keys of 3 partitions %q are not the first keys of 100 partitions %q", small, large[:3])
	}
}

// Partition i lands in the third of the slot space i mod 3, which
// redis-cli --cluster create gives to one master of three, and no two
// partitions share a slot; each partition's dead-letter stream shares its
// slot.
func TestPartitionKeysSpreadOverThirdsAndSlots(t *testing.T) {
	p := mustPartitions(t, "orders", safesync.MaxPartitions)
	thirds := [3][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}} // redis-cli's split over 3 masters
	seen := map[uint16]int{}
	for i, k := range p.Streams() {
		slot := safesync.KeySlot(k)
		if r := thirds[i%3]; int(slot) < r[0] || int(slot) > r[1] {
			t.Errorf("partition %d (%s) is in slot %d, outside third %d %v", i, k, slot, i%3, r)
		}
		if j, dup := seen[slot]; dup {
			t.Errorf("partitions %d and %d share slot %d", j, i, slot)
		}
		seen[slot] = i
		if dead := k + safesync.DeadLetterSuffix; safesync.KeySlot(dead) != slot {
			t.Errorf("dead-letter stream %s is in slot %d, not %d", dead, safesync.KeySlot(dead), slot)
		}
	}
}

// The same key always goes to the same partition (pinned values), keys
// spread evenly, and growing P moves keys only into the new partition.
func TestPartitionForIsStableBalancedAndGrowsByMovingLittle(t *testing.T) {
	p8 := mustPartitions(t, "orders", 8)
	for key, want := range map[string]int{"order-1": 6, "order-2": 4, "customer-42": 1, "": 1, "é": 5} {
		if got := p8.For(key); got != want {
			t.Errorf("For(%q) = %d, want %d", key, got, want)
		}
	}
	p9 := mustPartitions(t, "orders", 9)
	counts := make([]int, 8)
	moved := 0
	const keys = 16000
	for i := range keys {
		k := "customer-" + strconv.Itoa(i)
		a, b := p8.For(k), p9.For(k)
		counts[a]++
		if a != b {
			moved++
			if b != 8 {
				t.Fatalf("growing 8 → 9 partitions moved %q from %d to %d, not to the new partition 8", k, a, b)
			}
		}
	}
	for i, n := range counts {
		if n < keys/8*8/10 || n > keys/8*12/10 {
			t.Errorf("partition %d got %d of %d keys, more than 20%% off %d: %v", i, n, keys, keys/8, counts)
		}
	}
	if moved < keys/9*8/10 || moved > keys/9*12/10 {
		t.Errorf("growing 8 → 9 moved %d of %d keys, want about 1/9 (%d)", moved, keys, keys/9)
	}
}

func TestNewPartitionsRejectsBadArguments(t *testing.T) {
	for _, c := range []struct {
		name string
		n    int
	}{{"", 3}, {"orders{x}", 3}, {"orders}", 3}, {"orders", 0}, {"orders", -1}, {"orders", safesync.MaxPartitions + 1}} {
		if _, err := safesync.NewPartitions(c.name, c.n); err == nil {
			t.Errorf("NewPartitions(%q, %d) returned no error", c.name, c.n)
		}
	}
	var zero safesync.Partitions
	if _, _, err := zero.Publish(context.Background(), nil, "k", map[string]string{"a": "b"}); err == nil {
		t.Error("Publish on a zero Partitions returned no error")
	}
}

func TestNewPartitionedConsumerChecksItsConfig(t *testing.T) {
	client := safesynctest.NewRedis(t)
	p := mustPartitions(t, "orders", 2)
	cfg := safesync.StreamConfig{Group: "g", Consumer: "c"}
	if _, err := safesync.NewPartitionedConsumer(client, safesync.Partitions{}, cfg, safesync.JSON[Order]()); err == nil {
		t.Error("zero Partitions accepted")
	}
	other := cfg
	other.Stream = "payments"
	if _, err := safesync.NewPartitionedConsumer(client, p, other, safesync.JSON[Order]()); !errors.Is(err, safesync.ErrInvalidStreamConfig) {
		t.Errorf("Stream %q for partitions of %q: %v, want ErrInvalidStreamConfig", other.Stream, p.Name(), err)
	}
	noGroup := cfg
	noGroup.Group = ""
	if _, err := safesync.NewPartitionedConsumer(client, p, noGroup, safesync.JSON[Order]()); !errors.Is(err, safesync.ErrInvalidStreamConfig) {
		t.Errorf("empty Group: %v, want ErrInvalidStreamConfig", err)
	}
	named := cfg
	named.Stream = p.Name()
	c, err := safesync.NewPartitionedConsumer(client, p, named, safesync.JSON[Order]())
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Len() {
		got := c.Config(i)
		if got.Stream != p.Stream(i) || got.DeadLetterStream != p.Stream(i)+safesync.DeadLetterSuffix {
			t.Errorf("partition %d: Stream %q, DeadLetterStream %q", i, got.Stream, got.DeadLetterStream)
		}
	}
}

func ExamplePartitions() {
	// An in-process Redis stands in for yours; the client is made as for a
	// real server (client-side caching off: the embedded server lacks it).
	redis, err := safesynctest.StartRedis()
	if err != nil {
		log.Fatal(err)
	}
	defer redis.Close()
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{redis.Addr}, DisableCache: true})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	orders, err := safesync.NewPartitions("orders", 3)
	if err != nil {
		log.Fatal(err)
	}
	type Payment struct {
		Customer string `json:"customer"`
		Amount   int    `json:"amount"`
	}
	customer := func(p Payment) string { return p.Customer }
	for _, p := range []Payment{{"ada", 10}, {"bob", 20}, {"ada", 30}} {
		if _, _, err := safesync.PublishPartitionedJSON(ctx, client, orders, p, customer); err != nil {
			log.Fatal(err)
		}
	}

	consumer, err := safesync.NewPartitionedConsumer(client, orders, safesync.StreamConfig{
		Group: "billing", Consumer: "worker-1", Concurrency: 4,
	}, safesync.JSON[Payment](), safesync.OrderBy(func(m safesync.Message[Payment]) string { return m.Value.Customer }))
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string][]int{}
	err = consumer.Run(ctx, func(ctx context.Context, msg safesync.Message[Payment]) error {
		mu.Lock()
		defer mu.Unlock()
		seen[msg.Value.Customer] = append(seen[msg.Value.Customer], msg.Value.Amount)
		if len(seen["ada"])+len(seen["bob"]) == 3 {
			cancel()
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ada:", seen["ada"], "in", orders.Stream(orders.For("ada")))
	fmt.Println("bob:", seen["bob"], "in", orders.Stream(orders.For("bob")))
	// Output:
	// ada: [10 30] in orders:{1.0}
	// bob: [20] in orders:{2.0}
}
