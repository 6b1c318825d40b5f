package safesync

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Defaults of RelayConfig's zero values.
const (
	// DefaultRelayBatch is the most rows one batch relays.
	DefaultRelayBatch = 500
	// DefaultRelayLockWait is how long a standby's GET_LOCK waits before
	// it is sent again. A standby takes over as soon as the lock is free,
	// whatever this is; it only bounds how long a standby goes without
	// noticing that its own connection died.
	DefaultRelayLockWait = 5 * time.Second
	// DefaultRelayPollMin is the first pause of an idle leader before it
	// looks for rows again; the pause doubles while it finds none.
	DefaultRelayPollMin = 10 * time.Millisecond
	// DefaultRelayPollMax is the longest pause of an idle leader.
	DefaultRelayPollMax = time.Second
	// DefaultRelayStatsInterval is how often the leader refreshes the
	// backlog gauges.
	DefaultRelayStatsInterval = 5 * time.Second
	// OutboxOriginPrefix begins the default origin name of an outbox:
	// "outbox:" + the table name.
	OutboxOriginPrefix = "outbox:"
)

var (
	// ErrInvalidRelayConfig is matched by every error RelayConfig.Validate
	// returns.
	ErrInvalidRelayConfig = errors.New("safesync: invalid RelayConfig")
	// ErrRelayRunning is returned by Run when the Relay is already running.
	ErrRelayRunning = errors.New("safesync: relay is already running")
)

// RelayConfig configures a Relay. Table is required; every other zero
// value means the default named in its comment.
type RelayConfig struct {
	// Table is the outbox table (see OutboxTableDDL). Required.
	Table string

	// BatchSize is the most rows read, added to their streams and deleted
	// (or marked) together (DefaultRelayBatch).
	BatchSize int
	// MaxLen, when positive, trims each stream to about MaxLen entries as
	// entries are added (XADD MAXLEN ~; see MaxLen for what trimming
	// removes).
	MaxLen int64
	// KeepRelayed marks relayed rows (relayed_at) instead of deleting them,
	// for audit or replay; PruneOutbox deletes them later. Every relay of
	// an outbox must be configured alike: a relay that deletes reads the
	// table by primary key, through any marked rows still kept.
	KeepRelayed bool

	// Origin names the outbox in the origin fields of the entries it adds
	// (OriginFieldStream), which Once deduplicates on
	// (OutboxOriginPrefix + Table). Give outboxes that publish to streams
	// read by one consumer group different origins; at most 255 bytes.
	Origin string
	// PlainEntries leaves out the origin fields, for consumers of the
	// Python original, which reject entries with fields other than "data".
	// Entries then carry only what the writer encoded, and a relay that
	// stops between adding a batch and deleting its rows (a crash, a lost
	// connection) adds those rows again as entries that Once cannot tell
	// from new ones: delivery into the stream becomes at-least-once.
	PlainEntries bool

	// LockName is the advisory lock that elects the leader (see
	// ValidateLockName). The default is "safesync_outbox:" + database + "."
	// + Table (database from DATABASE() on the relay's connection), or,
	// when that is longer than MaxLockNameLength or has upper case,
	// "safesync_outbox:" and a hash of it. Advisory
	// locks are server-wide: every relay of one outbox must use the same
	// name, and relays of different outboxes on one server different ones.
	LockName string
	// LockWait is how long a standby's GET_LOCK waits before it is sent
	// again (DefaultRelayLockWait).
	LockWait time.Duration
	// PollMin is the first pause of an idle leader (DefaultRelayPollMin);
	// the pause doubles up to PollMax while batches come back empty. A
	// commit in this process that published to Table ends the pause at
	// once.
	PollMin time.Duration
	// PollMax is the longest pause of an idle leader (DefaultRelayPollMax).
	PollMax time.Duration
	// StatsInterval is how often the leader refreshes the backlog gauges
	// (DefaultRelayStatsInterval); each refresh is one COUNT over the
	// unrelayed rows.
	StatsInterval time.Duration

	// AfterXADD, when set, is called with each batch's events once they
	// are in their streams, before their rows are deleted or marked: the
	// window in which a crash leaves relayed rows in the outbox, to be
	// added again. It runs on the relay's goroutine and must be quick.
	AfterXADD func(ctx context.Context, events []RelayedEvent)
	// Logger receives the relay's diagnostics. Nil discards them.
	Logger *slog.Logger
	// Metrics records the backlog, batches, latency, errors and
	// leadership. Nil means DefaultMetrics().
	Metrics *Metrics
}

