package safesync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
)

// ErrConflict is matched by every *ConflictError: an optimistic update
// found the row's version changed since it was read. Retry it with a new
// transaction (Retry with DefaultClassifier does).
var ErrConflict = errors.New("safesync: optimistic update conflict")

// ConflictError reports the row whose version moved.
type ConflictError struct {
	Table   string
	Key     Key
	Version int64 // the version the update expected
}

// Error implements error.
func (e *ConflictError) Error() string {
	return fmt.Sprintf("safesync: optimistic update conflict: %s %v is no longer at version %d", e.Table, e.Key, e.Version)
}

// Is reports whether target is ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// DefaultVersionColumn is the version column used when none is named.
const DefaultVersionColumn = "version"

// Execer runs a statement that returns no rows: *Tx, *sql.Tx, *sql.Conn
// and *sql.DB all are.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// UpdateVersioned sets the given columns of the row with key, guarded by
// its version, and increments the version:
//
//	UPDATE `table` SET `c1` = ?, …, `version` = `version` + 1
//	WHERE `k1` = ? AND … AND `version` = ?
//
// Every identifier is validated and quoted and every value bound by
// position, so a column named id_value or a table named order cannot be
// confused with anything. Columns are written in sorted order. No row
// matched is a *ConflictError (errors.Is(err, ErrConflict)). set may be
// empty (the version alone moves) but must not name the version column.
// An empty versionColumn means DefaultVersionColumn.
func UpdateVersioned(ctx context.Context, tx Execer, table string, key Key, versionColumn string, version int64, set map[string]any) error {
	query, args, err := updateVersionedQuery(table, key, versionColumn, version, set)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		metricsOf(tx).countConflict(table)
		if t, ok := tx.(*Tx); ok && t.span != nil {
			t.span.Event(eventConflict, slog.String(attrConflictTable, table), slog.Int64(attrConflictVer, version))
		}
		return &ConflictError{Table: table, Key: key, Version: version}
	}
	return nil
}

// updateVersionedQuery builds the statement of UpdateVersioned and its
// positional arguments: set values in sorted column order, key values in
// sorted column order, then the version.
func updateVersionedQuery(table string, key Key, versionColumn string, version int64, set map[string]any) (string, []any, error) {
	if versionColumn == "" {
		versionColumn = DefaultVersionColumn
	}
	qTable, err := QuoteIdentifier(table)
	if err != nil {
		return "", nil, err
	}
	qVersion, err := QuoteIdentifier(versionColumn)
	if err != nil {
		return "", nil, err
	}
	where, keyArgs, err := keyClause(key)
	if err != nil {
		return "", nil, err
	}
	cols := make([]string, 0, len(set))
	for c := range set {
		if strings.EqualFold(c, versionColumn) {
			return "", nil, fmt.Errorf("safesync: UpdateVersioned: set names the version column %q, which the update increments itself", c)
		}
		cols = append(cols, c)
	}
	slices.Sort(cols)
	qCols, err := quoteIdentifiers(cols)
	if err != nil {
		return "", nil, err
	}
	var b strings.Builder
	args := make([]any, 0, len(cols)+len(keyArgs)+1)
	b.WriteString("UPDATE " + qTable + " SET ")
	for i, c := range cols {
		b.WriteString(qCols[i] + " = ?, ")
		args = append(args, set[c])
	}
	b.WriteString(qVersion + " = " + qVersion + " + 1 WHERE " + where + " AND " + qVersion + " = ?")
	return b.String(), append(append(args, keyArgs...), version), nil
}

// metricsOf returns the transaction's metrics when ex is a *Tx.
func metricsOf(ex Execer) *Metrics {
	if tx, ok := ex.(*Tx); ok {
		return tx.metrics
	}
	return DefaultMetrics()
}

// Versioned is a row read for an optimistic update: where it is, the
// version it had when read, and its value.
type Versioned[T any] struct {
	Table         string
	Key           Key
	VersionColumn string // empty means DefaultVersionColumn
	Version       int64
	Value         T
}

