package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/safesync-go/safesync/dashboard"
	"github.com/safesync-go/safesync/ops"
)

func init() {
	commands = append(commands, &command{
		name:     "serve",
		summary:  "serve the web dashboard: streams, groups, consumers, dead letters",
		synopsis: "safesync serve [--listen ADDR] [--prefix PATH] [--allow-actions] [--claim-idle D] [--match PATTERN] [--sample-interval D] [--sample-window D]",
		about: `Serves the dashboard (package dashboard) over HTTP until interrupted: the
streams with a chart of throughput and pending entries, each group's
consumers (flagged when idle past --claim-idle) and pending entries, and the
dead letters, filtered, with their payloads.

It is read-only unless --allow-actions: then dead letters can be replayed
(with their origin: a pipeline with Once applies each at most once) and
purged, each after a confirmation page, through POST requests that carry a
token and must come from the dashboard's own pages.

The dashboard authenticates no one. It listens on a loopback address only,
unless --allow-remote: put an authenticating proxy in front of it, or mount
the package's handler behind your service's own authentication.`,
		example: `$ safesync serve --redis 10.0.0.5:6379 --listen 127.0.0.1:8080
safesync: serving the dashboard at http://127.0.0.1:8080/ (read-only); interrupt to stop

$ safesync serve --listen 127.0.0.1:8080 --prefix /ops/ --allow-actions --claim-idle 30s`,
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "serve on this `ADDR` (host:port; port 0 picks a free one)")
			fs.StringVar(&o.prefix, "prefix", "/", "serve the pages under this URL `PATH`")
			fs.BoolVar(&o.allowActions, "allow-actions", false, "show replay and purge, and carry them out (default: read-only)")
			fs.BoolVar(&o.allowRemote, "allow-remote", false, "listen on an address other than loopback (the dashboard authenticates no one)")
			fs.DurationVar(&o.claimIdle, "claim-idle", 0, "flag consumers idle longer than this: your consumers' ClaimIdle (default 1m)")
			fs.StringVar(&o.match, "match", "", "show only streams whose name matches this shell `PATTERN` (orders*)")
			fs.DurationVar(&o.sampleInterval, "sample-interval", 0, "sample the streams for the charts this often (default 10s; negative: no charts)")
			fs.DurationVar(&o.sampleWindow, "sample-window", 0, "charts go this far back (default 15m)")
		},
		run: runServe,
	})
}

func runServe(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error {
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return usagef("--listen %q is not host:port (like 127.0.0.1:8080)", o.listen)
	}
	if !o.allowRemote && !loopback(host) {
		return usagef("--listen %s is not a loopback address, and the dashboard authenticates no one; listen on 127.0.0.1 behind an authenticating proxy, or add --allow-remote", o.listen)
	}
	prefix := "/" + strings.Trim(o.prefix, "/") + "/"
	if prefix == "//" {
		prefix = "/"
	}
	dash, err := dashboard.New(x, dashboard.Options{
		AllowActions: o.allowActions, ClaimIdle: o.claimIdle, Match: o.match,
		SampleInterval: o.sampleInterval, SampleWindow: o.sampleWindow, Now: a.now,
	})
	if err != nil {
		flagNames := strings.NewReplacer("safesync/dashboard: ", "", "Options.ClaimIdle", "--claim-idle", "Options.Match", "--match",
			"Options.SampleInterval", "--sample-interval", "Options.SampleWindow", "--sample-window", "SampleWindow", "--sample-window")
		return usagef("%s", flagNames.Replace(err.Error()))
	}
	defer dash.Close()
	mux := http.NewServeMux()
	mux.Handle(prefix, http.StripPrefix(strings.TrimSuffix(prefix, "/"), dash))
	if prefix != "/" {
		mux.Handle("/{$}", http.RedirectHandler(prefix, http.StatusFound))
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", o.listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	mode := "read-only"
	if o.allowActions {
		mode = "replay and purge on"
	}
	fmt.Fprintf(a.stdout, "safesync: serving the dashboard at http://%s%s (%s); interrupt to stop\n", ln.Addr(), prefix, mode)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdown)
	if serveErr := <-done; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, "safesync: stopped serving the dashboard")
	return nil
}

// loopback reports whether host names a loopback address.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
