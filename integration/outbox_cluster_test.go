package integration

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

// On a Redis Cluster, a relay adds the events of a partitioned stream to
// partitions on every master, in one pipelined round trip per batch split
// over the masters, each key's events in order; a Once pipeline reading
// every partition applies each once.
func TestClusterOutboxRelaysAPartitionedStreamOverEveryMaster(t *testing.T) {
	c := openSharedCluster(t)
	rc := clusterClient(t, c)
	db := openMySQL(t, nil)
	table := outboxTable(t, db)
	p, err := safesync.NewPartitions(uniqueName(t, "obc"), 6)
	if err != nil {
		t.Fatal(err)
	}
	masters := map[int]bool{}
	for _, s := range p.Streams() {
		m, err := c.MasterOf(s)
		if err != nil {
			t.Fatal(err)
		}
		masters[m] = true
	}
	if len(masters) != 3 {
		t.Fatalf("the partitions live on %d masters, want 3", len(masters))
	}
	var cleanup []string
	for _, s := range p.Streams() {
		cleanup = append(cleanup, s, s+safesync.DeadLetterSuffix)
	}
	deleteKeysAtEnd(t, rc, cleanup...)

	w := safesync.ToOutboxPartitioned(table, p, func(e event) string { return e.Key })
	const keys, perKey = 30, 20
	for i := range perKey {
		var evs []event
		for k := range keys {
			evs = append(evs, event{Key: "key" + strconv.Itoa(k), Seq: int64(i), Event: strconv.Itoa(i*keys + k)})
		}
		publish(t, db, w, false, evs...)
	}
	m, reg := safesynctest.NewMetrics(t)
	_, stop := runRelay(t, db, rc, safesync.RelayConfig{Table: table, LockName: uniqueLockName(), BatchSize: 64, PollMax: 50 * time.Millisecond, Metrics: m})
	if err := pollUntil(30*time.Second, "outbox empty", func() (bool, error) { return countRows(t, db, table) == 0, nil }); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkPartitionedOrder(t, rc, p, keys*perKey)
	if b := safesynctest.MetricValue(t, reg, "coti_safesync_outbox_relay_batches_total", map[string]string{"outbox": table}); b < keys*perKey/64 {
		t.Errorf("%v batches for %d rows in batches of 64", b, keys*perKey)
	}

	effects := createTable(t, db, "eff", "CREATE TABLE %s (id BIGINT AUTO_INCREMENT PRIMARY KEY, event VARCHAR(64) NOT NULL) ENGINE=InnoDB")
	applied := dedupeTable(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- safesync.Stream(safesync.JSON[event]()).
			Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[event]) error {
				_, err := tx.ExecContext(ctx, "INSERT INTO `"+effects+"` (event) VALUES (?)", msg.Value.Event)
				return err
			}).
			AckAfter(safesync.Commit(db, safesync.WithMetrics(nil))).
			Once(applied).
			Batch(16).
			RunPartitioned(ctx, rc, p, safesync.StreamConfig{Group: "g", Consumer: "c", Block: 50 * time.Millisecond, Concurrency: 4, Metrics: m})
	}()
	if err := pollUntil(30*time.Second, "every event applied", func() (bool, error) { return countRows(t, db, effects) >= keys*perKey, nil }); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	distinct, err := safesync.Get[int64](context.Background(), db, "SELECT COUNT(DISTINCT event) FROM `"+effects+"`")
	if n := countRows(t, db, effects); err != nil || n != keys*perKey || distinct != n {
		t.Fatalf("%d effects, %d distinct (%v); want %d of each", n, distinct, err, keys*perKey)
	}
}
