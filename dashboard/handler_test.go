package dashboard_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/dashboard"
	"github.com/safesync-go/safesync/ops"
)

// t0 is the embedded server's clock: entry ids start at 1700000000000-0.
var t0 = time.UnixMilli(1700000000000).UTC()

// now is the dashboard's clock: two minutes after t0.
var now = t0.Add(2 * time.Minute)

// fixture is an embedded Redis holding
//
//   - orders: four entries, group workers with consumer w1 (two pending,
//     delivered at t0) and w2 (none, reading at t0+110s);
//   - orders:dead: three dead letters (handler at t0, decode at t0+10s,
//     max_deliveries at t0+20s);
//   - payments, in two partitions, one entry each, a dead letter in
//     partition 1;
//
// and a dashboard on it, served by an httptest server under /ops/.
type fixture struct {
	t      *testing.T
	srv    *miniredis.Miniredis
	client rueidis.Client
	dead   []string
	dash   *dashboard.Handler
	server *httptest.Server
}

func newFixture(t *testing.T, opts dashboard.Options) *fixture {
	t.Helper()
	srv := miniredis.RunT(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	f := &fixture{t: t, srv: srv, client: client}
	srv.SetTime(t0)
	for i := range 4 {
		f.add("orders", "data", `{"order_id":`+strconv.Itoa(101+i)+`}`)
	}
	f.do("XGROUP", "CREATE", "orders", "workers", "0")
	f.do("XREADGROUP", "GROUP", "workers", "w1", "COUNT", "2", "STREAMS", "orders", ">")
	for i, d := range []struct{ reason, err, data string }{
		{safesync.DeadLetterHandler, `order 95: unknown currency "XYZ"`, `{"order_id":95,"lines":[{"sku":"A-1","qty":2}]}`},
		{safesync.DeadLetterDecode, "json: cannot unmarshal string", `{"order_id":"96"}`},
		{safesync.DeadLetterMaxDeliveries, "Error 1205: Lock wait timeout exceeded", `{"order_id":97}`},
	} {
		srv.SetTime(t0.Add(time.Duration(i*10) * time.Second))
		f.dead = append(f.dead, f.add("orders:dead",
			safesync.DeadLetterFieldStream, "orders", safesync.DeadLetterFieldGroup, "workers",
			safesync.DeadLetterFieldID, "1699999000000-"+strconv.Itoa(i), safesync.DeadLetterFieldReason, d.reason,
			safesync.DeadLetterFieldDeliveries, "3", safesync.DeadLetterFieldError, d.err,
			safesync.DeadLetterFieldFailures, "2",
			safesync.DeadLetterFieldFirstFail, t0.Add(-time.Minute).Format(safesync.DeadLetterTimeFormat),
			safesync.DeadLetterFieldLastFail, t0.Add(-30*time.Second).Format(safesync.DeadLetterTimeFormat),
			"data", d.data))
	}
	p, err := safesync.NewPartitions("payments", 2)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetTime(t0)
	for i := range p.Len() {
		f.add(p.Stream(i), "data", `{"payment_id":`+strconv.Itoa(i)+`}`)
		f.do("XGROUP", "CREATE", p.Stream(i), "workers", "0")
	}
	f.add(p.Stream(1)+safesync.DeadLetterSuffix, safesync.DeadLetterFieldStream, p.Stream(1),
		safesync.DeadLetterFieldGroup, "workers", safesync.DeadLetterFieldID, "1699999500000-0",
		safesync.DeadLetterFieldReason, safesync.DeadLetterHandler, safesync.DeadLetterFieldDeliveries, "1",
		safesync.DeadLetterFieldError, "card declined", "data", `{"payment_id":99}`)
	srv.SetTime(t0.Add(110 * time.Second))
	f.do("XREADGROUP", "GROUP", "workers", "w2", "COUNT", "1", "STREAMS", "orders", ">")
	srv.SetTime(now)

	if opts.Now == nil {
		opts.Now = func() time.Time { return now }
	}
	f.dash, err = dashboard.New(ops.New(client, ops.Config{Now: opts.Now}), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.dash.Close() })
	mux := http.NewServeMux()
	mux.Handle("/ops/", http.StripPrefix("/ops", f.dash))
	f.server = httptest.NewServer(mux)
	t.Cleanup(f.server.Close)
	return f
}

func (f *fixture) do(args ...string) rueidis.RedisResult {
	f.t.Helper()
	r := f.client.Do(context.Background(), f.client.B().Arbitrary(args...).Build())
	if err := r.Error(); err != nil {
		f.t.Fatalf("%v: %v", args, err)
	}
	return r
}

