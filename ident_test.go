package safesync

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateIdentifier(t *testing.T) {
	tests := []struct {
		name  string
		input string
		ok    bool
	}{
		{"a plain name is accepted", "orders", true},
		{"a reserved word is accepted (it is quoted)", "order", true},
		{"underscores and digits after the first byte are accepted", "_id_value2", true},
		{"exactly 64 bytes is accepted", strings.Repeat("a", 64), true},
		{"65 bytes is refused", strings.Repeat("a", 65), false},
		{"empty is refused", "", false},
		{"a leading digit is refused", "1orders", false},
		{"a space is refused", "my table", false},
		{"a backtick is refused", "or`der", false},
		{"a single quote is refused", "o'rder", false},
		{"a double quote is refused", `o"rder`, false},
		{"a semicolon is refused", "orders;DROP", false},
		{"a dot is refused (no qualified names)", "db.orders", false},
		{"a dash is refused", "my-table", false},
		{"non-ASCII is refused", "ordérs", false},
		{"a NUL byte is refused", "ord\x00ers", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateIdentifier(tt.input)
			if tt.ok && err != nil {
				t.Fatalf("ValidateIdentifier(%q) = %v, want nil", tt.input, err)
			}
			if !tt.ok {
				var ie *IdentifierError
				if !errors.As(err, &ie) || !errors.Is(err, ErrInvalidIdentifier) || ie.Name != tt.input {
					t.Fatalf("ValidateIdentifier(%q) = %v, want *IdentifierError matching ErrInvalidIdentifier", tt.input, err)
				}
			}
		})
	}
}

func TestQuoteIdentifier(t *testing.T) {
	got, err := QuoteIdentifier("order")
	if err != nil || got != "`order`" {
		t.Fatalf("QuoteIdentifier(order) = %q, %v; want `order`", got, err)
	}
	if got, err := QuoteIdentifier("a`b"); err == nil {
		t.Fatalf("QuoteIdentifier(a`b) = %q, want an error", got)
	}
}

func TestStatementTarget(t *testing.T) {
	tests := []struct {
		name, query, op, table string
	}{
		{"insert into", "INSERT INTO orders (id) VALUES (?)", "insert", "orders"},
		{"insert with modifiers and no INTO", "insert low_priority ignore orders values (1)", "insert", "orders"},
		{"insert with a column list glued to the name", "INSERT INTO orders(id) VALUES (1)", "insert", "orders"},
		{"replace", "REPLACE INTO `kv` VALUES (1, 2)", "replace", "kv"},
		{"update of a backticked reserved word", "UPDATE `order` SET v = 1", "update", "order"},
		{"update with modifiers", "UPDATE LOW_PRIORITY IGNORE accounts SET v = 1", "update", "accounts"},
		{"qualified db.table keeps the table", "UPDATE shop.accounts SET v = 1", "update", "accounts"},
		{"qualified and backticked", "DELETE FROM `shop`.`order` WHERE id = 1", "delete", "order"},
		{"delete with modifiers", "DELETE QUICK IGNORE FROM logs WHERE id < 10", "delete", "logs"},
		{"multi-table delete names its target first", "DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id", "delete", "t1"},
		{"leading comments and whitespace", "/* app=x */\n -- note\n  UPDATE accounts SET v = 1", "update", "accounts"},
		{"a hash comment", "# hi\nINSERT INTO t1 VALUES (1)", "insert", "t1"},
		{"lower case", "update accounts set v=1", "update", "accounts"},
		{"mixed case", "Insert Into accounts VALUES (1)", "insert", "accounts"},
		{"mixed case replace", "rEpLaCe accounts VALUES (1)", "replace", "accounts"},
		{"mixed case delete", "Delete From accounts", "delete", "accounts"},
		{"a longer word that starts like a write is not one", "UPDATES accounts", "", ""},
		{"select is not a write", "SELECT * FROM accounts", "", ""},
		{"DDL is not a write", "CREATE TABLE x (id INT)", "", ""},
		{"an invalid table name gives no label", "UPDATE `we;ird` SET v = 1", "update", ""},
		{"an unterminated backtick gives no label", "UPDATE `accounts SET v = 1", "update", ""},
		{"an unterminated comment is not a write", "/* UPDATE accounts", "", ""},
		{"empty", "", "", ""},
		{"a name longer than 64 gives no label", "UPDATE " + strings.Repeat("x", 65) + " SET v = 1", "update", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op, table := statementTarget(tt.query)
			if op != tt.op || table != tt.table {
				t.Fatalf("statementTarget(%q) = (%q, %q), want (%q, %q)", tt.query, op, table, tt.op, tt.table)
			}
		})
	}
}
