package safesync

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// ErrConsumerNameInUse is returned by Run, RunBatch, ClaimStale and the
// pipelines when another live process runs a consumer of the same name in
// the same group and stream. Two processes sharing a name would share one
// pending list: each would re-read, and handle again, what the other is
// handling.
var ErrConsumerNameInUse = errors.New("safesync: consumer name in use by another live process")

const (
	// leaseTTL is how long a consumer's name stays taken after its process
	// stopped renewing it: a process restarted under the name of one that
	// died without stopping waits up to this long.
	leaseTTL = 4 * time.Second
	// leaseRenewal is the interval between renewals of a running
	// consumer's lease.
	leaseRenewal = time.Second
	// leasePoll is the interval between looks at a lease held by another
	// process, at start: it is alive if it renews the lease, gone if it
	// does not for leaseTTL.
	leasePoll = 200 * time.Millisecond
)

// leaseScript takes or renews the lease KEYS[1] for the token ARGV[1],
// writing ARGV[2] ("token seq") for ARGV[3] ms, when the key is missing,
// holds this token, or holds exactly ARGV[4] (a lease seen unrenewed for
// leaseTTL, when not empty). It returns {1, ""} when this token holds the
// lease now, else {0, the value found}.
var leaseScript = rueidis.NewLuaScript(`
local v = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ' '
if v == false or string.sub(v, 1, string.len(mine)) == mine or (ARGV[4] ~= '' and v == ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1, ''}
end
return {0, v}
`)

// unleaseScript deletes the lease KEYS[1] if the token ARGV[1] holds it.
var unleaseScript = rueidis.NewLuaScript(`
local v = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ' '
if v and string.sub(v, 1, string.len(mine)) == mine then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// nameLease is a consumer's claim on its name while it runs: a key in the
// stream's slot holding a random token and a renewal number, renewed
// every leaseRenewal (the number changes each time) and expiring leaseTTL
// after the last renewal.
type nameLease struct {
	core  *streamCore
	key   string
	token string
	seq   int64
}

func newNameLease(core *streamCore) *nameLease {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return &nameLease{
		core:  core,
		key:   auxKey(core.cfg.Stream, "consumer:"+core.cfg.Group+":"+core.cfg.Consumer),
		token: hex.EncodeToString(b[:]),
	}
}

// try takes or renews the lease, replacing the value stale if another
// process left it there unrenewed, and reports whether it holds the lease
// and, if not, the value another process holds it with.
func (l *nameLease) try(ctx context.Context, stale string) (held bool, other string, err error) {
	ctx, cancel := quick(ctx)
	defer cancel()
	l.seq++
	value := l.token + " " + strconv.FormatInt(l.seq, 10)
	reply, err := leaseScript.Exec(ctx, l.core.client, []string{l.key},
		[]string{l.token, value, strconv.FormatInt(leaseTTL.Milliseconds(), 10), stale}).ToArray()
	if err == nil && len(reply) != 2 {
		err = fmt.Errorf("%d elements in the reply", len(reply))
	}
	if err != nil {
		return false, "", fmt.Errorf("safesync: lease of consumer name %q: %w", l.core.cfg.Consumer, err)
	}
	if n, _ := reply[0].AsInt64(); n == 1 {
		return true, "", nil
	}
	other, _ = reply[1].ToString()
	return false, other, nil
}

// acquire takes the lease. When another process holds it, acquire watches
// it: if that process renews it, it is alive and acquire returns an error
// matching ErrConsumerNameInUse; if it goes unrenewed for leaseTTL (that
// process ended without releasing it: killed, crashed), acquire takes it
// over. Redis errors are returned as they are.
func (l *nameLease) acquire(ctx context.Context) error {
	var seen, stale string
	var since time.Time
	for {
		held, other, err := l.try(ctx, stale)
		if err != nil || held {
			return err
		}
		switch {
		case other != seen && seen != "":
			return fmt.Errorf("%w: consumer %q of group %q on %q is running in another process (it renewed its lease %s); give each process a name of its own",
				ErrConsumerNameInUse, l.core.cfg.Consumer, l.core.cfg.Group, l.core.cfg.Stream, l.key)
		case other != seen:
			seen, since = other, time.Now()
			l.core.log.Warn("safesync: the consumer name is leased by another process; waiting to see whether it is alive",
				"lease", l.key, "for_at_most", leaseTTL)
		case time.Since(since) >= leaseTTL:
			stale = seen // not renewed: its process is gone
		}
		if !sleep(ctx, leasePoll) {
			return ctx.Err()
		}
	}
}

// renew keeps the lease. It returns an error matching ErrConsumerNameInUse
// when another process holds it (this one could not renew it for leaseTTL,
// Redis being unreachable, and another process took the name over), and
// Redis errors as they are.
func (l *nameLease) renew(ctx context.Context) error {
	held, _, err := l.try(ctx, "")
	if err != nil || held {
		return err
	}
	return fmt.Errorf("%w: consumer %q of group %q on %q was taken over by another process while this one could not renew its lease %s",
		ErrConsumerNameInUse, l.core.cfg.Consumer, l.core.cfg.Group, l.core.cfg.Stream, l.key)
}

// release gives the name up, if this lease still holds it.
func (l *nameLease) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	_ = unleaseScript.Exec(ctx, l.core.client, []string{l.key}, []string{l.token}).Error()
}

// auxKey returns the key of the consumer's bookkeeping named name (a
// lease, the failure records): a key in the same Redis Cluster slot as
// stream, so that it can share a MULTI or a script with the stream. It is
// stream + ":safesync:" + name when stream has a hash tag; else stream is
// made the hash tag, "{stream}:safesync:" + name, when it contains no "}";
// else (a name such as "a{}b", whose slot is the whole name's) a tag
// chosen for its slot leads: "{tag}:stream:safesync:" + name.
func auxKey(stream, name string) string {
	if open := strings.IndexByte(stream, '{'); open >= 0 {
		if n := strings.IndexByte(stream[open+1:], '}'); n > 0 {
			return stream + ":safesync:" + name
		}
	}
	if stream != "" && !strings.Contains(stream, "}") {
		return "{" + stream + "}:safesync:" + name
	}
	return "{" + slotTag(KeySlot(stream)) + "}:" + stream + ":safesync:" + name
}

// slotTag returns the smallest decimal number whose slot is slot.
func slotTag(slot uint16) string {
	for k := 0; ; k++ {
		if tag := strconv.Itoa(k); KeySlot(tag) == slot {
			return tag
		}
	}
}
