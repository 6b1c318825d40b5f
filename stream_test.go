package safesync_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

func TestStreamConfigValidateNamesTheBadField(t *testing.T) {
	valid := safesync.StreamConfig{Stream: "orders", Group: "workers", Consumer: "host-1"}
	for _, tc := range []struct {
		field string
		edit  func(*safesync.StreamConfig)
	}{
		{"Stream", func(c *safesync.StreamConfig) { c.Stream = "" }},
		{"Group", func(c *safesync.StreamConfig) { c.Group = "" }},
		{"Consumer", func(c *safesync.StreamConfig) { c.Consumer = "" }},
		{"Block", func(c *safesync.StreamConfig) { c.Block = -time.Second }},
		{"Block", func(c *safesync.StreamConfig) { c.Block = 500 * time.Microsecond }}, // BLOCK 0: forever
		{"Count", func(c *safesync.StreamConfig) { c.Count = -1 }},
		{"Concurrency", func(c *safesync.StreamConfig) { c.Concurrency = -2 }},
		{"ClaimIdle", func(c *safesync.StreamConfig) { c.ClaimIdle = -time.Minute }},
		{"ClaimIdle", func(c *safesync.StreamConfig) { c.ClaimIdle = time.Microsecond }},
		{"ClaimInterval", func(c *safesync.StreamConfig) { c.ClaimInterval = -1 }},
		{"ShutdownGrace", func(c *safesync.StreamConfig) { c.ShutdownGrace = -1 }},
		{"MaxDeliveries", func(c *safesync.StreamConfig) { c.MaxDeliveries = -1 }},
		{"StartID", func(c *safesync.StreamConfig) { c.StartID = "latest" }},
		{"DeadLetterStream", func(c *safesync.StreamConfig) { c.DeadLetterStream = "orders" }},
	} {
		cfg := valid
		tc.edit(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, safesync.ErrInvalidStreamConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%+v: Validate() = %v, want an ErrInvalidStreamConfig naming %s", cfg, err, tc.field)
		}
	}
	for _, ok := range []safesync.StreamConfig{
		valid,
		{Stream: "s", Group: "g", Consumer: "c", StartID: "$", Block: time.Millisecond},
		{Stream: "s", Group: "g", Consumer: "c", StartID: "1700000000000-5", DeadLetterStream: "dead"},
	} {
		if err := ok.Validate(); err != nil {
			t.Errorf("%+v: Validate() = %v, want nil", ok, err)
		}
	}
}

func TestNewConsumerFillsInDefaults(t *testing.T) {
	client := safesynctest.NewRedis(t)
	c, err := safesync.NewConsumer(client, safesync.StreamConfig{Stream: "orders:{3}", Group: "g", Consumer: "c"}, safesync.JSON[map[string]any]())
	if err != nil {
		t.Fatal(err)
	}
	got := c.Config()
	if got.Block != safesync.DefaultBlock || got.Count != safesync.DefaultCount || got.StartID != "0" ||
		got.Concurrency != 1 || got.ClaimIdle != safesync.DefaultClaimIdle || got.ClaimInterval != safesync.DefaultClaimInterval ||
		got.MaxDeliveries != safesync.DefaultMaxDeliveries || got.ShutdownGrace != safesync.DefaultShutdownGrace ||
		got.Logger == nil || got.Metrics == nil {
		t.Fatalf("defaults not filled in: %+v", got)
	}
	if got.DeadLetterStream != "orders:{3}:dead" || safesync.KeySlot(got.DeadLetterStream) != safesync.KeySlot(got.Stream) {
		t.Fatalf("DeadLetterStream = %q, want orders:{3}:dead in the same slot as the stream", got.DeadLetterStream)
	}
	if _, err := safesync.NewConsumer(client, safesync.StreamConfig{Stream: "s", Group: "g"}, safesync.JSON[int]()); !errors.Is(err, safesync.ErrInvalidStreamConfig) {
		t.Fatalf("NewConsumer with an invalid config = %v", err)
	}
	if _, err := safesync.NewConsumer[int](client, safesync.StreamConfig{Stream: "s", Group: "g", Consumer: "c"}, nil); err == nil {
		t.Fatal("NewConsumer with a nil Decoder = nil error")
	}
}

func TestKeySlotMatchesRedisCluster(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	for key, want := range map[string]uint16{
		"123456789":            12739, // CRC16/XMODEM check value 0x31C3
		"foo":                  12182,
		"somekey":              11058,
		"":                     0,
		"{user1000}.following": 3443,
		"{user1000}.followers": 3443,
		"user1000":             3443,
		"foo{}{bar}":           safesync.KeySlot("foo{}{bar}"), // empty tag: the whole key
		"foo{{bar}}zap":        safesync.KeySlot("{bar"),
		"foo{bar}{zap}":        safesync.KeySlot("bar"),
		"orders:{3}:dead":      safesync.KeySlot("3"),
	} {
		if got := safesync.KeySlot(key); got != want {
			t.Errorf("KeySlot(%q) = %d, want %d", key, got, want)
		}
	}
	if safesync.KeySlot("foo{}{bar}") == safesync.KeySlot("bar") {
		t.Error("an empty hash tag must not make the next one count")
	}
}

func TestConsumerRunsOneLoopAtATime(t *testing.T) {
	client := safesynctest.NewRedis(t)
	safesynctest.PublishJSON(t, client, "s", map[string]int{"n": 1})
	c, err := safesync.NewConsumer(client, safesync.StreamConfig{Stream: "s", Group: "g", Consumer: "c", Block: 50 * time.Millisecond}, safesync.JSON[map[string]any]())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	handled := make(chan struct{}, 1)
	go func() {
		done <- c.Run(ctx, func(context.Context, safesync.Message[map[string]any]) error {
			handled <- struct{}{}
			return nil
		})
	}()
	<-handled // Run is running
	err = c.ClaimStale(ctx, func(context.Context, safesync.Message[map[string]any]) error { return nil })
	if !errors.Is(err, safesync.ErrConsumerRunning) {
		t.Fatalf("ClaimStale during Run = %v, want ErrConsumerRunning", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
