package safesync_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// Order is what the examples publish and consume.
type Order struct {
	ID     int `json:"order_id"`
	Amount int `json:"amount"`
}

func ExampleConsumer_Run() {
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

	for i := 1; i <= 3; i++ {
		if _, err := safesync.PublishJSON(ctx, client, "orders", Order{ID: i, Amount: 10 * i}); err != nil {
			log.Fatal(err)
		}
	}

	consumer, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: "orders", Group: "billing", Consumer: "worker-1",
	}, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	handled := 0
	err = consumer.Run(ctx, func(ctx context.Context, msg safesync.Message[Order]) error {
		fmt.Printf("order %d: amount %d (delivery %d)\n", msg.Value.ID, msg.Value.Amount, msg.Deliveries)
		if handled++; handled == 3 {
			cancel() // Run acknowledges the entries handled so far, then returns
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	pending, err := client.Do(context.Background(), client.B().Xpending().Key("orders").Group("billing").Build()).ToArray()
	if err != nil {
		log.Fatal(err)
	}
	n, _ := pending[0].AsInt64()
	fmt.Println("pending:", n)
	// Output:
	// order 1: amount 10 (delivery 1)
	// order 2: amount 20 (delivery 1)
	// order 3: amount 30 (delivery 1)
	// pending: 0
}

func ExampleConsumer_Messages() {
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// An entry as the Python original writes it: json.dumps into "data".
	if _, err := safesync.Publish(ctx, client, "orders", map[string]string{"data": `{"order_id": 7, "amount": 5}`}); err != nil {
		log.Fatal(err)
	}
	consumer, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: "orders", Group: "billing", Consumer: "worker-1",
	}, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	for msg, err := range consumer.Messages(ctx) {
		if err != nil {
			log.Print(err) // the iteration goes on after a pause
			continue
		}
		fmt.Printf("order %d: amount %d\n", msg.Value.ID, msg.Value.Amount)
		if err := consumer.Ack(ctx, msg); err != nil {
			log.Print(err) // the entry stays pending and comes back
		}
		break
	}
	// Output:
	// order 7: amount 5
}

func ExampleConsumer_RunBatch() {
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

	for i := 1; i <= 5; i++ {
		if _, err := safesync.PublishJSON(ctx, client, "orders", Order{ID: i, Amount: i}); err != nil {
			log.Fatal(err)
		}
	}
	consumer, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: "orders", Group: "billing", Consumer: "worker-1",
	}, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	total := 0
	err = consumer.RunBatch(ctx, 5, func(ctx context.Context, msgs []safesync.Message[Order]) error {
		for _, m := range msgs {
			total += m.Value.Amount
		}
		fmt.Printf("batch of %d, total %d\n", len(msgs), total)
		// The handler acknowledges, for instance after its transaction committed.
		if err := consumer.Ack(ctx, msgs...); err != nil {
			return err
		}
		cancel()
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// batch of 5, total 15
}

func ExamplePermanent() {
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

	safesync.PublishJSON(ctx, client, "orders", Order{ID: 1, Amount: -5})
	safesync.Publish(ctx, client, "orders", map[string]string{"data": "{broken"})
	safesync.PublishJSON(ctx, client, "orders", Order{ID: 2, Amount: 5})

	consumer, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: "orders", Group: "billing", Consumer: "worker-1",
	}, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	err = consumer.Run(ctx, func(ctx context.Context, msg safesync.Message[Order]) error {
		if msg.Value.ID == 2 {
			defer cancel()
		}
		if msg.Value.Amount < 0 {
			// Retrying cannot help: dead-letter it now.
			return safesync.Permanent(errors.New("negative amount"))
		}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	entries, err := client.Do(context.Background(), client.B().Xrange().Key(consumer.Config().DeadLetterStream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		d := safesync.ParseDeadLetter(e.ID, e.FieldValues)
		fmt.Printf("%s: %s (delivery %d)\n", d.Reason, d.Fields["data"], d.Deliveries)
	}
	// Output:
	// decode: {broken (delivery 1)
	// handler: {"order_id":1,"amount":-5} (delivery 1)
}

func ExampleConsumer_ClaimStale() {
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

	safesync.PublishJSON(ctx, client, "orders", Order{ID: 1, Amount: 5})
	cfg := safesync.StreamConfig{Stream: "orders", Group: "billing", Consumer: "worker-1"}
	crashed, err := safesync.NewConsumer(client, cfg, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	if _, err := crashed.Next(ctx); err != nil { // read, then the worker died
		log.Fatal(err)
	}

	cfg.Consumer, cfg.ClaimIdle, cfg.ClaimInterval = "recovery", 50*time.Millisecond, 20*time.Millisecond
	recovery, err := safesync.NewConsumer(client, cfg, safesync.JSON[Order]())
	if err != nil {
		log.Fatal(err)
	}
	err = recovery.ClaimStale(ctx, func(ctx context.Context, msg safesync.Message[Order]) error {
		fmt.Printf("recovered order %d, delivery %d\n", msg.Value.ID, msg.Deliveries)
		cancel()
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// recovered order 1, delivery 2
}

func ExampleOrderBy() {
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

	type Transfer struct {
		Account string `json:"account"`
		Seq     int    `json:"seq"`
	}
	for seq := 1; seq <= 3; seq++ {
		for _, account := range []string{"alice", "bob"} {
			safesync.PublishJSON(ctx, client, "transfers", Transfer{Account: account, Seq: seq})
		}
	}
	consumer, err := safesync.NewConsumer(client, safesync.StreamConfig{
		Stream: "transfers", Group: "ledger", Consumer: "worker-1", Concurrency: 4,
	}, safesync.JSON[Transfer](), safesync.OrderBy(func(m safesync.Message[Transfer]) string {
		return m.Value.Account // one account's transfers never overlap and keep their order
	}))
	if err != nil {
		log.Fatal(err)
	}
	last := map[string]int{}
	handled := make(chan struct{}, 6)
	go func() {
		for range 6 {
			<-handled
		}
		cancel()
	}()
	var mu sync.Mutex
	err = consumer.Run(ctx, func(ctx context.Context, m safesync.Message[Transfer]) error {
		mu.Lock()
		defer mu.Unlock()
		if m.Value.Seq != last[m.Value.Account]+1 {
			fmt.Println("out of order:", m.Value)
		}
		last[m.Value.Account] = m.Value.Seq
		handled <- struct{}{}
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(last["alice"], last["bob"])
	// Output:
	// 3 3
}

func ExampleOrderKey() {
	type Transfer struct {
		AccountID int64 `json:"account_id"`
	}
	// OrderBy takes string keys; OrderKey adapts a key of an integer (or
	// string) type, inferring both types from the function.
	byAccount := safesync.OrderKey(func(m safesync.Message[Transfer]) int64 { return m.Value.AccountID })
	fmt.Println(byAccount(safesync.Message[Transfer]{Value: Transfer{AccountID: 42}}))
	_ = safesync.OrderBy(byAccount) // as the consumer option, or Pipeline.OrderBy(byAccount)
	// Output:
	// 42
}

func ExampleJSON() {
	decode := safesync.JSON[Order]()
	// What Python's json.dumps({"order_id": 1, "amount": 5}) writes.
	o, err := decode(map[string]string{"data": `{"order_id": 1, "amount": 5}`})
	fmt.Println(o, err)
	// json.dumps writes NaN for float("nan"); it is not JSON.
	_, err = decode(map[string]string{"data": `{"order_id": 2, "amount": NaN}`})
	fmt.Println(errors.Is(err, safesync.ErrDecode))
	// Output:
	// {1 5} <nil>
	// true
}

func ExampleKeySlot() {
	// The default dead-letter stream keeps the stream's hash tag, so that
	// the dead-letter move is one MULTI/EXEC on Redis Cluster too.
	fmt.Println(safesync.KeySlot("orders:{3}") == safesync.KeySlot("orders:{3}"+safesync.DeadLetterSuffix))
	fmt.Println(safesync.KeySlot("orders") == safesync.KeySlot("orders"+safesync.DeadLetterSuffix))
	// Output:
	// true
	// false
}
