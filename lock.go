package safesync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"
)

// Key names a row by column values: Key{"id": 7}, or several columns for a
// composite key. Columns are always put into SQL in sorted order, quoted;
// values are always bound parameters.
type Key map[string]any

// String returns the key as errors print it: column=value pairs in sorted
// column order, strings quoted, as in id=9 or region="eu" seq=4.
func (k Key) String() string {
	cols := make([]string, 0, len(k))
	for c := range k {
		cols = append(cols, c)
	}
	slices.Sort(cols)
	var b strings.Builder
	for i, c := range cols {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(c)
		b.WriteByte('=')
		switch v := k[c].(type) {
		case string:
			b.WriteString(strconv.Quote(v))
		case []byte:
			b.WriteString(strconv.Quote(string(v)))
		default:
			fmt.Fprint(&b, v)
		}
	}
	return b.String()
}

var (
	// ErrNotFound is returned by WithRowLock when no row has the key.
	ErrNotFound = errors.New("safesync: row not found")

	// ErrEmptyKey is returned, before any SQL runs, for a Key with no
	// columns.
	ErrEmptyKey = errors.New("safesync: empty key")

	// ErrRowLocked is returned by WithRowLock with NoWait or SkipLocked when
	// another transaction holds the row. The default retry classifier
	// treats it like a lock wait timeout.
	ErrRowLocked = errors.New("safesync: row is locked by another transaction")

	// ErrLockTimeout is matched by every *LockTimeoutError.
	ErrLockTimeout = errors.New("safesync: lock timeout")

	// ErrLockFailed is returned when GET_LOCK answers NULL: the server
	// reported an error taking the lock (not a timeout).
	ErrLockFailed = errors.New("safesync: GET_LOCK failed (NULL result)")

	// ErrLockLost is returned when an advisory lock stopped being held
	// while the work it protected ran: its connection died or another
	// session holds it now. The transaction is rolled back.
	ErrLockLost = errors.New("safesync: advisory lock lost")
)

// LockTimeoutError reports that an advisory lock was not granted within
// its timeout.
type LockTimeoutError struct {
	Name    string        // the lock name
	Timeout time.Duration // how long GET_LOCK waited
}

// Error implements error.
func (e *LockTimeoutError) Error() string {
	return fmt.Sprintf("safesync: advisory lock %q not acquired within %v", e.Name, e.Timeout)
}

// Is reports whether target is ErrLockTimeout.
func (e *LockTimeoutError) Is(target error) bool { return target == ErrLockTimeout }

// keyClause validates key and returns "`a` = ? AND `b` = ?" with the
// values in the same (sorted) column order.
func keyClause(key Key) (string, []any, error) {
	if len(key) == 0 {
		return "", nil, ErrEmptyKey
	}
	cols := make([]string, 0, len(key))
	for c := range key {
		cols = append(cols, c)
	}
	slices.Sort(cols)
	quoted, err := quoteIdentifiers(cols)
	if err != nil {
		return "", nil, err
	}
	parts := make([]string, len(cols))
	args := make([]any, len(cols))
	for i, c := range cols {
		if key[c] == nil {
			return "", nil, fmt.Errorf("safesync: key column %q is nil; NULL never equals anything", c)
		}
		parts[i] = quoted[i] + " = ?"
		args[i] = key[c]
	}
	return strings.Join(parts, " AND "), args, nil
}

// RowLockOption configures WithRowLock.
type RowLockOption func(*rowLockConfig)

type rowLockConfig struct {
	suffix string
}

// mode names the wait mode in traces: wait, nowait or skip_locked.
func (c rowLockConfig) mode() string {
	switch c.suffix {
	case " NOWAIT":
		return "nowait"
	case " SKIP LOCKED":
		return "skip_locked"
	}
	return "wait"
}

// NoWait makes the lock fail at once with ErrRowLocked instead of waiting
// when another transaction holds the row (FOR UPDATE NOWAIT).
func NoWait() RowLockOption { return func(c *rowLockConfig) { c.suffix = " NOWAIT" } }

