package mysqltest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

type payment struct {
	ID     int `json:"id"`
	Amount int `json:"amount"`
}

// A pipeline handler's unit test: HandleTxJSON runs it in one transaction
// per entry on the embedded MySQL that New starts, and the test reads the effects back.
func Example() {
	t := &testing.T{} // in a test, the *testing.T it is given
	db := mysqltest.New(t)
	if _, err := db.Exec("CREATE TABLE totals (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL)"); err != nil {
		fmt.Println(err)
		return
	}
	addToTotal := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[payment]) error {
		if msg.Value.Amount <= 0 {
			return safesync.Permanent(fmt.Errorf("order %d: amount must be positive", msg.Value.ID))
		}
		_, err := tx.ExecContext(ctx, "INSERT INTO totals (id, amount) VALUES (1, ?) ON DUPLICATE KEY UPDATE amount = amount + ?", msg.Value.Amount, msg.Value.Amount)
		return err
	}
	rep := safesynctest.HandleTxJSON(t, db, addToTotal, payment{ID: 1, Amount: 5}, payment{ID: 2, Amount: 0}, payment{ID: 3, Amount: 7})
	total, err := safesync.Get[int64](context.Background(), db, "SELECT amount FROM totals WHERE id = 1")
	fmt.Println("total:", total, err)
	fmt.Println("acked:", len(rep.Acked), "dead-lettered:", len(rep.DeadLettered))
	// Output:
	// total: 12 <nil>
	// acked: 2 dead-lettered: 1
}