// Validate reports the first invalid field, naming it, in an error that
// matches ErrInvalidRelayConfig.
func (c RelayConfig) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidRelayConfig, field, fmt.Sprintf(format, args...))
	}
	if err := ValidateIdentifier(c.Table); err != nil {
		return bad("Table", "%v", err)
	}
	switch {
	case c.BatchSize < 0:
		return bad("BatchSize", "is negative (%d)", c.BatchSize)
	case c.MaxLen < 0:
		return bad("MaxLen", "is negative (%d)", c.MaxLen)
	case len(c.Origin) > 255:
		return bad("Origin", "is %d bytes, more than 255 (the exactly-once table's stream column)", len(c.Origin))
	case c.PollMin > 0 && c.PollMax > 0 && c.PollMin > c.PollMax:
		return bad("PollMin", "%v is more than PollMax %v", c.PollMin, c.PollMax)
	}
	if c.LockName != "" {
		if err := ValidateLockName(c.LockName); err != nil {
			return bad("LockName", "%v", err)
		}
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"LockWait", c.LockWait}, {"PollMin", c.PollMin}, {"PollMax", c.PollMax}, {"StatsInterval", c.StatsInterval}} {
		if d.v < 0 {
			return bad(d.field, "is negative (%v)", d.v)
		}
	}
	return nil
}

func (c RelayConfig) withDefaults() RelayConfig {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultRelayBatch
	}
	if c.Origin == "" {
		c.Origin = OutboxOriginPrefix + c.Table
	}
	if c.LockWait == 0 {
		c.LockWait = DefaultRelayLockWait
	}
	if c.PollMin == 0 {
		c.PollMin = min(DefaultRelayPollMin, max(c.PollMax, time.Millisecond))
	}
	if c.PollMax == 0 {
		c.PollMax = max(DefaultRelayPollMax, c.PollMin)
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = DefaultRelayStatsInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = DefaultMetrics()
	}
	return c
}

// RelayedEvent is one outbox row added to its stream.
type RelayedEvent struct {
	RowID   int64  // the row's id in the outbox table
	Origin  string // the origin id the entry carries (OriginFieldID)
	Stream  string // the stream key it was added to
	EntryID string // the id of the stream entry
}

