package safesync_test

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"slices"

	"github.com/redis/rueidis"
	"github.com/safesync-go/safesync"
)

// Credit is a row of the accounts table, as a batch adds to it.
type Credit struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
}

// A batch handler writes a whole batch with one multi-row statement. A
// payment it refuses is named with FailEntry: it alone is set aside and
// dead-lettered, and the rest of its batch commits.
func ExampleSource_HandleBatch() {
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

	applyPayments := func(ctx context.Context, tx *safesync.Tx, msgs []safesync.Message[Payment]) error {
		rows := make([]Credit, 0, len(msgs))
		for _, m := range msgs {
			if m.Value.Amount <= 0 {
				return safesync.FailEntry(m, safesync.Permanent(errors.New("amount must be positive")))
			}
			rows = append(rows, Credit{ID: m.Value.AccountID, Balance: m.Value.Amount})
		}
		// Rows in key order: concurrent batches lock them in one order.
		slices.SortStableFunc(rows, func(a, b Credit) int { return cmp.Compare(a.ID, b.ID) })
		_, err := safesync.InsertRows(ctx, tx, "accounts", rows, safesync.OnDuplicateAdd("balance"))
		return err
	}
	err = safesync.Stream(safesync.JSON[Payment]()).
		HandleBatch(applyPayments).
		AckAfter(safesync.Commit(db)).
		Once("applied").
		Batch(100).
		Run(context.Background(), rdb, safesync.StreamConfig{Stream: "orders", Group: "billing", Consumer: "worker-1"})
	fmt.Println("run:", err)
}

// InsertRows writes a slice of structs with multi-row statements, names
// quoted and values bound.
func ExampleInsertRows() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	credits := []Credit{{ID: 1, Balance: 5}, {ID: 2, Balance: 7}, {ID: 1, Balance: 10}}
	// INSERT INTO `accounts` (`id`, `balance`) VALUES (?, ?), (?, ?), (?, ?)
	//   ON DUPLICATE KEY UPDATE `balance` = `balance` + VALUES(`balance`)
	err = safesync.RunTx(context.Background(), db, func(ctx context.Context, tx *safesync.Tx) error {
		_, err := safesync.InsertRows(ctx, tx, "accounts", credits, safesync.OnDuplicateAdd("balance"))
		return err
	})
	fmt.Println(err)
}