// SkipLocked makes the lock skip a row another transaction holds (FOR
// UPDATE SKIP LOCKED); WithRowLock then returns ErrRowLocked without
// calling fn. It tells a held row from a missing one with one more,
// non-locking read.
func SkipLocked() RowLockOption { return func(c *rowLockConfig) { c.suffix = " SKIP LOCKED" } }

// WithRowLock returns a TxFunc that locks one row with
// SELECT <T's columns> FROM table WHERE key… FOR UPDATE, scans it into a T
// (see Get for the mapping) and calls fn with it. The lock is held until the
// enclosing transaction ends. A missing row is ErrNotFound and fn is not
// called.
//
// T is a struct (or pointer to struct): the statement selects exactly the
// columns T maps (db tag, else field name), quoted, never *, so a column
// added to the table by a migration does not disturb a running worker;
// every exported field must be a column of the table or be tagged
// `db:"-"`. T may also be map[string]any, which selects every column (*)
// and takes whatever the row has. Any other T is an error.
//
// The table and key columns are validated and quoted and the key values
// bound; an empty key, a bad identifier or a T with no columns is an error
// returned before any SQL runs. fn receives the ctx and tx the TxFunc was
// called with. T is inferred from fn. WithRowLock panics if fn is nil.
func WithRowLock[T, R any](table string, key Key, fn func(ctx context.Context, tx *Tx, row T) (R, error), opts ...RowLockOption) TxFunc[R] {
	if fn == nil {
		panic("safesync: WithRowLock with nil fn")
	}
	var cfg rowLockConfig
	for _, o := range opts {
		o(&cfg)
	}
	rowType := reflect.TypeFor[T]()
	columns, err := selectList(rowType, "WithRowLock")
	var query string
	var args []any
	if err == nil {
		query, args, err = rowLockQuery(columns, table, key, cfg.suffix)
	}
	existsQuery, _, _ := keyedQuery("SELECT COUNT(*)", table, key, "")
	return func(ctx context.Context, tx *Tx) (result R, resultErr error) {
		var zero R
		if err != nil {
			return zero, err
		}
		var span Span
		if tx.tracer != nil {
			ctx, span = tx.tracer.Start(ctx, Operation{Kind: OpRowLock, Table: table,
				Attrs: []slog.Attr{slog.String(attrLockMode, cfg.mode())}})
			defer func() { span.End(resultErr) }()
		}
		start := time.Now()
		row, lerr := Get[T](ctx, tx, query, args...)
		outcome := ""
		switch {
		case lerr == nil:
			tx.metrics.observeLockAcquire(strategyRow, time.Since(start))
			outcome = "acquired"
		case errors.Is(lerr, sql.ErrNoRows):
			outcome = "not_found"
			if cfg.suffix == " SKIP LOCKED" {
				exists, xerr := Get[int64](ctx, tx, existsQuery, args...)
				if xerr != nil {
					return zero, xerr
				}
				if exists > 0 {
					tx.metrics.countLockTimeout(strategyRow)
					lockOutcome(span, "locked", start)
					return zero, fmt.Errorf("%w: %s %v (skipped)", ErrRowLocked, table, key)
				}
			}
			lockOutcome(span, outcome, start)
			return zero, fmt.Errorf("%w: %s %v", ErrNotFound, table, key)
		case isLockWaitError(lerr):
			tx.metrics.countLockTimeout(strategyRow)
			if cfg.suffix == " NOWAIT" {
				lockOutcome(span, "locked", start)
				return zero, fmt.Errorf("%w: %s %v: %w", ErrRowLocked, table, key, lerr)
			}
			lockOutcome(span, "timeout", start)
			return zero, lerr
		default:
			return zero, explainUnknownColumn(lerr, "WithRowLock", rowType)
		}
		lockOutcome(span, outcome, start)
		return fn(ctx, tx, row)
	}
}

// lockOutcome records on a lock's span, when there is one, how its wait
// ended and how long it took.
func lockOutcome(span Span, outcome string, start time.Time) {
	if span != nil {
		span.SetAttrs(slog.String(attrLockOutcome, outcome), slog.Float64(attrLockWait, time.Since(start).Seconds()))
	}
}

