package mysqltest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

type balanceChanged struct {
	Account int64 `json:"account"`
	Balance int64 `json:"balance"`
}

// relayPool is a second pool on the embedded server for a relay, whose
// leader connection is held for as long as it runs (the pool of New has
// one connection, which the writers need).
func relayPool(t *testing.T) (writers, relay *sql.DB) {
	t.Helper()
	s, err := mysqltest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	writers, err = s.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { writers.Close() })
	relay, err = sql.Open("mysql", s.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	return writers, relay
}

func TestOutboxPublishWritesRowsOnlyWhenTheTransactionCommits(t *testing.T) {
	db := embeddedDB(t)
	ctx := context.Background()
	if err := safesync.CreateOutboxTable(ctx, db, "outbox"); err != nil {
		t.Fatal(err)
	}
	w := safesync.ToOutbox[balanceChanged]("outbox", "balances")
	tagged := safesync.ToOutbox[balanceChanged]("outbox", "balances").Encoding(func(b balanceChanged) (map[string]string, error) {
		f, err := safesync.EncodeJSON(b)
		if err == nil {
			f["kind"] = "balance"
		}
		return f, err
	})
	errRollback := errors.New("rollback")
	run := func(fn func(ctx context.Context, tx *safesync.Tx) error) error {
		_, err := safesync.WithTx(db, safesync.NoResult(fn), safesync.WithMetrics(nil))(ctx)
		return err
	}
	if err := run(func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - 10 WHERE id = 1"); err != nil {
			return err
		}
		return w.Publish(ctx, tx, balanceChanged{Account: 1, Balance: 90})
	}); err != nil {
		t.Fatal(err)
	}
	if err := run(func(ctx context.Context, tx *safesync.Tx) error {
		if err := w.Publish(ctx, tx, balanceChanged{Account: 2, Balance: -1}); err != nil {
			return err
		}
		return errRollback
	}); !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	if err := run(func(ctx context.Context, tx *safesync.Tx) error {
		return tagged.Publish(ctx, tx, balanceChanged{Account: 2, Balance: 10})
	}); err != nil {
		t.Fatal(err)
	}
	if err := run(func(ctx context.Context, tx *safesync.Tx) error {
		return safesync.ToOutbox[[]int]("outbox", "balances").Publish(ctx, tx, []int{1})
	}); err == nil {
		t.Fatal("an event that is not a JSON object was published")
	}

	type row struct {
		ID      int64   `db:"id"`
		Stream  string  `db:"stream"`
		Data    *string `db:"data"`
		Fields  []byte  `db:"fields"`
		Relayed *string `db:"relayed_at"`
	}
	rows, err := safesync.Select[row](ctx, db, "SELECT id, stream, data, fields, relayed_at FROM outbox ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2: the rolled-back event must not exist", len(rows))
	}
	if r := rows[0]; r.Stream != "balances" || r.Data == nil || *r.Data != `{"account":1,"balance":90}` || r.Fields != nil || r.Relayed != nil {
		t.Fatalf("first row %+v", r)
	}
	if r := rows[1]; r.Data == nil || *r.Data != `{"account":2,"balance":10}` || len(r.Fields) == 0 {
		t.Fatalf("second row %+v: want data and the extra field packed", r)
	}
}

