// Command orders-worker is a small, complete safesync worker: it consumes a
// stream of orders and, for each one, in one transaction, reserves stock
// under a row lock and debits the customer's account with an optimistic
// update, exactly once, acknowledging the entry only after COMMIT. It
// serves Prometheus metrics and an admin endpoint that credits an account
// (an optimistic update retried as a whole transaction), and stops cleanly
// on SIGTERM or Ctrl-C: in-flight orders commit and are acknowledged, the
// rest stay pending for the next start.
//
//	orders-worker -mysql 'app:secret@tcp(127.0.0.1:3306)/shop' -redis 127.0.0.1:6379
//
// Publish an order (the original framework's wire format, one field data):
//
//	redis-cli XADD orders '*' data '{"order_id":1,"account_id":1,"sku":"tea","quantity":2,"amount":700}'
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// Order is one stream entry.
type Order struct {
	OrderID   int64  `json:"order_id"`
	AccountID int64  `json:"account_id"`
	SKU       string `json:"sku"`
	Quantity  int64  `json:"quantity"`
	Amount    int64  `json:"amount"` // in cents
}

// Account is a row of accounts; Version guards optimistic updates.
type Account struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
	Version int64 `db:"version"`
}

// Stock is a row of stock, changed under a row lock.
type Stock struct {
	SKU    string `db:"sku"`
	OnHand int64  `db:"on_hand"`
}

// Schema is what the worker needs; production keeps it in migrations.
var Schema = []string{
	"CREATE TABLE IF NOT EXISTS accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 0)",
	"CREATE TABLE IF NOT EXISTS stock (sku VARCHAR(64) PRIMARY KEY, on_hand BIGINT NOT NULL)",
}

// AppliedTable records the orders applied, for exactly-once effects.
const AppliedTable = "orders_applied"

// ErrInsufficient is a business refusal: the order is dead-lettered, not
// retried.
var ErrInsufficient = errors.New("insufficient funds or stock")

// ApplyOrder is the pipeline's handler: everything it does happens in the
// pipeline's transaction, tx.
func ApplyOrder(ctx context.Context, tx *safesync.Tx, msg safesync.Message[Order]) error {
	o := msg.Value
	if o.Quantity <= 0 || o.Amount < 0 {
		return safesync.Permanent(fmt.Errorf("order %d: bad quantity or amount", o.OrderID))
	}
	// Reserve stock under a row lock: concurrent orders for the same SKU
	// queue on the row instead of redoing work.
	reserve := safesync.WithRowLock("stock", safesync.Key{"sku": o.SKU},
		func(ctx context.Context, tx *safesync.Tx, s Stock) (struct{}, error) {
			if s.OnHand < o.Quantity {
				return struct{}{}, safesync.Permanent(fmt.Errorf("order %d: %w: %d %s on hand", o.OrderID, ErrInsufficient, s.OnHand, s.SKU))
			}
			_, err := tx.ExecContext(ctx, "UPDATE stock SET on_hand = on_hand - ? WHERE sku = ?", o.Quantity, o.SKU)
			return struct{}{}, err
		})
	if _, err := reserve(ctx, tx); err != nil {
		if errors.Is(err, safesync.ErrNotFound) {
			return safesync.Permanent(fmt.Errorf("order %d: unknown sku %q", o.OrderID, o.SKU))
		}
		return err
	}
	// Debit the account optimistically; a conflict rolls the whole
	// transaction back and the pipeline's Retry runs it again.
	_, err := safesync.OCC(readAccount(o.AccountID), func(a Account) (Account, error) {
		if a.Balance < o.Amount {
			return a, safesync.Permanent(fmt.Errorf("order %d: %w: balance %d", o.OrderID, ErrInsufficient, a.Balance))
		}
		a.Balance -= o.Amount
		return a, nil
	})(ctx, tx)
	return err
}

func readAccount(id int64) safesync.TxFunc[safesync.Versioned[Account]] {
	return safesync.ReadVersioned[Account]("accounts", safesync.Key{"id": id}, "version")
}

