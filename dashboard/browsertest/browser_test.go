package browsertest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	_ "github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/dashboard"
	"github.com/safesync-go/safesync/ops"
)

var screenshots = flag.String("screenshots", "", "also write the screenshots to this `DIR` (../../docs/dashboard for the README's)")

// order is the pipeline's message. While the handler is broken, "bad"
// orders fail for good (reason handler) and "flaky" ones fail until they
// are dead-lettered after MaxDeliveries (reason max_deliveries).
type order struct {
	ID       int    `json:"id"`
	Kind     string `json:"kind"`
	Currency string `json:"currency"`
	Amount   int    `json:"amount_cents"`
}

// shop is a running pipeline with Once on MySQL over an orders stream,
// a second group that stopped with entries pending, and a partitioned
// payments stream, all named under one unique prefix.
type shop struct {
	t         *testing.T
	db        *sql.DB
	client    rueidis.Client
	prefix    string
	orders    string
	payments  safesync.Partitions
	effects   string
	applied   string
	broken    atomic.Bool
	mu        sync.Mutex
	published []order
}

func TestDashboardInAHeadlessBrowser(t *testing.T) {
	dsn, addr := services(t)
	chromium := findChromium(t)
	s := newShop(t, dsn, addr)
	s.broken.Store(true)
	s.runPipeline()
	stopPublishing := s.publishSteadily()
	first := s.publishBatch(12)
	deadWanted := 0
	for _, o := range first {
		if o.Kind != "good" {
			deadWanted++
		}
	}

	x := ops.New(s.client, ops.Config{})
	opts := dashboard.Options{AllowActions: true, Match: s.prefix + "*", ClaimIdle: 2 * time.Second,
		SampleInterval: time.Second, SampleWindow: 2 * time.Minute, Title: "shop · safesync"}
	rw, err := dashboard.New(x, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.AllowActions = false
	ro, err := dashboard.New(x, opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ops/safesync/", http.StripPrefix("/ops/safesync", rw))
	mux.Handle("/ops/readonly/", http.StripPrefix("/ops/readonly", ro))
	server := httptest.NewServer(mux)
	t.Cleanup(func() {
		server.Close()
		_ = rw.Close()
		_ = ro.Close()
	})
	b := newBrowser(t, chromium)
	base := server.URL + "/ops/safesync/"
	orders := url.QueryEscape(s.orders)

	// The overview shows the pipeline's streams; the dead letters appear,
	// and the chart fills in (a sample a second).
	b.until("the overview lists both streams with the dead letters and charts", base, fmt.Sprintf(`
		(() => {
			const o = document.querySelector('tr[data-stream=%q]'), p = document.querySelector('tr[data-stream=%q]');
			const dead = o && o.querySelector('a.dead');
			const line = o && o.querySelector('polyline.pending');
			return !!(p && dead && dead.textContent.trim() === %q && line && line.getAttribute('points').split(' ').length >= 12 &&
				document.querySelector('#streams').textContent.includes('3 partitions'));
		})()`, s.orders, s.payments.Name(), fmt.Sprint(deadWanted)))
	b.screenshot("overview.png")
	// The script ran (under the pages' Content-Security-Policy): it shows
	// the auto-refresh switch it drives.
	if b.eval(`document.querySelector('label.refresh').hidden ? 0 : 1`) != 1 {
		t.Error("the auto-refresh switch is hidden: the page's script did not run")
	}

	// A stream's page, reached by its link: groups, consumers, chart.
	b.click(fmt.Sprintf(`a[href="stream?name=%s"]`, orders))
	b.expectText("the stream's page", "#streams, main", "Consumers of", "audit", "workers", "worker-1")
	b.screenshot("stream.png")

	// The group that stopped: its consumer is flagged past ClaimIdle.
	b.until("the audit consumer is flagged idle past ClaimIdle", base+"group?stream="+orders+"&group=audit",
		`document.querySelectorAll('tr.stale').length === 1 && document.body.textContent.includes('its 3 pending may be claimed')`)
	b.screenshot("group.png")

	// The partitioned stream is one stream with its partitions.
	b.navigate(base + "stream?name=" + url.QueryEscape(s.payments.Name()))
	b.expectText("the partitioned stream's page", "main", "entries in 3 partitions", s.payments.Stream(0), s.payments.Stream(2))

	// The dead letters, and one of them.
	b.navigate(base + "dead?stream=" + orders)
	if n := b.count("#deadletters tbody tr"); n != deadWanted {
		t.Fatalf("the dead-letter browser lists %d dead letters, want %d", n, deadWanted)
	}
	b.screenshot("dead-letters.png")
	// "Replay selected" waits for a selection; "select all" makes one.
	if b.eval(`document.querySelector('#replay-selected').disabled ? 1 : 0`) != 1 {
		t.Error("replay selected is enabled with nothing selected")
	}
	b.step("select all", chromedp.Click(chromedp.CSS("#select-all"), chromedp.NodeVisible))
	if n := b.count("#deadletters input[name=id]:checked"); n != deadWanted || b.eval(`document.querySelector('#replay-selected').disabled ? 1 : 0`) != 0 {
		t.Errorf("after select all: %d selected of %d, replay selected enabled: %v", n, deadWanted, b.eval(`document.querySelector('#replay-selected').disabled ? 0 : 1`) == 1)
	}
	b.navigate(base + "dead?stream=" + orders + "&reason=max_deliveries")
	flaky := 0
	for _, o := range first {
		if o.Kind == "flaky" {
			flaky++
		}
	}
	if n := b.count("#deadletters tbody tr"); n != flaky {
		t.Errorf("filtered by max_deliveries: %d rows, want %d", n, flaky)
	}
	b.click("#deadletters tbody tr a")
	// A dead letter past MaxDeliveries carries the handler's last error
	// and the count and times of its own failures.
	b.expectText("a dead letter's page", "main", "Payload", `"kind": "flaky"`, "max_deliveries", "Deliveries", "tax service timed out", "Own failures")
	b.screenshot("dead-letter.png")

	// Read-only: the same pages without a single action button.
	roBase := server.URL + "/ops/readonly/"
	b.navigate(roBase + "dead?stream=" + orders)
	if n := b.count("#deadletters tbody tr"); n != deadWanted {
		t.Errorf("the read-only dead-letter browser lists %d dead letters, want %d", n, deadWanted)
	}
	if n := b.count("button.act, input[name=token], form[method=post]"); n != 0 {
		t.Errorf("the read-only dead-letter browser shows %d action buttons or forms", n)
	}
	b.screenshot("read-only.png")
	b.click("#deadletters tbody tr a")
	if n := b.count("button.act, input[name=token], form[method=post]"); n != 0 {
		t.Errorf("the read-only dead letter's page shows %d action buttons or forms", n)
	}

	// A phone: the pages fit its width (wide tables scroll in their box).
	b.viewport(390, 844, true)
	for _, p := range []struct{ path, shot string }{{"", "phone-overview.png"}, {"dead?stream=" + orders, "phone-dead-letters.png"}} {
		b.navigate(base + p.path)
		if w := b.eval(`document.documentElement.scrollWidth - window.innerWidth`); w > 0 {
			t.Errorf("%s is %dpx wider than a 390px screen", p.path, w)
		}
		b.screenshot(p.shot)
	}
	b.viewport(1280, 900, false)

	// The handler is fixed; replay every dead letter from the page, after
	// its confirmation.
	s.broken.Store(false)
	b.navigate(base + "dead?stream=" + orders)
	b.click("#replay-all")
	b.expectText("the confirmation", "main", fmt.Sprintf("Replay %d dead letters of %s?", deadWanted, s.orders), "carrying its origin")
	b.screenshot("replay-confirm.png")
	b.click("#confirm")
	b.expectText("the list after the replay", "main", fmt.Sprintf("Replayed %d dead letters", deadWanted), "No dead letters.")
	b.screenshot("replayed.png")

	stopPublishing()
	s.waitSettled(x)
	s.checkAppliedOnce()
	// The overview after the replay, the chart showing the work.
	b.navigate(base)
	b.screenshot("overview-after.png")
}

// services returns the MySQL DSN and Redis address of the environment, or
// skips (fails, with SAFESYNC_REQUIRE_SERVICES=1).
func services(t *testing.T) (string, string) {
	dsn, addr := os.Getenv("SAFESYNC_MYSQL_DSN"), os.Getenv("SAFESYNC_REDIS_ADDR")
	if dsn == "" || addr == "" {
		unavailable(t, "SAFESYNC_MYSQL_DSN and SAFESYNC_REDIS_ADDR name no MySQL and Redis")
	}
	return dsn, addr
}

func unavailable(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("SAFESYNC_REQUIRE_SERVICES") == "1" {
		t.Fatalf("%s, and SAFESYNC_REQUIRE_SERVICES=1", why)
	}
	t.Skip(why)
}

// findChromium returns the browser's path: $SAFESYNC_CHROMIUM, else
// chromium or chromium-browser on the PATH.
func findChromium(t *testing.T) string {
	if p := os.Getenv("SAFESYNC_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	unavailable(t, "no Chromium (install Debian's chromium, or name it with SAFESYNC_CHROMIUM)")
	return ""
}

func unique() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func newShop(t *testing.T, dsn, addr string) *shop {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Ping(); err != nil {
		unavailable(t, "MySQL does not answer: "+err.Error())
	}
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		unavailable(t, "Redis does not answer: "+err.Error())
	}
	t.Cleanup(client.Close)
	id := unique()
	s := &shop{t: t, db: db, client: client, prefix: "shop-" + id, effects: "browser_effects_" + id}
	s.orders = s.prefix + ".orders"
	if s.payments, err = safesync.NewPartitions(s.prefix+".payments", 3); err != nil {
		t.Fatal(err)
	}
	applied := "browser_applied_" + id
	if _, err := db.Exec("CREATE TABLE `" + s.effects + "` (n BIGINT AUTO_INCREMENT PRIMARY KEY, order_id BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if err := safesync.CreateDedupeTable(context.Background(), db, applied); err != nil {
		t.Fatal(err)
	}
	keys := []string{s.orders, s.orders + safesync.DeadLetterSuffix}
	for _, k := range s.payments.Streams() {
		keys = append(keys, k, k+safesync.DeadLetterSuffix)
	}
	t.Cleanup(func() {
		for _, k := range keys {
			_ = client.Do(context.Background(), client.B().Del().Key(k).Build()).Error()
		}
		_, _ = db.Exec("DROP TABLE IF EXISTS `" + s.effects + "`")
		_, _ = db.Exec("DROP TABLE IF EXISTS `" + applied + "`")
	})
	s.applied = applied

	// audit read three orders and stopped; payments has a group part way.
	s.redis("XGROUP", "CREATE", s.orders, "audit", "0", "MKSTREAM")
	for i := range 9 {
		key := s.payments.Stream(i % 3)
		if _, err := safesync.PublishJSON(context.Background(), client, key, map[string]any{"payment_id": 500 + i, "amount_cents": 1250 * (i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, k := range s.payments.Streams() {
		s.redis("XGROUP", "CREATE", k, "settlement", "0")
		s.redis("XREADGROUP", "GROUP", "settlement", "settler-1", "COUNT", fmt.Sprint(i+1), "STREAMS", k, ">")
	}
	return s
}

func (s *shop) redis(args ...string) {
	s.t.Helper()
	if err := s.client.Do(context.Background(), s.client.B().Arbitrary(args...).Build()).Error(); err != nil {
		s.t.Fatalf("%v: %v", args, err)
	}
}

// runPipeline runs the orders pipeline with Once until the test ends.
func (s *shop) runPipeline() {
	p := safesync.Stream(safesync.JSON[order]()).
		Handle(func(ctx context.Context, tx *safesync.Tx, msg safesync.Message[order]) error {
			if s.broken.Load() {
				switch msg.Value.Kind {
				case "bad":
					return safesync.Permanent(fmt.Errorf("order %d: unknown currency %q", msg.Value.ID, msg.Value.Currency))
				case "flaky":
					return fmt.Errorf("order %d: tax service timed out after 2s", msg.Value.ID)
				}
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO `"+s.effects+"` (order_id) VALUES (?)", msg.Value.ID)
			return err
		}).
		AckAfter(safesync.Commit(s.db)).
		Once(s.applied)
	cfg := safesync.StreamConfig{Stream: s.orders, Group: "workers", Consumer: "worker-1", Block: 50 * time.Millisecond,
		ClaimIdle: 200 * time.Millisecond, ClaimInterval: 50 * time.Millisecond, MaxDeliveries: 2}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, s.client, cfg) }()
	s.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			s.t.Errorf("pipeline: %v", err)
		}
	})
}

// publish adds one order.
func (s *shop) publish(kind string) order {
	s.t.Helper()
	s.mu.Lock()
	o := order{ID: len(s.published) + 1, Kind: kind, Currency: "EUR", Amount: 990 + 10*len(s.published)}
	if kind == "bad" {
		o.Currency = "XYZ"
	}
	s.published = append(s.published, o)
	s.mu.Unlock()
	if _, err := safesync.PublishJSON(context.Background(), s.client, s.orders, o); err != nil {
		s.t.Error(err)
	}
	return o
}

// publishBatch publishes n orders, every third bad and every fifth other
// one flaky, and has audit take the first three.
func (s *shop) publishBatch(n int) []order {
	var out []order
	for i := range n {
		kind := "good"
		switch {
		case i%3 == 2:
			kind = "bad"
		case i%5 == 4:
			kind = "flaky"
		}
		out = append(out, s.publish(kind))
	}
	s.redis("XREADGROUP", "GROUP", "audit", "audit-1", "COUNT", "3", "STREAMS", s.orders, ">")
	return out
}

// publishSteadily publishes good orders, in waves of 10, 20 and 30 a
// second, until the returned function is called, which waits for it to
// stop.
func (s *shop) publishSteadily() func() {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				for range 1 + n/20%3 {
					s.publish("good")
				}
			}
		}
	}()
	var once sync.Once
	stopFn := func() { once.Do(func() { close(stop); <-done }) }
	s.t.Cleanup(stopFn)
	return stopFn
}

