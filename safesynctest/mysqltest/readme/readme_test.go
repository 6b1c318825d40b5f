package readme_test

import (
	"context"
	"database/sql"
	"log"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
	"github.com/safesync-go/safesync/safesynctest/mysqltest"
)

// Order and Account are the types the README's snippets use.
type Order struct {
	AccountID int64 `json:"account_id"`
	Amount    int64 `json:"amount"`
}

type Account struct {
	ID      int64 `db:"id"`
	Balance int64 `db:"balance"`
	Version int64 `db:"version"`
}

// applyOrder runs inside the pipeline's transaction: it adds the order to
// its account with an optimistic update; a conflict rolls the transaction
// back and Retry runs it again.
func applyOrder(ctx context.Context, tx *safesync.Tx, msg safesync.Message[Order]) error {
	account := safesync.ReadVersioned[Account]("accounts", safesync.Key{"id": msg.Value.AccountID}, "version")
	_, err := safesync.OCC(account, func(a Account) (Account, error) {
		a.Balance += msg.Value.Amount
		return a, nil
	})(ctx, tx)
	return err
}

// main is the README's worker main ("A worker's main"); it is compiled,
// not run (TestWorkerMainCompiles refers to it).
func main() {
	// SIGTERM (docker stop, Kubernetes) and Ctrl-C cancel ctx: Run stops
	// reading, lets in-flight transactions commit and acknowledge within
	// ShutdownGrace, and returns nil. Entries not started stay pending and
	// are read again at the next start.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	db, err := sql.Open("mysql", os.Getenv("MYSQL_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	rdb, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{os.Getenv("REDIS_ADDR")}})
	if err != nil {
		log.Fatal(err)
	}
	defer rdb.Close()

	reg := prometheus.NewRegistry()
	metrics, err := safesync.NewMetrics(safesync.MetricsOptions{Registerer: reg})
	if err != nil {
		log.Fatal(err)
	}
	go http.ListenAndServe(":9090", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	// The consumer's name: one per running process. A second live process
	// with the same name fails at start (ErrConsumerNameInUse), so the host
	// name alone fails once a host runs two workers. The pod's name (from
	// the downward API) is unique and survives a restart, so a restarted
	// worker re-reads at once what it left pending.
	consumer := os.Getenv("POD_NAME")
	err = safesync.Stream(safesync.JSON[Order]()).
		Handle(applyOrder).
		AckAfter(safesync.Commit(db)).
		Once("safesync_applied").
		Retry(safesync.Backoff(5*time.Millisecond, 20)).
		Run(ctx, rdb, safesync.StreamConfig{Stream: "orders", Group: "billing", Consumer: consumer, Metrics: metrics})
	if err != nil {
		log.Fatal(err)
	}
}

func TestApplyOrder(t *testing.T) {
	db := mysqltest.New(t) // a fresh engine and a pool on it, closed by t.Cleanup
	for _, q := range []string{
		"CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 0)",
		"INSERT INTO accounts (id, balance) VALUES (1, 0)",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	// Each value is published and handled in a transaction of its own.
	rep := safesynctest.HandleTxJSON(t, db, applyOrder, Order{AccountID: 1, Amount: 5}, Order{AccountID: 2, Amount: 7})
	if len(rep.Acked) != 1 || len(rep.Pending) != 1 { // account 2 does not exist: ErrNotFound, left pending
		t.Fatalf("%+v", rep)
	}
	balance, err := safesync.Get[int64](t.Context(), db, "SELECT balance FROM accounts WHERE id = 1")
	if err != nil || balance != 5 {
		t.Fatalf("balance %d, %v", balance, err)
	}
}

func TestWorkerMainCompiles(t *testing.T) { _ = main }

// Every function in a Go block of the README that this file also defines
// must read here exactly as there, so that what the README shows is what
// these tests compile and run.
func TestREADMESnippetsAreThisFilesCode(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	funcs := regexp.MustCompile(`(?ms)^func (\w+)\(.*?^}$`)
	found := map[string]bool{}
	for _, block := range regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1) {
		for _, f := range funcs.FindAllStringSubmatch(block[1], -1) {
			name := f[1]
			if !strings.Contains(string(self), "\nfunc "+name+"(") {
				continue
			}
			found[name] = true
			if !strings.Contains(string(self), f[0]) {
				t.Errorf("README's func %s differs from this file's copy", name)
			}
		}
	}
	for _, name := range []string{"applyOrder", "main", "TestApplyOrder"} {
		if !found[name] {
			t.Errorf("README shows no func %s", name)
		}
	}
}
