package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// order is one message, in the original framework's wire format: field
// "data" holding {"order_id": …, "account_id": …, "amount": …}.
type order struct {
	OrderID   int64 `json:"order_id"`
	AccountID int64 `json:"account_id"`
	Amount    int64 `json:"amount"`
}

// account carries, besides its balance, how many orders were applied to
// it and the sum of their ids: a lost or doubled order cannot leave all
// three right, so together they prove exactly-once effects.
type account struct {
	ID       int64 `db:"id"`
	Balance  int64 `db:"balance"`
	Orders   int64 `db:"orders"`
	OrderIDs int64 `db:"order_ids"`
	Version  int64 `db:"version"`
}

// expectation is what an account must hold at the end.
type expectation struct{ balance, orders, orderIDs int64 }

// malformedKinds are the bad entries mixed into the stream; each must end
// in the dead-letter stream and nowhere else.
var malformedKinds = []struct {
	name   string
	fields map[string]string
}{
	{"malformed JSON", map[string]string{"data": `{"order_id": 1, "amount": `}},
	{"JSON that is not an object", map[string]string{"data": `[1, 2, 3]`}},
	{"no data field", map[string]string{"payload": `{"order_id": 2}`}},
	{"NaN", map[string]string{"data": `{"order_id": 3, "account_id": 1, "amount": NaN}`}},
	{"invalid UTF-8", map[string]string{"data": "{\"order_id\": 4, \"note\": \"\xff\xfe\"}"}},
}

var errCrashed = errors.New("worker crashed")

type scenario struct {
	o        options
	n        names
	svc      *services
	metrics  *safesync.Metrics
	registry prometheus.Gatherer

	expected     int64                 // sum of all valid amounts
	perAccount   map[int64]expectation // what each account must hold
	malformedIDs map[string]string     // id -> kind
	balances     safesync.OutboxWriter[balanceChanged]

	started   time.Time
	finished  time.Time // the orders settled
	loopEnd   time.Time // everything settled (real servers)
	phases    []phase   // in embedded mode: orders, relay, history
	retries   atomic.Int64
	committed atomic.Int64
	relayed   atomic.Int64 // events the relay added to the events stream
	pruned    atomic.Int64 // exactly-once records pruned (embedded mode)
	crashedAt atomic.Int64 // entries the crashed worker left pending, -1 before

	mu        sync.Mutex
	firstSeen map[string]time.Time // entry id -> first handler start
	latencies []time.Duration      // handler start -> COMMIT, per entry
}

func newScenario(o options, n names, svc *services, m *safesync.Metrics, reg prometheus.Gatherer) *scenario {
	sc := &scenario{o: o, n: n, svc: svc, metrics: m, registry: reg, perAccount: map[int64]expectation{}, malformedIDs: map[string]string{}, firstSeen: map[string]time.Time{},
		balances: safesync.ToOutbox[balanceChanged](n.outbox, n.events)}
	sc.crashedAt.Store(-1)
	return sc
}

// prepare claims the run's names (see owned.go), then creates the accounts,
// exactly-once, outbox and history tables.
func (sc *scenario) prepare(ctx context.Context) error {
	db := sc.svc.db
	if err := sc.n.claim(ctx, db, sc.svc.rdb); err != nil {
		return err
	}
	q := "CREATE TABLE " + sc.n.accounts + " (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, orders BIGINT NOT NULL DEFAULT 0, order_ids BIGINT NOT NULL DEFAULT 0, version BIGINT NOT NULL DEFAULT 0)"
	if _, err := db.ExecContext(ctx, q); err != nil {
		return fmt.Errorf("create %s: %w", sc.n.accounts, err)
	}
	if err := safesync.CreateDedupeTable(ctx, db, sc.n.applied); err != nil {
		return err
	}
	if err := sc.createEventTables(ctx); err != nil {
		return err
	}
	for id := 1; id <= sc.o.accounts; id++ {
		if _, err := db.ExecContext(ctx, "INSERT INTO "+sc.n.accounts+" (id, balance) VALUES (?, 0)", id); err != nil {
			return err
		}
	}
	return nil
}

