package safesync_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/safesync-go/safesync"
)

// recordingExecer records the statements it is given and answers each
// with one row affected per row of the statement.
type recordingExecer struct {
	queries []string
	args    [][]any
}

func (r *recordingExecer) ExecContext(_ context.Context, query string, args ...any) (sql.Result, error) {
	r.queries = append(r.queries, query)
	r.args = append(r.args, args)
	return rowsAffected(strings.Count(query, "(?")), nil
}

type rowsAffected int64

func (n rowsAffected) LastInsertId() (int64, error) { return 0, errors.New("no id") }
func (n rowsAffected) RowsAffected() (int64, error) { return int64(n), nil }

type account struct {
	ID      int64  `db:"id"`
	Balance int64  `db:"balance"`
	Note    string `db:"order"` // a reserved word, quoted
	Skipped string `db:"-"`
}

func TestInsertRowsBuildsQuotedMultiRowStatements(t *testing.T) {
	rows := []account{{1, 10, "a", "x"}, {2, 20, "b", "y"}}
	tests := []struct {
		name  string
		opts  []safesync.InsertOption
		query string
		args  []any
	}{
		{"every mapped field is a column, in declaration order", nil,
			"INSERT INTO `accounts` (`id`, `balance`, `order`) VALUES (?, ?, ?), (?, ?, ?)",
			[]any{int64(1), int64(10), "a", int64(2), int64(20), "b"}},
		{"InsertColumns picks fields by column, in its order", []safesync.InsertOption{safesync.InsertColumns("balance", "id")},
			"INSERT INTO `accounts` (`balance`, `id`) VALUES (?, ?), (?, ?)",
			[]any{int64(10), int64(1), int64(20), int64(2)}},
		{"OnDuplicateAdd accumulates with VALUES()", []safesync.InsertOption{safesync.InsertColumns("id", "balance"), safesync.OnDuplicateAdd("balance")},
			"INSERT INTO `accounts` (`id`, `balance`) VALUES (?, ?), (?, ?) ON DUPLICATE KEY UPDATE `balance` = `balance` + VALUES(`balance`)",
			[]any{int64(1), int64(10), int64(2), int64(20)}},
		{"OnDuplicateSet and OnDuplicateUpdate join in the order given", []safesync.InsertOption{
			safesync.OnDuplicateSet("order"), safesync.OnDuplicateUpdate("`balance` = GREATEST(`balance`, VALUES(`balance`))")},
			"INSERT INTO `accounts` (`id`, `balance`, `order`) VALUES (?, ?, ?), (?, ?, ?) ON DUPLICATE KEY UPDATE `order` = VALUES(`order`), `balance` = GREATEST(`balance`, VALUES(`balance`))",
			[]any{int64(1), int64(10), "a", int64(2), int64(20), "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ex recordingExecer
			n, err := safesync.InsertRows(context.Background(), &ex, "accounts", rows, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if n != 2 || len(ex.queries) != 1 {
				t.Fatalf("affected %d in %d statements, want 2 in 1", n, len(ex.queries))
			}
			if ex.queries[0] != tt.query {
				t.Fatalf("query\n got %s\nwant %s", ex.queries[0], tt.query)
			}
			if got, want := strings.TrimSpace(strings.Repeat("x ", len(ex.args[0]))), strings.TrimSpace(strings.Repeat("x ", len(tt.args))); got != want {
				t.Fatalf("%d args, want %d", len(ex.args[0]), len(tt.args))
			}
			for i := range tt.args {
				if ex.args[0][i] != tt.args[i] {
					t.Fatalf("args = %v, want %v", ex.args[0], tt.args)
				}
			}
		})
	}
}

func TestInsertRowsTakesPointersAndRowsOfValues(t *testing.T) {
	var ex recordingExecer
	if _, err := safesync.InsertRows(context.Background(), &ex, "accounts", []*account{{ID: 7, Balance: 1}}, safesync.InsertColumns("id", "balance")); err != nil {
		t.Fatal(err)
	}
	if _, err := safesync.InsertRows(context.Background(), &ex, "accounts", [][]any{{int64(8), nil}}, safesync.InsertColumns("id", "note")); err != nil {
		t.Fatal(err)
	}
	if want := "INSERT INTO `accounts` (`id`, `note`) VALUES (?, ?)"; ex.queries[1] != want || len(ex.args[1]) != 2 || ex.args[1][1] != nil {
		t.Fatalf("query %s with %v, want %s with [8 <nil>]", ex.queries[1], ex.args[1], want)
	}
	if len(ex.args[0]) != 2 || ex.args[0][0] != int64(7) {
		t.Fatalf("pointer rows: args %v", ex.args[0])
	}
}

func TestInsertRowsChunksBelowThePlaceholderLimit(t *testing.T) {
	type three struct{ A, B, C int }
	perStatement := safesync.MaxPlaceholders / 3 // 21845 rows, 65535 placeholders
	tests := []struct {
		name   string
		rows   int
		opts   []safesync.InsertOption
		chunks []int
	}{
		{"no rows run no statement", 0, nil, nil},
		{"exactly the limit is one statement", perStatement, nil, []int{perStatement}},
		{"one row more is a second statement", perStatement + 1, nil, []int{perStatement, 1}},
		{"two full statements and a part", 2*perStatement + 5, nil, []int{perStatement, perStatement, 5}},
		{"InsertChunkRows bounds rows a statement", 250, []safesync.InsertOption{safesync.InsertChunkRows(100)}, []int{100, 100, 50}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ex recordingExecer
			rows := make([]three, tt.rows)
			for i := range rows {
				rows[i] = three{i, i, i}
			}
			n, err := safesync.InsertRows(context.Background(), &ex, "t", rows, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(tt.rows) || len(ex.queries) != len(tt.chunks) {
				t.Fatalf("affected %d in %d statements, want %d in %d", n, len(ex.queries), tt.rows, len(tt.chunks))
			}
			next := 0
			for i, want := range tt.chunks {
				if got := strings.Count(ex.queries[i], "?"); got != 3*want || len(ex.args[i]) != 3*want || got > safesync.MaxPlaceholders {
					t.Fatalf("statement %d: %d placeholders, %d args; want %d", i, got, len(ex.args[i]), 3*want)
				}
				if ex.args[i][0] != next { // rows stay in order across statements
					t.Fatalf("statement %d starts with row %v, want %d", i, ex.args[i][0], next)
				}
				next += want
			}
		})
	}
}

func TestInsertRowsRefusesBadInputBeforeAnyStatement(t *testing.T) {
	type noColumns struct {
		Skip int `db:"-"`
	}
	type evil struct {
		ID int `db:"id; DROP TABLE x"`
	}
	ctx := context.Background()
	tests := []struct {
		name string
		run  func(ex safesync.Execer) error
		want string
	}{
		{"an empty table name", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "", []account{{}})
			return err
		}, "table"},
		{"a table name that is not an identifier", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "accounts`; DROP", []account{{}})
			return err
		}, "invalid identifier"},
		{"a struct with no columns", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []noColumns{{}})
			return err
		}, "maps no columns"},
		{"a column tag that is not an identifier", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []evil{{}})
			return err
		}, "invalid identifier"},
		{"rows that are not structs", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []int{1, 2})
			return err
		}, "want a struct"},
		{"rows of values without InsertColumns", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", [][]any{{1}})
			return err
		}, "need InsertColumns"},
		{"a row of values of the wrong length", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", [][]any{{1, 2}, {3}}, safesync.InsertColumns("a", "b"))
			return err
		}, "row 1 has 1 values for 2 columns"},
		{"a column the struct does not map", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []account{{}}, safesync.InsertColumns("id", "missing"))
			return err
		}, `column "missing" has no field`},
		{"a column given twice", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []account{{}}, safesync.InsertColumns("id", "ID"))
			return err
		}, "given twice"},
		{"a nil pointer row", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []*account{{}, nil})
			return err
		}, "row 1 is a nil pointer"},
		{"an update of a bad column", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []account{{}}, safesync.OnDuplicateAdd("balance`"))
			return err
		}, "invalid identifier"},
		{"an update of no column", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []account{{}}, safesync.OnDuplicateSet())
			return err
		}, "with no column"},
		{"an update of a column not inserted", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []account{{}}, safesync.InsertColumns("id"), safesync.OnDuplicateSet("balance"))
			return err
		}, "not inserted"},
		{"an empty assignment", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []account{{}}, safesync.OnDuplicateUpdate(" "))
			return err
		}, "no assignment"},
		{"a chunk of zero rows", func(ex safesync.Execer) error {
			_, err := safesync.InsertRows(ctx, ex, "t", []account{{}}, safesync.InsertChunkRows(0))
			return err
		}, "InsertChunkRows(0)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ex recordingExecer
			err := tt.run(&ex)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one saying %q", err, tt.want)
			}
			if len(ex.queries) != 0 {
				t.Fatalf("ran %q despite the error", ex.queries)
			}
		})
	}
}
