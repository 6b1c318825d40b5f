package dashboard

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// Defaults of Options.
const (
	// DefaultSampleInterval is how often the handler samples the streams
	// for the charts.
	DefaultSampleInterval = 10 * time.Second
	// DefaultSampleWindow is how far back the charts go, and how long
	// sampling goes on after the last page served.
	DefaultSampleWindow = 15 * time.Minute
	// DefaultMaxSampledStreams is how many streams (by name) are sampled.
	DefaultMaxSampledStreams = 100
	// DefaultTokenTTL is how long a page's action token stays valid.
	DefaultTokenTTL = 12 * time.Hour
	// DefaultRefresh is how often the pages reload themselves while
	// auto-refresh is on.
	DefaultRefresh = 10 * time.Second
)

// Options tune a Handler. Every zero value means the default named in its
// comment; the zero Options make a read-only dashboard of every stream.
type Options struct {
	// AllowActions shows the replay and purge buttons and carries out
	// their (confirmed, same-origin, token-bearing) POST requests. When
	// false (the default) the dashboard is read-only: no action buttons,
	// and action requests are refused with 403 Forbidden.
	AllowActions bool
	// ClaimIdle flags consumers idle longer than this: their pending
	// entries are due to be claimed by others, or they are gone
	// (safesync.DefaultClaimIdle). Give your consumers' StreamConfig.ClaimIdle.
	ClaimIdle time.Duration
	// Match shows (and samples) only the streams whose name matches this
	// shell pattern (see path.Match); empty shows all.
	Match string
	// SampleInterval is how often the streams are sampled for the charts
	// (DefaultSampleInterval); negative turns sampling and charts off.
	SampleInterval time.Duration
	// SampleWindow is how far back the charts go, and how long sampling
	// goes on after the last page served (DefaultSampleWindow).
	SampleWindow time.Duration
	// MaxSampledStreams bounds the streams sampled, the first by name
	// (DefaultMaxSampledStreams).
	MaxSampledStreams int
	// CSRFKey signs the action tokens; empty: 32 random bytes of this
	// handler's own. Give every replica behind one address the same key
	// (at least 16 bytes), or a page served by one cannot act through
	// another.
	CSRFKey []byte
	// TokenTTL is how long an action token stays valid after its page was
	// served (DefaultTokenTTL).
	TokenTTL time.Duration
	// Refresh is how often a page reloads itself while its auto-refresh is
	// on (DefaultRefresh).
	Refresh time.Duration
	// Title heads every page ("safesync").
	Title string
	// Logger receives the errors that pages show only by kind, and each
	// replay and purge carried out (silent when nil).
	Logger *slog.Logger
	// Now is the clock of the samples, tokens and relative times (time.Now).
	Now func() time.Time
}

