// Package badinput is the bad-input table: every input a caller or a
// producer can get wrong, each with the outcome safesync promises for it
// (a clear error before anything runs, or a dead letter), run against any
// Redis client and MySQL-compatible database. The root package runs it on
// the embedded engines and integration/ on real MariaDB and Redis; README's
// "Bad input" table lists the same rows.
package badinput

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// Entry is one producer-side row: the raw fields of a stream entry and
// whether the JSON pipeline must handle it (true) or dead-letter it with
// reason decode (false).
type Entry struct {
	Name    string
	Fields  map[string]string
	Handled bool
	ID      int64 // the id the handler records, for handled entries
	NoteLen int   // the length of note it records
}

// Entries returns the producer-side rows, each between good entries in the
// stream so that a stall or a lost neighbour shows.
func Entries() []Entry {
	mib := strings.Repeat("x", 1<<20)
	data := func(s string) map[string]string { return map[string]string{safesync.DataField: s} }
	return []Entry{
		{Name: "malformed JSON", Fields: data(`{"id": 2, "note":`)},
		{Name: "JSON array, not an object", Fields: data(`[1, 2, 3]`)},
		{Name: "JSON string, not an object", Fields: data(`"text"`)},
		{Name: "JSON null", Fields: data(`null`)},
		{Name: "trailing data after the object", Fields: data(`{"id": 3} {"id": 4}`)},
		{Name: "missing data field", Fields: map[string]string{"payload": `{"id": 5}`}},
		{Name: "extra fields beside data", Fields: map[string]string{safesync.DataField: `{"id": 6}`, "trace_id": "abc", "source": "python"}, Handled: true, ID: 6},
		{Name: "1 MiB payload", Fields: data(`{"id": 7, "note": "` + mib + `"}`), Handled: true, ID: 7, NoteLen: 1 << 20},
		{Name: "invalid UTF-8", Fields: data("{\"id\": 8, \"note\": \"\xff\xfe\"}")},
		{Name: "NaN", Fields: data(`{"id": 9, "score": NaN}`)},
		{Name: "Infinity", Fields: data(`{"id": 10, "score": Infinity}`)},
		{Name: "number too large for the field", Fields: data(`{"id": 123456789012345678901234567890}`)},
		{Name: "empty data", Fields: data(``)},
		{Name: "lone surrogate escape", Fields: data(`{"id": 11, "note": "a\ud800b"}`)},
		{Name: "two keys for one field, in different case", Fields: data(`{"id": 12, "ID": 13}`)},
		{Name: "key in another case than the field's", Fields: data(`{"ID": 14}`), Handled: true, ID: 14},
	}
}

type record struct {
	ID   int64  `json:"id"`
	Note string `json:"note"`
}