// LockRow is WithRowLock for a callback that returns only an error: it
// locks the row with key in table (SELECT <T's columns> … FOR UPDATE),
// scans it into a T and calls fn with it, and its result runs in RunTx, or
// in WithTx and the other combinators through NoResult:
//
//	err := RunTx(ctx, db, LockRow("orders", Key{"id": id}, func(ctx context.Context, tx *Tx, o Order) error { … }))
//
// Everything WithRowLock says holds (columns, ErrNotFound, NoWait,
// SkipLocked, errors before any SQL). T is inferred from fn. LockRow panics
// if fn is nil.
func LockRow[T any](table string, key Key, fn func(ctx context.Context, tx *Tx, row T) error, opts ...RowLockOption) func(ctx context.Context, tx *Tx) error {
	if fn == nil {
		panic("safesync: LockRow with nil fn")
	}
	locked := WithRowLock(table, key, func(ctx context.Context, tx *Tx, row T) (struct{}, error) {
		return struct{}{}, fn(ctx, tx, row)
	}, opts...)
	return func(ctx context.Context, tx *Tx) error {
		_, err := locked(ctx, tx)
		return err
	}
}

// keyedQuery builds "<head> FROM `table` WHERE `k1` = ? AND …<tail>" and
// its arguments. head and tail are fixed text from this package.
func keyedQuery(head, table string, key Key, tail string) (string, []any, error) {
	quotedTable, err := QuoteIdentifier(table)
	if err != nil {
		return "", nil, err
	}
	where, args, err := keyClause(key)
	if err != nil {
		return "", nil, err
	}
	return head + " FROM " + quotedTable + " WHERE " + where + tail, args, nil
}

// rowLockQuery builds the locking read of WithRowLock; columns is the
// select list from selectList.
func rowLockQuery(columns, table string, key Key, suffix string) (string, []any, error) {
	return keyedQuery("SELECT "+columns, table, key, " FOR UPDATE"+suffix)
}

// isLockWaitError reports a lock wait timeout (1205) or a NOWAIT refusal
// (MySQL 3572; MariaDB reports 1205).
func isLockWaitError(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1205 || me.Number == 3572)
}

// MaxLockNameLength is the longest advisory lock name accepted, in
// characters: MySQL's limit (MariaDB's is 192 bytes; names of at most 64
// characters of the Basic Multilingual Plane fit both).
const MaxLockNameLength = 64

// ErrInvalidLockName is matched by the error for an advisory lock name that
// ValidateLockName refuses.
var ErrInvalidLockName = errors.New("safesync: invalid advisory lock name")

// ValidateLockName reports whether name can be an advisory lock name that
// means the same lock on MySQL 8 and MariaDB 10.6+, and no other name's
// lock on either. It refuses, with an error matching ErrInvalidLockName,
// names the server would alter:
//
//   - a NUL byte: MariaDB cuts the name there, so "p\x00a", "p\x00b" and
//     "p" would be one lock;
//   - an upper-case letter: MySQL folds names to lower case, so "Job" and
//     "job" would be one lock on MySQL and two on MariaDB (use lower case);
//   - invalid UTF-8, or a character outside the Basic Multilingual Plane
//     (U+10000 and above, emoji among them): MySQL converts names to
//     utf8mb3 and refuses these, where MariaDB keeps them;
//
// and an empty name or one longer than MaxLockNameLength characters.
// Anything else (spaces, punctuation, accented lower-case letters) is kept
// as it is by both servers. WithAdvisoryLock calls it before any SQL.
func ValidateLockName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: advisory lock name is empty", ErrInvalidLockName)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w %q: not valid UTF-8 (MySQL refuses it, MariaDB keeps the raw bytes)", ErrInvalidLockName, name)
	case utf8.RuneCountInString(name) > MaxLockNameLength:
		return fmt.Errorf("%w %q: longer than %d characters", ErrInvalidLockName, name, MaxLockNameLength)
	}
	for i, r := range name {
		switch {
		case r == 0:
			return fmt.Errorf("%w %q: NUL byte at byte %d (MariaDB cuts the name there, so it would share a lock with every name of the same prefix)", ErrInvalidLockName, name, i)
		case r > 0xFFFF:
			return fmt.Errorf("%w %q: character %U at byte %d is outside the Basic Multilingual Plane (MySQL stores lock names in utf8mb3 and refuses it)", ErrInvalidLockName, name, r, i)
		case unicode.ToLower(r) != r:
			return fmt.Errorf("%w %q: upper-case letter %q at byte %d (MySQL folds lock names to lower case, MariaDB does not; use lower case)", ErrInvalidLockName, name, r, i)
		}
	}
	return nil
}

