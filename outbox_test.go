package safesync

import (
	"context"
	"database/sql"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

func TestOutboxFieldsSurviveThePackingExactly(t *testing.T) {
	cases := []struct {
		name   string
		fields map[string]string
	}{
		{"data only", map[string]string{"data": `{"a":1}`}},
		{"empty data", map[string]string{"data": ""}},
		{"no data", map[string]string{"kind": "x", "v": "1"}},
		{"binary and empty values", map[string]string{"data": "{}", "bin": "\x00\xff\xfe", "empty": "", "": "empty name"}},
		{"long value", map[string]string{"data": strings.Repeat("é", 100000), "z": strings.Repeat("x", 300)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data, extra, err := packOutboxFields(c.fields)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			if data != nil {
				got[DataField] = data.(string)
			}
			if extra != nil {
				pairs, err := appendPackedFields(nil, extra.([]byte))
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < len(pairs); i += 2 {
					got[pairs[i]] = pairs[i+1]
				}
			}
			if !maps.Equal(got, c.fields) {
				t.Fatalf("got %q, want %q", got, c.fields)
			}
			if _, hasData := c.fields[DataField]; hasData != (data != nil) || (len(c.fields) > 1 || !hasData) != (extra != nil) {
				t.Fatalf("data %v, extra %v: data belongs in its column, the rest in fields, NULL when absent", data, extra)
			}
		})
	}
}

func TestOutboxRefusesFieldsItCannotCarry(t *testing.T) {
	for _, fields := range []map[string]string{
		nil,
		{},
		{"data": "{}", OriginFieldStream: "x"},
		{OriginFieldID: "1"},
	} {
		if _, _, err := packOutboxFields(fields); err == nil {
			t.Errorf("packOutboxFields(%q) succeeded", fields)
		}
	}
	for _, bad := range [][]byte{{5, 'a'}, {1, 'a', 0xff}, {1, 'a'}, {0xff}} {
		if _, err := appendPackedFields(nil, bad); err == nil {
			t.Errorf("fields column %q unpacked", bad)
		}
	}
}

func TestOutboxWriterConstructorsRefuseMisuse(t *testing.T) {
	p, err := NewPartitions("orders", 2)
	if err != nil {
		t.Fatal(err)
	}
	for name, build := range map[string]func(){
		"bad table":     func() { ToOutbox[int]("a`b", "s") },
		"empty stream":  func() { ToOutbox[int]("outbox", "") },
		"long stream":   func() { ToOutbox[int]("outbox", strings.Repeat("s", 256)) },
		"zero parts":    func() { ToOutboxPartitioned("outbox", Partitions{}, func(int) string { return "" }) },
		"nil key":       func() { ToOutboxPartitioned[int]("outbox", p, nil) },
		"nil encoder":   func() { ToOutbox[int]("outbox", "s").Encoding(nil) },
		"partition tbl": func() { ToOutboxPartitioned("1x", p, func(int) string { return "" }) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("did not panic")
				}
			}()
			build()
		})
	}
	if err := (OutboxWriter[int]{}).Publish(context.Background(), nil, 1); err == nil {
		t.Error("Publish on a zero OutboxWriter succeeded")
	}
	if err := ToOutbox[int]("outbox", "s").Publish(context.Background(), nil, 1); err == nil {
		t.Error("Publish with a nil Tx succeeded")
	}
}

func TestOutboxWriterSendsEachKeyToItsPartition(t *testing.T) {
	p, err := NewPartitions("orders", 8)
	if err != nil {
		t.Fatal(err)
	}
	w := ToOutboxPartitioned(OutboxTableDDLName, p, func(k string) string { return k })
	for _, k := range []string{"a", "b", "account:7", ""} {
		if got, want := w.StreamFor(k), p.Stream(p.For(k)); got != want {
			t.Errorf("StreamFor(%q) = %s, want %s", k, got, want)
		}
	}
	if got := ToOutbox[string](OutboxTableDDLName, "events").StreamFor("a"); got != "events" {
		t.Errorf("StreamFor = %s, want events", got)
	}
}

// OutboxTableDDLName is a table name for the tests.
const OutboxTableDDLName = DefaultOutboxTable

func TestOutboxTableDDLQuotesTheNameAndRefusesBadOnes(t *testing.T) {
	ddl, err := OutboxTableDDL("order")
	if err != nil || !strings.HasPrefix(ddl, "CREATE TABLE IF NOT EXISTS `order` (") {
		t.Fatalf("DDL = %q, %v", ddl, err)
	}
	if _, err := OutboxTableDDL("a; DROP TABLE b"); !errors.Is(err, ErrInvalidIdentifier) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := PruneOutbox(context.Background(), nil, "ok", 0); err == nil {
		t.Fatal("PruneOutbox with a zero age succeeded")
	}
}

