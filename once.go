package safesync

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"
)

// DefaultDedupeTable is the table name used by examples and the demo for
// exactly-once bookkeeping.
const DefaultDedupeTable = "safesync_applied"

// DedupeTableDDL returns the CREATE TABLE statement for an exactly-once
// table named table. Each row records that one stream entry's effects were
// committed for one consumer group:
//
//	CREATE TABLE IF NOT EXISTS `safesync_applied` (
//	  consumer_group VARBINARY(255) NOT NULL,
//	  stream         VARBINARY(255) NOT NULL,
//	  entry_id       VARBINARY(64)  NOT NULL,
//	  applied_at     DATETIME(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
//	  PRIMARY KEY (consumer_group, stream, entry_id),
//	  KEY applied_at_idx (applied_at)
//	) ENGINE=InnoDB
//
// The columns are binary so that names compare exactly, as Redis compares
// keys. It runs on MySQL 8 and MariaDB 10.6+.
func DedupeTableDDL(table string) (string, error) {
	q, err := QuoteIdentifier(table)
	if err != nil {
		return "", err
	}
	return "CREATE TABLE IF NOT EXISTS " + q + ` (
  consumer_group VARBINARY(255) NOT NULL,
  stream         VARBINARY(255) NOT NULL,
  entry_id       VARBINARY(64)  NOT NULL,
  applied_at     DATETIME(6)    NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (consumer_group, stream, entry_id),
  KEY applied_at_idx (applied_at)
) ENGINE=InnoDB`, nil
}

// CreateDedupeTable runs DedupeTableDDL(table) on db. Production schemas
// usually take the DDL into their migrations instead.
func CreateDedupeTable(ctx context.Context, db Execer, table string) error {
	ddl, err := DedupeTableDDL(table)
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, ddl)
	return err
}

// MarkApplied records, inside tx, that the entry (group, stream, id) is
// being applied. It returns false, nil when the entry was already applied
// by an earlier, committed transaction: its effects must not run again.
//
// Two transactions marking the same entry at once serialise on the row:
// the second waits for the first to end, then sees false (the first
// committed) or true (it rolled back). That is what makes effects happen
// exactly once even when an entry is redelivered while still being
// handled elsewhere.
func MarkApplied(ctx context.Context, tx Execer, table, group, stream, id string) (bool, error) {
	q, err := QuoteIdentifier(table)
	if err != nil {
		return false, err
	}
	return InsertIdempotent(ctx, tx, "INSERT INTO "+q+" (consumer_group, stream, entry_id) VALUES (?, ?, ?)", group, stream, id)
}

// maxMarkRows bounds the rows of one multi-row INSERT of exactly-once
// records: 3 placeholders a row, far below MySQL's limit of 65,535
// placeholders a statement, and a statement of well under a megabyte.
// Larger batches are marked in chunks of this size.
const maxMarkRows = 2000

// dedupeMarker marks the entries of a pipeline's transactions as applied.
// The statements for one entry and for a full chunk (a batch, or
// maxMarkRows rows of a larger batch) are prepared once, when the pipeline
// starts and before any transaction holds a connection, and reused on
// every pooled connection (database/sql prepares a statement once per
// connection), so marking costs one round trip per chunk instead of a
// prepare, an execute and a close. Other sizes run unprepared.
//
// When the driver puts the arguments into the statement's text itself
// (go-sql-driver/mysql with interpolateParams=true), an unprepared
// statement is one round trip too, and cheaper than binding the prepared
// one to each transaction (Tx.StmtContext): the marker then runs its
// statements unprepared, still with placeholders and arguments, as every
// other statement of the transaction runs.
type dedupeMarker struct {
	insert       string // "INSERT INTO `t` (consumer_group, stream, entry_id) VALUES "
	stmts        map[int]*sql.Stmt
	queries      map[int]string // the statements of stmts
	interpolates bool           // the driver interpolates arguments
}

func newDedupeMarker(ctx context.Context, db *sql.DB, table string, batch int) (*dedupeMarker, error) {
	q, err := QuoteIdentifier(table)
	if err != nil {
		return nil, err
	}
	m := &dedupeMarker{insert: "INSERT INTO " + q + " (consumer_group, stream, entry_id) VALUES ", stmts: map[int]*sql.Stmt{}, queries: map[int]string{}}
	for _, rows := range []int{1, min(batch, maxMarkRows)} {
		if _, done := m.stmts[rows]; done {
			continue
		}
		query := m.query(rows)
		s, err := db.PrepareContext(ctx, query)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("safesync: prepare exactly-once insert into %s: %w", table, err)
		}
		m.stmts[rows], m.queries[rows] = s, query
	}
	if m.interpolates, err = driverInterpolates(ctx, db); err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

// driverInterpolates reports whether db's driver runs a statement with
// arguments without preparing it, putting them into its text (as
// go-sql-driver/mysql does with interpolateParams=true): it sends DO ?
// with argument 1 to the driver, which then either runs it or answers
// driver.ErrSkip.
func driverInterpolates(ctx context.Context, db *sql.DB) (bool, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("safesync: acquire connection: %w", err)
	}
	defer conn.Close()
	interpolates := false
	err = conn.Raw(func(dc any) error {
		execer, ok := dc.(driver.ExecerContext)
		if !ok {
			return nil
		}
		_, err := execer.ExecContext(ctx, "DO ?", []driver.NamedValue{{Ordinal: 1, Value: int64(1)}})
		interpolates = err == nil
		if errors.Is(err, driver.ErrBadConn) {
			return err // database/sql discards the connection
		}
		return nil
	})
	return interpolates, err
}

