package safesync

import (
	"context"
	"crypto/sha1"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"
)

// Kinds of handler failure, the values of the kind label of
// handler_failures_total. Only the entry's own failures (error, panic,
// permanent, crash) count towards MaxDeliveries; the others leave the
// entry pending, uncounted.
const (
	// FailureError: the handler returned an error of its own.
	FailureError = "error"
	// FailurePanic: the handler panicked.
	FailurePanic = "panic"
	// FailurePermanent: the handler returned an error matching
	// ErrPermanent; the entry is dead-lettered at once.
	FailurePermanent = "permanent"
	// FailureCrash: the process ended while the handler ran alone on the
	// entry (os.Exit, a fatal runtime error, the OOM killer, SIGKILL),
	// found on its next delivery.
	FailureCrash = "crash"
	// FailureInfrastructure: the database or Redis could not be reached,
	// a connection was lost, BEGIN or COMMIT failed, the outcome of COMMIT
	// is unknown, or the handler returned an error matching ErrOutage. Not
	// the entry's fault: it is not counted, and the consumer may pause.
	FailureInfrastructure = "infrastructure"
	// FailureContention: a conflict, deadlock or lock wait outlasted the
	// Retry budget. Not the entry's fault: it is not counted.
	FailureContention = "contention"
)

// ErrOutage is matched by errors made with Outage.
var ErrOutage = errors.New("safesync: outage")

// OutageError marks a handler failure as caused by a dependency that is
// unavailable, not by the entry (see Outage).
type OutageError struct {
	Err error
}

// Outage wraps err, a handler failure caused by a dependency that is
// unavailable (a service the handler calls, say), not by the entry: the
// entry stays pending without the failure counting towards MaxDeliveries,
// and repeated outages pause the consumer as a database outage does.
// Failures of the database and of Redis are recognised without it.
// Outage(nil) is nil.
func Outage(err error) error {
	if err == nil {
		return nil
	}
	return &OutageError{Err: err}
}

// Error implements error.
func (e *OutageError) Error() string { return "safesync: outage: " + e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *OutageError) Unwrap() error { return e.Err }

// Is reports whether target is ErrOutage.
func (e *OutageError) Is(target error) bool { return target == ErrOutage }

// classifyFailure names the kind of a handler failure. ctx is the ctx the
// handler was given: an error that is its end (cancelled ShutdownGrace
// after Run's) is "", no failure at all.
func classifyFailure(ctx context.Context, err error) string {
	var pe *panicError
	switch {
	case errors.As(err, &pe):
		return FailurePanic
	case errors.Is(err, ErrPermanent):
		return FailurePermanent
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return ""
	case isInfrastructure(err):
		return FailureInfrastructure
	case isContention(err):
		return FailureContention
	}
	return FailureError
}

// isOwnFailure reports whether a failure of kind counts towards
// MaxDeliveries.
func isOwnFailure(kind string) bool {
	switch kind {
	case FailureError, FailurePanic, FailurePermanent, FailureCrash:
		return true
	}
	return false
}

// isInfrastructure reports an error that says a server could not be used,
// not that the entry is bad: ErrOutage, an unknown commit outcome, a
// connection lost or refused (the driver's bad and invalid connections, a
// network error, a failed dial, a timeout), MySQL errors of a server that
// is unavailable (too many connections, shutting down, read-only, the
// connection killed, GET_LOCK failing), and Redis errors of a server that
// is loading, failing over or resharding.
func isInfrastructure(err error) bool {
	if errors.Is(err, ErrOutage) || errors.Is(err, ErrCommitUnknown) || rolledBackOnConnectionLoss(err) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, ErrLockFailed) || errors.Is(err, rueidis.ErrClosing) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	switch mysqlErrorNumber(err) {
	case 1040, // too many connections
		1053, // server shutdown in progress
		1203, // max_user_connections
		1290, // --read-only
		1836, // read-only mode
		1927, // connection was killed (MariaDB)
		4031: // disconnected for inactivity (MySQL 8)
		return true
	}
	var re *rueidis.RedisError
	return errors.As(err, &re) && retryable(err)
}

