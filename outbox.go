package safesync

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultOutboxTable is the outbox table name used by examples and the
// demo.
const DefaultOutboxTable = "safesync_outbox"

// MaxOutboxStreamLength is the longest stream key an outbox row can name
// (its stream column is VARBINARY(255)).
const MaxOutboxStreamLength = 255

// OutboxTableDDL returns the CREATE TABLE statement for an outbox table
// named table. Each row is one event waiting to be added to its stream:
//
//	CREATE TABLE IF NOT EXISTS `safesync_outbox` (
//	  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
//	  nonce      BIGINT          NOT NULL,
//	  stream     VARBINARY(255)  NOT NULL,
//	  data       LONGBLOB        NULL,
//	  fields     BLOB            NULL,
//	  created_at DATETIME(6)     NOT NULL,
//	  relayed_at DATETIME(6)     NULL,
//	  PRIMARY KEY (id),
//	  KEY relay_idx (relayed_at, id)
//	) ENGINE=InnoDB
//
// id orders the events (see Relay for the order that gives); nonce is
// random, so that id and nonce together name the event even if ids are
// reused after TRUNCATE or a restore; stream is the stream key (a
// partition's key for a partitioned stream); data is the entry's "data"
// field, the whole payload in the original's wire format; fields holds
// any other fields (length-prefixed names and values) and is NULL when
// there are none; created_at is when the event was written and relayed_at
// when it was relayed (with RelayConfig.KeepRelayed; otherwise relayed
// rows are deleted), both in UTC. It runs on MySQL 8 and MariaDB 10.6+.
func OutboxTableDDL(table string) (string, error) {
	q, err := QuoteIdentifier(table)
	if err != nil {
		return "", err
	}
	return "CREATE TABLE IF NOT EXISTS " + q + ` (
  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  nonce      BIGINT          NOT NULL,
  stream     VARBINARY(255)  NOT NULL,
  data       LONGBLOB        NULL,
  fields     BLOB            NULL,
  created_at DATETIME(6)     NOT NULL,
  relayed_at DATETIME(6)     NULL,
  PRIMARY KEY (id),
  KEY relay_idx (relayed_at, id)
) ENGINE=InnoDB`, nil
}

// CreateOutboxTable runs OutboxTableDDL(table) on db. Production schemas
// usually take the DDL into their migrations instead.
func CreateOutboxTable(ctx context.Context, db Execer, table string) error {
	ddl, err := OutboxTableDDL(table)
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, ddl)
	return err
}

// Encoder turns a T into the fields of a stream entry. It must be safe for
// concurrent use. EncodeJSON[T] is the original's wire format.
type Encoder[T any] func(v T) (map[string]string, error)

// OutboxWriter publishes events of type T through an outbox table: inside
// a transaction, Publish inserts them into the table, and a Relay adds
// them to their stream once the transaction has committed. If the
// transaction rolls back, the events never existed.
//
// An OutboxWriter is a value, safe for concurrent use; build it once with
// ToOutbox or ToOutboxPartitioned.
type OutboxWriter[T any] struct {
	table  string
	insert string // "INSERT INTO `t` (…) VALUES "
	stream string // the stream, when not partitioned
	parts  Partitions
	key    func(T) string
	encode Encoder[T]
}

// ToOutbox returns a writer of events to stream through the outbox table,
// encoded by EncodeJSON (one field "data" holding a JSON object, which
// JSON[T] and the Python original read). It panics if table is not a
// valid identifier or stream is empty or longer than
// MaxOutboxStreamLength: both come from code, not data.
func ToOutbox[T any](table, stream string) OutboxWriter[T] {
	if stream == "" {
		panic("safesync: ToOutbox with an empty stream name")
	}
	if len(stream) > MaxOutboxStreamLength {
		panic(fmt.Sprintf("safesync: ToOutbox: stream name is %d bytes, more than %d", len(stream), MaxOutboxStreamLength))
	}
	w := newOutboxWriter[T](table)
	w.stream = stream
	return w
}

