// Package safesynctest helps test code built on safesync with no service,
// as net/http/httptest does for HTTP handlers.
//
// Handlers: HandleJSON runs a stream handler over values the way
// Consumer.Run does, on an in-process Redis (miniredis), and reports what
// became of each entry (acknowledged, failed, dead-lettered, pending);
// HandleEntries does the same for raw fields, HandleTxJSON for a pipeline
// handler in a transaction per entry:
//
//	rep := safesynctest.HandleJSON(t, applyOrder, Order{ID: 1, Amount: 5}, Order{ID: 2, Amount: -1})
//	if len(rep.DeadLettered) != 1 { t.Fatal(rep) }
//
// Redis: NewRedis gives a test a client on an in-process Redis of its own,
// StartRedis one that outlives a test (examples, programs); Publish,
// PublishJSON, Pending, DeadLetters and Entries read and write it in one
// line each.
//
// Metrics: NewMetrics gives a test safesync Metrics on a registry of its
// own, MetricValue reads one metric back:
//
//	metrics, reg := safesynctest.NewMetrics(t)
//	// … run code with StreamConfig{Metrics: metrics} or WithMetrics(metrics) …
//	acked := safesynctest.MetricValue(t, reg, "coti_safesync_queue_messages_ack_total", map[string]string{"stream": "orders"})
//
// MySQL: the in-process MySQL-compatible engine is in the package
// github.com/safesync-go/safesync/safesynctest/mysqltest, a module of its
// own, so that only tests that import it download and compile it (it is
// large: the first build takes minutes). mysqltest.New(t) returns a
// *sql.DB on a fresh engine. It runs transactions one at a time: test lock
// and optimistic-concurrency behaviour under real concurrency against
// MySQL or MariaDB.
//
// Stream layer implementations: RunStreamConformance and
// RunPartitionConformance are the suites the stream layer passes on real
// Redis, Redis Cluster and miniredis.
package safesynctest