// DefaultLockCheckInterval is how often a held advisory lock is checked
// for loss while fn runs.
const DefaultLockCheckInterval = 200 * time.Millisecond

// AdvisoryLockOption configures WithAdvisoryLock.
type AdvisoryLockOption func(*advisoryConfig)

type advisoryConfig struct {
	checkInterval time.Duration
}

// LockCheckInterval sets how often the lock is checked while fn runs
// (DefaultLockCheckInterval when not given); fns shorter than the interval
// cause no check. Each check is one short query (SELECT IS_USED_LOCK) on
// another connection of the transaction's pool, taken only when the pool
// has an idle connection or room to open one: the check never waits for a
// connection, and a locked transaction costs the same whether the pool is
// full or not. When the pool is exhausted (every connection busy, as when
// there are as many lock holders as connections) the check is skipped, and
// a lost lock is then found by fn's next statement on its dead connection
// or, at the latest, by the confirmation after fn returns, which runs on
// the transaction's own connection before COMMIT whatever the pool holds;
// what is missed is only the early cancellation of fn's ctx while fn runs
// no statement. See WithAdvisoryLock.
func LockCheckInterval(d time.Duration) AdvisoryLockOption {
	return func(c *advisoryConfig) { c.checkInterval = d }
}

func validateLockName(name string, timeout time.Duration) error {
	if err := ValidateLockName(name); err != nil {
		return err
	}
	if timeout < 0 {
		return fmt.Errorf("safesync: advisory lock %q: negative timeout %v", name, timeout)
	}
	return nil
}