// RunEntries publishes every Entries row, each followed by a good entry,
// through a JSON pipeline that inserts one row per handled entry into db
// and dead-letters the rest. It asserts that the database holds exactly the
// handled entries, the dead-letter stream exactly the rejected ones with
// reason decode and their original ids, and that nothing is left pending.
func RunEntries(t *testing.T, client rueidis.Client, db *sql.DB) {
	t.Helper()
	ctx := context.Background()
	suffix := randomSuffix(t)
	table := "badinput_" + suffix
	stream := "{badinput_" + suffix + "}"
	dead := stream + safesync.DeadLetterSuffix
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+table+" (id BIGINT PRIMARY KEY, note_len BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = db.ExecContext(context.Background(), "DROP TABLE IF EXISTS "+table)
		_ = client.Do(context.Background(), client.B().Del().Key(stream, dead).Build()).Error()
	})

	wantRows := map[int64]int{}
	wantDead := map[string]Entry{} // original id -> row
	good := 1000
	publish := func(name string, fields map[string]string) string {
		id, err := safesync.Publish(ctx, client, stream, fields)
		if err != nil {
			t.Fatalf("publish %s: %v", name, err)
		}
		return id
	}
	for _, e := range Entries() {
		id := publish(e.Name, e.Fields)
		if e.Handled {
			wantRows[e.ID] = e.NoteLen
		} else {
			wantDead[id] = e
		}
		good++
		publish("good", map[string]string{safesync.DataField: `{"id": ` + strconv.Itoa(good) + `}`})
		wantRows[int64(good)] = 0
	}

	p := safesync.Stream(safesync.JSON[record]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[record]) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO "+table+" (id, note_len) VALUES (?, ?)", msg.Value.ID, len(msg.Value.Note))
			return err
		}).
		AckAfter(safesync.Commit(db))
	cfg := safesync.StreamConfig{
		Stream: stream, Group: "g", Consumer: "c1", Concurrency: 2,
		Block: 20 * time.Millisecond, ClaimInterval: 100 * time.Millisecond,
	}
	runCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- p.Run(runCtx, client, cfg) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		dl, err := client.Do(ctx, client.B().Xlen().Key(dead).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		if n == len(wantRows) && dl == int64(len(wantDead)) {
			break
		}
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("pipeline stopped early with %d of %d rows and %d of %d dead letters: %v", n, len(wantRows), dl, len(wantDead), err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("stalled: %d of %d rows and %d of %d dead letters after 30s", n, len(wantRows), dl, len(wantDead))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run returned %v after cancel", err)
	}

	gotRows := map[int64]int{}
	rows, err := db.QueryContext(ctx, "SELECT id, note_len FROM "+table)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		gotRows[id] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if !maps.Equal(gotRows, wantRows) {
		t.Errorf("rows: got %v, want %v", gotRows, wantRows)
	}

	entries, err := client.Do(ctx, client.B().Xrange().Key(dead).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		d := safesync.ParseDeadLetter(e.ID, e.FieldValues)
		want, ok := wantDead[d.OriginalID]
		name := want.Name
		switch {
		case !ok:
			t.Errorf("unexpected dead letter %s (original %s, reason %s)", e.ID, d.OriginalID, d.Reason)
		case d.Reason != safesync.DeadLetterDecode:
			t.Errorf("%s: dead-letter reason %q, want %q", name, d.Reason, safesync.DeadLetterDecode)
		case d.Stream != stream || d.Error == "":
			t.Errorf("%s: dead letter names stream %q with error %q", name, d.Stream, d.Error)
		case !maps.Equal(d.Fields, want.Fields):
			t.Errorf("%s: dead letter does not carry the original fields", name)
		}
		seen[d.OriginalID] = true
	}
	for id, e := range wantDead {
		if !seen[id] {
			t.Errorf("%s (%s) was not dead-lettered", e.Name, id)
		}
	}
	pending, err := client.Do(ctx, client.B().Xpending().Key(stream).Group("g").Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := pending[0].AsInt64(); err != nil || n != 0 {
		t.Errorf("pending after the run: %d (%v), want 0", n, err)
	}
}

// Call is one caller-side row: a call with bad input and what its error
// must match and say.
type Call struct {
	Name string
	Do   func(ctx context.Context) error
	Is   error  // errors.Is target
	Says string // substring the message must contain
}

// Calls returns the caller-side rows. Each call must fail before any SQL or
// Redis command runs; db is used only to prove that (the transactions it
// opens must never reach their statements).
func Calls(client rueidis.Client, db *sql.DB) []Call {
	long := strings.Repeat("a", safesync.MaxIdentifierLength+1)
	never := func(ctx context.Context, tx *safesync.Tx, row map[string]any) (struct{}, error) {
		return struct{}{}, errors.New("fn ran on bad input")
	}
	rowLock := func(table string, key safesync.Key) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := safesync.WithTx(db, safesync.WithRowLock(table, key, never))(ctx)
			return err
		}
	}
	advisory := func(name string, timeout time.Duration) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := safesync.WithTx(db, safesync.WithAdvisoryLock(name, timeout, safesync.NoResult(func(context.Context, *safesync.Tx) error {
				return errors.New("fn ran on bad input")
			})))(ctx)
			return err
		}
	}
	update := func(table, column string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := safesync.WithTx(db, safesync.NoResult(func(ctx context.Context, tx *safesync.Tx) error {
				return safesync.UpdateVersioned(ctx, tx, table, safesync.Key{"id": 1}, "version", 1, map[string]any{column: 1})
			}))(ctx)
			return err
		}
	}
	base := safesync.StreamConfig{Stream: "{bad}", Group: "g", Consumer: "c"}
	config := func(edit func(*safesync.StreamConfig)) func(context.Context) error {
		cfg := base
		edit(&cfg)
		return func(ctx context.Context) error {
			p := safesync.Stream(safesync.JSON[record]()).
				Handle(func(context.Context, *safesync.Tx, safesync.Message[record]) error { return nil }).
				AckAfter(safesync.Commit(db))
			return p.Run(ctx, client, cfg)
		}
	}
	return []Call{
		{"table name with a single quote", rowLock("acc'ounts", safesync.Key{"id": 1}), safesync.ErrInvalidIdentifier, "not allowed"},
		{"table name with a backtick", rowLock("acc`ounts", safesync.Key{"id": 1}), safesync.ErrInvalidIdentifier, "not allowed"},
		{"table name with ;", rowLock("accounts;DROP TABLE t", safesync.Key{"id": 1}), safesync.ErrInvalidIdentifier, "not allowed"},
		{"table name with a space", rowLock("my accounts", safesync.Key{"id": 1}), safesync.ErrInvalidIdentifier, "not allowed"},
		{"table name over 64 characters", rowLock(long, safesync.Key{"id": 1}), safesync.ErrInvalidIdentifier, "longer than 64"},
		{"key column with a double quote", rowLock("accounts", safesync.Key{`id"`: 1}), safesync.ErrInvalidIdentifier, "not allowed"},
		{"empty key", rowLock("accounts", safesync.Key{}), safesync.ErrEmptyKey, "empty key"},
		{"UpdateVersioned column with a backtick", update("accounts", "bal`ance"), safesync.ErrInvalidIdentifier, "not allowed"},
		{"UpdateVersioned table over 64 characters", update(long, "balance"), safesync.ErrInvalidIdentifier, "longer than 64"},
		{"advisory lock name over 64 characters", advisory(long, time.Second), safesync.ErrInvalidLockName, "longer than 64"},
		{"advisory lock name empty", advisory("", time.Second), safesync.ErrInvalidLockName, "name is empty"},
		{"advisory lock name with a NUL byte", advisory("jobs\x00a", time.Second), safesync.ErrInvalidLockName, "NUL byte"},
		{"advisory lock name with an upper-case letter", advisory("Jobs", time.Second), safesync.ErrInvalidLockName, "upper-case"},
		{"advisory lock name with an emoji", advisory("jobs:😀", time.Second), safesync.ErrInvalidLockName, "Basic Multilingual Plane"},
		{"advisory lock negative timeout", advisory("jobs", -time.Second), nil, "negative timeout"},
		{"Block under 1ms (Redis reads BLOCK 0 as forever)", config(func(c *safesync.StreamConfig) { c.Block = 500 * time.Microsecond }), safesync.ErrInvalidStreamConfig, "Block"},
		{"negative Block", config(func(c *safesync.StreamConfig) { c.Block = -time.Second }), safesync.ErrInvalidStreamConfig, "Block is negative"},
		{"negative ClaimIdle", config(func(c *safesync.StreamConfig) { c.ClaimIdle = -time.Second }), safesync.ErrInvalidStreamConfig, "ClaimIdle is negative"},
		{"empty stream name", config(func(c *safesync.StreamConfig) { c.Stream = "" }), safesync.ErrInvalidStreamConfig, "Stream is empty"},
		{"empty group name", config(func(c *safesync.StreamConfig) { c.Group = "" }), safesync.ErrInvalidStreamConfig, "Group is empty"},
		{"empty consumer name", config(func(c *safesync.StreamConfig) { c.Consumer = "" }), safesync.ErrInvalidStreamConfig, "Consumer is empty"},
		{"dead-letter stream equal to the stream", config(func(c *safesync.StreamConfig) { c.DeadLetterStream = c.Stream }), safesync.ErrInvalidStreamConfig, "DeadLetterStream equals Stream"},
		{"negative Concurrency", config(func(c *safesync.StreamConfig) { c.Concurrency = -1 }), safesync.ErrInvalidStreamConfig, "Concurrency is negative"},
		{"StartID that is not an id", config(func(c *safesync.StreamConfig) { c.StartID = "yesterday" }), safesync.ErrInvalidStreamConfig, "StartID"},
	}
}

