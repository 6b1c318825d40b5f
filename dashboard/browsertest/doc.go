// Package browsertest drives the dashboard (package dashboard) in Debian's
// headless Chromium, through the DevTools protocol (chromedp), against a
// running pipeline on real MySQL/MariaDB and Redis. It is a module of its
// own, so that chromedp never enters the library's module graph.
//
// Run it with the services named as for the integration tests:
//
//	SAFESYNC_MYSQL_DSN='root@tcp(127.0.0.1:3306)/test' SAFESYNC_REDIS_ADDR=127.0.0.1:6379 go test ./...
//
// It finds Chromium at $SAFESYNC_CHROMIUM, else as chromium or
// chromium-browser on the PATH; without services or a browser it skips,
// unless SAFESYNC_REQUIRE_SERVICES=1 (which CI sets) makes that a failure.
// With -screenshots DIR it also writes its screenshots there: the README's
// are made with
//
//	go test -run TestDashboardInAHeadlessBrowser -screenshots ../../docs/dashboard
package browsertest
