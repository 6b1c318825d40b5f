package safesync_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// deadlineSpy records the commands that do not block in Redis but were
// sent with a ctx that can be cancelled and has no deadline.
type deadlineSpy struct {
	rueidis.Client
	mu      sync.Mutex
	without map[string]bool
}

func (c *deadlineSpy) check(ctx context.Context, cmds ...rueidis.Completed) {
	if _, ok := ctx.Deadline(); ok || ctx.Done() == nil {
		return
	}
	for _, cmd := range cmds {
		if cmd.IsBlock() {
			return // a blocking read: ctx's cancellation must interrupt it
		}
	}
	var names []string
	for _, cmd := range cmds {
		names = append(names, cmd.Commands()[0])
	}
	c.mu.Lock()
	c.without[strings.Join(names, "+")] = true
	c.mu.Unlock()
}

func (c *deadlineSpy) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.check(ctx, cmd)
	return c.Client.Do(ctx, cmd)
}

func (c *deadlineSpy) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	c.check(ctx, cmds...)
	return c.Client.DoMulti(ctx, cmds...)
}

// A command that does not block, sent with a ctx that can be cancelled but
// has no deadline, switches a rueidis connection to background pipelining
// for good: every later command goes through rueidis' goroutines. Run's
// commands that do not block carry a deadline: at start (the group, the
// name's lease), in its reads and acknowledgements, and in its reclaim
// scans and pending gauges.
func TestRunSendsNoCommandThatDoesNotBlockWithoutADeadline(t *testing.T) {
	base := safesynctest.NewRedis(t)
	for i := range 300 {
		safesynctest.PublishJSON(t, base, "orders", item{N: i})
	}
	spy := &deadlineSpy{Client: base, without: map[string]bool{}}
	cfg := defectConfig(nil)
	cfg.Count, cfg.ClaimIdle, cfg.ClaimInterval = 50, 10*time.Millisecond, 20*time.Millisecond
	var handled atomic.Int64
	err := runUntil(t, func(ctx context.Context) error {
		return mustConsumer(t, spy, cfg).Run(ctx, func(context.Context, safesync.Message[item]) error {
			handled.Add(1)
			return nil
		})
	}, func() bool {
		// Every entry, and two reclaim scans after the last.
		return handled.Load() == 300 && len(safesynctest.Pending(t, base, "orders", "workers")) == 0 && sleepFor(60*time.Millisecond)
	})
	if err != nil {
		t.Fatal(err)
	}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	for cmd := range spy.without {
		t.Errorf("%s sent with a ctx that can be cancelled and has no deadline", cmd)
	}
}

func sleepFor(d time.Duration) bool {
	time.Sleep(d)
	return true
}
