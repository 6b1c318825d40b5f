package safesynctest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// EmbeddedRedis is an in-process Redis (miniredis) listening on a loopback
// port. It implements the stream commands safesync uses, enough to run
// examples and to unit-test handlers; RunStreamConformance lists where it
// differs from Redis.
type EmbeddedRedis struct {
	// Addr is the server's host:port.
	Addr string

	srv       *miniredis.Miniredis
	closeOnce sync.Once
}

// StartRedis starts an EmbeddedRedis on 127.0.0.1. Close stops it.
func StartRedis() (*EmbeddedRedis, error) {
	srv := miniredis.NewMiniRedis()
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("safesynctest: start embedded Redis: %w", err)
	}
	return &EmbeddedRedis{Addr: srv.Addr(), srv: srv}, nil
}

// Client returns a new rueidis client on the server, with client-side
// caching off (the embedded server does not support it). The caller
// closes it.
func (r *EmbeddedRedis) Client() (rueidis.Client, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, DisableCache: true})
	if err != nil {
		return nil, fmt.Errorf("safesynctest: connect to embedded Redis: %w", err)
	}
	return c, nil
}

// Close stops the server. It is safe to call more than once.
func (r *EmbeddedRedis) Close() {
	r.closeOnce.Do(r.srv.Close)
}

// NewRedis starts an EmbeddedRedis for one test and returns a client on it;
// both are closed by tb.Cleanup.
func NewRedis(tb testing.TB) rueidis.Client {
	tb.Helper()
	r, err := StartRedis()
	if err != nil {
		tb.Fatal(err)
	}
	c, err := r.Client()
	if err != nil {
		r.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		c.Close()
		r.Close()
	})
	return c
}

// Publish adds an entry with fields to stream and returns its id, failing
// the test on error.
func Publish(tb testing.TB, client rueidis.Client, stream string, fields map[string]string) string {
	tb.Helper()
	id, err := safesync.Publish(context.Background(), client, stream, fields)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// PublishJSON adds v to stream in the wire format (one field "data" with a
// JSON object) and returns its id, failing the test on error.
func PublishJSON[T any](tb testing.TB, client rueidis.Client, stream string, v T) string {
	tb.Helper()
	id, err := safesync.PublishJSON(context.Background(), client, stream, v)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// PendingEntry is one entry of a group's pending list.
type PendingEntry struct {
	ID         string
	Consumer   string
	Idle       time.Duration
	Deliveries int64
}

// Pending returns the group's pending entries (delivered, not acknowledged)
// in id order, failing the test on error. A missing stream or group has
// none. It reads them with ops.Ops.Pending.
func Pending(tb testing.TB, client rueidis.Client, stream, group string) []PendingEntry {
	tb.Helper()
	o := ops.New(client, ops.Config{})
	t := ops.Target{Name: stream, Streams: []string{stream}}
	q := ops.PendingQuery{Group: group, Limit: ops.MaxLimit}
	var out []PendingEntry
	for {
		page, err := o.Pending(context.Background(), t, q)
		if errors.Is(err, ops.ErrGroupNotFound) {
			return nil
		}
		if err != nil {
			tb.Fatalf("safesynctest: pending entries of %s %s: %v", stream, group, err)
		}
		for _, e := range page.Entries {
			out = append(out, PendingEntry{ID: e.ID, Consumer: e.Consumer, Idle: e.Idle, Deliveries: e.Deliveries})
		}
		if page.Next == "" {
			return out
		}
		q.After = page.Next
	}
}

// DeadLetters returns the entries of a dead-letter stream, oldest first,
// failing the test on error. It reads them with ops.Ops.DeadLetters.
func DeadLetters(tb testing.TB, client rueidis.Client, deadStream string) []safesync.DeadLetterEntry {
	tb.Helper()
	o := ops.New(client, ops.Config{})
	t := ops.Target{Name: deadStream, DeadLetterStreams: []string{deadStream}}
	q := ops.DeadLetterQuery{Limit: ops.MaxLimit}
	out := []safesync.DeadLetterEntry{}
	for {
		page, err := o.DeadLetters(context.Background(), t, q)
		if err != nil {
			tb.Fatalf("safesynctest: dead letters of %s: %v", deadStream, err)
		}
		for _, d := range page.Entries {
			out = append(out, d.Entry())
		}
		if page.Next == "" {
			return out
		}
		q.After = page.Next
	}
}

// Entries returns all entries of stream, oldest first, failing the test on
// error.
func Entries(tb testing.TB, client rueidis.Client, stream string) []rueidis.XRangeEntry {
	tb.Helper()
	xs, err := client.Do(context.Background(), client.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		tb.Fatalf("safesynctest: XRANGE %s: %v", stream, err)
	}
	return xs
}