// ToOutboxPartitioned returns a writer of events to the partitioned stream
// p: each event goes to the partition of key(v) (see Partitions.For), so
// that the events of one key stay in one partition, in order. It panics if
// table is not a valid identifier, p is a zero Partitions or key is nil.
func ToOutboxPartitioned[T any](table string, p Partitions, key func(T) string) OutboxWriter[T] {
	if p.Len() == 0 {
		panic("safesync: ToOutboxPartitioned with a zero Partitions; use NewPartitions")
	}
	if key == nil {
		panic("safesync: ToOutboxPartitioned with a nil key function")
	}
	for _, s := range p.keys {
		if len(s) > MaxOutboxStreamLength {
			panic(fmt.Sprintf("safesync: ToOutboxPartitioned: partition key %q is longer than %d bytes", s, MaxOutboxStreamLength))
		}
	}
	w := newOutboxWriter[T](table)
	w.parts, w.key = p, key
	return w
}

func newOutboxWriter[T any](table string) OutboxWriter[T] {
	q, err := QuoteIdentifier(table)
	if err != nil {
		panic(err.Error())
	}
	return OutboxWriter[T]{
		table:  table,
		insert: "INSERT INTO " + q + " (nonce, stream, data, fields, created_at) VALUES ",
		encode: EncodeJSON[T],
	}
}

// Encoding returns a copy of w that encodes events with enc instead of
// EncodeJSON. It panics if enc is nil.
func (w OutboxWriter[T]) Encoding(enc Encoder[T]) OutboxWriter[T] {
	if enc == nil {
		panic("safesync: OutboxWriter.Encoding with a nil Encoder")
	}
	w.encode = enc
	return w
}

// Table returns the outbox table w writes to.
func (w OutboxWriter[T]) Table() string { return w.table }

// StreamFor returns the stream key the event v goes to: the writer's
// stream, or the partition of key(v).
func (w OutboxWriter[T]) StreamFor(v T) string {
	if w.key == nil {
		return w.stream
	}
	return w.parts.Stream(w.parts.For(w.key(v)))
}

// maxOutboxRowsPerInsert bounds the rows of one INSERT statement.
const maxOutboxRowsPerInsert = 500

// Publish inserts events into the outbox table inside tx, in the order
// given, with one multi-row INSERT (per 500 events). Call it from any
// TxFunc, after the change the events describe (see Relay for why that
// matters for order). The events are added to their streams by a Relay
// after tx commits; a Relay running in this process is woken by the
// commit, others find the rows when they next poll. Nothing is published
// if tx rolls back.
//
// An event that the encoder rejects, that encodes to no field, or that has
// a field named OriginFieldStream or OriginFieldID (the Relay writes
// those) is an error, and nothing is inserted. ctx governs the INSERT.
// Publishing no events does nothing.
func (w OutboxWriter[T]) Publish(ctx context.Context, tx *Tx, events ...T) error {
	if w.encode == nil {
		return errors.New("safesync: Publish on a zero OutboxWriter; build it with ToOutbox or ToOutboxPartitioned")
	}
	if tx == nil {
		return errors.New("safesync: OutboxWriter.Publish with a nil *Tx")
	}
	if len(events) == 0 {
		return nil
	}
	args := make([]any, 0, 4*min(len(events), maxOutboxRowsPerInsert))
	for start := 0; start < len(events); start += maxOutboxRowsPerInsert {
		chunk := events[start:min(start+maxOutboxRowsPerInsert, len(events))]
		args = args[:0]
		for _, v := range chunk {
			fields, err := w.encode(v)
			if err != nil {
				return fmt.Errorf("safesync: outbox %s: encode event: %w", w.table, err)
			}
			data, extra, err := packOutboxFields(fields)
			if err != nil {
				return fmt.Errorf("safesync: outbox %s: %w", w.table, err)
			}
			args = append(args, rand.Int64(), w.StreamFor(v), data, extra)
		}
		query := w.insert + strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, UTC_TIMESTAMP(6)), ", len(chunk)), ", ")
		if _, err := tx.ExecContext(ctx, query, args...); err != nil {
			return fmt.Errorf("safesync: outbox %s: insert: %w", w.table, err)
		}
	}
	table := w.table
	tx.AfterCommit(func(context.Context) error {
		wakeRelays(table)
		return nil
	})
	return nil
}