func TestRelayConfigValidateNamesTheField(t *testing.T) {
	cases := []struct {
		cfg   RelayConfig
		field string
	}{
		{RelayConfig{}, "Table"},
		{RelayConfig{Table: "a b"}, "Table"},
		{RelayConfig{Table: "t", BatchSize: -1}, "BatchSize"},
		{RelayConfig{Table: "t", MaxLen: -1}, "MaxLen"},
		{RelayConfig{Table: "t", Origin: strings.Repeat("o", 256)}, "Origin"},
		{RelayConfig{Table: "t", LockName: strings.Repeat("l", 65)}, "LockName"},
		{RelayConfig{Table: "t", LockName: "Relay"}, "LockName"},
		{RelayConfig{Table: "t", LockWait: -time.Second}, "LockWait"},
		{RelayConfig{Table: "t", PollMin: 2 * time.Second, PollMax: time.Second}, "PollMin"},
		{RelayConfig{Table: "t", StatsInterval: -1}, "StatsInterval"},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if !errors.Is(err, ErrInvalidRelayConfig) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("Validate(%+v) = %v; want an error naming %s", c.cfg, err, c.field)
		}
	}
	if err := (RelayConfig{Table: "t"}).Validate(); err != nil {
		t.Errorf("a config with only Table: %v", err)
	}
	d := RelayConfig{Table: "t", PollMax: 5 * time.Millisecond}.withDefaults()
	if d.PollMin > d.PollMax || d.BatchSize != DefaultRelayBatch || d.Origin != "outbox:t" || d.LockWait != DefaultRelayLockWait {
		t.Errorf("defaults: %+v", d)
	}
}

func TestRelayLockNameIsReadableWhenItFitsAndHashedWhenNot(t *testing.T) {
	if got := relayLockName("shop", "safesync_outbox"); got != "safesync_outbox:shop.safesync_outbox" {
		t.Errorf("short name = %q", got)
	}
	long := relayLockName(strings.Repeat("d", 64), strings.Repeat("t", 64))
	if len(long) > MaxLockNameLength || !strings.HasPrefix(long, "safesync_outbox:") {
		t.Errorf("long name = %q (%d characters)", long, len(long))
	}
	if long == relayLockName(strings.Repeat("d", 64), strings.Repeat("t", 63)+"u") {
		t.Error("two long names hash alike")
	}
	// MySQL folds lock names to lower case: tables Outbox and outbox
	// must not share a lock.
	upper, lower := relayLockName("shop", "Outbox"), relayLockName("shop", "outbox")
	if ValidateLockName(upper) != nil || strings.EqualFold(upper, lower) {
		t.Errorf("lock names %q and %q: want valid names that differ in more than case", upper, lower)
	}
}