func (f *fixture) add(stream string, fields ...string) string {
	f.t.Helper()
	id, err := f.do(append([]string{"XADD", stream, "*"}, fields...)...).ToString()
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

func (f *fixture) xlen(key string) int64 {
	f.t.Helper()
	n, err := f.do("XLEN", key).AsInt64()
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

// get fetches path (under /ops/) and returns the status and body.
func (f *fixture) get(path string) (int, string) {
	f.t.Helper()
	resp, err := f.server.Client().Get(f.server.URL + "/ops/" + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// post sends form to path (under /ops/) as the browser does from the
// dashboard's own page, with headers adjusted by edit, and returns the
// response without following redirects.
func (f *fixture) post(path string, form url.Values, edit func(http.Header)) (*http.Response, string) {
	f.t.Helper()
	req, err := http.NewRequest("POST", f.server.URL+"/ops/"+path, strings.NewReader(form.Encode()))
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Origin", f.server.URL)
	if edit != nil {
		edit(req.Header)
	}
	client := *f.server.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp, string(b)
}

var tokenRE = regexp.MustCompile(`name="token" value="([^"]+)"`)

// token returns the action token of the page at path.
func (f *fixture) token(path string) string {
	f.t.Helper()
	_, body := f.get(path)
	m := tokenRE.FindStringSubmatch(body)
	if m == nil {
		f.t.Fatalf("no token in %s:\n%s", path, body)
	}
	return m[1]
}

func mustContain(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

func mustNotContain(t *testing.T, what, body string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(body, w) {
			t.Errorf("%s shows %q", what, w)
		}
	}
}

func TestPagesShowStreamsGroupsConsumersAndDeadLetters(t *testing.T) {
	f := newFixture(t, dashboard.Options{})
	for _, tc := range []struct {
		path  string
		wants []string
	}{
		{"", []string{`href="stream?name=orders"`, `href="stream?name=payments"`, "2 partitions", `href="dead?stream=orders"`, "<title>Streams"}},
		{"stream?name=orders", []string{`group?stream=orders&amp;group=workers`, "w1", "w2", "orders:dead", "First entry"}},
		{"stream?name=payments", []string{"Partitions", "payments:{0.", "payments:{1.", "2 partitions"}},
		{"group?stream=orders&group=workers", []string{"Pending entries", "w1", "2m", "Consumers"}},
		{"group?stream=orders&group=workers&claim_idle=5m", []string{"idle past 5m"}},
		{"dead?stream=orders", []string{f.dead[0], f.dead[1], f.dead[2], "unknown currency", "r-decode", "(2 failed)"}},
		{"dead?stream=payments", []string{"card declined", "payments:{1."}},
		{"deadletter?stream=orders&id=" + f.dead[0], []string{"Own failures", "First failure", "Last failure", "1699999000000-0",
			"&#34;sku&#34;: &#34;A-1&#34;", "Deliveries"}},
	} {
		code, body := f.get(tc.path)
		if code != http.StatusOK {
			t.Errorf("GET %q: %d\n%s", tc.path, code, body)
			continue
		}
		mustContain(t, "GET "+tc.path, body, tc.wants...)
	}
	// (The embedded Redis reports every consumer idle 0s: the flags of
	// consumers idle past ClaimIdle are tested on a real Redis, in
	// integration/dashboard_test.go.)
}

func TestDeadLetterFiltersSelectByReasonGroupTimeAndError(t *testing.T) {
	f := newFixture(t, dashboard.Options{})
	for _, tc := range []struct {
		query string
		want  []int // indexes into f.dead
	}{
		{"", []int{0, 1, 2}},
		{"&reason=decode", []int{1}},
		{"&reason=handler&group=workers", []int{0}},
		{"&group=audit", nil},
		// t0 is 22:13:20Z; the dead letters were written at t0, t0+10s
		// and t0+20s; now is t0+2m.
		{"&since=105s", []int{2}},
		{"&until=2023-11-14T22:13:30Z", []int{0}},
		{"&since=2023-11-14+22:13:25&until=2023-11-14+22:13:35", []int{1}},
		{"&since=2023-11-14+22:13:25&reason=handler", nil},
		{"&error=LOCK+WAIT", []int{2}}, // ignoring case
	} {
		_, body := f.get("dead?stream=orders" + tc.query)
		for i, id := range f.dead {
			shown := strings.Contains(body, `data-id="`+id+`"`)
			want := false
			for _, w := range tc.want {
				want = want || w == i
			}
			if shown != want {
				t.Errorf("filter %q: dead letter %d shown %v, want %v", tc.query, i, shown, want)
			}
		}
	}
	code, body := f.get("dead?stream=orders&since=yesterday")
	if code != http.StatusBadRequest || !strings.Contains(body, "neither a time") {
		t.Errorf("a bad time: %d\n%s", code, body)
	}
}

func TestReadOnlyShowsNoActionsAndRefusesThem(t *testing.T) {
	f := newFixture(t, dashboard.Options{})
	for _, path := range []string{"dead?stream=orders", "deadletter?stream=orders&id=" + f.dead[0]} {
		_, body := f.get(path)
		mustNotContain(t, path, body, `action="replay"`, `formaction="purge"`, `name="token"`, `id="replay-`, `id="purge-`, "Replay…", "Purge…")
		mustContain(t, path, body, "read-only")
	}
	for _, action := range []string{"replay", "purge"} {
		resp, body := f.post(action, url.Values{"stream": {"orders"}, "id": {f.dead[0]}, "confirm": {"yes"}}, nil)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "read-only") {
			t.Errorf("POST %s to a read-only dashboard: %d\n%s", action, resp.StatusCode, body)
		}
	}
	if n := f.xlen("orders:dead"); n != 3 {
		t.Errorf("orders:dead has %d entries after refused actions, want 3", n)
	}
}

func TestActionsAreRefusedWithoutTheTokenOrFromAnotherSite(t *testing.T) {
	f := newFixture(t, dashboard.Options{AllowActions: true})
	token := f.token("dead?stream=orders")
	form := func(tok string) url.Values {
		return url.Values{"stream": {"orders"}, "id": {f.dead[0]}, "confirm": {"yes"}, "token": {tok}}
	}
	for _, tc := range []struct {
		name string
		form url.Values
		edit func(http.Header)
		why  string
	}{
		{"no token", form(""), nil, "no action token"},
		{"a forged token", form(strings.Replace(token, ".", ".x", 1)), nil, "not one this dashboard signed"},
		{"a token of another dashboard", form(otherToken(t)), nil, "not one this dashboard signed"},
		{"a cross-site request", form(token), func(h http.Header) { h.Set("Sec-Fetch-Site", "cross-site") }, "another site"},
		{"a request from another origin", form(token), func(h http.Header) {
			h.Del("Sec-Fetch-Site")
			h.Set("Origin", "https://evil.example")
		}, "another site"},
	} {
		resp, body := f.post("purge", tc.form, tc.edit)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, tc.why) {
			t.Errorf("%s: %d, want 403 saying %q\n%s", tc.name, resp.StatusCode, tc.why, body)
		}
	}
	req, _ := http.NewRequest("GET", f.server.URL+"/ops/purge?stream=orders&id="+f.dead[0]+"&confirm=yes&token="+url.QueryEscape(token), nil)
	resp, err := f.server.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET purge: %d, want 405", resp.StatusCode)
	}
	if n := f.xlen("orders:dead"); n != 3 {
		t.Errorf("orders:dead has %d entries after refused actions, want 3", n)
	}
	// The same request with the token, from the dashboard's page, works.
	resp, body := f.post("purge", form(token), nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("purge with the token: %d\n%s", resp.StatusCode, body)
	}
	if n := f.xlen("orders:dead"); n != 2 {
		t.Errorf("orders:dead has %d entries after purging one, want 2", n)
	}
}

// otherToken returns a token signed by another dashboard.
func otherToken(t *testing.T) string {
	other := newFixture(t, dashboard.Options{AllowActions: true})
	return other.token("dead?stream=orders")
}

func TestReplayShowsWhatItSelectsThenReplaysWithOrigin(t *testing.T) {
	f := newFixture(t, dashboard.Options{AllowActions: true})
	_, page := f.get("dead?stream=orders")
	mustContain(t, "the dead letters", page, `id="replay-selected"`, `id="purge-all"`, `name="id" value="`+f.dead[0]+`"`)

	token := f.token("dead?stream=orders")
	// Without confirm=yes: a confirmation listing the selection.
	resp, body := f.post("replay", url.Values{"stream": {"orders"}, "reason": {"handler"}, "since": {"1h"}, "token": {token}}, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("replay without confirm: %d\n%s", resp.StatusCode, body)
	}
	mustContain(t, "the confirmation", body, "Replay 1 dead letter of orders?", `name="confirm" value="yes"`, "unknown currency",
		`name="since" value="2023-11-14T21:15:20Z"`) // 1h before now, as an absolute time
	if n := f.xlen("orders:dead"); n != 3 {
		t.Fatalf("the confirmation moved something: orders:dead has %d entries", n)
	}
	if got := f.xlen("orders"); got != 4 {
		t.Fatalf("orders has %d entries before the replay, want 4", got)
	}
	// Confirmed: replayed, and the browser is sent back to the list.
	m := tokenRE.FindStringSubmatch(body)
	form := url.Values{"stream": {"orders"}, "reason": {"handler"}, "since": {"2023-11-14T21:15:20Z"}, "confirm": {"yes"}, "token": {m[1]}}
	resp, body = f.post("replay", form, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "dead?done=replay&n=1&skipped=0&stream=orders" {
		t.Fatalf("confirmed replay: %d %q\n%s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if n := f.xlen("orders:dead"); n != 2 {
		t.Errorf("orders:dead has %d entries after replaying one, want 2", n)
	}
	xs, err := f.client.Do(context.Background(), f.client.B().Xrevrange().Key("orders").End("+").Start("-").Count(1).Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	if got := xs[0].FieldValues; got[safesync.OriginFieldStream] != "orders" || got[safesync.OriginFieldID] != "1699999000000-0" {
		t.Errorf("the replayed entry's fields are %v, want its origin orders 1699999000000-0", got)
	}
	_, body = f.get("dead?done=replay&n=1&skipped=0&stream=orders")
	mustContain(t, "the list after the replay", body, "Replayed 1 dead letter, each with its origin")

	// "Replay selected" with nothing selected selects nothing.
	resp, body = f.post("replay", url.Values{"stream": {"orders"}, "scope": {"selected"}, "token": {token}}, nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "Select the dead letters") {
		t.Errorf("replay of an empty selection: %d\n%s", resp.StatusCode, body)
	}
}

func TestTheHandlerWorksUnderAnyPrefixWithOrWithoutStripPrefix(t *testing.T) {
	f := newFixture(t, dashboard.Options{})
	mux := http.NewServeMux()
	mux.Handle("/a/b/", http.StripPrefix("/a/b", f.dash))
	mux.Handle("/plain/", f.dash)
	for _, tc := range []struct{ path, want string }{
		{"/a/b/", `href="stream?name=orders"`},
		{"/a/b/stream?name=orders", "Consumers of"},
		{"/a/b/dashboard.css", "--accent"},
		{"/plain/", `href="stream?name=orders"`},
		{"/plain/dead?stream=orders", "unknown currency"},
		{"/plain/dashboard.js", "use strict"},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("GET %s: %d, want 200 with %q", tc.path, rec.Code, tc.want)
		}
		if strings.Contains(rec.Body.String(), `href="/`) || strings.Contains(rec.Body.String(), `src="/`) {
			t.Errorf("GET %s links to an absolute path", tc.path)
		}
	}
	// "/a/b" without its slash is sent to "b/", relative: "/a/b/".
	rec := httptest.NewRecorder()
	http.StripPrefix("/a/b", f.dash).ServeHTTP(rec, httptest.NewRequest("GET", "/a/b", nil))
	if rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != "b/" {
		t.Errorf("GET /a/b: %d to %q, want 301 to b/", rec.Code, rec.Header().Get("Location"))
	}
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/a/b/nothing", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("GET /a/b/nothing: %d, want 404", rec.Code)
	}
}

func TestPagesForbidFramingAndForeignScripts(t *testing.T) {
	f := newFixture(t, dashboard.Options{})
	resp, err := f.server.Client().Get(f.server.URL + "/ops/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"frame-ancestors 'none'", "script-src 'self'", "form-action 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("X-Frame-Options %q", resp.Header.Get("X-Frame-Options"))
	}
}

func TestMissingThingsAreNotFoundAndRedisErrorsShowNoAddress(t *testing.T) {
	f := newFixture(t, dashboard.Options{})
	for _, path := range []string{"stream?name=nothing", "group?stream=orders&group=nobody", "deadletter?stream=orders&id=1-0"} {
		if code, body := f.get(path); code != http.StatusNotFound {
			t.Errorf("GET %s: %d\n%s", path, code, body)
		}
	}
	addr := f.srv.Addr()
	f.srv.Close()
	code, body := f.get("")
	if code != http.StatusInternalServerError || !strings.Contains(body, "Redis") {
		t.Errorf("Redis down: %d\n%s", code, body)
	}
	host, port, _ := strings.Cut(addr, ":")
	mustNotContain(t, "the error page", body, addr, ":"+port, host+":")
}

func TestOptionsAreValidated(t *testing.T) {
	for _, tc := range []struct {
		opts dashboard.Options
		want string
	}{
		{dashboard.Options{Match: "["}, "Options.Match"},
		{dashboard.Options{ClaimIdle: -1}, "Options.ClaimIdle"},
		{dashboard.Options{CSRFKey: []byte("short")}, "Options.CSRFKey"},
		{dashboard.Options{SampleInterval: time.Hour}, "Options.SampleInterval"},
		{dashboard.Options{MaxSampledStreams: -1}, "Options.MaxSampledStreams"},
	} {
		if err := tc.opts.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.opts, err, tc.want)
		}
	}
	if err := (dashboard.Options{}).Validate(); err != nil {
		t.Errorf("zero Options: %v", err)
	}
}
