// Package safesync makes MySQL writes safe under heavy concurrency and
// Redis Streams consumption free of lost or doubled work, across many
// processes and hosts.
//
// Operations are small generic values that compose. A TxFunc is one step
// inside a transaction; WithTx turns it into a Func, a whole transaction;
// Retry re-runs a Func. Read the composition inside out:
//
//	Retry(policy, WithTx(db, OCC(read, mutate)))
//	  │            │          └ one attempt: read row+version, write guarded by version
//	  │            └ BEGIN … COMMIT on one pinned connection; ROLLBACK on error or panic
//	  └ a new transaction per attempt, for conflicts, deadlocks and lock waits only
//
// The types carry the rules: Retry accepts only a Func, so a retry is
// always a new transaction; calling a WithTx Func inside another
// transaction is ErrNestedTx unless Independent is given.
//
// # Transactions
//
//	transfer := safesync.WithTx(db, func(ctx context.Context, tx *safesync.Tx) (int64, error) {
//		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - ? WHERE id = ?", 30, 1); err != nil {
//			return 0, err
//		}
//		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", 30, 2); err != nil {
//			return 0, err
//		}
//		return safesync.Get[int64](ctx, tx, "SELECT balance FROM accounts WHERE id = ?", 2)
//	})
//	balance, err := transfer(ctx)
//
// *Tx has the database/sql method set (ExecContext, QueryContext,
// QueryRowContext, PrepareContext), so sqlc-generated code runs inside any
// combinator: New(tx). Get and Select scan rows into structs (by `db` tag or
// field name), scalars and maps.
//
// # Guarantees
//
//   - One connection per transaction. COMMIT only when fn returned nil and
//     ctx is still live; ROLLBACK otherwise, including on panic, which
//     continues afterwards. A rollback failure is joined to the cause,
//     never put in its place.
//   - A connection lost while COMMIT was in flight is a
//     *CommitUnknownError: the server may have committed, so it is never
//     retried by default.
//   - Hooks registered with Tx.AfterEnd run on the pinned connection after
//     the transaction ends and before the connection returns to the pool;
//     when one fails the connection is closed instead of reused, so no
//     session state (an advisory lock, say) leaks into the pool.
//     Tx.AfterCommit hooks run only after a successful COMMIT.
//   - Table and column names are validated and backtick-quoted in one
//     place (QuoteIdentifier); values are always bound parameters.
//
// # Locks, optimistic updates, idempotent inserts
//
// WithRowLock locks one row with SELECT … FOR UPDATE (NoWait and SkipLocked
// available) and hands it to fn. WithAdvisoryLock takes a named GET_LOCK on
// the transaction's own connection, holds it across COMMIT and releases it
// on that connection before the connection returns to the pool; fn's ctx
// is cancelled if the lock is lost, and the lock is confirmed once more
// after fn returns, before COMMIT. OCC runs one optimistic attempt and
// reports a moved version as ErrConflict; InsertIdempotent treats only
// MySQL error 1062 as a duplicate. Retry decides, with DefaultClassifier,
// which failures a new transaction can fix:
//
//	job := safesync.WithTx(db, safesync.WithAdvisoryLock("user:7", 5*time.Second,
//		safesync.WithRowLock("orders", safesync.Key{"id": orderID}, process)))
//	res, err := safesync.Retry(safesync.Backoff(10*time.Millisecond, 20), job)(ctx)
//
// # Streams
//
// A Consumer reads a Redis stream in a consumer group: its own pending
// entries first, then new ones; it runs up to Concurrency handlers (in
// per-key order with OrderBy), acknowledges an entry after its handler
// returns nil, reclaims entries left pending by others with XAUTOCLAIM,
// and moves entries that cannot be decoded, fail Permanently or fail for
// their own reasons MaxDeliveries times to a dead-letter stream, with the
// handler's error. Outages are not the entries' fault: while Redis or a
// pipeline's database is down the consumer pauses, and no entry moves
// towards the dead-letter stream (see Readiness). JSON reads and
// PublishJSON writes the original framework's wire format (one field
// "data" holding a JSON object), so Go and Python workers share streams
// and groups.
// A consumer's name is one running process's own (a pod name, or a host
// and a worker index, never the host alone): a second live process with
// the same name fails at start with ErrConsumerNameInUse.
//
// # Redis Cluster and partitions
//
// Every stream operation takes a rueidis cluster client as it is. Name a
// stream with a hash tag ("orders:{3}") and its default dead-letter stream
// ("orders:{3}:dead") shares its slot, so dead-letter moves stay one
// MULTI/EXEC. Partitions spreads one logical stream over P keys in
// different slots (and masters); PublishPartitionedJSON sends entries of
// one key to one partition, and PartitionedConsumer (or
// Pipeline.RunPartitioned) reads every partition with a blocking reader of
// its own and one shared handler capacity.
//
// # Pipelines
//
// Stream joins a stream to a database: each entry is applied in one
// transaction and acknowledged once its COMMIT returned, never before its
// effects are durable. Once makes the effects exactly-once; Batch
// applies many entries per transaction without letting one bad entry
// poison the rest:
//
//	err := safesync.Stream(safesync.JSON[Order]()).
//		Handle(applyOrder). // func(ctx, *Tx, Message[Order]) error
//		AckAfter(safesync.Commit(db)).
//		Once("safesync_applied").
//		Batch(100).
//		Run(ctx, rdb, safesync.StreamConfig{Stream: "orders", Group: "billing", Consumer: podName})
//
// HandleBatch gives one function the whole batch instead, so that it can
// write it with multi-row statements (InsertRows); FailEntry names the
// entry at fault, and a batch failing without a name is halved until the
// entry is found.
//
// # Outbox: from the database into a stream
//
// OutboxWriter.Publish, called inside any transaction, writes events as
// rows of an outbox table: they exist if and only if the transaction
// commits. A Relay, run in as many processes as you like (one leads, by
// an advisory lock held on a connection of its own; the others take over
// within milliseconds when it dies), adds the committed rows to their
// streams in id order per stream and deletes them. Each entry carries its
// origin (the outbox and the row), so that a Pipeline with Once applies
// it once even when a crash made the relay add it twice: MySQL → stream →
// MySQL is one exactly-once loop.
//
//	balances := safesync.ToOutbox[BalanceChanged]("safesync_outbox", "balances")
//	// inside a TxFunc, after the change it describes:
//	err := balances.Publish(ctx, tx, BalanceChanged{Account: id, Balance: b})
//
//	relay, err := safesync.NewRelay(db, rdb, safesync.RelayConfig{Table: "safesync_outbox"})
//	err = relay.Run(ctx)
//
// # Metrics
//
// Metrics keeps the original framework's metric names
// (coti_safesync_db_write_total{table,op_type,status},
// coti_safesync_db_write_latency_seconds{table,op_type}, …) on an injected
// prometheus.Registerer. Every write statement is counted, failures too,
// with its own latency. Label values are bounded: see Metrics.
//
// # Tracing
//
// SetTracer reports every transaction, statement, lock, retry and stream
// operation to a Tracer, a small interface with no dependency; the module
// github.com/safesync-go/safesync/otel implements it on OpenTelemetry,
// with the semantic conventions for databases and messaging:
//
//	safesync.SetTracer(safesyncotel.New()) // the global TracerProvider
//
// Without a Tracer (the default) nothing is traced and nothing is
// allocated for it.
package safesync
