// Command safesync inspects and repairs the Redis side of a safesync
// deployment: streams, consumer groups, pending entries and dead letters,
// which it lists, shows, replays (exactly once, with Once) and purges;
// "safesync serve" serves the same as a web dashboard (package dashboard).
//
// Install it with
//
//	go install github.com/safesync-go/safesync/cmd/safesync@latest
//
// and run "safesync -h" for the commands, "safesync COMMAND -h" for one
// command's flags and an example. It connects to the Redis named by
// --redis (repeat it, or separate addresses with commas, for a cluster),
// else by SAFESYNC_REDIS_ADDR, else 127.0.0.1:6379.
//
// Exit codes: 0 done; 1 the operation failed (some of a replay or purge may
// have been done: running it again is safe); 2 bad usage, or a purge or
// replay that needs confirming or a selection; 3 no such stream, group or
// dead letter; 4 Redis could not be reached; 130 interrupted.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync/ops"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitUnreachable = 4
	exitInterrupted = 130
)

// envRedisAddr names the Redis to use when --redis is not given.
const envRedisAddr = "SAFESYNC_REDIS_ADDR"

// defaultRedisAddr is used when neither --redis nor SAFESYNC_REDIS_ADDR is.
const defaultRedisAddr = "127.0.0.1:6379"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	a := &app{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, now: time.Now, connect: connect}
	os.Exit(a.run(ctx, os.Args[1:]))
}

// app is one run of the command, with its surroundings injected so that
// tests run it in-process.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	connect        func(addrs []string) (rueidis.Client, error)
}

// connect returns a client on addrs: host:port addresses (several for a
// cluster; one node of a cluster is enough, the client finds the others),
// or one redis://, rediss:// or unix:// URL.
func connect(addrs []string) (rueidis.Client, error) {
	opt := rueidis.ClientOption{InitAddress: addrs}
	if len(addrs) == 1 && strings.Contains(addrs[0], "://") {
		var err error
		if opt, err = rueidis.ParseURL(addrs[0]); err != nil {
			return nil, err
		}
	}
	opt.DisableCache = true
	opt.Dialer = net.Dialer{Timeout: 5 * time.Second}
	return rueidis.NewClient(opt)
}

// usageError is a mistake in the command line; its text says what to do.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// run runs the command line args and returns the exit code.
func (a *app) run(ctx context.Context, args []string) int {
	var g globals
	top := newFlagSet("safesync", &g)
	top.Usage = func() { a.usage(a.stdout) }
	if err := top.Parse(args); err != nil {
		if errors.Is(err, errHelp) {
			return exitOK
		}
		return a.fail(usagef("%v (see safesync -h)", err))
	}
	rest := top.Args()
	if len(rest) == 0 {
		a.usage(a.stderr)
		return exitUsage
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		if len(rest) == 0 {
			a.usage(a.stdout)
			return exitOK
		}
		return a.run(ctx, append(rest, "-h"))
	}
	if name == "dead" {
		if len(rest) == 0 || rest[0] == "-h" || rest[0] == "--help" || rest[0] == "-help" {
			a.deadUsage(a.stdout)
			if len(rest) == 0 {
				return exitUsage
			}
			return exitOK
		}
		name, rest = "dead "+rest[0], rest[1:]
	}
	cmd := findCommand(name)
	if cmd == nil {
		return a.fail(usagef("unknown command %q (see safesync -h)", name))
	}
	return a.runCommand(ctx, cmd, g, rest)
}

// fail reports err on stderr and returns its exit code.
func (a *app) fail(err error) int {
	code := exitCode(err)
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "safesync/ops: "); ok {
		msg = "safesync: " + rest
	} else if !strings.HasPrefix(msg, "safesync") {
		msg = "safesync: " + msg
	}
	fmt.Fprintln(a.stderr, msg)
	return code
}

func exitCode(err error) int {
	var ue *usageError
	var ne net.Error
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue), errors.Is(err, ops.ErrNoSelection), errors.Is(err, ops.ErrBadCursor):
		return exitUsage
	case errors.Is(err, ops.ErrStreamNotFound), errors.Is(err, ops.ErrGroupNotFound), errors.Is(err, ops.ErrDeadLetterNotFound):
		return exitNotFound
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.Is(err, context.DeadlineExceeded): // a net.Error too, but not an unreachable server
		return exitFailed
	case errors.As(err, &ne), errors.Is(err, rueidis.ErrClosing):
		return exitUnreachable
	}
	return exitFailed
}

// redisAddrs returns the addresses to connect to.
func (a *app) redisAddrs(g globals) []string {
	list := g.redis
	if len(list) == 0 {
		if env := a.getenv(envRedisAddr); env != "" {
			list = []string{env}
		}
	}
	var out []string
	for _, s := range list {
		for _, addr := range strings.Split(s, ",") {
			if addr = strings.TrimSpace(addr); addr != "" {
				out = append(out, addr)
			}
		}
	}
	if len(out) == 0 {
		out = []string{defaultRedisAddr}
	}
	return out
}

// open connects to Redis and returns the Ops on it.
func (a *app) open(g globals) (*ops.Ops, func(), error) {
	addrs := a.redisAddrs(g)
	client, err := a.connect(addrs)
	if err != nil {
		return nil, nil, &unreachableError{addrs: addrs, err: err}
	}
	return ops.New(client, ops.Config{Now: a.now}), client.Close, nil
}

// unreachableError: Redis did not answer.
type unreachableError struct {
	addrs []string
	err   error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("safesync: cannot connect to Redis at %s: %v\n"+
		"Is it running there? Name it with --redis HOST:PORT or %s (repeat --redis, or separate addresses with commas, for a cluster; a redis:// or rediss:// URL carries a password and TLS).",
		strings.Join(e.addrs, ","), e.err, envRedisAddr)
}

func (e *unreachableError) Unwrap() error { return e.err }

// Timeout implements net.Error, so that exitCode maps it to exitUnreachable.
func (e *unreachableError) Timeout() bool { return false }

// Temporary implements net.Error.
func (e *unreachableError) Temporary() bool { return false }
