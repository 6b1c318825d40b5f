package safesync

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// MaxPlaceholders is MySQL's and MariaDB's limit of placeholders (?) in
// one prepared statement. InsertRows keeps every statement below it.
const MaxPlaceholders = 65535

// InsertOption configures InsertRows.
type InsertOption func(*insertConfig)

type insertConfig struct {
	columns   []string
	onDup     []string // assignments, as given
	dupCols   []string // columns OnDuplicateSet and OnDuplicateAdd name
	chunkRows int
	err       error
}

// InsertColumns names the columns to insert, in the order of the
// statement. For rows of a struct type they pick the struct's fields (by
// `db` tag, else field name, as Get maps them); a column the struct does
// not map is an error. For rows of type []any they are required, and each
// row holds one value per column, in this order. Without InsertColumns a
// struct's every mapped field is a column, in declaration order.
func InsertColumns(columns ...string) InsertOption {
	return func(c *insertConfig) { c.columns = append([]string(nil), columns...) }
}

// OnDuplicateSet adds, for each column, `col` = VALUES(`col`) to the
// statement's ON DUPLICATE KEY UPDATE clause: a row whose key exists
// overwrites those columns with the values given. Each column must be
// inserted.
func OnDuplicateSet(columns ...string) InsertOption {
	return onDuplicate("OnDuplicateSet", columns, "%[1]s = VALUES(%[1]s)")
}

// OnDuplicateAdd adds, for each column, `col` = `col` + VALUES(`col`) to
// the ON DUPLICATE KEY UPDATE clause: a row whose key exists adds the
// value given to the stored one (a balance, a counter). Each column must
// be inserted.
func OnDuplicateAdd(columns ...string) InsertOption {
	return onDuplicate("OnDuplicateAdd", columns, "%[1]s = %[1]s + VALUES(%[1]s)")
}

func onDuplicate(who string, columns []string, format string) InsertOption {
	return func(c *insertConfig) {
		if len(columns) == 0 {
			c.err = errors.Join(c.err, fmt.Errorf("safesync: InsertRows: %s with no column", who))
		}
		for _, col := range columns {
			q, err := QuoteIdentifier(col)
			if err != nil {
				c.err = errors.Join(c.err, fmt.Errorf("safesync: InsertRows: %s: %w", who, err))
				continue
			}
			c.onDup = append(c.onDup, fmt.Sprintf(format, q))
			c.dupCols = append(c.dupCols, col)
		}
	}
}

// OnDuplicateUpdate adds assignments, SQL written by the program (never
// data), to the ON DUPLICATE KEY UPDATE clause as they are, for what
// OnDuplicateSet and OnDuplicateAdd cannot say:
//
//	safesync.OnDuplicateUpdate("`balance` = `balance` + VALUES(`balance`), `updated_at` = NOW(6)")
//
// Refer to the row's new values with VALUES(col): it works on MariaDB
// 10.6+ and on MySQL 8, where 8.0.20 and later deprecate it with a warning
// but still accept it; the alias form (INSERT … AS new … UPDATE c =
// new.c) that MySQL recommends instead is a syntax error on MariaDB.
func OnDuplicateUpdate(assignments string) InsertOption {
	return func(c *insertConfig) {
		if strings.TrimSpace(assignments) == "" {
			c.err = errors.Join(c.err, errors.New("safesync: InsertRows: OnDuplicateUpdate with no assignment"))
			return
		}
		c.onDup = append(c.onDup, assignments)
	}
}

// InsertChunkRows bounds the rows of one statement to n (n ≥ 1): for rows
// of long text or blobs, so that a statement stays within the server's
// max_allowed_packet. Without it a statement holds as many rows as fit
// below MaxPlaceholders.
func InsertChunkRows(n int) InsertOption {
	return func(c *insertConfig) {
		if n < 1 {
			c.err = errors.Join(c.err, fmt.Errorf("safesync: InsertRows: InsertChunkRows(%d), want at least 1", n))
		}
		c.chunkRows = n
	}
}