// Relay moves the committed rows of an outbox table to their streams.
//
// # Leadership
//
// Run it in as many processes as you like: one of them leads, the others
// stand by. The leader holds an advisory lock (GET_LOCK) on a connection of
// its own for as long as it leads, and does all its database work on that
// connection; before each batch it confirms there that it still holds the
// lock (IS_USED_LOCK), and steps down at once when it does not or the
// connection failed. Standbys wait in GET_LOCK, which returns as soon as
// the server frees the lock, so when the leader's process dies or its
// connection is killed a standby takes over within a round trip of the
// server ending that session (the server notices a killed process at once,
// as the kernel closes its socket; a host that vanishes from the network
// is noticed only after the server's TCP timeouts). Two relays can overlap
// only in the instant between a lost lock and the next confirmation; what
// they add twice is deduplicated like any repeat (below).
//
// That connection comes from the db given to NewRelay and is held while
// Run runs, leading or standing by (a standby's GET_LOCK waits on it): count
// it in the pool's SetMaxOpenConns, or give the relay a small pool of its
// own, so that writers never wait for a connection a relay holds.
//
// # Each batch
//
// The leader reads up to BatchSize unrelayed rows in id order, adds them
// to their streams in one pipelined round trip to Redis (one per slot on
// Redis Cluster, sent in parallel), the rows of one stream as one XADD or
// as XADDs inside MULTI/EXEC, so that a stream gets all of a batch's rows
// for it, in id order, or none; then it deletes the rows (or marks them,
// with KeepRelayed). It is
// woken within milliseconds by a commit in the same process that published
// to the table (OutboxWriter.Publish registers an after-commit hook), and
// otherwise polls, from PollMin doubling to PollMax while it finds nothing.
//
// # Exactly once into the stream
//
// Each entry carries its origin: OriginFieldStream is the outbox's Origin
// and OriginFieldID is the row's id and nonce. A relay that stops after
// adding a batch and before deleting its rows adds them again later, and
// a Pipeline with Once records entries under their origin, so the repeat
// is acknowledged without running its handler: every event takes effect
// once. Consumers of the Python original reject those two fields; see
// RelayConfig.PlainEntries for the cost of leaving them out.
//
// # Order
//
// Rows are relayed in id order within each stream, and so within each
// partition key of a partitioned stream: in each stream, the first entry
// of each event follows id order among the rows visible when they were
// read. A relay never keeps a high-water mark, so a row that commits late
// with a lower id than rows already relayed is relayed when it becomes
// visible, never skipped; it then follows them. Auto-increment ids are
// assigned at INSERT, not at COMMIT, so id order is commit order for two
// events when their transactions serialise before writing them: when the
// second transaction writes its event after waiting for a lock the first
// held until its commit (a WithRowLock or OCC on the row the events
// describe, then Publish), the second event's id is the higher, and it is
// never visible without the first. Events of transactions that do not
// serialise have no commit order the relay could keep.
//
// # Outages
//
// While Redis is unreachable the rows stay in the outbox and the leader
// retries with backoff, still holding its lock; a stream whose adds fail
// while others succeed is retried on its own backoff, and the others go
// on. While MySQL is unreachable the leader steps down and every relay
// retries with backoff. Nothing is lost and the relay resumes by itself;
// Run keeps going through both. A missing table or column ends Run with
// an error.
//
// A Relay is safe for concurrent use; Run runs once at a time.
type Relay struct {
	db      *sql.DB
	client  rueidis.Client
	cfg     RelayConfig
	log     *slog.Logger
	metrics *relayMetrics
	wake    chan struct{}
	running atomic.Bool
	leading atomic.Bool

	quoted   string // the quoted table name
	lockName string // resolved on first use, when not configured
}

// NewRelay returns a relay of cfg.Table from db to client. It validates
// cfg and sends nothing. It panics if db or client is nil.
func NewRelay(db *sql.DB, client rueidis.Client, cfg RelayConfig) (*Relay, error) {
	if db == nil {
		panic("safesync: NewRelay with nil *sql.DB")
	}
	if client == nil {
		panic("safesync: NewRelay with nil rueidis.Client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	quoted, _ := QuoteIdentifier(cfg.Table)
	return &Relay{
		db: db, client: client, cfg: cfg,
		log:      cfg.Logger.With("outbox", cfg.Table),
		metrics:  cfg.Metrics.forRelay(cfg.Table),
		wake:     make(chan struct{}, 1),
		quoted:   quoted,
		lockName: cfg.LockName,
	}, nil
}

// Config returns the relay's configuration with defaults filled in.
func (r *Relay) Config() RelayConfig { return r.cfg }

// Leading reports whether this relay is the outbox's leader now.
func (r *Relay) Leading() bool { return r.leading.Load() }

// Run stands by, leads when it gets the lock, and relays until ctx is
// cancelled; see Relay. It returns nil once ctx is cancelled and its
// current batch is finished (the rows of a batch already added are
// deleted or marked under a ctx of their own, bounded by
// DefaultHookTimeout) and its lock released. It returns an error only when
// the outbox table or one of its columns does not exist, or when the relay
// is already running (ErrRelayRunning).
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRelayRunning
	}
	defer r.running.Store(false)
	defer registerWaker(r.cfg.Table, r.wake)()

	var b outboxBackoff
	for ctx.Err() == nil {
		progressed, err := r.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if isSchemaError(err) {
			return fmt.Errorf("safesync: relay of outbox %s: %w", r.cfg.Table, err)
		}
		if progressed {
			b.reset()
		}
		if err != nil {
			r.log.Warn("safesync: outbox relay: retrying", "error", err)
			if !b.wait(ctx) {
				break
			}
		}
	}
	return nil
}

