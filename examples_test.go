package safesync_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// openExampleDB starts an embedded MySQL-compatible engine with an accounts
// table, so that the examples run with no services. It runs transactions
// one at a time; see safesynctest.EmbeddedMySQL.
func openExampleDB() (db *sql.DB, stop func()) {
	m, err := safesynctest.StartMySQL()
	if err != nil {
		log.Fatal(err)
	}
	db, err = m.Open()
	if err != nil {
		log.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner VARCHAR(64) NOT NULL, balance BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 0)",
		"INSERT INTO accounts (id, owner, balance) VALUES (1, 'ada', 100), (2, 'bob', 0)",
	} {
		if _, err := db.Exec(q); err != nil {
			log.Fatal(err)
		}
	}
	return db, func() { db.Close(); m.Close() }
}

// A transfer is one transaction: both updates commit together, or neither
// does.
func ExampleWithTx() {
	db, stop := openExampleDB()
	defer stop()
	ctx := context.Background()

	transfer := func(from, to, amount int64) safesync.Func[int64] {
		return safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int64, error) {
			have, err := safesync.Get[int64](ctx, tx, "SELECT balance FROM accounts WHERE id = ?", from)
			if err != nil {
				return 0, err
			}
			if have < amount {
				return 0, errors.New("insufficient funds")
			}
			if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - ? WHERE id = ?", amount, from); err != nil {
				return 0, err
			}
			if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", amount, to); err != nil {
				return 0, err
			}
			return have - amount, nil
		}, safesync.Label("transfer"))
	}

	left, err := transfer(1, 2, 30)(ctx)
	fmt.Println("left:", left, "err:", err)
	_, err = transfer(1, 2, 500)(ctx)
	fmt.Println("err:", err)

	balances, _ := safesync.Select[int64](ctx, db, "SELECT balance FROM accounts ORDER BY id")
	fmt.Println("balances:", balances)
	// Output:
	// left: 70 err: <nil>
	// err: insufficient funds
	// balances: [70 30]
}

// Get reads exactly one row into a struct, a scalar or a map.
func ExampleGet() {
	db, stop := openExampleDB()
	defer stop()
	ctx := context.Background()

	type Account struct {
		ID      int64  `db:"id"`
		Owner   string `db:"owner"`
		Balance int64  // matched to the balance column by name
	}
	acct, err := safesync.Get[Account](ctx, db, "SELECT id, owner, balance FROM accounts WHERE id = ?", 1)
	fmt.Printf("%+v %v\n", acct, err)

	n, err := safesync.Get[int64](ctx, db, "SELECT COUNT(*) FROM accounts")
	fmt.Println(n, err)

	_, err = safesync.Get[Account](ctx, db, "SELECT id, owner, balance FROM accounts WHERE id = ?", 42)
	fmt.Println(errors.Is(err, sql.ErrNoRows))
	// Output:
	// {ID:1 Owner:ada Balance:100} <nil>
	// 2 <nil>
	// true
}

// Select reads all rows; inside a transaction, pass the *Tx.
func ExampleSelect() {
	db, stop := openExampleDB()
	defer stop()

	owners, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) ([]string, error) {
		return safesync.Select[string](ctx, tx, "SELECT owner FROM accounts ORDER BY owner")
	}, safesync.ReadOnly())(context.Background())
	fmt.Println(owners, err)

	rows, err := safesync.Select[map[string]any](context.Background(), db, "SELECT id, owner FROM accounts WHERE id = 2")
	fmt.Println(rows, err)
	// Output:
	// [ada bob] <nil>
	// [map[id:2 owner:bob]] <nil>
}