// publish adds the orders, with the malformed entries spread among them.
func (sc *scenario) publish(ctx context.Context) error {
	start := time.Now()
	every := sc.o.messages/(sc.o.malformed+1) + 1
	bad := 0
	for i := 1; i <= sc.o.messages; i++ {
		o := order{OrderID: int64(i), AccountID: int64(1 + i%sc.o.accounts), Amount: int64(1 + (i*7)%100)}
		if _, err := safesync.PublishJSON(ctx, sc.svc.rdb, sc.n.stream, o); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		sc.expected += o.Amount
		e := sc.perAccount[o.AccountID]
		sc.perAccount[o.AccountID] = expectation{e.balance + o.Amount, e.orders + 1, e.orderIDs + o.OrderID}
		if i%every == 0 && bad < sc.o.malformed {
			if err := sc.publishMalformed(ctx, bad); err != nil {
				return err
			}
			bad++
		}
	}
	for ; bad < sc.o.malformed; bad++ {
		if err := sc.publishMalformed(ctx, bad); err != nil {
			return err
		}
	}
	fmt.Printf("published %d orders and %d malformed entries to %s in %v\n", sc.o.messages, sc.o.malformed, sc.n.stream, time.Since(start).Round(time.Millisecond))
	return nil
}

func (sc *scenario) publishMalformed(ctx context.Context, n int) error {
	kind := malformedKinds[n%len(malformedKinds)]
	id, err := safesync.Publish(ctx, sc.svc.rdb, sc.n.stream, kind.fields)
	if err != nil {
		return fmt.Errorf("publish malformed entry: %w", err)
	}
	sc.malformedIDs[id] = kind.name
	return nil
}

// handler applies an order to its account with the chosen strategy, and
// publishes the account's new balance through the outbox in the same
// transaction.
func (sc *scenario) handler() safesync.TxHandler[order] {
	apply := func(o order) func(account) (account, error) {
		return func(a account) (account, error) {
			a.Balance += o.Amount
			a.Orders++
			a.OrderIDs += o.OrderID
			return a, nil
		}
	}
	return func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		sc.mu.Lock()
		if _, seen := sc.firstSeen[msg.ID]; !seen {
			sc.firstSeen[msg.ID] = time.Now()
		}
		sc.mu.Unlock()
		o := msg.Value
		if o.Amount <= 0 || o.AccountID < 1 {
			return safesync.Permanent(fmt.Errorf("order %d: invalid amount or account", o.OrderID))
		}
		key := safesync.Key{"id": o.AccountID}
		var a account
		var err error
		if sc.o.strategy == "rowlock" {
			a, err = safesync.WithRowLock(sc.n.accounts, key, func(ctx context.Context, tx *safesync.Tx, a account) (account, error) {
				a, _ = apply(o)(a)
				_, err := tx.ExecContext(ctx, "UPDATE "+sc.n.accounts+" SET balance = ?, orders = ?, order_ids = ? WHERE id = ?", a.Balance, a.Orders, a.OrderIDs, a.ID)
				return a, err
			})(ctx, tx)
		} else {
			a, err = safesync.OCC(safesync.ReadVersioned[account](sc.n.accounts, key, "version"), apply(o))(ctx, tx)
		}
		if err != nil {
			return err
		}
		return sc.publishBalance(ctx, tx, a, o)
	}
}

// afterCommit records each entry's latency from its first handler start
// to the COMMIT of the transaction that applied it.
func (sc *scenario) afterCommit(_ context.Context, msgs []safesync.Message[order]) {
	now := time.Now()
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, m := range msgs {
		if t, ok := sc.firstSeen[m.ID]; ok {
			sc.latencies = append(sc.latencies, now.Sub(t))
			delete(sc.firstSeen, m.ID)
		}
	}
	sc.committed.Add(int64(len(msgs)))
}

func (sc *scenario) config(worker int) safesync.StreamConfig {
	return safesync.StreamConfig{
		Stream: sc.n.stream, Group: sc.n.group, Consumer: fmt.Sprintf("worker-%d", worker),
		Block: 200 * time.Millisecond, Count: sc.o.batch, Concurrency: sc.o.concurrency,
		ClaimIdle: 2 * time.Second, ClaimInterval: 500 * time.Millisecond,
		MaxDeliveries: 5, ShutdownGrace: 10 * time.Second, Metrics: sc.metrics,
	}
}