// WithAdvisoryLock returns a TxFunc that takes the named advisory lock with
// GET_LOCK(name, timeout) on the transaction's own connection and then calls
// fn. The lock is held across COMMIT and released with RELEASE_LOCK on that
// same connection after the transaction ends, committed or rolled back,
// before the connection returns to the pool. If the release fails the
// connection is closed, which frees the lock on the server.
//
// A timeout is a *LockTimeoutError (errors.Is(err, ErrLockTimeout)); a NULL
// answer is ErrLockFailed. A name ValidateLockName refuses (one the server
// would cut or fold, an empty one, one over MaxLockNameLength characters)
// or a negative timeout is an error before any SQL runs.
//
// fn receives a ctx derived from the TxFunc's that is cancelled when the
// lock is lost (its connection dies, or IS_USED_LOCK(name) no longer names
// this connection), checked every LockCheckInterval on another pooled
// connection when one is idle (never waiting for one; see
// LockCheckInterval); the TxFunc then returns ErrLockLost (joined with fn's
// error) and the transaction rolls back.
//
// When fn returns nil, the TxFunc confirms that the lock is still held
// with one more round trip on the transaction's own connection
// (SELECT IS_USED_LOCK(name), compared with the connection id recorded at
// GET_LOCK) before returning, so before the enclosing transaction commits.
// If the query fails (the connection was killed or dropped after fn's last
// statement) or the lock is held by another session or by none, it returns
// ErrLockLost and the transaction rolls back; DefaultClassifier retries it
// (reason lock_lost). Without this check such a loss would surface only
// when COMMIT failed on the dead connection, as an unknown commit outcome
// that is not retried. A connection lost in the instant between the check
// and COMMIT still makes the outcome unknown (ErrCommitUnknown). A loss
// found only at release, after COMMIT, is reported as ErrLockLost wrapped
// in ErrAfterCommit. WithAdvisoryLock panics if fn is nil.
func WithAdvisoryLock[R any](name string, timeout time.Duration, fn TxFunc[R], opts ...AdvisoryLockOption) TxFunc[R] {
	if fn == nil {
		panic("safesync: WithAdvisoryLock with nil fn")
	}
	cfg := advisoryConfig{checkInterval: DefaultLockCheckInterval}
	for _, o := range opts {
		o(&cfg)
	}
	nameErr := validateLockName(name, timeout)
	if nameErr == nil && cfg.checkInterval <= 0 {
		nameErr = fmt.Errorf("safesync: advisory lock %q: LockCheckInterval must be positive", name)
	}
	return func(ctx context.Context, tx *Tx) (result R, resultErr error) {
		var zero R
		if nameErr != nil {
			return zero, nameErr
		}
		var span Span
		if tx.tracer != nil {
			ctx, span = tx.tracer.Start(ctx, Operation{Kind: OpAdvisoryLock, Name: name,
				Attrs: []slog.Attr{slog.Float64(attrLockTimeout, timeout.Seconds())}})
			defer func() {
				if errors.Is(resultErr, ErrLockLost) {
					span.SetAttrs(slog.String(attrLockOutcome, "lost"))
				}
				span.End(resultErr)
			}()
		}
		start := time.Now()
		var got sql.NullInt64
		var connID int64
		err := tx.QueryRowContext(ctx, "SELECT GET_LOCK(?, ?), CONNECTION_ID()", name, timeout.Seconds()).Scan(&got, &connID)
		switch {
		case err != nil:
			return zero, fmt.Errorf("safesync: advisory lock %q: %w", name, err)
		case !got.Valid:
			lockOutcome(span, "failed", start)
			return zero, fmt.Errorf("%w: lock %q", ErrLockFailed, name)
		case got.Int64 != 1:
			tx.metrics.countLockTimeout(strategyAdvisory)
			lockOutcome(span, "timeout", start)
			return zero, &LockTimeoutError{Name: name, Timeout: timeout}
		}
		tx.metrics.observeLockAcquire(strategyAdvisory, time.Since(start))
		lockOutcome(span, "acquired", start)
		tx.AfterEnd(func(ctx context.Context, conn *sql.Conn, _ bool) error {
			err := releaseAdvisoryLock(ctx, conn, tx.metrics, name)
			if err != nil && tx.span != nil {
				// Found after the lock's own span ended: the transaction's.
				tx.span.Event(eventLockLostLater, slog.String(attrLockName, name), slog.String(attrLockError, err.Error()))
			}
			return err
		})

		lockCtx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		stop := watchAdvisoryLock(lockCtx, tx, name, connID, cfg.checkInterval, cancel)
		result, err = fn(lockCtx, tx)
		stop()
		if cause := context.Cause(lockCtx); errors.Is(cause, ErrLockLost) {
			if ctx.Err() == nil && errors.Is(err, context.Canceled) {
				err = nil // fn only reported the cancellation the loss caused
			}
			return zero, errors.Join(cause, err)
		}
		if isConnectionError(err) {
			// The lock lived and died with this connection.
			tx.metrics.countLockLost(strategyAdvisory)
			return zero, errors.Join(fmt.Errorf("%w: %q: its connection failed", ErrLockLost, name), err)
		}
		if err != nil {
			return result, err
		}
		if err := confirmAdvisoryLock(ctx, tx, name, connID); err != nil {
			return zero, err
		}
		return result, nil
	}
}

// confirmAdvisoryLock checks, on the transaction's own connection, that
// connID still holds the lock, once fn has returned nil and before the
// transaction goes on to COMMIT. A lock whose connection was killed after
// fn's last statement would otherwise be noticed only by COMMIT failing on
// the dead connection, an outcome reported as unknown and not retried,
// although the server rolled the transaction back when it ended the
// session. A failed check is ErrLockLost (joined with the query's error),
// which rolls back and is retried; a check cut short by the end of ctx
// returns ctx's error.
func confirmAdvisoryLock(ctx context.Context, tx *Tx, name string, connID int64) error {
	lost, err := lockNotHeld(ctx, tx, name, connID)
	switch {
	case err != nil && ctx.Err() != nil:
		return errors.Join(ctx.Err(), err)
	case err != nil:
		tx.metrics.countLockLost(strategyAdvisory)
		return errors.Join(fmt.Errorf("%w: %q: confirming it before commit failed", ErrLockLost, name), err)
	case lost != nil:
		tx.metrics.countLockLost(strategyAdvisory)
		return fmt.Errorf("%w, before commit", lost)
	}
	return nil
}

