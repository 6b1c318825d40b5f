package safesync_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"sync"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"
	"github.com/safesync-go/safesync"
)

// A transfer is one transaction: both updates commit together, or neither
// does.
func ExampleWithTx() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
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
}

// Get reads exactly one row into a struct, a scalar or a map.
func ExampleGet() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
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
}

// Select reads all rows; inside a transaction, pass the *Tx.
func ExampleSelect() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	owners, err := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) ([]string, error) {
		return safesync.Select[string](ctx, tx, "SELECT owner FROM accounts ORDER BY owner")
	}, safesync.ReadOnly())(context.Background())
	fmt.Println(owners, err)

	rows, err := safesync.Select[map[string]any](context.Background(), db, "SELECT id, owner FROM accounts WHERE id = 2")
	fmt.Println(rows, err)
}

type Account struct {
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
	Version int64  `db:"version"`
}

// WithRowLock reads the row with SELECT … FOR UPDATE and hands it to fn;
// the lock is held until the transaction ends.
func ExampleWithRowLock() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	withdraw := safesync.WithRowLock("accounts", safesync.Key{"id": 1},
		func(ctx context.Context, tx *safesync.Tx, acct Account) (int64, error) {
			if acct.Balance < 60 {
				return acct.Balance, errors.New("insufficient funds")
			}
			_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = ? WHERE id = ?", acct.Balance-60, acct.ID)
			return acct.Balance - 60, err
		})
	for range 2 {
		left, err := safesync.WithTx(db, withdraw)(context.Background())
		fmt.Println(left, err) // a failed transaction returns the zero value
	}
	_, err = safesync.WithTx(db, safesync.WithRowLock("accounts", safesync.Key{"id": 9},
		func(ctx context.Context, tx *safesync.Tx, acct Account) (int64, error) { return 0, nil }))(context.Background())
	fmt.Println(errors.Is(err, safesync.ErrNotFound))
}

// WithAdvisoryLock serialises work across processes by name; the lock is
// released on the same connection when the transaction ends.
func ExampleWithAdvisoryLock() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	recompute := safesync.WithAdvisoryLock("user:1:summary", 5*time.Second,
		func(ctx context.Context, tx *safesync.Tx) (int64, error) {
			return safesync.Get[int64](ctx, tx, "SELECT SUM(balance) FROM accounts")
		})
	total, err := safesync.WithTx(db, recompute)(ctx)
	fmt.Println(total, err)

	free, _ := safesync.Get[int64](ctx, db, "SELECT IS_FREE_LOCK('user:1:summary')")
	fmt.Println("released:", free == 1)
}

// OCC reads the row and its version, lets a pure function compute the new
// row, and writes the changed columns guarded by the version.
func ExampleOCC() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	deposit := func(amount int64) func(Account) (Account, error) {
		return func(a Account) (Account, error) {
			a.Balance += amount
			return a, nil
		}
	}
	read := safesync.ReadVersioned[Account]("accounts", safesync.Key{"id": 2}, "version")
	acct, err := safesync.WithTx(db, safesync.OCC(read, deposit(25)))(context.Background())
	fmt.Printf("%+v %v\n", acct, err)
}

// Retry runs a whole new transaction for each attempt, and only for errors
// a new transaction can fix, such as an optimistic conflict.
func ExampleRetry() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	attempts := 0
	read := func(ctx context.Context, tx *safesync.Tx) (safesync.Versioned[Account], error) {
		attempts++
		v, err := safesync.ReadVersioned[Account]("accounts", safesync.Key{"id": 1}, "version")(ctx, tx)
		if attempts == 1 {
			v.Version-- // the first read is stale, as if another worker committed after it
		}
		return v, err
	}
	addFive := func(a Account) (Account, error) { a.Balance += 5; return a, nil }

	policy := safesync.Backoff(time.Millisecond, 5).WithOnRetry(func(e safesync.RetryEvent) {
		fmt.Println("retrying after:", e.Reason)
	})
	acct, err := safesync.Retry(policy, safesync.WithTx(db, safesync.OCC(read, addFive)))(context.Background())
	fmt.Println(acct.Balance, acct.Version, err, "attempts:", attempts)
}