func TestOutboxRelayOnTheEmbeddedEngine(t *testing.T) {
	writers, relayDB := relayPool(t)
	rdb := safesynctest.NewRedis(t)
	ctx := context.Background()
	if err := safesync.CreateOutboxTable(ctx, writers, "outbox"); err != nil {
		t.Fatal(err)
	}
	w := safesync.ToOutbox[balanceChanged]("outbox", "balances")
	for i := range 5 {
		if _, err := safesync.WithTx(writers, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			return w.Publish(ctx, tx, balanceChanged{Account: int64(i), Balance: int64(10 * i)})
		}))(ctx); err != nil {
			t.Fatal(err)
		}
	}
	m, reg := safesynctest.NewMetrics(t)
	relay, err := safesync.NewRelay(relayDB, rdb, safesync.RelayConfig{Table: "outbox", Metrics: m, StatsInterval: time.Millisecond, PollMax: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(runCtx) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(safesynctest.Entries(t, rdb, "balances")) < 5 {
		if time.Now().After(deadline) {
			t.Fatal("events not relayed within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, x := range safesynctest.Entries(t, rdb, "balances") {
		if want := fmt.Sprintf(`{"account":%d,"balance":%d}`, i, 10*i); x.FieldValues["data"] != want || x.FieldValues[safesync.OriginFieldStream] != "outbox:outbox" {
			t.Errorf("entry %d = %v, want data %s and the outbox's origin", i, x.FieldValues, want)
		}
	}
	if n, err := safesync.Get[int64](ctx, writers, "SELECT COUNT(*) FROM outbox"); err != nil || n != 0 {
		t.Fatalf("%d rows left, %v", n, err)
	}
	if v := safesynctest.MetricValue(t, reg, "coti_safesync_outbox_relayed_total", map[string]string{"outbox": "outbox"}); v != 5 {
		t.Errorf("relayed_total = %v, want 5", v)
	}
	if v := safesynctest.MetricValue(t, reg, "coti_safesync_outbox_relay_leader", map[string]string{"outbox": "outbox"}); v != 0 {
		t.Errorf("relay_leader = %v after Run returned, want 0", v)
	}
}

// Events published inside the transaction that changes a balance reach the
// stream through the relay once the transaction has committed; a
// rolled-back transaction's event never does. (The relay starts after the
// writes here because the embedded engine does not isolate concurrent
// transactions; against MySQL it runs all along, and a commit in its
// process wakes it.)
func Example_outbox() {
	s, err := mysqltest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	db, err := s.Open()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	relayDB, err := sql.Open("mysql", s.DSN) // the relay holds a connection of its own
	if err != nil {
		fmt.Println(err)
		return
	}
	defer relayDB.Close()
	redis, err := safesynctest.StartRedis()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer redis.Close()
	rdb, err := redis.Client()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rdb.Close()
	ctx := context.Background()
	for _, q := range []string{"CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)", "INSERT INTO accounts VALUES (1, 100)"} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := safesync.CreateOutboxTable(ctx, db, "outbox"); err != nil {
		fmt.Println(err)
		return
	}

	balances := safesync.ToOutbox[balanceChanged]("outbox", "balances")
	withdraw := func(amount int64) safesync.Func[struct{}] {
		return safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
			if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - ? WHERE id = 1", amount); err != nil {
				return err
			}
			balance, err := safesync.Get[int64](ctx, tx, "SELECT balance FROM accounts WHERE id = 1")
			if err != nil {
				return err
			}
			if err := balances.Publish(ctx, tx, balanceChanged{Account: 1, Balance: balance}); err != nil {
				return err
			}
			if balance < 0 {
				return errors.New("insufficient funds") // rolls back the update and the event
			}
			return nil
		}))
	}

	_, err = withdraw(30)(ctx)
	fmt.Println("withdraw 30:", err)
	_, err = withdraw(500)(ctx)
	fmt.Println("withdraw 500:", err)
	_, err = withdraw(20)(ctx)
	fmt.Println("withdraw 20:", err)

	relay, err := safesync.NewRelay(relayDB, rdb, safesync.RelayConfig{Table: "outbox"})
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(runCtx) }()

	var entries []rueidis.XRangeEntry
	for deadline := time.Now().Add(10 * time.Second); len(entries) < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		entries, _ = rdb.Do(ctx, rdb.B().Xrange().Key("balances").Start("-").End("+").Build()).AsXRange()
	}
	stop()
	fmt.Println("relay:", <-done)
	for _, e := range entries {
		fmt.Println(e.FieldValues["data"], "from", e.FieldValues[safesync.OriginFieldStream])
	}
	// Output:
	// withdraw 30: <nil>
	// withdraw 500: insufficient funds
	// withdraw 20: <nil>
	// relay: <nil>
	// {"account":1,"balance":70} from outbox:outbox
	// {"account":1,"balance":50} from outbox:outbox
}
