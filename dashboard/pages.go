package dashboard

import (
	"context"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/safesync-go/safesync/ops"
)

// pageNames are the templates in assets, each rendered inside layout.html.
var pageNames = []string{"overview", "stream", "group", "dead", "deadletter", "confirm", "error"}

func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"human": human, "stamp": stamp, "clip": clip, "count": count[int64], "countInt": count[int],
		"perSecond": perSecond, "pretty": func(b []byte) string { return pretty(b) },
	}
	layout, err := fs.ReadFile(assets, "assets/layout.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		body, err := fs.ReadFile(assets, "assets/"+name+".html")
		if err != nil {
			return nil, err
		}
		t, err := template.New(name).Funcs(funcs).Parse(string(layout))
		if err == nil {
			_, err = t.Parse(string(body))
		}
		if err != nil {
			return nil, err
		}
		pages[name] = t
	}
	return pages, nil
}

// view is what every template gets: the page's frame and its own data.
type view struct {
	Page frame
	Data any
}

// frame is the part of a page the layout draws.
type frame struct {
	Title    string // Options.Title
	Heading  string
	Crumbs   []crumb
	ReadOnly bool
	Token    string // the action token of the page's forms
	Refresh  int    // seconds between reloads while auto-refresh is on; 0: no auto-refresh
	Sampling samplingState
}

type crumb struct{ Label, URL string }

// base returns the view of a page titled heading.
func (h *Handler) base(r *http.Request, heading string, data any, crumbs ...crumb) view {
	f := frame{Title: h.opts.Title, Heading: heading, Crumbs: crumbs, ReadOnly: !h.opts.AllowActions, Sampling: h.sampler.state()}
	if h.opts.AllowActions {
		f.Token = h.tokens.issue()
	}
	return view{Page: f, Data: data}
}

// refreshing marks v as a page that may reload itself.
func (h *Handler) refreshing(v view) view {
	v.Page.Refresh = max(1, int(h.opts.Refresh/time.Second))
	return v
}

func streamURL(name string) string { return "stream?name=" + queryEscape(name) }

func deadURL(name string) string { return "dead?stream=" + queryEscape(name) }

func queryEscape(s string) string {
	return strings.ReplaceAll(template.URLQueryEscaper(s), "+", "%2B")
}

// overviewData is the streams page's.
type overviewData struct {
	Match   string
	Streams []streamRow
	Next    string
}

type streamRow struct {
	ops.StreamSummary
	Rate  string
	Chart chart
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) (string, any, error) {
	q := r.URL.Query()
	match := strings.TrimSpace(q.Get("match"))
	if match != "" {
		if _, err := path.Match(match, ""); err != nil {
			return "", nil, badRequestf("The pattern %q is not a shell pattern (like orders*): %v", match, err)
		}
	}
	sq := ops.StreamsQuery{Match: match, After: q.Get("after"), Limit: 50}
	if sq.Match == "" {
		sq.Match = h.opts.Match
	}
	page, err := h.ops.Streams(r.Context(), sq)
	if err != nil {
		return "", nil, err
	}
	d := overviewData{Match: match, Next: page.Next}
	st := h.sampler.state()
	now := h.opts.Now()
	for _, s := range page.Streams {
		if ok, _ := path.Match(h.opts.Match, s.Name); h.opts.Match != "" && !ok {
			continue
		}
		pts := h.sampler.points(s.Name)
		d.Streams = append(d.Streams, streamRow{StreamSummary: s, Rate: perSecond(currentRate(pts)),
			Chart: newChart(s.Name, pts, now, h.opts.SampleWindow, st, false)})
	}
	return "overview", h.refreshing(h.base(r, "Streams", d)), nil
}

// target finds the stream or partitioned stream called name as the
// streams page lists it (with the dead-letter streams found for it, also
// those of other names than name:dead), else as ops.Resolve does.
func (h *Handler) target(ctx context.Context, name string) (ops.Target, error) {
	if name == "" {
		return ops.Target{}, badRequestf("Name a stream: pick one on the streams page.")
	}
	if ok, _ := path.Match(h.opts.Match, name); h.opts.Match != "" && !ok {
		return ops.Target{}, badRequestf("This dashboard shows only the streams that match %q.", h.opts.Match)
	}
	page, err := h.ops.Streams(ctx, ops.StreamsQuery{Match: escapePattern(name), Limit: 1})
	if err != nil {
		return ops.Target{}, err
	}
	if len(page.Streams) == 1 && page.Streams[0].Name == name {
		return page.Streams[0].Target, nil
	}
	return h.ops.Resolve(ctx, name)
}