// ReadVersioned returns a TxFunc that reads the row with key from table
// (no lock) into a T and takes its version from T's field mapped to
// versionColumn (empty means DefaultVersionColumn), which must be an
// integer. T is a struct (or pointer to struct) mapped as in Get; the read
// selects exactly the columns T maps, quoted, never *, so a column added to
// the table does not disturb a running worker (every exported field must be
// a column or be tagged `db:"-"`). A missing row is ErrNotFound. A T that
// is not a struct, has no field for the version column, or a bad
// identifier is an error before any SQL runs.
func ReadVersioned[T any](table string, key Key, versionColumn string) TxFunc[Versioned[T]] {
	if versionColumn == "" {
		versionColumn = DefaultVersionColumn
	}
	rowType := reflect.TypeFor[T]()
	err := versionFieldOf(rowType, versionColumn)
	var columns, query string
	var args []any
	if err == nil {
		columns, err = selectList(rowType, "ReadVersioned")
	}
	if err == nil {
		query, args, err = keyedQuery("SELECT "+columns, table, key, "")
	}
	return func(ctx context.Context, tx *Tx) (Versioned[T], error) {
		out := Versioned[T]{Table: table, Key: key, VersionColumn: versionColumn}
		if err != nil {
			return out, err
		}
		v, err := Get[T](ctx, tx, query, args...)
		if errors.Is(err, sql.ErrNoRows) {
			return out, fmt.Errorf("%w: %s %v", ErrNotFound, table, key)
		}
		if err != nil {
			return out, explainUnknownColumn(err, "ReadVersioned", rowType)
		}
		version, err := versionOf(v, versionColumn)
		if err != nil {
			return out, err
		}
		out.Version, out.Value = version, v
		return out, nil
	}
}

// versionFieldOf checks, before any SQL, that typ is a struct (or pointer
// to one) with an integer field mapped to the version column.
func versionFieldOf(typ reflect.Type, column string) error {
	if err := ValidateIdentifier(column); err != nil {
		return err
	}
	switch rowKindOf(typ) {
	case rowStructPtr:
		typ = typ.Elem()
	case rowStruct:
	default:
		return fmt.Errorf("safesync: ReadVersioned needs a struct row, not %v", typ)
	}
	f, ok := structFieldsOf(typ).lookup(column)
	if !ok {
		return fmt.Errorf("safesync: ReadVersioned: %v has no field for version column %q", typ, column)
	}
	switch typ.FieldByIndex(f.index).Type.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return nil
	}
	return fmt.Errorf("safesync: ReadVersioned: version field %s of %v is %v, want an integer", f.name, typ, typ.FieldByIndex(f.index).Type)
}

// versionOf reads the integer field of v mapped to column.
func versionOf[T any](v T, column string) (int64, error) {
	sv, err := structValue(reflect.ValueOf(&v).Elem())
	if err != nil {
		return 0, err
	}
	f, ok := structFieldsOf(sv.Type()).lookup(column)
	if !ok {
		return 0, fmt.Errorf("safesync: %v has no field for version column %q", sv.Type(), column)
	}
	fv := sv.FieldByIndex(f.index)
	switch {
	case fv.CanInt():
		return fv.Int(), nil
	case fv.CanUint():
		return int64(fv.Uint()), nil
	}
	return 0, fmt.Errorf("safesync: version field %s of %v is %v, want an integer", f.name, sv.Type(), fv.Type())
}

// structValue returns the struct v holds, through one pointer.
func structValue(v reflect.Value) (reflect.Value, error) {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return v, errors.New("safesync: nil row")
		}
		v = v.Elem()
	}
	if rowKindOf(v.Type()) != rowStruct {
		return v, fmt.Errorf("safesync: optimistic updates need a struct row, not %v", v.Type())
	}
	return v, nil
}