// RunCalls runs every Calls row and asserts its error. A row whose call
// returns no error, the wrong error, or takes longer than a few seconds
// (a stall: none of them may touch the network) fails.
func RunCalls(t *testing.T, client rueidis.Client, db *sql.DB) {
	t.Helper()
	for _, c := range Calls(client, db) {
		t.Run(c.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := c.Do(ctx)
			switch {
			case err == nil:
				t.Fatal("no error")
			case ctx.Err() != nil:
				t.Fatalf("stalled until the deadline: %v", err)
			case c.Is != nil && !errors.Is(err, c.Is):
				t.Fatalf("error %q does not match %v", err, c.Is)
			case !strings.Contains(err.Error(), c.Says):
				t.Fatalf("error %q does not say %q", err, c.Says)
			case strings.Contains(err.Error(), "fn ran on bad input"):
				t.Fatalf("the function ran: %v", err)
			}
		})
	}
}

// Names lists the rows of both tables in order, for documentation checks.
func Names() []string {
	var names []string
	for _, e := range Entries() {
		names = append(names, e.Name)
	}
	for _, c := range Calls(nil, nil) {
		names = append(names, c.Name)
	}
	return slices.Clip(names)
}

func randomSuffix(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(fmt.Errorf("random name: %w", err))
	}
	return hex.EncodeToString(b)
}
