package ops_test

import (
	"context"
	"fmt"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
	"github.com/safesync-go/safesync/safesynctest"
)

// A consumer gives up on an order; once the handler is fixed, the dead
// letter is replayed, and comes back carrying its origin, which Once
// deduplicates on.
func Example() {
	ctx := context.Background()
	redis, err := safesynctest.StartRedis()
	if err != nil {
		panic(err)
	}
	defer redis.Close()
	client, err := redis.Client()
	if err != nil {
		panic(err)
	}
	defer client.Close()

	type Order struct {
		ID       int    `json:"id"`
		Currency string `json:"currency"`
	}
	first, _ := safesync.PublishJSON(ctx, client, "orders", Order{ID: 7, Currency: "XYZ"})
	c, err := safesync.NewConsumer(client, safesync.StreamConfig{Stream: "orders", Group: "billing", Consumer: "w1", Block: time.Millisecond}, safesync.JSON[Order]())
	if err != nil {
		panic(err)
	}
	msg, _ := c.Next(ctx)
	_ = c.DeadLetter(ctx, msg, safesync.DeadLetterHandler)

	o := ops.New(client, ops.Config{})
	t, _ := o.Resolve(ctx, "orders")
	page, _ := o.DeadLetters(ctx, t, ops.DeadLetterQuery{Filter: ops.Filter{Reason: safesync.DeadLetterHandler}})
	d := page.Entries[0]
	fmt.Println(len(page.Entries), d.Reason, d.Group, string(d.Payload))

	res, _ := o.Replay(ctx, t, ops.Filter{All: true}, ops.ReplayOptions{})
	fmt.Println("replayed", res.Replayed)

	msg, _ = c.Next(ctx)
	stream, id := msg.Origin()
	fmt.Println(msg.Value.ID, stream, id == first, msg.ID != first)
	// Output:
	// 1 handler billing {"id":7,"currency":"XYZ"}
	// replayed 1
	// 7 orders true true
}
