package dashboard

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"time"
)

// tokens signs and checks the action tokens that pages put in their
// forms: the time the page was served and an HMAC-SHA256 of it under the
// handler's key. A cross-site page cannot read one (the same-origin policy
// hides the dashboard's pages from it), so it cannot forge an action; a
// token expires after ttl, so one copied out of a page does not serve for
// long.
type tokens struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

// tokenPurpose separates these MACs from any other use of a shared key.
const tokenPurpose = "safesync/dashboard action token v1\x00"

func newTokens(key []byte, ttl time.Duration, now func() time.Time) (*tokens, error) {
	if len(key) == 0 {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
	}
	return &tokens{key: append([]byte(nil), key...), ttl: ttl, now: now}, nil
}

// issue returns a token valid for ttl from now.
func (t *tokens) issue() string {
	at := t.now().Unix()
	return strconv.FormatInt(at, 10) + "." + base64.RawURLEncoding.EncodeToString(t.mac(at))
}

// Errors of check, shown on the refusal page.
var (
	errTokenMissing = errors.New("the request carries no action token")
	errTokenBad     = errors.New("the action token is not one this dashboard signed")
	errTokenExpired = errors.New("the action token has expired: reload the page and try again")
)

// check returns nil when s is a token this handler's key signed no more
// than ttl ago.
func (t *tokens) check(s string) error {
	if s == "" {
		return errTokenMissing
	}
	atText, macText, ok := strings.Cut(s, ".")
	at, err := strconv.ParseInt(atText, 10, 64)
	if !ok || err != nil {
		return errTokenBad
	}
	mac, err := base64.RawURLEncoding.DecodeString(macText)
	if err != nil || !hmac.Equal(mac, t.mac(at)) {
		return errTokenBad
	}
	age := t.now().Sub(time.Unix(at, 0))
	if age > t.ttl || age < -time.Minute {
		return errTokenExpired
	}
	return nil
}

func (t *tokens) mac(at int64) []byte {
	m := hmac.New(sha256.New, t.key)
	m.Write([]byte(tokenPurpose))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(at))
	m.Write(b[:])
	return m.Sum(nil)
}