func (m *dedupeMarker) query(rows int) string {
	return m.insert + strings.TrimSuffix(strings.Repeat("(?, ?, ?), ", rows), ", ")
}

// close releases the prepared statements.
func (m *dedupeMarker) close() {
	for _, s := range m.stmts {
		s.Close()
	}
}

// DefaultPruneBatch is how many rows PruneDedupe deletes per statement.
const DefaultPruneBatch = 5000

// PruneDedupe deletes exactly-once rows applied more than olderThan ago
// (by the database's clock), in statements of DefaultPruneBatch rows so
// that no statement holds locks for long, and returns how many it deleted.
//
// Pruning ends the exactly-once guarantee for those entries: keep rows at
// least as long as an entry can still be redelivered (the stream's
// retention, or MaxDeliveries × ClaimIdle plus any downtime). ctx bounds
// the whole call; rows deleted before it ended stay deleted.
func PruneDedupe(ctx context.Context, db *sql.DB, table string, olderThan time.Duration) (int64, error) {
	q, err := QuoteIdentifier(table)
	if err != nil {
		return 0, err
	}
	if olderThan <= 0 {
		return 0, errors.New("safesync: PruneDedupe: olderThan must be positive")
	}
	query := fmt.Sprintf("DELETE FROM %s WHERE applied_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT %d", q, DefaultPruneBatch)
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

// markApplied records, in tx, that msgs are being applied, and reports for
// each whether it is fresh (MarkApplied's meaning). The common case, no
// entry seen before, costs one multi-row INSERT per maxMarkRows entries;
// when one meets a duplicate key (MySQL then rolls back just that
// statement) each entry of its chunk is marked on its own.
//
// b holds the buffers, which one caller reuses from transaction to
// transaction; the result is b's until its next use.
func markApplied[T any](ctx context.Context, m *dedupeMarker, tx *Tx, msgs []Message[T], b *markBuffers) ([]bool, error) {
	if cap(b.fresh) < len(msgs) {
		b.fresh = make([]bool, len(msgs))
	}
	fresh := b.fresh[:len(msgs)]
	clear(fresh)
	for lo := 0; lo < len(msgs); lo += maxMarkRows {
		hi := min(lo+maxMarkRows, len(msgs))
		if err := markChunk(ctx, m, tx, msgs[lo:hi], fresh[lo:hi], b); err != nil {
			return nil, err
		}
	}
	return fresh, nil
}

// markBuffers are the buffers of markApplied: the result, the
// statement's arguments, and the group and stream names last converted to
// arguments (the same for every entry of a consumer but replayed ones), so
// that marking an entry boxes only its id.
type markBuffers struct {
	fresh         []bool
	args          []any
	group, stream boxedString
}

// clear drops the arguments kept, which refer to entries.
func (b *markBuffers) clear() {
	clear(b.args)
	b.args = b.args[:0]
}

// boxedString converts a string to an argument, boxing it once while it
// stays the same.
type boxedString struct {
	s   string
	arg any
}

func (b *boxedString) argument(s string) any {
	if b.arg == nil || b.s != s {
		b.s, b.arg = s, s
	}
	return b.arg
}

// markChunk is markApplied for at most maxMarkRows entries, filling fresh.
func markChunk[T any](ctx context.Context, m *dedupeMarker, tx *Tx, msgs []Message[T], fresh []bool, b *markBuffers) error {
	if len(msgs) > 1 {
		err := markRows(ctx, m, tx, msgs, b)
		if err == nil {
			for i := range fresh {
				fresh[i] = true
			}
			return nil
		}
		if mysqlErrorNumber(err) != 1062 {
			return err
		}
	}
	for i := range msgs {
		err := markRows(ctx, m, tx, msgs[i:i+1], b)
		switch {
		case err == nil:
			fresh[i] = true
		case mysqlErrorNumber(err) != 1062:
			return err
		}
	}
	return nil
}

// markRows inserts the exactly-once records of rows in one statement.
func markRows[T any](ctx context.Context, m *dedupeMarker, tx *Tx, rows []Message[T], b *markBuffers) error {
	args := b.args[:0]
	for _, r := range rows {
		stream, id := r.Origin()
		args = append(args, b.group.argument(r.Group), b.stream.argument(stream), id)
	}
	b.args = args
	s, prepared := m.stmts[len(rows)]
	if !prepared || m.interpolates {
		query, ok := m.queries[len(rows)]
		if !ok {
			query = m.query(len(rows))
		}
		_, err := tx.ExecContext(ctx, query, args...)
		return err
	}
	start := time.Now()
	_, err := tx.tx.StmtContext(ctx, s).ExecContext(ctx, args...)
	tx.metrics.observeStatement(m.insert, time.Since(start), err)
	return err
}
