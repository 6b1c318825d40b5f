package dashboard

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// deadData is the dead-letter browser's.
type deadData struct {
	Stream      string
	Partitioned bool
	Filter      filterForm
	Reasons     []string
	Entries     []deadRow
	Next        string
	Examined    int
	Done        string // what the last action did
}

type deadRow struct {
	ops.DeadLetter
	Preview string
}

// filterForm is a dead-letter filter as the form shows it.
type filterForm struct {
	Reason, Group, Since, Until, Error string
}

func (f filterForm) Empty() bool {
	return f.Reason == "" && f.Group == "" && f.Since == "" && f.Until == "" && f.Error == ""
}

// readFilter reads a filter from form values.
func readFilter(get func(string) string) filterForm {
	return filterForm{
		Reason: strings.TrimSpace(get("reason")), Group: strings.TrimSpace(get("group")),
		Since: strings.TrimSpace(get("since")), Until: strings.TrimSpace(get("until")), Error: strings.TrimSpace(get("error")),
	}
}

// filter returns the ops.Filter of f, times resolved against now.
func (f filterForm) filter(now time.Time) (ops.Filter, error) {
	since, err := parseWhen(f.Since, now)
	if err != nil {
		return ops.Filter{}, badRequestf("Since: %v", err)
	}
	until, err := parseWhen(f.Until, now)
	if err != nil {
		return ops.Filter{}, badRequestf("Until: %v", err)
	}
	return ops.Filter{Reason: f.Reason, Group: f.Group, Since: since, Until: until, ErrorContains: f.Error}, nil
}

var knownReasons = []string{safesync.DeadLetterHandler, safesync.DeadLetterMaxDeliveries, safesync.DeadLetterDecode}

func (h *Handler) deadLetters(w http.ResponseWriter, r *http.Request) (string, any, error) {
	q := r.URL.Query()
	t, err := h.target(r.Context(), q.Get("stream"))
	if err != nil {
		return "", nil, err
	}
	form := readFilter(q.Get)
	f, err := form.filter(h.opts.Now())
	if err != nil {
		return "", nil, err
	}
	page, err := h.ops.DeadLetters(r.Context(), t, ops.DeadLetterQuery{Filter: f, After: q.Get("after"), Limit: 50})
	if err != nil {
		return "", nil, err
	}
	d := deadData{Stream: t.Name, Partitioned: t.Partitioned(), Filter: form, Next: page.Next, Examined: page.Examined,
		Reasons: knownReasons, Done: doneMessage(q)}
	if form.Reason != "" && !contains(knownReasons, form.Reason) {
		d.Reasons = append(append([]string(nil), knownReasons...), form.Reason)
	}
	for _, e := range page.Entries {
		preview := string(e.Payload)
		if preview == "" {
			preview = e.Fields["data"]
		}
		d.Entries = append(d.Entries, deadRow{DeadLetter: e, Preview: clip(preview, 120)})
	}
	return "dead", h.base(r, "Dead letters of "+t.Name, d, crumb{"Streams", "./"}, crumb{t.Name, streamURL(t.Name)}), nil
}

// doneMessage tells what the action the browser was sent back from did,
// from numbers only.
func doneMessage(q map[string][]string) string {
	get := func(k string) int {
		v := ""
		if vs := q[k]; len(vs) > 0 {
			v = vs[0]
		}
		n, _ := strconv.Atoi(v)
		return max(n, 0)
	}
	var done string
	if vs := q["done"]; len(vs) > 0 {
		done = vs[0]
	}
	switch done {
	case "replay":
		msg := "Replayed " + plural(get("n"), "dead letter") + ", each with its origin: a pipeline with Once applies it at most once."
		if s := get("skipped"); s > 0 {
			msg += " Left " + plural(s, "entry") + " in place (not safesync dead letters)."
		}
		return msg
	case "purge":
		return "Deleted " + plural(get("n"), "dead letter") + " for good."
	}
	return ""
}

func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	if stem, ok := strings.CutSuffix(thing, "y"); ok {
		return strconv.Itoa(n) + " " + stem + "ies"
	}
	return strconv.Itoa(n) + " " + thing + "s"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// deadLetterData is one dead letter's page's.
type deadLetterData struct {
	Stream  string
	Entry   ops.DeadLetter
	Payload string
	Fields  []field
}

type field struct{ Name, Value string }

func (h *Handler) deadLetter(w http.ResponseWriter, r *http.Request) (string, any, error) {
	q := r.URL.Query()
	t, err := h.target(r.Context(), q.Get("stream"))
	if err != nil {
		return "", nil, err
	}
	id := q.Get("id")
	if id == "" {
		return "", nil, badRequestf("Name a dead letter: pick one in the list.")
	}
	e, err := h.ops.DeadLetter(r.Context(), t, id)
	if err != nil {
		return "", nil, err
	}
	d := deadLetterData{Stream: t.Name, Entry: e}
	if len(e.Payload) > 0 {
		d.Payload = pretty(e.Payload)
	}
	for _, k := range e.FieldNames() {
		if k == "data" && d.Payload != "" {
			continue
		}
		d.Fields = append(d.Fields, field{k, e.Fields[k]})
	}
	return "deadletter", h.base(r, "Dead letter "+id, d, crumb{"Streams", "./"}, crumb{t.Name, streamURL(t.Name)},
		crumb{"Dead letters", deadURL(t.Name)}), nil
}