// isContention reports a conflict between transactions: ErrConflict,
// ErrRowLocked, ErrLockTimeout, ErrLockLost, deadlocks (1213), lock wait
// timeouts (1205) and NOWAIT refusals (3572).
func isContention(err error) bool {
	if errors.Is(err, ErrConflict) || errors.Is(err, ErrRowLocked) || errors.Is(err, ErrLockTimeout) || errors.Is(err, ErrLockLost) {
		return true
	}
	switch mysqlErrorNumber(err) {
	case 1205, 1213, 3572:
		return true
	}
	return false
}

// failureDecode is the kind label of handler_failures_total for an entry
// its Decoder refused.
const failureDecode = "decode"

// failureRecord is what Redis holds of an entry's own failures, read when
// it is redelivered.
type failureRecord struct {
	failures    int64     // own failures so far
	first, last time.Time // of the first and the last
	lastErr     string    // the last one's text
	lastKind    string    // the last one's kind
	attempt     string    // the marker of an attempt started and not ended, "" if none
}

// Fields of an entry's record in the failures hash, each the entry id
// followed by its suffix.
const (
	recFailures = ":n"
	recFirst    = ":first"
	recLast     = ":last"
	recErr      = ":err"
	recKind     = ":kind"
	recAttempt  = ":attempt"
)

// recordFields are the suffixes of every field of a record, in the order
// HMGET reads them.
var recordFields = [...]string{recFailures, recFirst, recLast, recErr, recKind, recAttempt}

// fieldsOf returns the hash fields of the records of ids.
func fieldsOf(ids ...string) []string {
	fields := make([]string, 0, len(ids)*len(recordFields))
	for _, id := range ids {
		for _, f := range recordFields {
			fields = append(fields, id+f)
		}
	}
	return fields
}

// parseRecord reads the reply of HMGET of one entry's fields (in
// recordFields order); nil when the entry has no record.
func parseRecord(values []rueidis.RedisMessage) *failureRecord {
	if len(values) != len(recordFields) {
		return nil
	}
	str := func(i int) string {
		s, _ := values[i].ToString()
		return s
	}
	r := &failureRecord{lastErr: str(3), lastKind: str(4), attempt: str(5)}
	r.failures, _ = strconv.ParseInt(str(0), 10, 64)
	r.first = parseMillis(str(1))
	r.last = parseMillis(str(2))
	if r.failures == 0 && r.attempt == "" {
		return nil
	}
	if r.lastKind == FailureCrash {
		r.lastErr = crashText(r.lastErr)
	}
	return r
}

// cause is the error a dead letter past MaxDeliveries records: the last
// failure's text.
func (r *failureRecord) cause(max int64) error {
	if r.lastErr == "" {
		return fmt.Errorf("failed %d times for its own reasons, MaxDeliveries is %d", r.failures, max)
	}
	return errors.New(r.lastErr)
}