// escapePattern makes s a path.Match pattern that matches s only.
func escapePattern(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// consumerRow is a consumer with its ClaimIdle flag.
type consumerRow struct {
	ops.ConsumerInfo
	Stale bool // idle longer than ClaimIdle
}

// groupRow is a group with its flagged consumers.
type groupRow struct {
	ops.GroupInfo
	Consumers []consumerRow
	Stale     int
}

func (h *Handler) groupRow(g ops.GroupInfo, claimIdle time.Duration) groupRow {
	row := groupRow{GroupInfo: g}
	for _, c := range g.Consumers {
		stale := c.Idle > claimIdle
		if stale {
			row.Stale++
		}
		row.Consumers = append(row.Consumers, consumerRow{ConsumerInfo: c, Stale: stale})
	}
	return row
}

// claimIdle is the ClaimIdle of the request (?claim_idle=30s), else the
// handler's.
func (h *Handler) claimIdle(r *http.Request) (time.Duration, error) {
	s := r.URL.Query().Get("claim_idle")
	if s == "" {
		return h.opts.ClaimIdle, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, badRequestf("claim_idle %q is not a positive duration (like 30s or 5m).", s)
	}
	return d, nil
}

// streamData is a stream's page's.
type streamData struct {
	Info      ops.StreamInfo
	Target    ops.Target
	Groups    []groupRow
	ClaimIdle time.Duration
	Chart     chart
	Rate      string
}

func (h *Handler) stream(w http.ResponseWriter, r *http.Request) (string, any, error) {
	name := r.URL.Query().Get("name")
	claimIdle, err := h.claimIdle(r)
	if err != nil {
		return "", nil, err
	}
	t, err := h.target(r.Context(), name)
	if err != nil {
		return "", nil, err
	}
	info, err := h.ops.Inspect(r.Context(), t)
	if err != nil {
		return "", nil, err
	}
	pts := h.sampler.points(t.Name)
	d := streamData{Info: info, Target: t, ClaimIdle: claimIdle, Rate: perSecond(currentRate(pts)),
		Chart: newChart(t.Name, pts, h.opts.Now(), h.opts.SampleWindow, h.sampler.state(), true)}
	for _, g := range info.Groups {
		d.Groups = append(d.Groups, h.groupRow(g, claimIdle))
	}
	return "stream", h.refreshing(h.base(r, t.Name, d, crumb{"Streams", "./"})), nil
}

// groupData is a group's page's.
type groupData struct {
	Stream      string
	Partitioned bool
	Group       groupRow
	ClaimIdle   time.Duration
	Consumer    string
	Entries     []ops.PendingEntry
	Next        string
}

func (h *Handler) group(w http.ResponseWriter, r *http.Request) (string, any, error) {
	q := r.URL.Query()
	name, groupName := q.Get("stream"), q.Get("group")
	claimIdle, err := h.claimIdle(r)
	if err != nil {
		return "", nil, err
	}
	if groupName == "" {
		return "", nil, badRequestf("Name a group: pick one on the stream's page.")
	}
	t, err := h.target(r.Context(), name)
	if err != nil {
		return "", nil, err
	}
	info, err := h.ops.Inspect(r.Context(), t)
	if err != nil {
		return "", nil, err
	}
	d := groupData{Stream: t.Name, Partitioned: t.Partitioned(), ClaimIdle: claimIdle, Consumer: q.Get("consumer")}
	found := false
	for _, g := range info.Groups {
		if g.Name == groupName {
			d.Group, found = h.groupRow(g, claimIdle), true
		}
	}
	if !found {
		return "", nil, &opsNotFound{msg: "stream " + strconv.Quote(t.Name) + " has no consumer group " + strconv.Quote(groupName)}
	}
	page, err := h.ops.Pending(r.Context(), t, ops.PendingQuery{Group: groupName, Consumer: d.Consumer, After: q.Get("after"), Limit: 50})
	if err != nil {
		return "", nil, err
	}
	d.Entries, d.Next = page.Entries, page.Next
	return "group", h.refreshing(h.base(r, "Group "+groupName, d, crumb{"Streams", "./"}, crumb{t.Name, streamURL(t.Name)})), nil
}

// opsNotFound is a group missing from a stream that exists.
type opsNotFound struct{ msg string }

func (e *opsNotFound) Error() string { return e.msg }
func (e *opsNotFound) Unwrap() error { return ops.ErrGroupNotFound }
