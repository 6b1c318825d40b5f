package safesynctest

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// HandlerReport is what became of the entries given to HandleEntries.
type HandlerReport[T any] struct {
	// Acked are the entries the handler returned nil for, in stream order;
	// they were acknowledged.
	Acked []safesync.Message[T]
	// Failed are the entries the handler returned an error for or panicked
	// on (Err then says so), in stream order. Those not dead-lettered were
	// left pending.
	Failed []HandlerFailure[T]
	// DeadLettered are the entries moved to the dead-letter stream: those
	// that could not be decoded and those that failed permanently.
	DeadLettered []safesync.DeadLetterEntry
	// Pending are the entries left pending in the group.
	Pending []PendingEntry
}

// HandlerFailure is one failed handler call.
type HandlerFailure[T any] struct {
	Message safesync.Message[T]
	Err     error
}

// HandleEntries runs h over entries, each a set of raw fields, the way a
// Consumer's Run does, on an embedded Redis of its own: it publishes the
// entries, runs a consumer with one handler at a time until every entry has
// been handled once or dead-lettered, stops it, and reports what happened.
// Nothing is retried: an entry that failed stays pending. It needs no
// service and takes milliseconds; it fails the test if the consumer fails
// or does not finish within 10 seconds.
func HandleEntries[T any](tb testing.TB, decode safesync.Decoder[T], h safesync.Handler[T], entries ...map[string]string) HandlerReport[T] {
	tb.Helper()
	return handleReport(tb, entries, func(ctx context.Context, client rueidis.Client, cfg safesync.StreamConfig, record func(safesync.Message[T], error)) error {
		c, err := safesync.NewConsumer(client, cfg, decode)
		if err != nil {
			return err
		}
		return c.Run(ctx, func(ctx context.Context, msg safesync.Message[T]) (err error) {
			defer func() {
				if p := recover(); p != nil {
					record(msg, fmt.Errorf("safesynctest: handler panicked: %v", p))
					panic(p) // the consumer recovers and counts it
				}
			}()
			err = h(ctx, msg)
			record(msg, err)
			return err
		})
	})
}

// handleReport publishes entries on an embedded Redis, runs run until
// every entry has been recorded (by run's calls of record) or
// dead-lettered, and reports.
func handleReport[T any](tb testing.TB, entries []map[string]string, run func(ctx context.Context, client rueidis.Client, cfg safesync.StreamConfig, record func(safesync.Message[T], error)) error) HandlerReport[T] {
	tb.Helper()
	client := NewRedis(tb)
	const name = "safesynctest"
	ids := make([]string, len(entries))
	for i, fields := range entries {
		ids[i] = Publish(tb, client, name, fields)
	}
	metrics, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := safesync.StreamConfig{
		Stream: name, Group: name, Consumer: name,
		Block:     time.Second,
		ClaimIdle: time.Hour, ClaimInterval: time.Hour, // no redelivery
		Metrics: metrics,
	}

	var mu sync.Mutex
	outcome := map[string]error{}
	msgs := map[string]safesync.Message[T]{}
	record := func(msg safesync.Message[T], err error) {
		mu.Lock()
		defer mu.Unlock()
		outcome[msg.ID], msgs[msg.ID] = err, msg
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, client, cfg, record) }()

	dead := cfg.Stream + safesync.DeadLetterSuffix
	deadline := time.Now().Add(10 * time.Second)
	for !allSettled(tb, client, dead, ids, &mu, outcome) {
		select {
		case err := <-done:
			tb.Fatalf("safesynctest: consumer stopped early: %v", err)
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			tb.Fatalf("safesynctest: entries not all handled after 10s")
		}
	}
	cancel()
	if err := <-done; err != nil {
		tb.Fatalf("safesynctest: consumer: %v", err)
	}

	var rep HandlerReport[T]
	for _, id := range ids {
		err, handled := outcome[id]
		switch {
		case !handled:
		case err == nil:
			rep.Acked = append(rep.Acked, msgs[id])
		default:
			rep.Failed = append(rep.Failed, HandlerFailure[T]{Message: msgs[id], Err: err})
		}
	}
	rep.DeadLettered = DeadLetters(tb, client, dead)
	rep.Pending = Pending(tb, client, name, name)
	return rep
}

// HandleJSON is HandleEntries for values published in the wire format (see
// safesync.PublishJSON) and decoded with safesync.JSON.
func HandleJSON[T any](tb testing.TB, h safesync.Handler[T], values ...T) HandlerReport[T] {
	tb.Helper()
	entries := make([]map[string]string, len(values))
	for i, v := range values {
		fields, err := safesync.EncodeJSON(v)
		if err != nil {
			tb.Fatal(err)
		}
		entries[i] = fields
	}
	return HandleEntries(tb, safesync.JSON[T](), h, entries...)
}

// allSettled reports whether every id has been handled or dead-lettered.
func allSettled(tb testing.TB, client rueidis.Client, dead string, ids []string, mu *sync.Mutex, outcome map[string]error) bool {
	deadIDs := map[string]bool{}
	for _, d := range DeadLetters(tb, client, dead) {
		deadIDs[d.OriginalID] = true
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if _, handled := outcome[id]; !handled && !deadIDs[id] {
			return false
		}
	}
	return true
}

// HandleTxJSON is HandleJSON for a pipeline handler: it runs the pipeline
// safesync.Stream(safesync.JSON[T]()).Handle(h).AckAfter(safesync.Commit(db))
// itself, so each entry runs in its own transaction on db, is acknowledged
// only after that transaction committed, and is dead-lettered exactly as
// in production (a Permanent error's text included). An entry is reported
// Acked once its transaction committed. Pair it with mysqltest.New
// (package github.com/safesync-go/safesync/safesynctest/mysqltest, a
// module of its own: an in-process MySQL-compatible engine) to unit-test
// a handler's database effects with no service.
func HandleTxJSON[T any](tb testing.TB, db *sql.DB, h safesync.TxHandler[T], values ...T) HandlerReport[T] {
	tb.Helper()
	entries := make([]map[string]string, len(values))
	for i, v := range values {
		fields, err := safesync.EncodeJSON(v)
		if err != nil {
			tb.Fatal(err)
		}
		entries[i] = fields
	}
	return handleReport(tb, entries, func(ctx context.Context, client rueidis.Client, cfg safesync.StreamConfig, record func(safesync.Message[T], error)) error {
		return safesync.Stream(safesync.JSON[T]()).
			Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[T]) (err error) {
				defer func() {
					if p := recover(); p != nil {
						record(msg, fmt.Errorf("safesynctest: handler panicked: %v", p))
						panic(p) // the pipeline recovers and counts it
					}
				}()
				if err = h(ctx, tx, msg); err != nil {
					record(msg, err)
				}
				return err
			}).
			AckAfter(safesync.Commit(db, safesync.WithMetrics(cfg.Metrics))).
			AfterCommit(func(_ context.Context, msgs []safesync.Message[T]) {
				for _, m := range msgs {
					record(m, nil)
				}
			}).
			Run(ctx, client, cfg)
	})
}