// newTestRelay is a relay whose database is never reached, on an
// in-memory Redis, for the parts that only talk to Redis.
func newTestRelay(t *testing.T, cfg RelayConfig) (*Relay, rueidis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	db, err := sql.Open("mysql", "nobody@tcp(127.0.0.1:1)/none")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cfg.Metrics = nil
	r, err := NewRelay(db, client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.metrics = nil
	return r, client
}

func TestRelayAddsEachStreamsRowsInIDOrderWithTheirOrigin(t *testing.T) {
	r, client := newTestRelay(t, RelayConfig{Table: "ob"})
	rows := []relayRow{
		{id: 3, nonce: 0xa, stream: "s1", data: sql.NullString{String: `{"n":3}`, Valid: true}},
		{id: 4, nonce: 0xb, stream: "s2", data: sql.NullString{String: `{"n":4}`, Valid: true}},
		{id: 7, nonce: 0xc, stream: "s1", data: sql.NullString{String: `{"n":7}`, Valid: true}, fields: mustPack(t, map[string]string{"data": "x", "kind": "k"})},
		{id: 9, nonce: 0xd, stream: "s1", fields: mustPack(t, map[string]string{"only": "extra"})},
	}
	outcomes := r.addToStreams(context.Background(), rows, time.Now())
	if len(outcomes) != 2 {
		t.Fatalf("%d stream outcomes, want 2", len(outcomes))
	}
	for _, o := range outcomes {
		if o.err != nil || len(o.ids) != len(o.rows) {
			t.Fatalf("stream %s: ids %v, err %v", o.stream, o.ids, o.err)
		}
	}
	xs, err := client.Do(context.Background(), client.B().Xrange().Key("s1").Start("-").End("+").Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	want := []map[string]string{
		{"data": `{"n":3}`, OriginFieldStream: "outbox:ob", OriginFieldID: "3.a"},
		{"data": `{"n":7}`, "kind": "k", OriginFieldStream: "outbox:ob", OriginFieldID: "7.c"},
		{"only": "extra", OriginFieldStream: "outbox:ob", OriginFieldID: "9.d"},
	}
	if len(xs) != len(want) {
		t.Fatalf("s1 holds %d entries, want %d", len(xs), len(want))
	}
	for i, x := range xs {
		if !maps.Equal(x.FieldValues, want[i]) {
			t.Errorf("s1 entry %d = %v, want %v", i, x.FieldValues, want[i])
		}
		if x.ID != outcomes[0].ids[i] {
			t.Errorf("s1 entry %d has id %s, reported %s", i, x.ID, outcomes[0].ids[i])
		}
	}
}

func mustPack(t *testing.T, fields map[string]string) []byte {
	t.Helper()
	_, extra, err := packOutboxFields(fields)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := extra.([]byte)
	return b
}

func TestRelayPlainEntriesCarryOnlyTheWrittenFieldsAndMaxLenTrims(t *testing.T) {
	r, client := newTestRelay(t, RelayConfig{Table: "ob", PlainEntries: true, MaxLen: 5})
	var rows []relayRow
	for i := range 50 {
		rows = append(rows, relayRow{id: int64(i + 1), stream: "s", data: sql.NullString{String: "{}", Valid: true}})
	}
	for _, batch := range [][]relayRow{rows[:1], rows[1:]} {
		for _, o := range r.addToStreams(context.Background(), batch, time.Now()) {
			if o.err != nil {
				t.Fatal(o.err)
			}
		}
	}
	xs, err := client.Do(context.Background(), client.B().Xrange().Key("s").Start("-").End("+").Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	if len(xs) >= 50 {
		t.Errorf("%d entries: MaxLen did not trim", len(xs))
	}
	for _, x := range xs {
		if len(x.FieldValues) != 1 || x.FieldValues["data"] != "{}" {
			t.Fatalf("entry fields %v, want only data", x.FieldValues)
		}
	}
}

func TestRelayReportsARowItCannotAddAsItsStreamsFailure(t *testing.T) {
	r, client := newTestRelay(t, RelayConfig{Table: "ob", PlainEntries: true})
	rows := []relayRow{
		{id: 1, stream: "bad", fields: []byte{9, 'x'}},
		{id: 2, stream: "bad", data: sql.NullString{String: "{}", Valid: true}},
		{id: 3, stream: "good", data: sql.NullString{String: "{}", Valid: true}},
		{id: 4, stream: "empty"},
		{id: 5, stream: ""},
	}
	for _, o := range r.addToStreams(context.Background(), rows, time.Now()) {
		switch o.stream {
		case "good":
			if o.err != nil {
				t.Errorf("good stream: %v", o.err)
			}
		default:
			if o.err == nil || !o.decodeErr {
				t.Errorf("stream %q: err %v, decode %v; want a decode failure that holds the stream back", o.stream, o.err, o.decodeErr)
			}
		}
	}
	n, err := client.Do(context.Background(), client.B().Xlen().Key("bad").Build()).AsInt64()
	if err != nil || n != 0 {
		t.Errorf("XLEN bad = %d, %v; want 0: no row of a stream after one that cannot be added", n, err)
	}
}

func TestStreamBackoffsLeaveOutFailingStreamsUntilTheirTime(t *testing.T) {
	s := streamBackoffs{}
	now := time.Now()
	s.failed("a", now)
	s.failed("b", now)
	if ex := s.excluded(now); len(ex) != 2 {
		t.Fatalf("excluded %v, want a and b", ex)
	}
	if ex := s.excluded(now.Add(time.Second)); len(ex) != 0 {
		t.Fatalf("excluded after the first delay: %v", ex)
	}
	s.failed("a", now.Add(time.Second))
	if ex := s.excluded(now.Add(time.Second + 60*time.Millisecond)); len(ex) != 1 || ex[0] != "a" {
		t.Fatalf("a's second delay is longer: excluded %v", ex)
	}
	s.succeeded("a")
	if ex := s.excluded(now.Add(time.Second)); len(ex) != 0 {
		t.Fatalf("excluded after success: %v", ex)
	}
	for i := range maxExcludedStreams + 10 {
		s.failed(strings.Repeat("x", i+1), now)
	}
	if len(s) > maxExcludedStreams {
		t.Fatalf("%d streams left out, want at most %d", len(s), maxExcludedStreams)
	}
}

func TestWakeRelaysSignalsOnlyTheTablesRelaysAndNeverBlocks(t *testing.T) {
	a, b := make(chan struct{}, 1), make(chan struct{}, 1)
	unA := registerWaker("ta", a)
	unB := registerWaker("tb", b)
	wakeRelays("ta")
	wakeRelays("ta") // a pending signal: does not block
	select {
	case <-a:
	default:
		t.Fatal("relay of ta not woken")
	}
	select {
	case <-b:
		t.Fatal("relay of tb woken by a commit to ta")
	default:
	}
	unA()
	wakeRelays("ta")
	select {
	case <-a:
		t.Fatal("woken after unregistering")
	default:
	}
	unB()
	relayWakers.mu.Lock()
	defer relayWakers.mu.Unlock()
	if len(relayWakers.m) != 0 {
		t.Fatalf("registry holds %v after every relay left", relayWakers.m)
	}
}