// crashingHandler handles entries normally until a share of the stream has
// been committed, then fails its current batch and stops its worker, the
// way a killed process leaves its read entries pending.
func (sc *scenario) crashingHandler(crash context.CancelFunc) safesync.TxHandler[order] {
	inner := sc.handler()
	threshold := int64(sc.o.messages / 4)
	var crashed atomic.Bool
	return func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
		if crashed.Load() {
			return errCrashed
		}
		if sc.committed.Load() >= threshold && crashed.CompareAndSwap(false, true) {
			crash()
			return errCrashed
		}
		return inner(ctx, tx, msg)
	}
}

// noteCrash prints, once, how many entries the crashed worker left.
func (sc *scenario) noteCrash(ctx context.Context) {
	if !sc.o.crash || sc.crashedAt.Load() >= 0 || sc.committed.Load() < int64(sc.o.messages/4) {
		return
	}
	left, err := sc.pendingOf(ctx, sc.n.stream, sc.n.group, "worker-1")
	if err != nil || left == 0 {
		return
	}
	sc.crashedAt.Store(left)
	fmt.Printf("  worker-1 crashed mid-batch: %d entries left pending under its name; the other workers reclaim them once idle for 2s\n", left)
}

// orderProgress reads how far the orders are: orders applied (as counted
// in the accounts), entries pending in the group, dead letters.
func (sc *scenario) orderProgress(ctx context.Context) (applied, pending, dead int64, err error) {
	applied, err = safesync.Get[int64](ctx, sc.svc.db, "SELECT COALESCE(SUM(orders), 0) FROM "+sc.n.accounts)
	if err != nil {
		return
	}
	if pending, err = sc.pendingOf(ctx, sc.n.stream, sc.n.group, ""); err != nil {
		return
	}
	rdb := sc.svc.rdb
	dead, err = rdb.Do(ctx, rdb.B().Xlen().Key(sc.n.deadStream).Build()).AsInt64()
	return
}

// pruneWindow is how old an exactly-once record must be before the demo
// prunes it in embedded mode. No entry of the demo can be redelivered
// after its transaction committed (a commit is always followed by its
// acknowledgement to the in-process Redis), and in embedded mode the relay
// has finished, without a crash, before the history pipeline starts (no
// event comes twice), so the window only needs to outlast the
// transactions in flight.
const pruneWindow = 5 * time.Second

// prune keeps the exactly-once table short in embedded mode, where the
// engine's cost per insert grows with the table, until ctx ends.
func (sc *scenario) prune(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, err := safesync.PruneDedupe(ctx, sc.svc.db, sc.n.applied, pruneWindow)
		sc.pruned.Add(n)
		if err != nil && ctx.Err() == nil {
			fmt.Println("  prune:", err)
		}
	}
}

// pendingOf counts the pending entries of group on stream, of one consumer
// if named, from the summary form of XPENDING.
func (sc *scenario) pendingOf(ctx context.Context, stream, group, consumer string) (int64, error) {
	rdb := sc.svc.rdb
	summary, err := rdb.Do(ctx, rdb.B().Xpending().Key(stream).Group(group).Build()).ToArray()
	if err != nil {
		if re, ok := rueidis.IsRedisErr(err); ok && strings.HasPrefix(re.Error(), "NOGROUP") {
			return 0, nil
		}
		return 0, err
	}
	if len(summary) != 4 {
		return 0, fmt.Errorf("XPENDING %s %s: %d fields in the reply, want 4", stream, group, len(summary))
	}
	if consumer == "" {
		return summary[0].AsInt64()
	}
	if summary[3].IsNil() { // no consumer has pending entries
		return 0, nil
	}
	perConsumer, err := summary[3].ToArray()
	if err != nil {
		return 0, err
	}
	for _, c := range perConsumer {
		pair, err := c.ToArray()
		if err != nil || len(pair) != 2 {
			continue
		}
		if name, _ := pair[0].ToString(); name == consumer {
			return pair[1].AsInt64() // Redis sends the count as a string
		}
	}
	return 0, nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p)]
}

func (sc *scenario) sortedLatencies() []time.Duration {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	l := append([]time.Duration(nil), sc.latencies...)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}
