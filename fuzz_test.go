package safesync

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var identifierPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func FuzzValidateIdentifier(f *testing.F) {
	for _, s := range []string{"orders", "order", "", "a`b", "a;b", "a b", "1a", strings.Repeat("x", 65), "_", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		valid := identifierPattern.MatchString(name) && len(name) <= MaxIdentifierLength
		q, err := QuoteIdentifier(name)
		if valid != (err == nil) {
			t.Fatalf("QuoteIdentifier(%q) err = %v, but the pattern says valid=%v", name, err, valid)
		}
		if err != nil {
			var ie *IdentifierError
			if !errors.As(err, &ie) || ie.Name != name {
				t.Fatalf("QuoteIdentifier(%q) = %v, want *IdentifierError", name, err)
			}
			return
		}
		if q != "`"+name+"`" || strings.Count(q, "`") != 2 {
			t.Fatalf("QuoteIdentifier(%q) = %q", name, q)
		}
	})
}

// checkSQL asserts that query is made only of backtick-quoted valid
// identifiers and the given fixed words, and that it has one placeholder
// per argument: no identifier is unquoted and no value is interpolated.
func checkSQL(t *testing.T, query string, args []any, words ...string) {
	t.Helper()
	var rest strings.Builder
	for i := 0; i < len(query); i++ {
		if query[i] != '`' {
			rest.WriteByte(query[i])
			continue
		}
		end := strings.IndexByte(query[i+1:], '`')
		if end < 0 {
			t.Fatalf("unterminated quote in %q", query)
		}
		if ident := query[i+1 : i+1+end]; ValidateIdentifier(ident) != nil {
			t.Fatalf("quoted identifier %q in %q is not valid", ident, query)
		}
		rest.WriteString(" IDENT ")
		i += end + 1
	}
	allowed := append([]string{"IDENT", "?", "="}, words...)
	tokens := strings.FieldsFunc(rest.String(), func(r rune) bool { return r == ' ' || r == ',' })
	placeholders := 0
	for _, tok := range tokens {
		if !slices.Contains(allowed, tok) {
			t.Fatalf("token %q in %q is neither a quoted identifier nor fixed SQL", tok, query)
		}
		if tok == "?" {
			placeholders++
		}
	}
	if placeholders != len(args) {
		t.Fatalf("%d placeholders for %d arguments in %q", placeholders, len(args), query)
	}
}

func FuzzUpdateVersionedQuery(f *testing.F) {
	f.Add("order", "id", "id_value", "version_value", "version", "1", "x'); DROP TABLE t; --", int64(3))
	f.Add("t", "id", "a", "b", "", "?", "`", int64(0))
	f.Add("t;", "id", "a", "a", "v", "", "", int64(-1))
	f.Fuzz(func(t *testing.T, table, keyCol, colA, colB, versionCol, keyVal, setVal string, version int64) {
		set := map[string]any{colA: setVal, colB: setVal + "b"}
		query, args, err := updateVersionedQuery(table, Key{keyCol: keyVal}, versionCol, version, set)
		if err != nil {
			return
		}
		checkSQL(t, query, args, "UPDATE", "SET", "+", "1", "WHERE", "AND")
		cols := []string{colA, colB}
		if colA == colB {
			cols = cols[:1]
		}
		slices.Sort(cols)
		want := []any{}
		for _, c := range cols {
			want = append(want, set[c])
		}
		want = append(want, keyVal, version)
		if !reflect.DeepEqual(args, want) {
			t.Fatalf("args = %v, want %v", args, want)
		}
	})
}

func FuzzRowLockQuery(f *testing.F) {
	f.Add("orders", "id", "tenant", "1", "x' OR '1'='1", uint8(0))
	f.Add("order", "a b", "c", "", "", uint8(1))
	f.Add("o`rders", "id", "id", "1", "2", uint8(2))
	f.Fuzz(func(t *testing.T, table, colA, colB, valA, valB string, pick uint8) {
		suffix := []string{"", " NOWAIT", " SKIP LOCKED"}[pick%3]
		key := Key{colA: valA, colB: valB}
		columns, err := selectList(reflect.TypeFor[struct {
			ID     int64 `db:"id"`
			Amount int64
		}](), "WithRowLock")
		if err != nil || columns != "`id`, `Amount`" {
			t.Fatalf("select list = %q, %v", columns, err)
		}
		query, args, err := rowLockQuery(columns, table, key, suffix)
		if err != nil {
			return
		}
		checkSQL(t, query, args, "SELECT", "FROM", "WHERE", "AND", "FOR", "UPDATE", "NOWAIT", "SKIP", "LOCKED")
		if !strings.HasPrefix(query, "SELECT `id`, `Amount` FROM ") {
			t.Fatalf("query %q does not select exactly the row type's columns", query)
		}
		cols := []string{colA, colB}
		if colA == colB {
			cols = cols[:1]
		}
		slices.Sort(cols)
		for i, c := range cols {
			if args[i] != key[c] {
				t.Fatalf("argument %d = %v, want the value of %s (columns must be in sorted order)", i, args[i], c)
			}
		}
	})
}

func FuzzStatementTarget(f *testing.F) {
	for _, s := range []string{"UPDATE `order` SET a = 1", "insert into db.t values (1)", "DELETE t1 FROM t1 JOIN t2", "/* x", "-- c\nREPLACE INTO `a`.`b` VALUES (1)", "UPDATE `a", "#\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		op, table := statementTarget(query)
		switch op {
		case "", "insert", "update", "delete", "replace":
		default:
			t.Fatalf("op %q from %q", op, query)
		}
		if op == "" && table != "" {
			t.Fatalf("no op but table %q from %q", table, query)
		}
		if table != "" && ValidateIdentifier(table) != nil {
			t.Fatalf("label %q from %q is not a valid identifier: unbounded", table, query)
		}
		// A valid identifier written as the target is always found.
		if ValidateIdentifier(query) == nil {
			if _, got := statementTarget(fmt.Sprintf("UPDATE `%s` SET x = 1", query)); got != query {
				t.Fatalf("UPDATE of %q labelled %q", query, got)
			}
		}
	})
}
