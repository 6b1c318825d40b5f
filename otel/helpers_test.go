package safesyncotel_test

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/safesync-go/safesync"
	safesyncotel "github.com/safesync-go/safesync/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// Services: SAFESYNC_MYSQL_DSN and SAFESYNC_REDIS_ADDR name them; without
// them the tests that need them skip, or fail when
// SAFESYNC_REQUIRE_SERVICES=1.

func needEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if os.Getenv("SAFESYNC_REQUIRE_SERVICES") == "1" {
			t.Fatalf("%s is not set and SAFESYNC_REQUIRE_SERVICES=1", name)
		}
		t.Skipf("set %s to run this test against a real server", name)
	}
	return v
}

func openMySQL(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", needEnv(t, "SAFESYNC_MYSQL_DSN"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	return db
}

// uniqueName returns prefix_ and 8 random hex digits.
func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// createTable creates a table of its own for the test and drops it after.
func createTable(t *testing.T, db *sql.DB, columns string) string {
	t.Helper()
	name := uniqueName("trace")
	if _, err := db.Exec("CREATE TABLE " + name + " (" + columns + ") ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.Exec("DROP TABLE IF EXISTS " + name) })
	return name
}

// traceToMemory makes safesync trace into an in-memory exporter for the
// test, and puts the previous Tracer back after it.
func traceToMemory(t *testing.T) *tracetest.InMemoryExporter {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := safesync.SetTracer(safesyncotel.New(safesyncotel.WithTracerProvider(tp)))
	t.Cleanup(func() {
		safesync.SetTracer(prev)
		_ = tp.Shutdown(t.Context())
	})
	return exp
}

// tree renders spans as an outline of their names, children under their
// parent in the order they started, each with the attributes named in keys
// it has (unnamed keys, and the table's random suffix, are left out so
// that the outline is stable), its events in brackets, and ! when it
// failed.
func tree(spans tracetest.SpanStubs, keys ...string) string {
	byID := map[trace.SpanID]bool{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = true
	}
	slices.SortStableFunc(spans, func(a, b tracetest.SpanStub) int { return a.StartTime.Compare(b.StartTime) })
	var b strings.Builder
	var walk func(parent trace.SpanID, root bool, depth int)
	walk = func(parent trace.SpanID, root bool, depth int) {
		for _, s := range spans {
			isRoot := !byID[s.Parent.SpanID()]
			if root != isRoot || (!root && s.Parent.SpanID() != parent) {
				continue
			}
			fmt.Fprintf(&b, "%s%s", strings.Repeat("  ", depth), stable(s.Name))
			for _, k := range keys {
				for _, a := range s.Attributes {
					if string(a.Key) == k {
						fmt.Fprintf(&b, " %s=%s", k, stable(a.Value.String()))
					}
				}
			}
			for _, e := range s.Events {
				if e.Name != "exception" {
					fmt.Fprintf(&b, " [%s]", e.Name)
				}
			}
			if s.Status.Code == 1 { // codes.Error
				b.WriteString(" !")
			}
			b.WriteString("\n")
			walk(s.SpanContext.SpanID(), false, depth+1)
		}
	}
	walk(trace.SpanID{}, true, 0)
	return b.String()
}

// stable replaces the random part of test table and stream names.
func stable(s string) string { return randomPart.ReplaceAllString(s, "${1}_<id>") }

var randomPart = regexp.MustCompile(`\b(trace|tracestream|tracelock)_[0-9a-f]{8}`)

// attr returns the value of key on s, or "".
func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.String()
		}
	}
	return ""
}

// eventAttr returns the value of key on the event e.
func eventAttr(e sdktrace.Event, key string) string {
	for _, a := range e.Attributes {
		if a.Key == attribute.Key(key) {
			return a.Value.String()
		}
	}
	return ""
}

// named returns the spans called name.
func named(spans tracetest.SpanStubs, name string) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range spans {
		if stable(s.Name) == name {
			out = append(out, s)
		}
	}
	return out
}

// waterfallRow is a span to draw.
type waterfallRow struct {
	process, name, id, parent string
	start, end                time.Time
	note                      string // after the name: events, failure
}

// waterfall draws rows as a viewer's timeline: each span under its parent,
// a bar of width columns for the trace's duration, and its own duration.
func waterfall(rows []waterfallRow, width int) string {
	slices.SortFunc(rows, func(a, b waterfallRow) int { return a.start.Compare(b.start) })
	first, last := rows[0].start, rows[0].end
	for _, r := range rows {
		if r.end.After(last) {
			last = r.end
		}
	}
	total := last.Sub(first)
	ids := map[string]bool{}
	for _, r := range rows {
		ids[r.id] = true
	}
	var b strings.Builder
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		for _, r := range rows {
			if (parent == "" && ids[r.parent]) || (parent != "" && r.parent != parent) {
				continue
			}
			from := int(float64(width) * float64(r.start.Sub(first)) / float64(total))
			to := max(from+1, int(float64(width)*float64(r.end.Sub(first))/float64(total)))
			bar := strings.Repeat(" ", from) + strings.Repeat("█", min(to, width)-from) + strings.Repeat(" ", width-min(to, width))
			label := strings.Repeat("  ", depth) + stable(r.name) + r.note
			if r.process != "" {
				fmt.Fprintf(&b, "%-9s ", r.process)
			}
			fmt.Fprintf(&b, "%-44s │%s│ %8s\n", label, bar, r.end.Sub(r.start).Round(10*time.Microsecond))
			walk(r.id, depth+1)
		}
	}
	walk("", 0)
	return b.String()
}

// rowsOf returns spans as waterfall rows of process.
func rowsOf(spans tracetest.SpanStubs, process string) []waterfallRow {
	rows := make([]waterfallRow, len(spans))
	for i, s := range spans {
		var note strings.Builder
		for _, e := range s.Events {
			if e.Name != "exception" {
				note.WriteString(" [" + e.Name + "]")
			}
		}
		if s.Status.Code == 1 { // codes.Error
			note.WriteString(" !")
		}
		rows[i] = waterfallRow{process, s.Name, s.SpanContext.SpanID().String(), s.Parent.SpanID().String(), s.StartTime, s.EndTime, note.String()}
	}
	return rows
}