// RunTx runs a transaction that produces no value and returns only its
// error.
func ExampleRunTx() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	err = safesync.RunTx(context.Background(), db, func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - 30 WHERE id = ?", 1); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + 30 WHERE id = ?", 2)
		return err
	}, safesync.Label("transfer"))
	fmt.Println(err)
}

// LockRow is the row lock for a callback that returns only an error; RunTx
// runs it, and NoResult makes it a TxFunc for WithTx, Retry and the other
// locks.
func ExampleLockRow() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()

	withdraw := safesync.LockRow("accounts", safesync.Key{"id": 1},
		func(ctx context.Context, tx *safesync.Tx, acct Account) error {
			if acct.Balance < 60 {
				return errors.New("insufficient funds")
			}
			_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = ? WHERE id = ?", acct.Balance-60, acct.ID)
			return err
		})
	fmt.Println(safesync.RunTx(ctx, db, withdraw))

	// Retried as a whole transaction, under an advisory lock.
	policy := safesync.Backoff(10*time.Millisecond, 20)
	_, err = safesync.Retry(policy, safesync.WithTx(db,
		safesync.WithAdvisoryLock("user:1", 5*time.Second, safesync.NoResult(withdraw))))(ctx)
	fmt.Println(err)
}

// OCCRow is OCC on the row with a key, its row type inferred from mutate.
func ExampleOCCRow() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	addFive := func(a Account) (Account, error) { a.Balance += 5; return a, nil }
	policy := safesync.Backoff(10*time.Millisecond, 20)
	acct, err := safesync.Retry(policy, safesync.WithTx(db,
		safesync.OCCRow("accounts", safesync.Key{"id": 1}, "version", addFive)))(context.Background())
	fmt.Println(acct.Balance, acct.Version, err)
}

// InsertIdempotent reports a duplicate key as (false, nil) and every other
// failure as an error.
func ExampleInsertIdempotent() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	create := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (bool, error) {
		return safesync.InsertIdempotent(ctx, tx, "INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)", 3, "cy", 0)
	})
	for range 2 {
		inserted, err := create(context.Background())
		fmt.Println(inserted, err)
	}
}

// Payment is what ExampleStream applies to an account.
type Payment struct {
	OrderID   int64 `json:"order_id"`
	AccountID int64 `json:"account_id"`
	Amount    int64 `json:"amount"`
}

// A pipeline: entries in the original framework's wire format are decoded,
// applied in a transaction, recorded for exactly-once, and acknowledged
// only after COMMIT.
func ExampleStream() {
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := safesync.CreateDedupeTable(ctx, db, "applied"); err != nil {
		log.Fatal(err)
	}

	for _, o := range []Payment{{1, 1, 5}, {2, 2, 7}, {3, 1, 10}} {
		if _, err := safesync.PublishJSON(ctx, rdb, "orders", o); err != nil {
			log.Fatal(err)
		}
	}
	// A producer written in Python adds entries the same way.
	if _, err := safesync.Publish(ctx, rdb, "orders", map[string]string{"data": `{"order_id": 4, "account_id": 2, "amount": 1}`}); err != nil {
		log.Fatal(err)
	}

	applyOrder := func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[Payment]) error {
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", msg.Value.Amount, msg.Value.AccountID)
		return err
	}
	var applied sync.WaitGroup
	applied.Add(4)
	pipeline := safesync.Stream(safesync.JSON[Payment]()).
		Handle(applyOrder).
		AckAfter(safesync.Commit(db)).
		Once("applied").
		AfterCommit(func(ctx context.Context, msgs []safesync.Message[Payment]) { applied.Add(-len(msgs)) })

	done := make(chan error, 1)
	go func() {
		done <- pipeline.Run(ctx, rdb, safesync.StreamConfig{Stream: "orders", Group: "billing", Consumer: "worker-1"})
	}()
	applied.Wait()
	cancel()
	fmt.Println("run:", <-done)

	balances, _ := safesync.Select[int64](context.Background(), db, "SELECT balance FROM accounts ORDER BY id")
	fmt.Println("balances:", balances)
}