// Credit adds amount to an account in its own transaction, retried while
// the optimistic update conflicts. Outside a pipeline, the transaction and
// the retries record in m.
func Credit(db *sql.DB, policy safesync.RetryPolicy, m *safesync.Metrics, id, amount int64) safesync.Func[Account] {
	add := func(a Account) (Account, error) { a.Balance += amount; return a, nil }
	return safesync.Retry(policy.WithMetrics(m), safesync.WithTx(db, safesync.OCC(readAccount(id), add), safesync.WithMetrics(m), safesync.Label("credit")))
}

// Pipeline is the worker's stream → database pipeline. Its metrics are
// given once, in StreamConfig.Metrics, which also reaches its transactions
// and its retries.
func Pipeline(db *sql.DB, policy safesync.RetryPolicy) safesync.Pipeline[Order] {
	return safesync.Stream(safesync.JSON[Order]()).
		Handle(ApplyOrder).
		AckAfter(safesync.Commit(db, safesync.Label("order"))).
		Once(AppliedTable).
		Retry(policy).
		OrderBy(safesync.OrderKey(func(msg safesync.Message[Order]) int64 { return msg.Value.AccountID }))
}

// ConsumerName is the default consumer name: the pod's name on Kubernetes
// (POD_NAME, from the downward API), else the host name and WORKER_INDEX,
// else the host name and the process id. A name must be unique among the
// processes running at once: a second live process with the name of
// another fails at start with safesync.ErrConsumerNameInUse, so the host
// name alone fails as soon as a host runs two workers. A name that stays
// the same across restarts (the pod's, or host and index) lets a restarted
// worker re-read at once what it left pending; under a new name (a new
// process id) those entries wait until another consumer claims them after
// ClaimIdle.
func ConsumerName() string {
	if pod := os.Getenv("POD_NAME"); pod != "" {
		return pod
	}
	host, _ := os.Hostname()
	if i := os.Getenv("WORKER_INDEX"); i != "" {
		return host + "-" + i
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

func main() {
	dsn := flag.String("mysql", "root@tcp(127.0.0.1:3306)/test", "MySQL DSN")
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	stream := flag.String("stream", "orders", "stream of orders")
	listen := flag.String("listen", "127.0.0.1:9090", "address of /metrics and /credit")
	consumer := flag.String("consumer", ConsumerName(), "consumer name: unique among running workers, best stable across restarts (default: $POD_NAME, else host-$WORKER_INDEX, else host-pid)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// SIGTERM (docker stop, Kubernetes) and Ctrl-C end ctx: Run stops
	// reading, lets in-flight transactions commit and acknowledge, returns.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, *dsn, *addr, *stream, *consumer, *listen); err != nil {
		log.Error("orders-worker stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, dsn, addr, stream, consumer, listen string) error {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}})
	if err != nil {
		return err
	}
	defer rdb.Close()
	for _, ddl := range Schema {
		if _, err := db.ExecContext(ctx, ddl); err != nil {
			return err
		}
	}
	if err := safesync.CreateDedupeTable(ctx, db, AppliedTable); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	metrics, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg})
	if err != nil {
		return err
	}
	policy := safesync.Backoff(5*time.Millisecond, 20)

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /credit", func(w http.ResponseWriter, r *http.Request) {
		id, err1 := strconv.ParseInt(r.FormValue("account"), 10, 64)
		amount, err2 := strconv.ParseInt(r.FormValue("amount"), 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a, err := Credit(db, policy, metrics, id, amount)(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "account %d: balance %d\n", a.ID, a.Balance)
	})
	srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http", "err", err)
		}
	}()
	defer srv.Close()

	log.Info("orders-worker started", "stream", stream, "consumer", consumer, "listen", listen)
	return Pipeline(db, policy).Run(ctx, rdb, safesync.StreamConfig{
		Stream: stream, Group: "orders-worker", Consumer: consumer,
		Concurrency: 4, Logger: log, Metrics: metrics,
	})
}
