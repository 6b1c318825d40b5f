package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/safesync-go/safesync"
	safesyncotel "github.com/safesync-go/safesync/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// -trace prints every span of the run on standard output, one JSON object
// a line, with OpenTelemetry's stdout exporter: transactions, statements,
// locks, retries and the stream operations. Runs are large; -n 3 -batch 1
// -crash=false gives a trace one can read.
var traceSpans = flag.Bool("trace", false, "print the run's OpenTelemetry spans on standard output, one JSON object a line (try with -n 3 -batch 1 -crash=false)")

// startTracing turns tracing on when -trace is given and returns what
// flushes the spans at the end of the run.
func startTracing() (stop func()) {
	if !*traceSpans {
		return func() {}
	}
	exp, err := stdouttrace.New(stdouttrace.WithWriter(os.Stdout))
	if err != nil {
		fmt.Fprintln(os.Stderr, "safesync-demo: -trace:", err)
		os.Exit(2)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp))
	prev := safesync.SetTracer(safesyncotel.New(safesyncotel.WithTracerProvider(tp)))
	return func() {
		safesync.SetTracer(prev)
		if err := tp.Shutdown(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "safesync-demo: -trace:", err)
		}
	}
}