func parseMillis(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// An attempt marker is "<isolated> <run token> <unix ms> <consumer>":
// isolated is 1 when the attempt ran with no other handler in its
// process, so that the process's end during it is the entry's doing.
func attemptMarker(isolated bool, token string, at time.Time, consumer string) string {
	flag := "0"
	if isolated {
		flag = "1"
	}
	return flag + " " + token + " " + strconv.FormatInt(at.UnixMilli(), 10) + " " + consumer
}

// markerOf splits a marker; ok is false for anything else.
func markerOf(m string) (isolated bool, token string, at time.Time, consumer string, ok bool) {
	parts := strings.SplitN(m, " ", 4)
	if len(parts) != 4 {
		return false, "", time.Time{}, "", false
	}
	return parts[0] == "1", parts[1], parseMillis(parts[2]), parts[3], true
}

// crashText is the error text of a crash found from its marker.
func crashText(marker string) string {
	_, _, at, consumer, ok := markerOf(marker)
	if !ok {
		return "crash: the process ended while the handler ran alone on the entry"
	}
	return fmt.Sprintf("crash: the process of consumer %q ended while the handler ran alone on the entry (attempt started %s)",
		consumer, at.Format(DeadLetterTimeFormat))
}

// beginScript starts an attempt on entry ARGV[1] in the failures hash
// KEYS[1]: when the entry carries the marker of an isolated attempt of
// another run (ARGV[3] is this run's token), that attempt never ended, its
// process having died: it counts as one failure of kind crash, at ARGV[4]
// (unix ms). Then the marker ARGV[2] is set. It returns 1 when a crash was
// counted, else 0, followed by the record's fields.
var beginScript = newRedisScript(`
local id = ARGV[1]
local old = redis.call('HGET', KEYS[1], id .. ':attempt')
local crashed = 0
if old then
  local flag, token = string.match(old, '^(%S+) (%S+)')
  if flag == '1' and token ~= ARGV[3] then
    redis.call('HINCRBY', KEYS[1], id .. ':n', 1)
    redis.call('HSETNX', KEYS[1], id .. ':first', ARGV[4])
    redis.call('HSET', KEYS[1], id .. ':last', ARGV[4], id .. ':err', old, id .. ':kind', 'crash')
    crashed = 1
  end
end
redis.call('HSET', KEYS[1], id .. ':attempt', ARGV[2])
return {crashed, redis.call('HMGET', KEYS[1], id .. ':n', id .. ':first', id .. ':last', id .. ':err', id .. ':kind', id .. ':attempt')}
`)

// failScript records one own failure of entry ARGV[1] in KEYS[1], at
// ARGV[2] (unix ms), with text ARGV[3] and kind ARGV[4], and ends its
// attempt. It returns the record's fields.
var failScript = newRedisScript(`
local id = ARGV[1]
redis.call('HINCRBY', KEYS[1], id .. ':n', 1)
redis.call('HSETNX', KEYS[1], id .. ':first', ARGV[2])
redis.call('HSET', KEYS[1], id .. ':last', ARGV[2], id .. ':err', ARGV[3], id .. ':kind', ARGV[4])
redis.call('HDEL', KEYS[1], id .. ':attempt')
return redis.call('HMGET', KEYS[1], id .. ':n', id .. ':first', id .. ':last', id .. ':err', id .. ':kind', id .. ':attempt')
`)

// failureStore keeps the records of the own failures of one stream's
// entries for one group, in a hash in the stream's slot (see auxKey):
// written only when an entry fails or is redelivered, read only for
// redelivered entries, and removed when the entry is acknowledged or
// dead-lettered.
type failureStore struct {
	core *streamCore
	key  string
}

func newFailureStore(core *streamCore) *failureStore {
	return &failureStore{core: core, key: auxKey(core.cfg.Stream, "failures:"+core.cfg.Group)}
}

// readCmd returns the HMGET of entry id's record.
func (f *failureStore) readCmd(id string) rueidis.Completed {
	return f.core.client.B().Hmget().Key(f.key).Field(fieldsOf(id)...).Build()
}

// attempt is the start of one attempt on a redelivered entry.
type attempt struct {
	id      string
	crashed bool           // the previous attempt's process died: one failure counted
	record  *failureRecord // the record after that
	marker  string
}

// begin marks the start of an attempt on each of ids, in one round trip,
// counting the crash of an earlier isolated attempt found unended (see
// beginScript). isolated says whether this attempt runs alone in the
// process.
func (f *failureStore) begin(ctx context.Context, ids []string, isolated bool, token string) ([]attempt, error) {
	ctx, cancel := quick(ctx)
	defer cancel()
	now := time.Now()
	marker := attemptMarker(isolated, token, now, f.core.cfg.Consumer)
	calls := make([][]string, len(ids))
	for i, id := range ids {
		calls[i] = []string{id, marker, token, strconv.FormatInt(now.UnixMilli(), 10)}
	}
	out := make([]attempt, len(ids))
	for i, res := range beginScript.run(ctx, f.core.client, f.key, calls) {
		reply, err := res.ToArray()
		if err == nil && len(reply) != 2 {
			err = fmt.Errorf("%d elements in the reply", len(reply))
		}
		if err != nil {
			return nil, fmt.Errorf("safesync: record the start of entry %s: %w", ids[i], err)
		}
		crashed, _ := reply[0].AsInt64()
		values, _ := reply[1].ToArray()
		out[i] = attempt{id: ids[i], crashed: crashed == 1, record: parseRecord(values), marker: marker}
	}
	return out, nil
}

// fail records one own failure of entry id, of kind, with the error's
// text, and returns the record after it.
func (f *failureStore) fail(ctx context.Context, id, kind string, cause error) (*failureRecord, error) {
	ctx, cancel := quick(ctx)
	defer cancel()
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	res := failScript.run(ctx, f.core.client, f.key, [][]string{{id, now, truncate(errorText(cause), maxDeadLetterErrorLen), kind}})[0]
	values, err := res.ToArray()
	if err != nil {
		return nil, fmt.Errorf("safesync: record the failure of entry %s: %w", id, err)
	}
	return parseRecord(values), nil
}

// endAttempts removes the attempt markers of ids, whose attempts ended
// without an own failure (an outage, a conflict, shutdown).
func (f *failureStore) endAttempts(ctx context.Context, ids []string) error {
	fields := make([]string, len(ids))
	for i, id := range ids {
		fields[i] = id + recAttempt
	}
	return f.del(ctx, fields)
}

// forget removes the records of ids: acknowledged or dead-lettered.
func (f *failureStore) forget(ctx context.Context, ids []string) error {
	return f.del(ctx, fieldsOf(ids...))
}

func (f *failureStore) forgetCmd(ids ...string) rueidis.Completed {
	return f.core.client.B().Hdel().Key(f.key).Field(fieldsOf(ids...)...).Build()
}

func (f *failureStore) del(ctx context.Context, fields []string) error {
	if len(fields) == 0 {
		return nil
	}
	ctx, cancel := quick(ctx)
	defer cancel()
	return f.core.client.Do(ctx, f.core.client.B().Hdel().Key(f.key).Field(fields...).Build()).Error()
}

// errorText is the text a dead letter and a failure record keep of err:
// its text, in which a Permanent error's reads as the message it wraps
// ("refused", not "safesync: permanent failure: refused").
func errorText(err error) string {
	if err == nil {
		return ""
	}
	text := err.Error()
	var pe *PermanentError
	if errors.As(err, &pe) {
		text = strings.Replace(text, pe.Error(), pe.Err.Error(), 1)
	}
	return text
}

// redisScript is a Lua script sent with EVALSHA, and with EVAL when the
// server does not know it yet; several calls go in one round trip.
type redisScript struct {
	src, sha string
}

func newRedisScript(src string) *redisScript {
	sum := sha1.Sum([]byte(src))
	return &redisScript{src: src, sha: hex.EncodeToString(sum[:])}
}

// run calls the script once per element of args, each on the one key,
// pipelined, and returns the results in order.
func (s *redisScript) run(ctx context.Context, client rueidis.Client, key string, args [][]string) []rueidis.RedisResult {
	cmds := make(rueidis.Commands, len(args))
	for i, a := range args {
		cmds[i] = client.B().Evalsha().Sha1(s.sha).Numkeys(1).Key(key).Arg(a...).Build()
	}
	res := client.DoMulti(ctx, cmds...)
	var again []int
	for i, r := range res {
		var re *rueidis.RedisError
		if errors.As(r.Error(), &re) && re.IsNoScript() {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		cmds = cmds[:0]
		for _, i := range again {
			cmds = append(cmds, client.B().Eval().Script(s.src).Numkeys(1).Key(key).Arg(args[i]...).Build())
		}
		for j, r := range client.DoMulti(ctx, cmds...) {
			res[again[j]] = r
		}
	}
	return res
}