// lockNotHeld asks, through q, which connection holds the advisory lock
// name. It returns an ErrLockLost naming the holder when that is not
// connID, nil when it is, and the query's error when it cannot tell.
func lockNotHeld(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, name string, connID int64) (lost, err error) {
	var holder sql.NullInt64
	if err := q.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", name).Scan(&holder); err != nil {
		return nil, err
	}
	if holder.Valid && holder.Int64 == connID {
		return nil, nil
	}
	who := "nobody"
	if holder.Valid {
		who = fmt.Sprintf("connection %d", holder.Int64)
	}
	return fmt.Errorf("%w: %q is held by %s, not connection %d", ErrLockLost, name, who, connID), nil
}

// releaseAdvisoryLock runs RELEASE_LOCK on the lock's own connection. Any
// answer but 1 means the lock was not ours any more.
func releaseAdvisoryLock(ctx context.Context, conn *sql.Conn, m *Metrics, name string) error {
	var released sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT RELEASE_LOCK(?)", name).Scan(&released); err != nil {
		return fmt.Errorf("safesync: release advisory lock %q: %w", name, err)
	}
	if !released.Valid || released.Int64 != 1 {
		m.countLockLost(strategyAdvisory)
		return fmt.Errorf("%w: %q was not held by this connection at release", ErrLockLost, name)
	}
	return nil
}

// watchAdvisoryLock checks every interval, on another pooled connection,
// that connID still holds the lock, and cancels with ErrLockLost when it
// does not. It never waits for a pooled connection: a check runs only when
// the pool has an idle connection or room to open one, and is skipped
// otherwise (see LockCheckInterval). stop cancels a check in progress
// (waiting for a connection or running its query), waits for the watch to
// end, which is then immediate, and no check starts after it.
func watchAdvisoryLock(ctx context.Context, tx *Tx, name string, connID int64, interval time.Duration, cancel context.CancelCauseFunc) (stop func()) {
	watchCtx, endWatch := context.WithCancel(ctx)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			select {
			case <-watchCtx.Done():
				return
			case <-ticker.C:
			}
			if watchCtx.Err() != nil {
				return // stop and the tick came together: no new check
			}
			lost, err := checkLockFromPool(watchCtx, tx.db, name, connID, interval)
			if err != nil {
				// No idle connection, or the check failed: cannot tell. The
				// transaction's own statements fail if its connection died,
				// and the confirmation before COMMIT runs regardless.
				continue
			}
			if lost != nil {
				tx.metrics.countLockLost(strategyAdvisory)
				cancel(lost)
				return
			}
		}
	}()
	return func() {
		endWatch()
		<-finished
	}
}

// errNoIdleConn is checkLockFromPool's answer when the pool is exhausted.
var errNoIdleConn = errors.New("safesync: no idle pooled connection for the lock check")

// checkLockFromPool runs lockNotHeld on a connection of db other than the
// transaction's, without queueing for one: when every connection the pool
// may open is in use it returns errNoIdleConn at once. Acquiring a
// connection (which may dial a new one) and the query are bounded by
// interval and by ctx, which stop cancels.
func checkLockFromPool(ctx context.Context, db *sql.DB, name string, connID int64, interval time.Duration) (lost, err error) {
	if st := db.Stats(); st.MaxOpenConnections > 0 && st.Idle == 0 && st.OpenConnections >= st.MaxOpenConnections {
		return nil, errNoIdleConn
	}
	checkCtx, cancelCheck := context.WithTimeout(ctx, interval)
	defer cancelCheck()
	conn, err := db.Conn(checkCtx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return lockNotHeld(checkCtx, conn, name, connID)
}