// waitSettled waits until workers has consumed every entry and no dead
// letter is left.
func (s *shop) waitSettled(x *ops.Ops) {
	s.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		info, err := x.Inspect(context.Background(), ops.Stream(s.orders))
		if err != nil {
			s.t.Fatal(err)
		}
		for _, g := range info.Groups {
			if g.Name == "workers" && g.Lag == 0 && g.Pending == 0 && info.DeadLetters == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("not settled after 60s: %+v, %d dead letters", info.Groups, info.DeadLetters)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkAppliedOnce fails unless every order published was applied
// exactly once.
func (s *shop) checkAppliedOnce() {
	s.t.Helper()
	rows, err := s.db.Query("SELECT order_id, COUNT(*) FROM `" + s.effects + "` GROUP BY order_id")
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	got := map[int]int{}
	for rows.Next() {
		var id, n int
		if err := rows.Scan(&id, &n); err != nil {
			s.t.Fatal(err)
		}
		got[id] = n
	}
	if err := rows.Err(); err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.published {
		if got[o.ID] != 1 {
			s.t.Errorf("order %d (%s) applied %d times, want once", o.ID, o.Kind, got[o.ID])
		}
	}
	if len(got) != len(s.published) {
		s.t.Errorf("%d orders applied, %d published", len(got), len(s.published))
	}
	s.t.Logf("%d orders published, each applied once", len(s.published))
}

// browser is a headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string // where the README's screenshots go
	tmp string // where the others go
}

func newBrowser(t *testing.T, path string) *browser {
	t.Helper()
	profile, err := os.MkdirTemp("", "safesync-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Chromium's helpers may still write there for a moment.
		for range 50 {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(profile),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("force-color-profile", "srgb"), chromedp.WindowSize(1280, 900))
	ctx, cancelTab := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	// The first Run starts the browser and must not carry a timeout.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`1`)); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	tmp := t.TempDir()
	dir := *screenshots
	if dir == "" {
		dir = tmp
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, ctx: ctx, dir: dir, tmp: tmp}
	b.viewport(1280, 900, false)
	return b
}

// step bounds one browser step to 30 s.
func (b *browser) step(what string, a chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, a); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

func (b *browser) navigate(u string) {
	b.t.Helper()
	b.step("navigate to "+u, chromedp.Navigate(u))
}

// click clicks the first element sel matches and waits for the page it
// leads to.
func (b *browser) click(sel string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible))); err != nil {
		b.t.Fatalf("click %s: %v", sel, err)
	}
}