// InsertRows inserts rows into table with multi-row statements
//
//	INSERT INTO `table` (`c1`, `c2`) VALUES (?, ?), (?, ?), … [ON DUPLICATE KEY UPDATE …]
//
// as many rows a statement as fit below MaxPlaceholders (or
// InsertChunkRows), in the order given, and returns the rows affected,
// summed over the statements (with ON DUPLICATE KEY UPDATE, MySQL counts 1
// for a row inserted, 2 for a row updated, 0 for a row left as it was).
//
// R is a struct (or pointer to struct), whose fields map to columns as Get
// maps them (`db:"col"` tag, else the field name; `db:"-"` skips a field),
// or []any, one value per column of InsertColumns. The table and column
// names are validated and backtick-quoted (see QuoteIdentifier); values are
// always placeholders, never put into the SQL text. An invalid name, a
// type that maps no column, a row of the wrong length, a nil pointer or an
// invalid option is an error before any statement runs; no rows run no
// statement.
//
// InsertRows runs on tx, usually the *Tx of a pipeline's batch handler or
// of WithTx: its statements are then counted in the write metrics, and
// all of them commit or roll back together. When concurrent transactions
// update the same rows, give rows in a fixed order (sorted by key) so
// that they lock them in one order and do not deadlock each other.
func InsertRows[R any](ctx context.Context, tx Execer, table string, rows []R, opts ...InsertOption) (int64, error) {
	p, err := planInsert[R](table, opts)
	if err != nil {
		return 0, err
	}
	var total int64
	for lo := 0; lo < len(rows); lo += p.chunk {
		hi := min(lo+p.chunk, len(rows))
		args, err := p.args(rows[lo:hi], lo)
		if err != nil {
			return total, err
		}
		res, err := tx.ExecContext(ctx, p.query(hi-lo), args...)
		if err != nil {
			return total, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// insertPlan is InsertRows' statement for one row type, table and set of
// options.
type insertPlan[R any] struct {
	head  string  // INSERT INTO `t` (`a`, `b`) VALUES
	tuple string  // (?, ?)
	tail  string  // ON DUPLICATE KEY UPDATE …, or ""
	paths [][]int // struct rows: each column's field
	cols  int
	chunk int  // rows a statement
	ptr   bool // rows are pointers to structs
}

func planInsert[R any](table string, opts []InsertOption) (*insertPlan[R], error) {
	var cfg insertConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.err != nil {
		return nil, cfg.err
	}
	qTable, err := QuoteIdentifier(table)
	if err != nil {
		return nil, fmt.Errorf("safesync: InsertRows: table: %w", err)
	}
	p := &insertPlan[R]{}
	typ := reflect.TypeFor[R]()
	var columns []string
	switch kind := rowKindOf(typ); {
	case typ == reflect.TypeFor[[]any]():
		if len(cfg.columns) == 0 {
			return nil, errors.New("safesync: InsertRows: rows of []any need InsertColumns")
		}
		columns = cfg.columns
	case kind == rowStruct || kind == rowStructPtr:
		p.ptr = kind == rowStructPtr
		st := typ
		if p.ptr {
			st = typ.Elem()
		}
		fields := structFieldsOf(st)
		if len(cfg.columns) == 0 {
			for _, f := range fields.all {
				columns = append(columns, f.column)
				p.paths = append(p.paths, f.index)
			}
			if len(columns) == 0 {
				return nil, fmt.Errorf("safesync: InsertRows: %v maps no columns (no exported fields that are not db:\"-\")", st)
			}
			break
		}
		columns = cfg.columns
		for _, c := range columns {
			f, ok := fields.lookup(c)
			if !ok {
				return nil, fmt.Errorf("safesync: InsertRows: column %q has no field in %v (add a field named %s or tagged `db:%q`)", c, st, c, c)
			}
			p.paths = append(p.paths, f.index)
		}
	default:
		return nil, fmt.Errorf("safesync: InsertRows: rows of %v; want a struct, a pointer to a struct, or []any with InsertColumns", typ)
	}
	seen := make(map[string]bool, len(columns))
	for _, c := range columns {
		if seen[strings.ToLower(c)] {
			return nil, fmt.Errorf("safesync: InsertRows: column %q given twice", c)
		}
		seen[strings.ToLower(c)] = true
	}
	for _, c := range cfg.dupCols {
		if !seen[strings.ToLower(c)] {
			return nil, fmt.Errorf("safesync: InsertRows: ON DUPLICATE KEY UPDATE of column %q, which is not inserted", c)
		}
	}
	qCols, err := quoteIdentifiers(columns)
	if err != nil {
		return nil, fmt.Errorf("safesync: InsertRows: column: %w", err)
	}
	p.cols = len(columns)
	p.head = "INSERT INTO " + qTable + " (" + strings.Join(qCols, ", ") + ") VALUES "
	p.tuple = "(" + strings.TrimSuffix(strings.Repeat("?, ", p.cols), ", ") + ")"
	if len(cfg.onDup) > 0 {
		p.tail = " ON DUPLICATE KEY UPDATE " + strings.Join(cfg.onDup, ", ")
	}
	p.chunk = MaxPlaceholders / p.cols
	if cfg.chunkRows > 0 {
		p.chunk = min(p.chunk, cfg.chunkRows)
	}
	return p, nil
}

// query returns the statement for n rows.
func (p *insertPlan[R]) query(n int) string {
	var b strings.Builder
	b.Grow(len(p.head) + n*(len(p.tuple)+2) + len(p.tail))
	b.WriteString(p.head)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.tuple)
	}
	b.WriteString(p.tail)
	return b.String()
}

// args returns the values of rows, row by row; offset is the index of
// rows[0] in the caller's slice, for messages.
func (p *insertPlan[R]) args(rows []R, offset int) ([]any, error) {
	args := make([]any, 0, len(rows)*p.cols)
	for i := range rows {
		if p.paths == nil { // []any
			vals := any(rows[i]).([]any)
			if len(vals) != p.cols {
				return nil, fmt.Errorf("safesync: InsertRows: row %d has %d values for %d columns", offset+i, len(vals), p.cols)
			}
			args = append(args, vals...)
			continue
		}
		v := reflect.ValueOf(&rows[i]).Elem()
		if p.ptr {
			if v.IsNil() {
				return nil, fmt.Errorf("safesync: InsertRows: row %d is a nil pointer", offset+i)
			}
			v = v.Elem()
		}
		for _, path := range p.paths {
			f, err := v.FieldByIndexErr(path)
			if err != nil { // through a nil embedded pointer
				return nil, fmt.Errorf("safesync: InsertRows: row %d: %w", offset+i, err)
			}
			args = append(args, f.Interface())
		}
	}
	return args, nil
}
