package ops

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/safesync-go/safesync/internal/streamid"
)

// entryID is a stream entry id, milliseconds and sequence number.
type entryID = streamid.ID

// parseID parses a complete entry id ("1700000000000-3").
func parseID(s string) (entryID, bool) { return streamid.Parse(s) }

// idTime returns the time an entry id records (the milliseconds part of an
// id Redis generated), or the zero time if id does not parse.
func idTime(id string) time.Time {
	e, ok := parseID(id)
	if !ok || e.MS > math.MaxInt64 {
		return time.Time{}
	}
	return time.UnixMilli(int64(e.MS)).UTC()
}

// age returns how long before now the entry id was generated, or 0.
func age(now time.Time, id string) time.Duration {
	t := idTime(id)
	if t.IsZero() || now.Before(t) {
		return 0
	}
	return now.Sub(t)
}

// ErrBadCursor is matched by the error of a listing given a cursor it did
// not return.
var ErrBadCursor = errors.New("safesync/ops: bad cursor")

// position is where a listing over several streams stopped: the last entry
// it returned, by id and stream key. Entries are listed in (id, key) order.
type position struct {
	id  entryID
	key string
}

// String encodes the position as a cursor: "id@key". Ids hold no "@".
func (p position) String() string { return p.id.String() + "@" + p.key }

// parseCursor decodes a cursor made by position.String; "" is the start.
func parseCursor(c string) (*position, error) {
	if c == "" {
		return nil, nil
	}
	idPart, key, ok := strings.Cut(c, "@")
	id, okID := parseID(idPart)
	if !ok || !okID || key == "" {
		return nil, fmt.Errorf("%w %q: pass the Next value of the previous page, or nothing to start over", ErrBadCursor, c)
	}
	return &position{id: id, key: key}, nil
}

// startFor returns the first id of key to read after p (nil p: "-"), so
// that the listing continues in (id, key) order: keys ordered after p.key
// may still hold p.id itself, the others continue after it.
func (p *position) startFor(key string) (start string, done bool) {
	if p == nil {
		return "-", false
	}
	if key > p.key {
		return p.id.String(), false
	}
	n, ok := p.id.Next()
	if !ok {
		return "", true
	}
	return n.String(), false
}

// boundID returns the smallest id at or after t, for XRANGE's start.
func boundID(t time.Time) string {
	ms := t.UnixMilli()
	if ms < 0 {
		ms = 0
	}
	return strconv.FormatInt(ms, 10) + "-0"
}
