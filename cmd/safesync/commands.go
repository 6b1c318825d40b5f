package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/safesync-go/safesync/ops"
)

var errHelp = flag.ErrHelp

// globals are the flags every command takes, before or after its name.
type globals struct {
	redis   stringList
	json    bool
	timeout time.Duration
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// newFlagSet returns a flag set with the global flags bound to g. It
// prints nothing: run reports errors and help itself.
func newFlagSet(name string, g *globals) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.Var(&g.redis, "redis", "Redis `ADDR` (host:port, or a redis:// URL); repeat it, or separate with commas, for a cluster\n(default: $"+envRedisAddr+", else "+defaultRedisAddr+")")
	fs.BoolVar(&g.json, "json", g.json, "print JSON instead of tables")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "give up after this long (default: 30s, none for replay and purge)")
	return fs
}

// options are every command's own flags; each command binds those it
// takes.
type options struct {
	stream, deadStream    string
	match, after          string
	group, consumer       string
	reason, errorContains string
	ids                   stringList
	since, until          timeFlag
	limit                 int
	minIdle               time.Duration
	all, dryRun, yes      bool
	stripOrigin           bool
	rate                  float64

	// serve's
	listen, prefix               string
	allowActions, allowRemote    bool
	claimIdle                    time.Duration
	sampleInterval, sampleWindow time.Duration
}

// command is one subcommand.
type command struct {
	name     string // "streams", "dead list", …
	summary  string
	synopsis string
	about    string
	example  string
	timeout  time.Duration // default --timeout; 0: none
	flags    func(fs *flag.FlagSet, o *options)
	run      func(ctx context.Context, a *app, x *ops.Ops, g globals, o *options) error
}

// commands are the subcommands, registered by the files that implement
// them; help lists them in the order of commandOrder.
var commands []*command

var commandOrder = []string{"streams", "pending", "dead list", "dead show", "dead replay", "dead purge", "serve"}

// ordered returns the commands in commandOrder.
func ordered() []*command {
	rank := func(c *command) int { return slices.Index(commandOrder, c.name) }
	out := slices.Clone(commands)
	slices.SortStableFunc(out, func(a, b *command) int { return rank(a) - rank(b) })
	return out
}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// runCommand parses cmd's flags, connects and runs it.
func (a *app) runCommand(ctx context.Context, cmd *command, g globals, args []string) int {
	o := &options{}
	fs := newFlagSet("safesync "+cmd.name, &g)
	cmd.flags(fs, o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, errHelp) {
			a.commandUsage(a.stdout, cmd, fs)
			return exitOK
		}
		return a.fail(usagef("%v (see safesync %s -h)", err, cmd.name))
	}
	if fs.NArg() > 0 {
		return a.fail(usagef("unexpected argument %q (see safesync %s -h)", fs.Arg(0), cmd.name))
	}
	if o.limit < 0 {
		return a.fail(usagef("--limit must not be negative"))
	}
	x, closeClient, err := a.open(g)
	if err != nil {
		return a.fail(err)
	}
	defer closeClient()
	timeout := cmd.timeout
	if g.timeout > 0 {
		timeout = g.timeout
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if err := cmd.run(ctx, a, x, g, o); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (raise --timeout to wait longer)", err)
		}
		return a.fail(err)
	}
	return exitOK
}

// streamFlag binds --stream, required by every command but streams.
func streamFlag(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.stream, "stream", "", "the stream: its key, or the logical name of a partitioned stream (required)")
	fs.StringVar(&o.deadStream, "dead-letter-stream", "", "its dead-letter stream, when consumers were given one of their own (default: STREAM:dead, per partition)")
}

// selectionFlags binds the flags that select dead letters.
func selectionFlags(fs *flag.FlagSet, o *options) {
	fs.Var(&o.ids, "id", "select the dead letter with this `ID` (repeatable, or comma-separated)")
	fs.StringVar(&o.reason, "reason", "", "select one `REASON`: decode, max_deliveries, handler, …")
	fs.StringVar(&o.group, "group", "", "select what one consumer `GROUP` dead-lettered")
	fs.Var(&o.since, "since", "select entries dead-lettered at or after `TIME`: RFC 3339, YYYY-MM-DD, or a duration ago (90m, 2h, 3d)")
	fs.Var(&o.until, "until", "select entries dead-lettered before `TIME` (as for --since)")
	fs.StringVar(&o.errorContains, "error", "", "select entries whose error contains `TEXT` (ignoring case)")
}

// filter returns the ops.Filter of the selection flags.
func (o *options) filter(now time.Time) ops.Filter {
	f := ops.Filter{All: o.all, Reason: o.reason, Group: o.group, ErrorContains: o.errorContains,
		Since: o.since.at(now), Until: o.until.at(now)}
	for _, s := range o.ids {
		for _, id := range strings.Split(s, ",") {
			if id = strings.TrimSpace(id); id != "" {
				f.IDs = append(f.IDs, id)
			}
		}
	}
	return f
}

// target resolves --stream (and --dead-letter-stream).
func (a *app) target(ctx context.Context, x *ops.Ops, o *options) (ops.Target, error) {
	if o.stream == "" {
		return ops.Target{}, usagef("--stream is required: name a stream, or a partitioned stream (list them with: safesync streams)")
	}
	t, err := x.Resolve(ctx, o.stream)
	if err != nil {
		if o.deadStream == "" || !errors.Is(err, ops.ErrStreamNotFound) {
			return ops.Target{}, err
		}
		t = ops.Stream(o.stream)
	}
	if o.deadStream != "" {
		t.DeadLetterStreams = []string{o.deadStream}
	}
	return t, nil
}

// usage prints the top-level help.
func (a *app) usage(w io.Writer) {
	fmt.Fprint(w, `safesync inspects and repairs the Redis side of a safesync deployment.

Usage:
  safesync [--redis ADDR]... [--json] COMMAND [flags]

Commands:
`)
	for _, c := range ordered() {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run "safesync COMMAND -h" for a command's flags and an example.

Redis is named by --redis HOST:PORT (repeat it, or separate addresses with
commas, for a cluster; a redis:// or rediss:// URL carries a password and
TLS), else by $%s, else %s.

Exit codes: 0 done; 1 failed (a replay or purge may be part done: running
it again is safe); 2 bad usage, or confirmation or a selection needed;
3 no such stream, group or dead letter; 4 Redis unreachable; 130 interrupted.
`, envRedisAddr, defaultRedisAddr)
}

// deadUsage prints the help of the dead command family.
func (a *app) deadUsage(w io.Writer) {
	fmt.Fprint(w, "Usage:\n  safesync dead list|show|replay|purge --stream STREAM [flags]\n\nCommands:\n")
	for _, c := range ordered() {
		if strings.HasPrefix(c.name, "dead ") {
			fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprint(w, "\nRun \"safesync dead COMMAND -h\" for a command's flags and an example.\n")
}

// commandUsage prints one command's help: synopsis, description,
// example and flags.
func (a *app) commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage:\n  %s\n\n%s\n\nExample:\n%s\n\nFlags:\n", c.synopsis, strings.TrimSpace(c.about), indent(strings.TrimSpace(c.example), "  "))
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

func indent(s, prefix string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n")
}

// defaultReadTimeout is the --timeout of the commands that only read.
const defaultReadTimeout = 30 * time.Second
