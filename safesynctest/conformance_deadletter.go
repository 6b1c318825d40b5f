package safesynctest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
)

func maxDeliveries(t *testing.T, s *suite) {
	e := s.newEnv(t)
	id := e.publish(1, 1)[0]
	cfg := e.config("c1")
	cfg.MaxDeliveries = 2
	cfg.ClaimIdle, cfg.ClaimInterval = 50*time.Millisecond, 20*time.Millisecond
	var rec recorder
	c := e.consumer(cfg)
	h := rec.handler(errTemporary)
	r := start(func(ctx context.Context) error { return c.Run(ctx, h) })
	dead := e.stream + safesync.DeadLetterSuffix
	waitFor(t, 10*time.Second, "the failing entry dead-lettered", func() bool { return len(DeadLetters(t, e.client, dead)) > 0 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if rec.len() != 2 {
		t.Fatalf("handler called %d times, want MaxDeliveries = 2", rec.len())
	}
	dl := DeadLetters(t, e.client, dead)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	d := dl[0]
	// Moved at the failure that reached MaxDeliveries, the second, with
	// that failure's text and times, and the consumer that moved it.
	if d.OriginalID != id || d.Stream != e.stream || d.Group != "workers" || d.Reason != safesync.DeadLetterMaxDeliveries ||
		d.Deliveries != 2 || d.Failures != 2 || d.Error != errTemporary.Error() || d.Consumer != "c1" ||
		d.FirstFail.IsZero() || d.LastFail.Before(d.FirstFail) || time.Since(d.LastFail) > time.Minute ||
		d.Fields[safesync.DataField] != `{"order_id":1,"amount":5}` {
		t.Fatalf("dead letter = %+v, want entry %s, reason max_deliveries, 2 deliveries and 2 failures, the handler's error, the failure times, consumer c1, original fields", d, id)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending after dead-lettering = %v", p)
	}
	if n := e.metric("coti_safesync_queue_dead_lettered_total", map[string]string{"reason": safesync.DeadLetterMaxDeliveries}); n != 1 {
		t.Fatalf("dead_lettered_total{reason=max_deliveries} = %v", n)
	}
}

// publishMixed publishes two good entries among four that cannot be
// decoded, and returns the good ids and the bad ones.
func publishMixed(t *testing.T, e *env) (good, bad []string) {
	for i, fields := range []map[string]string{
		{safesync.DataField: `{"order_id": 1, "amount": 5}`},
		{safesync.DataField: `not json`},
		{safesync.DataField: `[1, 2]`},
		{safesync.DataField: `{"order_id": 2, "amount": 5}`},
		{safesync.DataField: `{"order_id": NaN, "amount": Infinity}`},
		{"payload": `{"order_id": 3}`},
	} {
		id := Publish(t, e.client, e.stream, fields)
		if i == 0 || i == 3 {
			good = append(good, id)
		} else {
			bad = append(bad, id)
		}
	}
	return good, bad
}

func checkDecodeDeadLetters(t *testing.T, e *env, bad []string) {
	t.Helper()
	dl := DeadLetters(t, e.client, e.stream+safesync.DeadLetterSuffix)
	var got []string
	for _, d := range dl {
		got = append(got, d.OriginalID)
		if d.Reason != safesync.DeadLetterDecode || d.Deliveries != 1 || d.Error == "" {
			t.Errorf("dead letter %+v, want reason decode on the first delivery, with the error", d)
		}
	}
	if !slices.Equal(got, bad) {
		t.Fatalf("dead-lettered %v, want the undecodable %v", got, bad)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending = %v, want none", p)
	}
}

func decodeErrors(t *testing.T, s *suite) {
	e := s.newEnv(t)
	good, bad := publishMixed(t, e)
	var rec recorder
	c := e.consumer(e.config("c1"))
	h := rec.handler(nil)
	r := start(func(ctx context.Context) error { return c.Run(ctx, h) })
	waitFor(t, 10*time.Second, "good entries handled and bad ones dead-lettered", func() bool {
		return rec.len() >= 2 && len(DeadLetters(t, e.client, e.stream+safesync.DeadLetterSuffix)) >= len(bad)
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := rec.ids(); !slices.Equal(got, good) {
		t.Fatalf("handled %v, want the decodable %v", got, good)
	}
	checkDecodeDeadLetters(t, e, bad)
}

func decodeErrorsBatch(t *testing.T, s *suite) {
	e := s.newEnv(t)
	good, bad := publishMixed(t, e)
	var mu sync.Mutex
	var batches [][]string
	c := e.consumer(e.config("c1"))
	r := start(func(ctx context.Context) error {
		return c.RunBatch(ctx, 10, func(ctx context.Context, msgs []safesync.Message[order]) error {
			var ids []string
			for _, m := range msgs {
				ids = append(ids, m.ID)
			}
			mu.Lock()
			batches = append(batches, ids)
			mu.Unlock()
			return c.Ack(ctx, msgs...)
		})
	})
	waitFor(t, 10*time.Second, "the batch handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(batches) > 0
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if len(batches) != 1 || !slices.Equal(batches[0], good) {
		t.Fatalf("batches %v, want one batch of the decodable entries %v", batches, good)
	}
	checkDecodeDeadLetters(t, e, bad)
}

func permanentError(t *testing.T, s *suite) {
	e := s.newEnv(t)
	ids := e.publish(1, 3)
	var rec recorder
	c := e.consumer(e.config("c1"))
	r := start(func(ctx context.Context) error {
		return c.Run(ctx, func(ctx context.Context, m safesync.Message[order]) error {
			rec.add(m)
			if m.Value.OrderID == 2 {
				return fmt.Errorf("order 2: %w", safesync.Permanent(errors.New("amount exceeds limit")))
			}
			return nil
		})
	})
	dead := e.stream + safesync.DeadLetterSuffix
	waitFor(t, 10*time.Second, "3 entries handled, one dead-lettered", func() bool {
		return rec.len() >= 3 && len(DeadLetters(t, e.client, dead)) >= 1
	})
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	dl := DeadLetters(t, e.client, dead)
	if len(dl) != 1 || dl[0].OriginalID != ids[1] || dl[0].Reason != safesync.DeadLetterHandler || dl[0].Deliveries != 1 ||
		!strings.Contains(dl[0].Error, "amount exceeds limit") {
		t.Fatalf("dead letters = %+v, want entry %s with reason handler and the error", dl, ids[1])
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 || rec.len() != 3 {
		t.Fatalf("pending = %v after %d calls, want none after 3", p, rec.len())
	}
}

func deadLetterMove(t *testing.T, s *suite) {
	e := s.newEnv(t)
	id := e.publish(1, 1)[0]
	ctx := ctxFor(t, 10*time.Second)
	c := e.consumer(e.config("c1"))
	m, err := c.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeadLetter(ctx, m, "manual"); err != nil {
		t.Fatal(err)
	}
	dl := DeadLetters(t, e.client, c.Config().DeadLetterStream)
	if len(dl) != 1 || dl[0].OriginalID != id || dl[0].Reason != "manual" || dl[0].Fields[safesync.DataField] != m.Fields[safesync.DataField] {
		t.Fatalf("dead letters = %+v", dl)
	}
	if p := pendingIDs(t, e.client, e.stream); len(p) != 0 {
		t.Fatalf("pending after DeadLetter = %v", p)
	}
}
