// Package dashboard serves a web dashboard of a safesync deployment's Redis
// side, on the operations API (package ops): the streams with their length,
// groups, lag, pending entries, oldest pending age, dead letters and a
// small chart of throughput and pending entries; each consumer group's
// consumers, flagged when idle past ClaimIdle, and pending entries; the
// dead letters, filtered by reason, group, time and error text, with their
// payloads pretty-printed, and replay and purge behind a confirmation.
// Partitioned streams show as one logical stream with its partitions.
//
// A Handler is an http.Handler that a service mounts in its own mux, under
// any prefix, with or without http.StripPrefix:
//
//	dash, err := dashboard.New(ops.New(client, ops.Config{}), dashboard.Options{})
//	if err != nil { … }
//	defer dash.Close()
//	mux.Handle("/ops/safesync/", requireOperator(dash))
//
// The pages are rendered on the server, with a little plain JavaScript
// (auto-refresh, select all) and no file from anywhere else: they work
// offline and on a phone-width screen. The command-line tool serves the
// same handler: safesync serve --redis ADDR --listen 127.0.0.1:8080.
//
// # Safe by default
//
// The zero Options make a read-only dashboard: no action buttons, and
// replay and purge requests are refused on the server. With
// Options.AllowActions, replay and purge are POST requests that must carry
// a token the handler signed (HMAC-SHA256 with a key of its own, or
// Options.CSRFKey) no more than Options.TokenTTL ago, and that browsers
// mark as same-origin (Sec-Fetch-Site, else Origin against Host, see
// http.CrossOriginProtection); each runs only after a confirmation page
// has shown what it selects. GET requests never change anything. Pages
// forbid framing and inline scripts (Content-Security-Policy).
//
// The handler authenticates no one: mount it behind the service's own
// authentication and authorization. It never shows a connection string:
// it knows only its ops.Ops, and errors other than the operations' own
// (no such stream, group or dead letter) are shown as their kind, with the
// details in the Options.Logger.
//
// Replay keeps the dead letters' origin (ops.Replay without StripOrigin),
// so a pipeline with Once applies each at most once, however often it is
// replayed.
//
// # Sampling
//
// The charts come from samples the handler takes itself: every
// Options.SampleInterval it sums up the streams (one ops.Streams call, at
// most Options.MaxSampledStreams streams) and keeps what it read for
// Options.SampleWindow. Sampling starts with the first page served, stops
// by itself once no page has been served for a whole SampleWindow (and
// starts again with the next page), and stops at once, for good, with
// Close, which waits for it. No goroutine outlives Close; without Close,
// none outlives the handler's last page by more than SampleWindow plus
// one sample.
package dashboard
