package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// The demo runs against whatever database and Redis it is pointed at, so it
// touches only what it created itself. Every name it uses starts with its
// -prefix (by default unique per run). The tables it creates are listed in
// a marker table, <prefix>_demo, whose comment says the demo made it, and
// the streams it creates are vouched for by a marker key; it drops only
// what these markers list, and refuses to run when a table or stream it
// would use exists without them.

// ownerMark is the comment of the marker table and the value of the marker
// key.
const ownerMark = "created by safesync-demo"

// names are the tables and keys of one run.
type names struct {
	prefix     string
	marker     string // the marker table: the demo tables it created, one row each
	accounts   string
	applied    string // exactly-once records of both pipelines
	outbox     string // balance-changed events waiting for the relay
	history    string // balance-changed events as the second pipeline applied them
	stream     string // the orders
	deadStream string
	events     string // the balance-changed events the relay adds
	deadEvents string
	ownerKey   string // holds ownerMark while the demo's streams exist
	group      string // the orders' consumer group
	eventGroup string // the events' consumer group
}

func newNames(prefix string) (names, error) {
	n := names{
		prefix:     prefix,
		marker:     prefix + "_demo",
		accounts:   prefix + "_accounts",
		applied:    prefix + "_applied",
		outbox:     prefix + "_outbox",
		history:    prefix + "_history",
		stream:     prefix + ":{orders}",
		events:     prefix + ":{orders}:balances",
		group:      "demo",
		eventGroup: "history",
	}
	n.deadStream = n.stream + safesync.DeadLetterSuffix
	n.deadEvents = n.events + safesync.DeadLetterSuffix
	n.ownerKey = n.stream + ":owner"
	for _, t := range n.allTables() {
		if err := safesync.ValidateIdentifier(t); err != nil {
			return names{}, fmt.Errorf("-prefix %q: the table name %s: %w", prefix, t, err)
		}
	}
	return n, nil
}

// uniquePrefix is the default -prefix: safesync_demo_ and 6 random hex
// digits.
func uniquePrefix() string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return "safesync_demo_" + hex.EncodeToString(b[:])
}

// tables are the demo's data tables, in creation order.
func (n names) tables() []string { return []string{n.accounts, n.applied, n.outbox, n.history} }

// allTables are the data tables and the marker table.
func (n names) allTables() []string { return append([]string{n.marker}, n.tables()...) }

// streams are the demo's streams; keys adds the marker key. They share a
// hash tag, so one DEL removes them on a cluster too.
func (n names) streams() []string { return []string{n.stream, n.deadStream, n.events, n.deadEvents} }

func (n names) keys() []string { return append(n.streams(), n.ownerKey) }

// errNotOurs is returned when a table or stream the demo would use exists
// and was not created by it.
var errNotOurs = errors.New("exists and was not created by safesync-demo; nothing was changed (choose another -prefix)")

// claim checks that every table and key the demo is about to use is either
// absent or was created by an earlier run of the demo, removes the earlier
// run's, and marks the new ones as the demo's. Nothing is removed unless
// everything checks out.
func (n names) claim(ctx context.Context, db *sql.DB, rdb rueidis.Client) error {
	existing, err := n.existingTables(ctx, db)
	if err != nil {
		return err
	}
	owned := map[string]bool{}
	if comment, ok := existing[n.marker]; ok {
		if comment != ownerMark {
			return fmt.Errorf("table %s %w", n.marker, errNotOurs)
		}
		listed, err := safesync.Select[string](ctx, db, "SELECT table_name FROM "+n.marker)
		if err != nil {
			return fmt.Errorf("read %s: %w", n.marker, err)
		}
		for _, t := range listed {
			owned[t] = true
		}
	}
	for _, t := range n.tables() {
		if _, ok := existing[t]; ok && !owned[t] {
			return fmt.Errorf("table %s %w", t, errNotOurs)
		}
	}
	mark, err := rdb.Do(ctx, rdb.B().Get().Key(n.ownerKey).Build()).ToString()
	switch {
	case rueidis.IsRedisNil(err):
		for _, s := range n.streams() {
			exists, err := rdb.Do(ctx, rdb.B().Exists().Key(s).Build()).AsInt64()
			if err != nil {
				return err
			}
			if exists > 0 {
				return fmt.Errorf("stream %s %w", s, errNotOurs)
			}
		}
	case err != nil: // a key of another type
		return fmt.Errorf("key %s: %v: it %w", n.ownerKey, err, errNotOurs)
	case mark != ownerMark:
		return fmt.Errorf("key %s %w", n.ownerKey, errNotOurs)
	}

	// Everything is absent or the demo's: start afresh.
	if err := n.drop(ctx, db, rdb, owned); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+n.marker+" (table_name VARCHAR(64) PRIMARY KEY) COMMENT='"+ownerMark+"'"); err != nil {
		return fmt.Errorf("create %s: %w", n.marker, err)
	}
	// Each table is listed before it is created: a run cut short between
	// the two leaves a listed table that does not exist, never a table of
	// the demo's that the next run would refuse.
	for _, t := range n.tables() {
		if _, err := db.ExecContext(ctx, "INSERT INTO "+n.marker+" (table_name) VALUES (?)", t); err != nil {
			return fmt.Errorf("list %s in %s: %w", t, n.marker, err)
		}
	}
	return rdb.Do(ctx, rdb.B().Set().Key(n.ownerKey).Value(ownerMark).Build()).Error()
}

// existingTables returns the comment of each of the demo's tables (marker
// included) that exists in the current database.
func (n names) existingTables(ctx context.Context, db *sql.DB) (map[string]string, error) {
	type table struct {
		Name    string `db:"TABLE_NAME"`
		Comment string `db:"TABLE_COMMENT"`
	}
	all := n.allTables()
	args := make([]any, len(all))
	for i, t := range all {
		args[i] = t
	}
	rows, err := safesync.Select[table](ctx, db,
		"SELECT TABLE_NAME, TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?"+strings.Repeat(", ?", len(all)-1)+")",
		args...)
	if err != nil {
		return nil, fmt.Errorf("look for the demo's tables: %w", err)
	}
	out := make(map[string]string, len(rows))
	for _, r := range rows {
		out[r.Name] = r.Comment
	}
	return out, nil
}

// drop removes the tables listed in owned, the marker table, and the
// demo's keys. Only call it after claim has checked that they are the
// demo's.
func (n names) drop(ctx context.Context, db *sql.DB, rdb rueidis.Client, owned map[string]bool) error {
	var errs []error
	for _, t := range n.tables() {
		if owned[t] {
			if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+t); err != nil {
				errs = append(errs, fmt.Errorf("drop %s: %w", t, err))
			}
		}
	}
	if len(errs) == 0 { // the marker goes last, while it still vouches for the rest
		if _, err := db.ExecContext(ctx, "DROP TABLE IF EXISTS "+n.marker); err != nil {
			errs = append(errs, fmt.Errorf("drop %s: %w", n.marker, err))
		}
	}
	if err := rdb.Do(ctx, rdb.B().Del().Key(n.keys()...).Build()).Error(); err != nil {
		errs = append(errs, fmt.Errorf("delete %s: %w", strings.Join(n.keys(), ", "), err))
	}
	return errors.Join(errs...)
}

// dropAll removes everything this run created.
func (n names) dropAll(ctx context.Context, db *sql.DB, rdb rueidis.Client) error {
	owned := map[string]bool{}
	for _, t := range n.tables() {
		owned[t] = true
	}
	return n.drop(ctx, db, rdb, owned)
}