func (b *browser) eval(js string) int {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](js))
	if err != nil {
		b.t.Fatalf("%s: %v", js, err)
	}
	return n
}

func (b *browser) count(css string) int {
	b.t.Helper()
	return b.eval(fmt.Sprintf(`document.querySelectorAll(%q).length`, css))
}

// text returns the text of the first element sel matches.
func (b *browser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q) || document.body).innerText`, sel)))
	if err != nil {
		b.t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

func (b *browser) expectText(what, sel string, wants ...string) {
	b.t.Helper()
	text := b.text(sel)
	for _, w := range wants {
		if !strings.Contains(text, w) {
			b.t.Errorf("%s lacks %q:\n%s", what, w, text)
		}
	}
}

// until loads u until the JavaScript expression cond is true, for 60 s at
// most.
func (b *browser) until(what, u, cond string) {
	b.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		b.navigate(u)
		ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](cond))
		cancel()
		if err != nil {
			b.t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("still not %s after 60s:\n%s", what, b.text("main"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (b *browser) viewport(w, h int64, phone bool) {
	b.t.Helper()
	if phone {
		b.step("phone viewport", chromedp.EmulateViewport(w, h, chromedp.EmulateMobile, chromedp.EmulateScale(2)))
		return
	}
	b.step("desktop viewport", chromedp.EmulateViewport(w, h))
}

// readmeShots are the screenshots that -screenshots writes (the README
// shows them); the others go to the test's temporary directory only.
var readmeShots = map[string]bool{
	"overview.png": true, "stream.png": true, "group.png": true, "dead-letters.png": true, "dead-letter.png": true,
	"replay-confirm.png": true, "read-only.png": true, "phone-overview.png": true,
}

// screenshot writes the whole page as a PNG.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := b.dir
	if !readmeShots[name] {
		dir = b.tmp
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", path)
}
