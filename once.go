package safesync

import (
	"context"
	"database/sql"
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

// markAppliedAll is MarkApplied for several entries of one transaction,
// reporting for each whether it is fresh. The common case, no entry seen
// before, costs one multi-row INSERT; when it meets a duplicate key (MySQL
// rolls back just that statement) each entry is marked on its own.
func markAppliedAll[T any](ctx context.Context, tx Execer, table string, msgs []Message[T]) ([]bool, error) {
	fresh := make([]bool, len(msgs))
	if len(msgs) > 1 {
		q, err := QuoteIdentifier(table)
		if err != nil {
			return nil, err
		}
		var b strings.Builder
		b.WriteString("INSERT INTO " + q + " (consumer_group, stream, entry_id) VALUES ")
		args := make([]any, 0, 3*len(msgs))
		for i, m := range msgs {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?, ?)")
			args = append(args, m.Group, m.Stream, m.ID)
		}
		_, err = tx.ExecContext(ctx, b.String(), args...)
		if err == nil {
			for i := range fresh {
				fresh[i] = true
			}
			return fresh, nil
		}
		if mysqlErrorNumber(err) != 1062 {
			return nil, err
		}
	}
	for i, m := range msgs {
		ok, err := MarkApplied(ctx, tx, table, m.Group, m.Stream, m.ID)
		if err != nil {
			return nil, err
		}
		fresh[i] = ok
	}
	return fresh, nil
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
