package safesynctest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
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
// none.
func Pending(tb testing.TB, client rueidis.Client, stream, group string) []PendingEntry {
	tb.Helper()
	ctx := context.Background()
	rows, err := client.Do(ctx, client.B().Xpending().Key(stream).Group(group).Start("-").End("+").Count(1<<30).Build()).ToArray()
	if err != nil {
		if re, ok := rueidis.IsRedisErr(err); ok && strings.HasPrefix(re.Error(), "NOGROUP") {
			return nil
		}
		tb.Fatalf("safesynctest: XPENDING %s %s: %v", stream, group, err)
	}
	out := make([]PendingEntry, 0, len(rows))
	for _, row := range rows {
		f, err := row.ToArray()
		if err != nil || len(f) != 4 {
			tb.Fatalf("safesynctest: XPENDING row %v: %v", row, err)
		}
		var p PendingEntry
		p.ID, _ = f[0].ToString()
		p.Consumer, _ = f[1].ToString()
		ms, _ := f[2].AsInt64()
		p.Idle = time.Duration(ms) * time.Millisecond
		p.Deliveries, _ = f[3].AsInt64()
		out = append(out, p)
	}
	return out
}

// DeadLetters returns the entries of a dead-letter stream, oldest first,
// failing the test on error.
func DeadLetters(tb testing.TB, client rueidis.Client, deadStream string) []safesync.DeadLetterEntry {
	tb.Helper()
	xs, err := client.Do(context.Background(), client.B().Xrange().Key(deadStream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		tb.Fatalf("safesynctest: XRANGE %s: %v", deadStream, err)
	}
	out := make([]safesync.DeadLetterEntry, len(xs))
	for i, x := range xs {
		out[i] = safesync.ParseDeadLetter(x.ID, x.FieldValues)
	}
	return out
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