// isSchemaError reports MySQL's errors for a missing table (1146) or
// column (1054).
func isSchemaError(err error) bool {
	n := mysqlErrorNumber(err)
	return n == 1146 || n == 1054
}

// session takes one connection, stands by on it until it holds the lock,
// and leads until it loses the lock, the connection fails or ctx ends.
// progressed reports whether it became the leader. The connection is
// closed at the end, never returned to the pool: its session is the
// relay's (autocommit on, whatever the DSN says).
func (r *Relay) session(ctx context.Context) (progressed bool, err error) {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		r.metrics.countError(relayStageLock)
		return false, fmt.Errorf("acquire connection: %w", err)
	}
	defer discardConn(conn)
	// Every statement of the relay commits on its own: a DSN with
	// autocommit=0 would keep its reads in one snapshot and its deletes
	// uncommitted.
	if _, err := conn.ExecContext(ctx, "SET autocommit = 1"); err != nil {
		r.metrics.countError(relayStageLock)
		return false, err
	}
	if r.lockName == "" {
		var database sql.NullString
		if err := conn.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&database); err != nil {
			r.metrics.countError(relayStageLock)
			return false, err
		}
		if !database.Valid {
			return false, errors.New("the connection has no database selected")
		}
		r.lockName = relayLockName(database.String, r.cfg.Table)
	}
	var connID int64
	for {
		var got sql.NullInt64
		err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, ?), CONNECTION_ID()", r.lockName, r.cfg.LockWait.Seconds()).Scan(&got, &connID)
		switch {
		case ctx.Err() != nil:
			return false, nil
		case err != nil:
			r.metrics.countError(relayStageLock)
			return false, fmt.Errorf("standby: GET_LOCK(%q): %w", r.lockName, err)
		case !got.Valid:
			r.metrics.countError(relayStageLock)
			return false, fmt.Errorf("%w: lock %q", ErrLockFailed, r.lockName)
		}
		if got.Int64 == 1 {
			break
		}
	}
	r.log.Info("safesync: outbox relay leads", "lock", r.lockName, "connection", connID)
	err = r.lead(ctx, conn, connID)
	if ctx.Err() != nil && err == nil {
		r.release(conn)
	}
	return true, err
}

// release gives the lock up on the leader's connection at shutdown, so
// that a standby takes over at once rather than when the server has ended
// the closed connection's session. A failure is counted and logged, and
// does no harm: closing the connection frees the lock too.
func (r *Relay) release(conn *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultHookTimeout)
	defer cancel()
	var released sql.NullInt64
	err := conn.QueryRowContext(ctx, "SELECT RELEASE_LOCK(?)", r.lockName).Scan(&released)
	if err == nil && (!released.Valid || released.Int64 != 1) {
		err = fmt.Errorf("%w: %q was not held at release", ErrLockLost, r.lockName)
	}
	if err != nil {
		r.metrics.countError(relayStageLock)
		r.log.Warn("safesync: outbox relay: release the lock at shutdown (closing its connection frees it)", "error", err)
	}
}

// relayLockName is the default leader lock of an outbox: readable when
// the server keeps it as it is (see ValidateLockName: at most
// MaxLockNameLength characters, no upper case, which MySQL would fold onto
// another table's name), a hash otherwise.
func relayLockName(database, table string) string {
	const prefix = "safesync_outbox:"
	name := prefix + database + "." + table
	if ValidateLockName(name) == nil {
		return name
	}
	sum := sha256.Sum256([]byte(database + "." + table))
	return prefix + hex.EncodeToString(sum[:16])
}

// outboxBackoff is the wait before a relay retries after a failure: it
// doubles from 50 ms to 5 s and resets after progress.
type outboxBackoff struct{ d time.Duration }

func (b *outboxBackoff) reset() { b.d = 0 }

// next returns the next delay.
func (b *outboxBackoff) next() time.Duration {
	switch {
	case b.d == 0:
		b.d = 50 * time.Millisecond
	case b.d < 5*time.Second:
		b.d = min(2*b.d, 5*time.Second)
	}
	return b.d
}

// wait sleeps for the next delay or until ctx ends, and reports whether
// ctx is still live.
func (b *outboxBackoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