// packOutboxFields splits an entry's fields into the data column (the
// "data" field, nil for NULL when there is none) and the fields column
// (every other field, or nil for NULL).
func packOutboxFields(fields map[string]string) (data, extra any, err error) {
	if len(fields) == 0 {
		return nil, nil, errors.New("event encodes to no field; a stream entry needs at least one")
	}
	var names []string
	for name := range fields {
		switch name {
		case DataField:
			data = fields[name]
		case OriginFieldStream, OriginFieldID:
			return nil, nil, fmt.Errorf("event has a field named %q, which the relay sets", name)
		default:
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return data, nil, nil
	}
	slices.Sort(names)
	var buf []byte
	for _, name := range names {
		buf = binary.AppendUvarint(buf, uint64(len(name)))
		buf = append(buf, name...)
		buf = binary.AppendUvarint(buf, uint64(len(fields[name])))
		buf = append(buf, fields[name]...)
	}
	return data, buf, nil
}

// appendPackedFields appends the fields packed by packOutboxFields to
// pairs, each name followed by its value, in name order.
func appendPackedFields(pairs []string, buf []byte) ([]string, error) {
	for len(buf) > 0 {
		for range 2 { // the name, then the value
			n, size := binary.Uvarint(buf)
			if size <= 0 || n > uint64(len(buf)-size) {
				return nil, errors.New("malformed fields column")
			}
			pairs = append(pairs, string(buf[size:size+int(n)]))
			buf = buf[size+int(n):]
		}
	}
	return pairs, nil
}

// relayWakers holds, per outbox table, the wake channels of the relays
// running in this process. A commit that published to a table wakes them.
var relayWakers struct {
	mu sync.Mutex
	m  map[string][]chan struct{}
}

// registerWaker adds ch to the relays of table until the returned func is
// called.
func registerWaker(table string, ch chan struct{}) (unregister func()) {
	relayWakers.mu.Lock()
	defer relayWakers.mu.Unlock()
	if relayWakers.m == nil {
		relayWakers.m = map[string][]chan struct{}{}
	}
	relayWakers.m[table] = append(relayWakers.m[table], ch)
	return func() {
		relayWakers.mu.Lock()
		defer relayWakers.mu.Unlock()
		chans := slices.DeleteFunc(relayWakers.m[table], func(c chan struct{}) bool { return c == ch })
		if len(chans) == 0 {
			delete(relayWakers.m, table)
		} else {
			relayWakers.m[table] = chans
		}
	}
}

// wakeRelays signals every relay of table in this process, without
// blocking: a relay that was already signalled keeps one pending signal.
func wakeRelays(table string) {
	relayWakers.mu.Lock()
	defer relayWakers.mu.Unlock()
	for _, ch := range relayWakers.m[table] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// PruneOutbox deletes rows relayed more than olderThan ago from an outbox
// table whose relay keeps relayed rows (RelayConfig.KeepRelayed), in
// statements of DefaultPruneBatch rows, and returns how many it deleted.
// Rows not yet relayed are never deleted. ctx bounds the whole call; rows
// deleted before it ended stay deleted.
func PruneOutbox(ctx context.Context, db Execer, table string, olderThan time.Duration) (int64, error) {
	q, err := QuoteIdentifier(table)
	if err != nil {
		return 0, err
	}
	if olderThan <= 0 {
		return 0, errors.New("safesync: PruneOutbox: olderThan must be positive")
	}
	query := fmt.Sprintf("DELETE FROM %s WHERE relayed_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND ORDER BY relayed_at LIMIT %d", q, DefaultPruneBatch)
	var total int64
	for {
		res, err := db.ExecContext(ctx, query, olderThan.Microseconds())
		if err != nil {
			return total, fmt.Errorf("safesync: prune %s: %w", table, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += n
		if n < DefaultPruneBatch {
			return total, nil
		}
	}
}
