package safesync

import (
	"errors"
	"fmt"
)

// MaxIdentifierLength is the longest table or column name safesync accepts.
// It is MySQL's own limit for table and column names.
const MaxIdentifierLength = 64

// ErrInvalidIdentifier is matched (with errors.Is) by every *IdentifierError.
var ErrInvalidIdentifier = errors.New("safesync: invalid identifier")

// IdentifierError reports a table or column name that safesync refuses to
// put into SQL. It is returned before any statement is sent.
type IdentifierError struct {
	Name   string // the name as given
	Reason string // why it was refused
}

// Error implements error.
func (e *IdentifierError) Error() string {
	return fmt.Sprintf("safesync: invalid identifier %q: %s", e.Name, e.Reason)
}

// Is reports whether target is ErrInvalidIdentifier.
func (e *IdentifierError) Is(target error) bool { return target == ErrInvalidIdentifier }

// ValidateIdentifier checks that name is a plain SQL identifier: it matches
// ^[A-Za-z_][A-Za-z0-9_]*$ and is at most MaxIdentifierLength bytes long.
// Quotes, backticks, spaces, dots and semicolons are all refused, so a
// validated name can never change the shape of the statement it is put into.
func ValidateIdentifier(name string) error {
	switch {
	case name == "":
		return &IdentifierError{Name: name, Reason: "empty"}
	case len(name) > MaxIdentifierLength:
		return &IdentifierError{Name: name, Reason: fmt.Sprintf("longer than %d characters", MaxIdentifierLength)}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		letter := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		digit := c >= '0' && c <= '9'
		if !letter && !(digit && i > 0) {
			return &IdentifierError{Name: name, Reason: fmt.Sprintf("character %q at byte %d is not allowed (only letters, digits and _; no leading digit)", c, i)}
		}
	}
	return nil
}

// QuoteIdentifier validates name and returns it between backticks, so that
// reserved words such as order or key work as table and column names.
func QuoteIdentifier(name string) (string, error) {
	if err := ValidateIdentifier(name); err != nil {
		return "", err
	}
	return "`" + name + "`", nil
}

// quoteIdentifiers quotes every name, failing on the first invalid one.
func quoteIdentifiers(names []string) ([]string, error) {
	out := make([]string, len(names))
	for i, n := range names {
		q, err := QuoteIdentifier(n)
		if err != nil {
			return nil, err
		}
		out[i] = q
	}
	return out, nil
}