// Validate reports the first invalid field, by name.
func (o Options) Validate() error {
	if o.Match != "" {
		if _, err := path.Match(o.Match, ""); err != nil {
			return fmt.Errorf("safesync/dashboard: Options.Match %q: %w", o.Match, err)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ClaimIdle", o.ClaimIdle}, {"SampleWindow", o.SampleWindow}, {"TokenTTL", o.TokenTTL}, {"Refresh", o.Refresh}} {
		if d.v < 0 {
			return fmt.Errorf("safesync/dashboard: Options.%s is negative (%v)", d.name, d.v)
		}
	}
	if o.MaxSampledStreams < 0 {
		return fmt.Errorf("safesync/dashboard: Options.MaxSampledStreams is negative (%d)", o.MaxSampledStreams)
	}
	if len(o.CSRFKey) > 0 && len(o.CSRFKey) < 16 {
		return fmt.Errorf("safesync/dashboard: Options.CSRFKey has %d bytes; give at least 16", len(o.CSRFKey))
	}
	window := o.SampleWindow
	if window == 0 {
		window = DefaultSampleWindow
	}
	if o.SampleInterval > 0 && o.SampleInterval > window {
		return fmt.Errorf("safesync/dashboard: Options.SampleInterval (%v) is longer than SampleWindow (%v)", o.SampleInterval, window)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.ClaimIdle == 0 {
		o.ClaimIdle = safesync.DefaultClaimIdle
	}
	if o.SampleInterval == 0 {
		o.SampleInterval = DefaultSampleInterval
	}
	if o.SampleWindow == 0 {
		o.SampleWindow = DefaultSampleWindow
	}
	if o.MaxSampledStreams == 0 {
		o.MaxSampledStreams = DefaultMaxSampledStreams
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = DefaultTokenTTL
	}
	if o.Refresh == 0 {
		o.Refresh = DefaultRefresh
	}
	if o.Title == "" {
		o.Title = "safesync"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

//go:embed assets
var assets embed.FS

// Handler is the dashboard: an http.Handler serving its pages under
// whatever prefix it is mounted at (every page links to the others
// relative to itself). It is safe for concurrent use. It does not own the
// ops.Ops; Close stops its sampling.
type Handler struct {
	ops     *ops.Ops
	opts    Options
	pages   map[string]*template.Template
	static  map[string][]byte
	tokens  *tokens
	origins *http.CrossOriginProtection
	sampler *sampler
}

// New returns a dashboard on x. It sends nothing to Redis until its first
// page is served; see the package documentation for what it samples and
// when. It returns Options.Validate's error, if any.
func New(x *ops.Ops, opts Options) (*Handler, error) {
	if x == nil {
		return nil, errors.New("safesync/dashboard: New needs an *ops.Ops")
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	tk, err := newTokens(opts.CSRFKey, opts.TokenTTL, opts.Now)
	if err != nil {
		return nil, err
	}
	h := &Handler{ops: x, opts: opts, tokens: tk, origins: http.NewCrossOriginProtection(), static: map[string][]byte{}}
	if h.pages, err = parsePages(); err != nil {
		return nil, err
	}
	for _, name := range []string{"dashboard.css", "dashboard.js"} {
		b, err := fs.ReadFile(assets, "assets/"+name)
		if err != nil {
			return nil, err
		}
		h.static[name] = b
	}
	h.sampler = newSampler(x, opts)
	return h, nil
}

// Close stops the sampling, for good, and waits until it has stopped. The
// handler goes on serving pages, without new samples. Close is idempotent
// and returns nil.
func (h *Handler) Close() error {
	h.sampler.close()
	return nil
}

// ServeHTTP serves the page that the last element of the request's path
// names: "" the streams, "stream", "group", "dead" (the dead letters),
// "deadletter" (one), "replay" and "purge" (POST), and the style sheet and
// script.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p == "" {
		// Mounted with StripPrefix("/a/b") and asked for "/a/b": send the
		// browser to "/a/b/", relative to where it is, so that the pages'
		// relative links stay under the prefix.
		uri, _, _ := strings.Cut(r.RequestURI, "?")
		w.Header().Set("Location", path.Base(uri)+"/")
		w.WriteHeader(http.StatusMovedPermanently)
		return
	}
	name := p[strings.LastIndexByte(p, '/')+1:]
	secureHeaders(w.Header())
	if b, ok := h.static[name]; ok {
		h.serveStatic(w, r, name, b)
		return
	}
	switch name {
	case "replay", "purge":
		h.serveAction(w, r, name)
		return
	}
	page, ok := map[string]func(http.ResponseWriter, *http.Request) (string, any, error){
		"":           h.overview,
		"stream":     h.stream,
		"group":      h.group,
		"dead":       h.deadLetters,
		"deadletter": h.deadLetter,
	}[name]
	if !ok {
		h.render(w, http.StatusNotFound, "error", h.base(r, "Not found", errorData{Message: "There is no such page."}))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.sampler.touch()
	tmpl, data, err := page(w, r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.render(w, http.StatusOK, tmpl, data)
}

func (h *Handler) serveStatic(w http.ResponseWriter, r *http.Request, name string, b []byte) {
	if strings.HasSuffix(name, ".css") {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

// secureHeaders forbids framing, inline and foreign scripts and styles,
// sniffing, referrers and caching.
func secureHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

// render executes a page into a buffer first, so that a failing template
// yields a clean 500 instead of half a page.
func (h *Handler) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := h.pages[name].ExecuteTemplate(&buf, "layout", data); err != nil {
		h.opts.Logger.Error("safesync/dashboard: rendering a page", "page", name, "err", err)
		http.Error(w, "the page could not be rendered (details in the service's log)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// errorData is the error page's.
type errorData struct {
	Message string
	Hint    string
}

// fail shows err: the operations' own errors (naming streams, groups and
// dead letters, never a server) as they are, others by kind only.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := http.StatusInternalServerError, ""
	var bad *badRequest
	switch {
	case errors.As(err, &bad):
		status, msg = http.StatusBadRequest, bad.msg
	case errors.Is(err, ops.ErrStreamNotFound), errors.Is(err, ops.ErrGroupNotFound), errors.Is(err, ops.ErrDeadLetterNotFound):
		status, msg = http.StatusNotFound, opsMessage(err)
	case errors.Is(err, ops.ErrWrongType), errors.Is(err, ops.ErrBadCursor), errors.Is(err, ops.ErrNoSelection):
		status, msg = http.StatusBadRequest, opsMessage(err)
	default:
		msg = publicMessage(err)
		h.opts.Logger.Error("safesync/dashboard: "+msg, "path", r.URL.Path, "err", err)
	}
	h.render(w, status, "error", h.base(r, "Error", errorData{Message: msg}))
}

// opsMessage is an ops error's text without its package prefix and the
// command-line hints in back quotes.
func opsMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "safesync/ops: ")
	if i := strings.Index(msg, " (list them with `"); i > 0 {
		msg = msg[:i]
	}
	if i := strings.Index(msg, " (see the groups with `"); i > 0 {
		msg = msg[:i]
	}
	return msg
}

// publicMessage names err's kind without its text, which may hold server
// addresses.
func publicMessage(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "The request was cancelled."
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "Redis did not answer in time (details in the service's log)."
	case errors.As(err, &ne):
		return "Redis could not be reached (details in the service's log)."
	}
	return "Redis answered with an error (details in the service's log)."
}

// badRequest is a mistake in a request's parameters; its text is shown.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badRequestf(format string, args ...any) error {
	return &badRequest{msg: fmt.Sprintf(format, args...)}
}