// OCC returns a TxFunc that performs one optimistic update: read gives the
// row and its version, mutate computes the new row from the current one,
// and the columns mutate changed are written with UpdateVersioned, guarded
// by the version read. A version that moved in between is a
// *ConflictError (ErrConflict); nothing retries inside the transaction.
// Wrap the transaction in Retry to try again with a fresh read:
//
//	Retry(policy, WithTx(db, OCC(ReadVersioned[Account]("accounts", Key{"id": 1}, ""), addFive)))
//
// OCCRow("accounts", Key{"id": 1}, "", addFive) is the same, with Account
// inferred from addFive.
//
// mutate must be a pure function of its argument: it may run once per
// attempt. It must not change key columns or the version column. OCC
// returns the new row with its version field advanced. T is a struct
// mapped as in Get, inferred from read and mutate.
func OCC[T any](read TxFunc[Versioned[T]], mutate func(current T) (T, error)) TxFunc[T] {
	if read == nil || mutate == nil {
		panic("safesync: OCC with nil read or mutate")
	}
	return func(ctx context.Context, tx *Tx) (T, error) {
		var zero T
		cur, err := read(ctx, tx)
		if err != nil {
			return zero, err
		}
		vcol := cur.VersionColumn
		if vcol == "" {
			vcol = DefaultVersionColumn
		}
		next, err := mutate(cur.Value)
		if err != nil {
			return zero, err
		}
		set, err := changedColumns(cur.Value, next, cur.Key, vcol)
		if err != nil {
			return zero, err
		}
		if err := UpdateVersioned(ctx, tx, cur.Table, cur.Key, vcol, cur.Version, set); err != nil {
			return zero, err
		}
		setVersion(&next, vcol, cur.Version+1)
		return next, nil
	}
}

// OCCRow is OCC(ReadVersioned[T](table, key, versionColumn), mutate) with T
// inferred from mutate: one optimistic update of the row with key, without
// writing the row type twice.
//
//	Retry(policy, WithTx(db, OCCRow("accounts", Key{"id": 1}, "version", addFive)))
//
// (ReadVersioned alone cannot infer T, which appears only in its result:
// ReadVersioned("accounts", key, "version") is the compile error "cannot
// infer T".) Everything OCC and ReadVersioned say holds. OCCRow panics if
// mutate is nil.
func OCCRow[T any](table string, key Key, versionColumn string, mutate func(current T) (T, error)) TxFunc[T] {
	return OCC(ReadVersioned[T](table, key, versionColumn), mutate)
}

// changedColumns compares two rows field by field and returns the columns
// whose values differ.
func changedColumns[T any](before, after T, key Key, versionColumn string) (map[string]any, error) {
	bv, err := structValue(reflect.ValueOf(&before).Elem())
	if err != nil {
		return nil, err
	}
	av, err := structValue(reflect.ValueOf(&after).Elem())
	if err != nil {
		return nil, err
	}
	set := map[string]any{}
	for _, f := range structFieldsOf(bv.Type()).all {
		old, cur := bv.FieldByIndex(f.index).Interface(), av.FieldByIndex(f.index).Interface()
		if reflect.DeepEqual(old, cur) {
			continue
		}
		if strings.EqualFold(f.column, versionColumn) {
			return nil, fmt.Errorf("safesync: OCC: mutate changed the version field %s; the update advances it itself", f.name)
		}
		for k := range key {
			if strings.EqualFold(f.column, k) {
				return nil, fmt.Errorf("safesync: OCC: mutate changed key column %q", k)
			}
		}
		set[f.column] = cur
	}
	return set, nil
}

func setVersion[T any](v *T, column string, version int64) {
	sv, err := structValue(reflect.ValueOf(v).Elem())
	if err != nil {
		return
	}
	if f, ok := structFieldsOf(sv.Type()).lookup(column); ok {
		fv := sv.FieldByIndex(f.index)
		switch {
		case fv.CanInt():
			fv.SetInt(version)
		case fv.CanUint():
			fv.SetUint(uint64(version))
		}
	}
}

// InsertIdempotent runs an INSERT and reports whether it inserted: it
// returns false, nil exactly when the server refused the row as a
// duplicate key (MySQL error 1062), and every other error as it is. The
// message text is never inspected, so a different error that happens to
// mention "Duplicate entry" is not mistaken for a duplicate.
func InsertIdempotent(ctx context.Context, tx Execer, query string, args ...any) (inserted bool, err error) {
	if _, err := tx.ExecContext(ctx, query, args...); err != nil {
		if mysqlErrorNumber(err) == 1062 {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
