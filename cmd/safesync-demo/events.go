package main

import (
	"context"
	"fmt"
	"time"

	"github.com/safesync-go/safesync"
)

// The way back closes the loop: each order's transaction also publishes a
// balance-changed event through the outbox, after the change it describes;
// a Relay adds the committed events to the events stream, and a second
// pipeline, with Once and in order per account, applies them to the
// history table. The invariants then check both ends: the history of every
// account holds one event per applied order, in order, ending at the
// account's balance.

// balanceChanged is the event an applied order publishes: the account's
// balance and order count right after the order.
type balanceChanged struct {
	AccountID int64 `json:"account_id"`
	OrderID   int64 `json:"order_id"`
	Balance   int64 `json:"balance"`
	Orders    int64 `json:"orders"` // orders applied to the account so far, this one included
}

// createEventTables creates the outbox and the history table. history's
// id follows the order in which the history pipeline applied the events.
func (sc *scenario) createEventTables(ctx context.Context) error {
	db := sc.svc.db
	if err := safesync.CreateOutboxTable(ctx, db, sc.n.outbox); err != nil {
		return fmt.Errorf("create %s: %w", sc.n.outbox, err)
	}
	q := "CREATE TABLE " + sc.n.history + " (id BIGINT AUTO_INCREMENT PRIMARY KEY, account_id BIGINT NOT NULL, order_id BIGINT NOT NULL, balance BIGINT NOT NULL, orders BIGINT NOT NULL)"
	if _, err := db.ExecContext(ctx, q); err != nil {
		return fmt.Errorf("create %s: %w", sc.n.history, err)
	}
	return nil
}

// publishBalance writes, inside the order's transaction, the event of the
// account a as the order o left it. It must follow the account's UPDATE:
// the row lock that UPDATE takes orders the events of one account, and the
// relay keeps that order.
func (sc *scenario) publishBalance(ctx context.Context, tx *safesync.Tx, a account, o order) error {
	return sc.balances.Publish(ctx, tx, balanceChanged{AccountID: a.ID, OrderID: o.OrderID, Balance: a.Balance, Orders: a.Orders})
}

// recordHistory is the history pipeline's handler: one row per event.
func (sc *scenario) recordHistory(ctx context.Context, tx *safesync.Tx, msg safesync.Message[balanceChanged]) error {
	e := msg.Value
	if e.AccountID < 1 || e.Orders < 1 {
		return safesync.Permanent(fmt.Errorf("event of order %d: no account or order count", e.OrderID))
	}
	_, err := tx.ExecContext(ctx, "INSERT INTO "+sc.n.history+" (account_id, order_id, balance, orders) VALUES (?, ?, ?, ?)",
		e.AccountID, e.OrderID, e.Balance, e.Orders)
	return err
}

// historyPipeline applies the events with exactly-once effects (Once
// recognises a relayed event by its outbox row, so an event the relay
// added twice is applied once) and in order per account (OrderBy): the
// events of one account never run side by side or out of turn.
func (sc *scenario) historyPipeline(policy safesync.RetryPolicy) safesync.Pipeline[balanceChanged] {
	return safesync.Stream(safesync.JSON[balanceChanged]()).
		Handle(sc.recordHistory).
		AckAfter(safesync.Commit(sc.svc.db, safesync.Label("history"))).
		Once(sc.n.applied).
		Batch(sc.o.batch).
		Retry(policy).
		OrderBy(safesync.OrderKey(func(m safesync.Message[balanceChanged]) int64 { return m.Value.AccountID }))
}

func (sc *scenario) historyConfig() safesync.StreamConfig {
	return safesync.StreamConfig{
		Stream: sc.n.events, Group: sc.n.eventGroup, Consumer: "history-1",
		Block: 200 * time.Millisecond, Count: sc.o.batch, Concurrency: sc.o.concurrency,
		ClaimIdle: 2 * time.Second, ClaimInterval: 500 * time.Millisecond,
		MaxDeliveries: 5, ShutdownGrace: 10 * time.Second, Metrics: sc.metrics,
	}
}

// newRelay returns the relay of the demo's outbox, on a pool of its own:
// its leader holds a connection for as long as it runs.
func (sc *scenario) newRelay() (*safesync.Relay, error) {
	return safesync.NewRelay(sc.svc.relayDB, sc.svc.rdb, safesync.RelayConfig{
		Table:   sc.n.outbox,
		Metrics: sc.metrics,
		AfterXADD: func(_ context.Context, events []safesync.RelayedEvent) {
			sc.relayed.Add(int64(len(events)))
		},
	})
}

// eventProgress reads how far the events are: rows in history, entries
// pending in the history group, dead letters of the events stream.
func (sc *scenario) eventProgress(ctx context.Context) (history, pending, dead int64, err error) {
	history, err = safesync.Get[int64](ctx, sc.svc.db, "SELECT COUNT(*) FROM "+sc.n.history)
	if err != nil {
		return
	}
	if pending, err = sc.pendingOf(ctx, sc.n.events, sc.n.eventGroup, ""); err != nil {
		return
	}
	rdb := sc.svc.rdb
	dead, err = rdb.Do(ctx, rdb.B().Xlen().Key(sc.n.deadEvents).Build()).AsInt64()
	return
}

// historyEvent is a row of the history table, as verify reads it.
type historyEvent struct {
	AccountID int64 `db:"account_id"`
	Balance   int64 `db:"balance"`
	Orders    int64 `db:"orders"`
}

// historyOf checks the history table against the accounts: for each
// account, as many events as applied orders, the last one with the
// account's balance (mismatched counts the accounts where either is
// wrong), and every event's order count the previous one's plus one
// (outOfOrder counts the events where it is not).
func historyOf(events []historyEvent, accts []account) (mismatched, outOfOrder int) {
	type seen struct{ events, lastOrders, lastBalance int64 }
	per := map[int64]*seen{}
	for _, e := range events {
		s := per[e.AccountID]
		if s == nil {
			s = &seen{}
			per[e.AccountID] = s
		}
		if e.Orders != s.lastOrders+1 {
			outOfOrder++
		}
		s.events++
		s.lastOrders, s.lastBalance = e.Orders, e.Balance
	}
	for _, a := range accts {
		s := per[a.ID]
		if s == nil {
			s = &seen{}
		}
		if s.events != a.Orders || s.lastBalance != a.Balance {
			mismatched++
		}
		delete(per, a.ID)
	}
	return mismatched + len(per), outOfOrder // events of accounts that do not exist are wrong too
}
