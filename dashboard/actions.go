package dashboard

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/safesync-go/safesync/ops"
)

// maxFormBytes bounds an action request's body.
const maxFormBytes = 1 << 20

// confirmShown is how many of the selected entries a confirmation lists.
const confirmShown = 100

// confirmData is the confirmation page's.
type confirmData struct {
	Action  string // "replay" or "purge"
	Stream  string
	IDs     []string
	Filter  filterForm // times resolved to RFC 3339
	All     bool       // the whole dead-letter stream, no filter
	Count   int
	Skipped int
	Shown   []ops.DeadLetter
}

// serveAction carries out a replay or purge request: refused in read-only
// mode, without a valid token, or from another origin; a request without
// confirm=yes is answered with a confirmation page showing what it
// selects (a dry run), whose button sends it again with confirm=yes.
func (h *Handler) serveAction(w http.ResponseWriter, r *http.Request, action string) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed: "+action+" is a POST from the dashboard's own forms", http.StatusMethodNotAllowed)
		return
	}
	if !h.opts.AllowActions {
		h.refuse(w, r, "This dashboard is read-only: it does not replay or purge. (Actions are turned on by the service that serves it: Options.AllowActions, or safesync serve --allow-actions.)")
		return
	}
	if err := h.origins.Check(r); err != nil {
		h.refuse(w, r, "Refused a request from another site: replay and purge are taken only from the dashboard's own pages.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		h.fail(w, r, badRequestf("The form could not be read."))
		return
	}
	if err := h.tokens.check(r.PostForm.Get("token")); err != nil {
		h.refuse(w, r, "Refused: "+err.Error()+".")
		return
	}
	h.sampler.touch()
	ctx := r.Context()
	t, err := h.target(ctx, r.PostForm.Get("stream"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	d := confirmData{Action: action, Stream: t.Name}
	var f ops.Filter
	for _, id := range r.PostForm["id"] {
		if id = strings.TrimSpace(id); id != "" {
			d.IDs = append(d.IDs, id)
		}
	}
	switch {
	case len(d.IDs) > 0:
		f.IDs = d.IDs
	case r.PostForm.Get("scope") == "selected":
		h.fail(w, r, badRequestf("Select the dead letters to %s first.", action))
		return
	default:
		form := readFilter(r.PostForm.Get)
		if f, err = form.filter(h.opts.Now()); err != nil {
			h.fail(w, r, err)
			return
		}
		// The confirmation carries absolute times: "2h" must not move
		// between the confirmation and the action.
		form.Since, form.Until = rfc3339(f.Since), rfc3339(f.Until)
		d.Filter, d.All = form, form.Empty()
		f.All = d.All
	}
	if r.PostForm.Get("confirm") != "yes" {
		n, skipped, shown, err := h.dryRun(r, action, t, f)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		d.Count, d.Skipped, d.Shown = n, skipped, shown
		verb := "Replay"
		if action == "purge" {
			verb = "Purge"
		}
		h.render(w, http.StatusOK, "confirm", h.base(r, verb+" dead letters of "+t.Name, d,
			crumb{"Streams", "./"}, crumb{t.Name, streamURL(t.Name)}, crumb{"Dead letters", deadURL(t.Name)}))
		return
	}

	back := url.Values{"stream": {t.Name}, "done": {action}}
	var n, skipped int
	if action == "replay" {
		res, err := h.ops.Replay(ctx, t, f, ops.ReplayOptions{})
		n, skipped = res.Replayed, len(res.Skipped)
		h.opts.Logger.Info("safesync/dashboard: replayed dead letters", "stream", t.Name, "replayed", n, "skipped", skipped, "err", err)
		if err != nil {
			h.failPart(w, r, err, "Replayed "+plural(n, "dead letter")+" before the replay stopped. Replaying again is safe: a pipeline with Once applies each at most once.")
			return
		}
	} else {
		res, err := h.ops.Purge(ctx, t, f, ops.PurgeOptions{})
		n, skipped = res.Purged, res.Skipped
		h.opts.Logger.Info("safesync/dashboard: purged dead letters", "stream", t.Name, "purged", n, "skipped", skipped, "err", err)
		if err != nil {
			h.failPart(w, r, err, "Deleted "+plural(n, "dead letter")+" before the purge stopped.")
			return
		}
	}
	back.Set("n", strconv.Itoa(n))
	back.Set("skipped", strconv.Itoa(skipped))
	// Relative to the action's URL, so that it stays under the prefix.
	w.Header().Set("Location", "dead?"+back.Encode())
	w.WriteHeader(http.StatusSeeOther)
}

// dryRun counts what an action would do and returns the first entries.
func (h *Handler) dryRun(r *http.Request, action string, t ops.Target, f ops.Filter) (n, skipped int, shown []ops.DeadLetter, err error) {
	keep := func(d ops.DeadLetter) {
		if len(shown) < confirmShown {
			shown = append(shown, d)
		}
	}
	if action == "replay" {
		res, err := h.ops.Replay(r.Context(), t, f, ops.ReplayOptions{DryRun: true, Each: func(e ops.ReplayedEntry) { keep(e.DeadLetter) }})
		return res.Replayed, len(res.Skipped), shown, err
	}
	res, err := h.ops.Purge(r.Context(), t, f, ops.PurgeOptions{DryRun: true, Each: keep})
	return res.Purged, res.Skipped, shown, err
}

// refuse answers 403 with why.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, why string) {
	h.render(w, http.StatusForbidden, "error", h.base(r, "Refused", errorData{Message: why}))
}

// failPart shows an action that stopped part way: what it did, then the
// error as fail would.
func (h *Handler) failPart(w http.ResponseWriter, r *http.Request, err error, done string) {
	h.opts.Logger.Error("safesync/dashboard: action stopped", "path", r.URL.Path, "err", err)
	h.render(w, http.StatusInternalServerError, "error", h.base(r, "Stopped", errorData{Message: publicMessage(err), Hint: done}))
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
