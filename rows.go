package safesync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"
)

var (
	// ErrNoRows is returned by Get when the query returned no row. It
	// matches sql.ErrNoRows too: errors.Is(err, sql.ErrNoRows) is true.
	ErrNoRows = fmt.Errorf("safesync: no rows in result set: %w", sql.ErrNoRows)

	// ErrTooManyRows is returned by Get when the query returned more than
	// one row.
	ErrTooManyRows = errors.New("safesync: more than one row in result set")

	// ErrUnmappedColumn is matched by the error returned when a result
	// column has no destination in the row type.
	ErrUnmappedColumn = errors.New("safesync: result column has no destination")
)

// Querier is anything that runs a query returning rows: *sql.DB, *sql.Conn,
// *sql.Tx and *Tx all are.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Get runs query and scans its only row into a T. No row is ErrNoRows (which
// matches sql.ErrNoRows); more than one is ErrTooManyRows.
//
// T may be:
//   - a struct (or pointer to struct): columns go to fields by `db:"col"`
//     tag, else by case-insensitive field name; embedded structs are
//     flattened; `db:"-"` skips a field. A column with no field is an error
//     naming the column. Fields with no column keep their zero value.
//   - map[string]any: one entry per column; []byte values become strings.
//   - anything else (int64, string, time.Time, sql.NullString, *int, a
//     sql.Scanner…): the query must return exactly one column.
//
// Get is strict on purpose: a result column with no destination is an
// error (ErrUnmappedColumn), so a typo or a misremembered column shows at
// once. Name the columns in your own SQL rather than writing SELECT *, or a
// migration that adds a column breaks the read; the combinators that
// generate SQL (WithRowLock, ReadVersioned) select T's columns by name.
//
// ctx governs the query; the rows are closed before Get returns.
func Get[T any](ctx context.Context, q Querier, query string, args ...any) (T, error) {
	var zero T
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return zero, err
	}
	defer rows.Close()
	scan, err := rowScannerFor[T](rows)
	if err != nil {
		return zero, err
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return zero, err
		}
		return zero, ErrNoRows
	}
	v, err := scan(rows)
	if err != nil {
		return zero, err
	}
	if rows.Next() {
		return zero, ErrTooManyRows
	}
	if err := rows.Err(); err != nil {
		return zero, err
	}
	return v, rows.Close()
}

// Select runs query and scans every row into a T, with the same mapping
// rules as Get. No rows is an empty, non-nil slice and no error. ctx
// governs the query; the rows are closed before Select returns.
func Select[T any](ctx context.Context, q Querier, query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectRows[T](rows)
}

// collectRows scans all of rows into Ts.
func collectRows[T any](rows *sql.Rows) ([]T, error) {
	scan, err := rowScannerFor[T](rows)
	if err != nil {
		return nil, err
	}
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, rows.Close()
}

// rowScannerFor returns a function that scans the current row into a T,
// planned once from the result's columns.
func rowScannerFor[T any](rows *sql.Rows) (func(*sql.Rows) (T, error), error) {
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	typ := reflect.TypeFor[T]()
	switch kind := rowKindOf(typ); kind {
	case rowMap:
		return func(rows *sql.Rows) (T, error) {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			var zero T
			if err := rows.Scan(ptrs...); err != nil {
				return zero, err
			}
			m := make(map[string]any, len(cols))
			for i, c := range cols {
				if b, ok := vals[i].([]byte); ok {
					m[c] = string(b)
				} else {
					m[c] = vals[i]
				}
			}
			return any(m).(T), nil
		}, nil
	case rowScalar:
		if len(cols) != 1 {
			return nil, fmt.Errorf("safesync: scanning into %v needs exactly one column, the query returned %d (%s)", typ, len(cols), strings.Join(cols, ", "))
		}
		return func(rows *sql.Rows) (T, error) {
			var v T
			err := rows.Scan(&v)
			return v, err
		}, nil
	default: // rowStruct, rowStructPtr
		structType := typ
		if kind == rowStructPtr {
			structType = typ.Elem()
		}
		fields := structFieldsOf(structType)
		paths := make([][]int, len(cols))
		used := make(map[string]string, len(cols))
		for i, c := range cols {
			f, ok := fields.lookup(c)
			if !ok {
				return nil, fmt.Errorf("%w: column %q has no field in %v (add a field named %s or tagged `db:%q`)", ErrUnmappedColumn, c, structType, c, c)
			}
			if prev, dup := used[f.name]; dup {
				return nil, fmt.Errorf("safesync: columns %q and %q both map to field %s of %v; alias one of them", prev, c, f.name, structType)
			}
			used[f.name] = c
			paths[i] = f.index
		}
		return func(rows *sql.Rows) (T, error) {
			var out T
			sv := reflect.New(structType).Elem()
			ptrs := make([]any, len(paths))
			for i, p := range paths {
				ptrs[i] = sv.FieldByIndex(p).Addr().Interface()
			}
			if err := rows.Scan(ptrs...); err != nil {
				return out, err
			}
			if kind == rowStructPtr {
				reflect.ValueOf(&out).Elem().Set(sv.Addr())
			} else {
				reflect.ValueOf(&out).Elem().Set(sv)
			}
			return out, nil
		}, nil
	}
}

