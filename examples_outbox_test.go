package safesync_test

import (
	"context"
	"database/sql"
	"log"
	"os"
	"os/signal"
	"strconv"

	"github.com/redis/rueidis"
	"github.com/safesync-go/safesync"
)

// BalanceChanged is the event of the outbox examples.
type BalanceChanged struct {
	Account int64 `json:"account"`
	Balance int64 `json:"balance"`
}

// An event published inside the transaction that makes the change: it
// reaches the stream if and only if the transaction commits. The row lock
// comes first, so events of one account get ids, and stream order, in the
// order their transactions committed.
func ExampleToOutbox() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if err := safesync.CreateOutboxTable(ctx, db, safesync.DefaultOutboxTable); err != nil {
		log.Fatal(err)
	}

	type Account struct {
		ID      int64 `db:"id"`
		Balance int64 `db:"balance"`
	}
	balances := safesync.ToOutbox[BalanceChanged](safesync.DefaultOutboxTable, "balances")
	deposit := safesync.WithTx(db, safesync.WithRowLock("accounts", safesync.Key{"id": 7},
		func(ctx context.Context, tx *safesync.Tx, a Account) (int64, error) {
			a.Balance += 25
			if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = ? WHERE id = ?", a.Balance, a.ID); err != nil {
				return 0, err
			}
			return a.Balance, balances.Publish(ctx, tx, BalanceChanged{Account: a.ID, Balance: a.Balance})
		}))
	if _, err := deposit(ctx); err != nil {
		log.Fatal(err)
	}
}

// Partitioned: each account's events go to the partition of its id, in
// order, and a PartitionedConsumer with OrderBy on the same key keeps that
// order downstream.
func ExampleToOutboxPartitioned() {
	parts, err := safesync.NewPartitions("balances", 8)
	if err != nil {
		log.Fatal(err)
	}
	balances := safesync.ToOutboxPartitioned(safesync.DefaultOutboxTable, parts,
		func(e BalanceChanged) string { return strconv.FormatInt(e.Account, 10) })
	_ = balances // balances.Publish(ctx, tx, event) inside any TxFunc
}

// Run the relay in every instance of the service: one of them leads and
// the others stand by, taking over within milliseconds if the leader dies.
// Downstream, a pipeline with Once applies each event once, even when a
// relay crash adds it to the stream twice.
func ExampleRelay() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer rdb.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	relay, err := safesync.NewRelay(db, rdb, safesync.RelayConfig{Table: safesync.DefaultOutboxTable, MaxLen: 1_000_000})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := relay.Run(ctx); err != nil {
			log.Fatal(err)
		}
	}()

	err = safesync.Stream(safesync.JSON[BalanceChanged]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[BalanceChanged]) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO balance_history (account, balance) VALUES (?, ?)", msg.Value.Account, msg.Value.Balance)
			return err
		}).
		AckAfter(safesync.Commit(db)).
		Once(safesync.DefaultDedupeTable).
		Run(ctx, rdb, safesync.StreamConfig{Stream: "balances", Group: "history", Consumer: "history-1"})
	if err != nil {
		log.Fatal(err)
	}
}
