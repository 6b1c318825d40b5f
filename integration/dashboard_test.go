package integration

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

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/dashboard"
	"github.com/safesync-go/safesync/ops"
)

// These tests serve the dashboard (package dashboard) on real Redis, with a
// pipeline with Once on real MySQL behind it, mounted under a prefix as a
// service would mount it, and use it as a browser does: pages, filters,
// read-only refusal, cross-site and token refusal, and a replay through
// its confirmation page applied exactly once.

// dashSite is a dashboard mounted under /admin/safesync/ of a test server.
type dashSite struct {
	t      *testing.T
	dash   *dashboard.Handler
	server *httptest.Server
}

func newDashSite(t *testing.T, x *ops.Ops, opts dashboard.Options) *dashSite {
	t.Helper()
	dash, err := dashboard.New(x, opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/admin/safesync/", http.StripPrefix("/admin/safesync", dash))
	s := &dashSite{t: t, dash: dash, server: httptest.NewServer(mux)}
	t.Cleanup(func() {
		s.server.Close()
		_ = dash.Close()
	})
	return s
}

func (s *dashSite) get(path string) (int, string) {
	s.t.Helper()
	resp, err := s.server.Client().Get(s.server.URL + "/admin/safesync/" + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// post sends form as the browser does from the dashboard's own pages
// (same-origin), with headers adjusted by edit; it does not follow
// redirects.
func (s *dashSite) post(path string, form url.Values, edit func(http.Header)) (*http.Response, string) {
	s.t.Helper()
	req, err := http.NewRequest("POST", s.server.URL+"/admin/safesync/"+path, strings.NewReader(form.Encode()))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Origin", s.server.URL)
	if edit != nil {
		edit(req.Header)
	}
	c := *s.server.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp, string(b)
}

var dashTokenRE = regexp.MustCompile(`name="token" value="([^"]+)"`)

func (s *dashSite) token(body string) string {
	s.t.Helper()
	m := dashTokenRE.FindStringSubmatch(body)
	if m == nil {
		s.t.Fatalf("no action token in the page:\n%s", body)
	}
	return m[1]
}

func pageHas(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

func pageLacks(t *testing.T, what, body string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(body, w) {
			t.Errorf("%s shows %q", what, w)
		}
	}
}

func TestDashboardShowsARunningPipelineAndReplaysItsDeadLettersExactlyOnce(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "dash")
	r := newReplayRig(t, client, []string{redisAddr(t)}, ops.Stream(stream))
	cfg := r.config("")
	cfg.Stream = stream
	r.run(func(ctx context.Context) error { return r.pipeline().Run(ctx, client, cfg) })
	r.broken.Store(true)
	r.publish(12, r.publishOne)
	dead := r.waitSettled()
	r.checkApplied("good")

	site := newDashSite(t, r.ops, dashboard.Options{AllowActions: true, Match: stream + "*", ClaimIdle: time.Hour})
	readOnly := newDashSite(t, r.ops, dashboard.Options{Match: stream + "*"})

	// The overview, the stream, its group and its dead letters.
	_, body := site.get("")
	pageHas(t, "the overview", body, `href="stream?name=`+stream+`"`, `href="dead?stream=`+stream+`"`, ">"+strconv.Itoa(len(dead))+"</a>")
	_, body = site.get("stream?name=" + stream)
	pageHas(t, "the stream's page", body, "workers", "w1", stream+":dead")
	_, body = site.get("group?stream=" + stream + "&group=workers")
	pageHas(t, "the group's page", body, "w1", "No pending entries.")
	_, body = site.get("dead?stream=" + stream)
	for _, d := range dead {
		pageHas(t, "the dead letters", body, `data-id="`+d.ID+`"`)
	}
	_, body = site.get("dead?stream=" + stream + "&reason=max_deliveries")
	for _, d := range dead {
		if shown := strings.Contains(body, `data-id="`+d.ID+`"`); shown != (d.Reason == safesync.DeadLetterMaxDeliveries) {
			t.Errorf("filtered by max_deliveries, dead letter %s (%s) shown: %v", d.ID, d.Reason, shown)
		}
	}
	_, body = site.get("deadletter?stream=" + stream + "&id=" + dead[0].ID)
	pageHas(t, "a dead letter's page", body, "Payload", "&#34;kind&#34;: ", dead[0].Reason, "Deliveries")

	// Read-only: no buttons, and an action is refused.
	_, body = readOnly.get("dead?stream=" + stream)
	pageLacks(t, "the read-only dead letters", body, `name="token"`, `id="replay-all"`, `id="purge-selected"`)
	if resp, body := readOnly.post("replay", url.Values{"stream": {stream}, "confirm": {"yes"}}, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("replay on a read-only dashboard: %d\n%s", resp.StatusCode, body)
	}

	// The handler is fixed; a replay from another site, or without the
	// token, is refused; the confirmed replay from the page applies every
	// dead letter once.
	r.broken.Store(false)
	_, page := site.get("dead?stream=" + stream)
	token := site.token(page)
	if resp, _ := site.post("replay", url.Values{"stream": {stream}, "confirm": {"yes"}, "token": {token}},
		func(h http.Header) { h.Set("Sec-Fetch-Site", "cross-site") }); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-site replay: %d", resp.StatusCode)
	}
	if resp, _ := site.post("replay", url.Values{"stream": {stream}, "confirm": {"yes"}}, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a replay without the token: %d", resp.StatusCode)
	}
	if left := r.waitSettled(); len(left) != len(dead) {
		t.Fatalf("refused replays moved dead letters: %d left of %d", len(left), len(dead))
	}
	resp, confirm := site.post("replay", url.Values{"stream": {stream}, "token": {token}}, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the replay's confirmation: %d\n%s", resp.StatusCode, confirm)
	}
	pageHas(t, "the confirmation", confirm, "Replay "+strconv.Itoa(len(dead))+" dead letters of "+stream+"?", `id="confirm"`)
	resp, _ = site.post("replay", url.Values{"stream": {stream}, "confirm": {"yes"}, "token": {site.token(confirm)}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the confirmed replay: %d", resp.StatusCode)
	}
	if left := r.waitSettled(); len(left) != 0 {
		t.Fatalf("%d dead letters after the replay", len(left))
	}
	r.checkApplied("good", "bad", "flaky")
	_, body = site.get(resp.Header.Get("Location"))
	pageHas(t, "the list after the replay", body, "Replayed "+strconv.Itoa(len(dead))+" dead letters", "No dead letters.")

	// The same dead letters replayed once more (as after a replay stopped
	// between its append and its removal) apply nothing twice.
	r.restore(dead)
	_, page = site.get("dead?stream=" + stream)
	resp, _ = site.post("replay", url.Values{"stream": {stream}, "confirm": {"yes"}, "token": {site.token(page)}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the second replay: %d", resp.StatusCode)
	}
	if left := r.waitSettled(); len(left) != 0 {
		t.Fatalf("%d dead letters after the second replay", len(left))
	}
	r.checkApplied("good", "bad", "flaky")
}

func TestDashboardFlagsConsumersIdlePastClaimIdle(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "dash")
	t.Cleanup(func() { _ = client.Do(context.Background(), client.B().Del().Key(stream).Build()).Error() })
	do := func(args ...string) {
		t.Helper()
		if err := client.Do(context.Background(), client.B().Arbitrary(args...).Build()).Error(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	for range 3 {
		do("XADD", stream, "*", "data", `{"id":1}`)
	}
	do("XGROUP", "CREATE", stream, "workers", "0")
	do("XREADGROUP", "GROUP", "workers", "gone", "COUNT", "2", "STREAMS", stream, ">")
	x := ops.New(client, ops.Config{})
	// Wait until "gone" has been idle past the ClaimIdle of the page (1s).
	for {
		info, err := x.Inspect(context.Background(), ops.Stream(stream))
		if err != nil {
			t.Fatal(err)
		}
		if info.Groups[0].Consumers[0].Idle > 1500*time.Millisecond {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	do("XREADGROUP", "GROUP", "workers", "busy", "COUNT", "1", "STREAMS", stream, ">")

	site := newDashSite(t, x, dashboard.Options{Match: stream + "*", ClaimIdle: time.Second})
	_, body := site.get("group?stream=" + stream + "&group=workers")
	rows := regexp.MustCompile(`(?s)<tr( class="stale")?>\s*<td[^>]*>(gone|busy)</td>`).FindAllStringSubmatch(body, -1)
	flagged := map[string]bool{}
	for _, m := range rows {
		flagged[m[2]] = m[1] != ""
	}
	if len(flagged) != 2 || !flagged["gone"] || flagged["busy"] {
		t.Errorf("flagged consumers %v, want gone only\n%s", flagged, body)
	}
	pageHas(t, "the group's page", body, "its 2 pending may be claimed", "idle past 1s")
	// A ClaimIdle given with the page flags by it instead.
	_, body = site.get("group?stream=" + stream + "&group=workers&claim_idle=1h")
	pageLacks(t, "the group's page with claim_idle=1h", body, `class="stale"`)
	_, body = site.get("stream?name=" + stream)
	pageHas(t, "the stream's page", body, "1 idle")
}

func TestDashboardShowsAPartitionedStreamAsOneWithItsPartitions(t *testing.T) {
	client := openRedis(t)
	p, err := safesync.NewPartitions(uniqueName(t, "dash"), 3)
	if err != nil {
		t.Fatal(err)
	}
	keys := p.Streams()
	t.Cleanup(func() {
		for _, k := range keys {
			_ = client.Do(context.Background(), client.B().Del().Key(k).Key(k+safesync.DeadLetterSuffix).Build()).Error()
		}
	})
	for i, k := range keys {
		for range i + 1 {
			if _, err := safesync.Publish(context.Background(), client, k, map[string]string{"data": `{"n":1}`}); err != nil {
				t.Fatal(err)
			}
		}
		if err := client.Do(context.Background(), client.B().XgroupCreate().Key(k).Group("workers").Id("0").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	dead := client.B().Xadd().Key(keys[2]+safesync.DeadLetterSuffix).Id("*").FieldValue().
		FieldValue(safesync.DeadLetterFieldStream, keys[2]).FieldValue(safesync.DeadLetterFieldGroup, "workers").
		FieldValue(safesync.DeadLetterFieldID, "1-0").FieldValue(safesync.DeadLetterFieldReason, safesync.DeadLetterHandler).
		FieldValue("data", `{"n":2}`).Build()
	if err := client.Do(context.Background(), dead).Error(); err != nil {
		t.Fatal(err)
	}

	site := newDashSite(t, ops.New(client, ops.Config{}), dashboard.Options{Match: p.Name() + "*"})
	_, body := site.get("")
	if n := strings.Count(body, "<tr data-stream="); n != 1 {
		t.Errorf("the overview lists %d streams, want the partitioned stream once\n%s", n, body)
	}
	pageHas(t, "the overview", body, `href="stream?name=`+p.Name()+`"`, "3 partitions")
	pageLacks(t, "the overview", body, `href="stream?name=`+url.QueryEscape(keys[0])+`"`)
	_, body = site.get("stream?name=" + url.QueryEscape(p.Name()))
	pageHas(t, "the partitioned stream's page", body, "6", "entries in 3 partitions", "Partitions")
	for _, k := range keys {
		pageHas(t, "the partitioned stream's page", body, "<code>"+k+"</code>")
	}
	_, body = site.get("dead?stream=" + url.QueryEscape(p.Name()))
	pageHas(t, "the partitioned stream's dead letters", body, keys[2]+safesync.DeadLetterSuffix, "&#34;n&#34;:2")
}