// selectList returns the select list of a read that a combinator (who)
// generates into a T: the columns T maps, quoted, in declaration order, for
// a struct or pointer to struct, so that a column added to the table never
// breaks it; "*" for map[string]any, which takes whatever columns the row
// has. Any other T, a struct that maps no column, or a column name that is
// not a valid identifier is an error.
func selectList(typ reflect.Type, who string) (string, error) {
	switch kind := rowKindOf(typ); kind {
	case rowMap:
		return "*", nil
	case rowStruct, rowStructPtr:
		if kind == rowStructPtr {
			typ = typ.Elem()
		}
		fields := structFieldsOf(typ).all
		if len(fields) == 0 {
			return "", fmt.Errorf("safesync: %s: %v maps no columns (no exported fields that are not db:\"-\")", who, typ)
		}
		cols := make([]string, len(fields))
		for i, f := range fields {
			q, err := QuoteIdentifier(f.column)
			if err != nil {
				return "", fmt.Errorf("safesync: %s: field %s of %v: %w", who, f.name, typ, err)
			}
			cols[i] = q
		}
		return strings.Join(cols, ", "), nil
	}
	return "", fmt.Errorf("safesync: %s reads a whole row; %v is neither a struct nor map[string]any (read a single column with Get)", who, typ)
}

// explainUnknownColumn adds, to the server's error for a column T maps that
// the table lacks (MySQL error 1054), which row type asked for it and how
// to say a field is no column.
func explainUnknownColumn(err error, who string, typ reflect.Type) error {
	if mysqlErrorNumber(err) != 1054 {
		return err
	}
	return fmt.Errorf("safesync: %s selects the columns %v maps, and the table lacks one; tag fields that are not columns `db:\"-\"`: %w", who, typ, err)
}

type rowKind int

const (
	rowScalar rowKind = iota
	rowMap
	rowStruct
	rowStructPtr
)

var scannerType = reflect.TypeFor[sql.Scanner]()

// rowKindOf decides how a row maps onto typ. Structs that scan themselves
// (sql.NullString, time.Time and the like) are scalars.
func rowKindOf(typ reflect.Type) rowKind {
	if typ == reflect.TypeFor[map[string]any]() {
		return rowMap
	}
	isPlainStruct := func(t reflect.Type) bool {
		return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(scannerType) && t != reflect.TypeFor[time.Time]()
	}
	if isPlainStruct(typ) {
		return rowStruct
	}
	if typ.Kind() == reflect.Pointer && isPlainStruct(typ.Elem()) && !typ.Implements(scannerType) {
		return rowStructPtr
	}
	return rowScalar
}

// structField is one scannable field of a struct type.
type structField struct {
	name   string // Go field name, for messages
	column string // the db tag, else the field name
	index  []int  // path for reflect.Value.FieldByIndex
}

// structFields maps column names onto fields: exact tag names first, then
// lower-cased tag or field names.
type structFields struct {
	exact  map[string]structField
	folded map[string]structField
	all    []structField // in declaration order
}

func (s *structFields) lookup(col string) (structField, bool) {
	if f, ok := s.exact[col]; ok {
		return f, true
	}
	f, ok := s.folded[strings.ToLower(col)]
	return f, ok
}

var structFieldCache sync.Map // reflect.Type -> *structFields

func structFieldsOf(t reflect.Type) *structFields {
	if v, ok := structFieldCache.Load(t); ok {
		return v.(*structFields)
	}
	sf := &structFields{exact: map[string]structField{}, folded: map[string]structField{}}
	collectStructFields(t, nil, sf)
	v, _ := structFieldCache.LoadOrStore(t, sf)
	return v.(*structFields)
}

func collectStructFields(t reflect.Type, prefix []int, out *structFields) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, hasTag := f.Tag.Lookup("db")
		if tag == "-" {
			continue
		}
		index := append(append([]int(nil), prefix...), i)
		if f.Anonymous && !hasTag && f.Type.Kind() == reflect.Struct && rowKindOf(f.Type) == rowStruct {
			collectStructFields(f.Type, index, out)
			continue
		}
		if !f.IsExported() {
			continue
		}
		name := f.Name
		if tag != "" {
			name = tag
		}
		field := structField{name: f.Name, column: name, index: index}
		out.all = append(out.all, field)
		if tag != "" {
			if _, taken := out.exact[tag]; !taken {
				out.exact[tag] = field
			}
		}
		if _, taken := out.folded[strings.ToLower(name)]; !taken {
			out.folded[strings.ToLower(name)] = field
		}
	}
}
