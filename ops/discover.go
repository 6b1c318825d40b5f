package ops

import (
	"context"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// StreamsQuery selects a page of Streams.
type StreamsQuery struct {
	// Match keeps the streams whose name matches this shell pattern (see
	// path.Match: "orders*", "*.events"); empty keeps all.
	Match string `json:"match,omitempty"`
	// After is the Next of the previous page; empty starts at the first
	// name.
	After string `json:"after,omitempty"`
	// Limit is the page size (DefaultLimit; at most MaxLimit).
	Limit int `json:"limit,omitempty"`
}

// StreamSummary is one stream, or one partitioned stream, in Streams.
type StreamSummary struct {
	// Name is the stream's key, or the partitioned stream's logical name.
	Name string `json:"name"`
	// Partitions is the number of partitions (the highest found plus
	// one); 0 for a plain stream.
	Partitions int `json:"partitions,omitempty"`
	// Length is the number of entries, over all partitions.
	Length int64 `json:"length"`
	// Groups is the number of consumer groups.
	Groups int `json:"groups"`
	// Lag is the lag of the group furthest behind (see GroupInfo.Lag).
	Lag        int64 `json:"lag"`
	LagAtLeast bool  `json:"lag_at_least,omitempty"`
	// Pending is the number of pending entries, over all groups.
	Pending int64 `json:"pending"`
	// OldestPendingAge is the greatest GroupInfo.OldestPendingAge.
	OldestPendingAge time.Duration `json:"oldest_pending_age_ns"`
	// DeadLetters is the number of entries of its dead-letter streams.
	DeadLetters int64 `json:"dead_letters"`
	// Handled is the number of entries its groups are done with
	// (acknowledged, which includes those moved to a dead-letter stream),
	// summed over groups: for each group, the entries delivered to it less
	// those pending, where Redis reports the entries delivered
	// (GroupInfo.EntriesRead), else the stream's length less the group's
	// lag and pending entries (which trimming the stream lowers). Its growth
	// between two calls is the stream's throughput.
	Handled int64 `json:"handled"`
	// Target is what to pass to the other methods for this stream.
	Target Target `json:"target"`
}

// StreamsPage is one page of streams, by name.
type StreamsPage struct {
	Streams []StreamSummary `json:"streams"`
	// Next is the cursor of the next page, empty after the last.
	Next string `json:"next,omitempty"`
}

// Streams finds the streams of the database and sums each up, by name, a
// page at a time. Keys are found with SCAN … TYPE stream on every master
// (on a cluster, every master's share of the slots), then grouped:
//
//   - the partitions of a partitioned stream (keys "name:{i.k}", see
//     safesync.Partitions) make one entry, named by the logical name;
//   - a dead-letter stream ("key:dead", or a stream whose first entry
//     carries the dead-letter fields, when a consumer was given a
//     StreamConfig.DeadLetterStream of its own) counts with the stream its
//     entries came from, and makes an entry of its own only when that
//     stream does not exist;
//   - every other stream is an entry of its own.
//
// It reads only. Its cost is a SCAN of the whole keyspace (the server
// filters by type, but walks every key), plus an inspection of each
// stream of the page (see Inspect; dead letters are not counted per
// group).
func (o *Ops) Streams(ctx context.Context, q StreamsQuery) (StreamsPage, error) {
	if q.Match != "" {
		if _, err := path.Match(q.Match, ""); err != nil {
			return StreamsPage{}, fmt.Errorf("safesync/ops: StreamsQuery.Match %q: %w", q.Match, err)
		}
	}
	targets, err := o.discover(ctx)
	if err != nil {
		return StreamsPage{}, err
	}
	n := limit(q.Limit)
	page := StreamsPage{Streams: []StreamSummary{}}
	for _, t := range targets {
		if q.After != "" && t.Name <= q.After {
			continue
		}
		if ok, _ := path.Match(q.Match, t.Name); q.Match != "" && !ok {
			continue
		}
		if len(page.Streams) == n {
			page.Next = page.Streams[n-1].Name
			break
		}
		info, err := o.inspect(ctx, t, false)
		if err != nil {
			return StreamsPage{}, err
		}
		page.Streams = append(page.Streams, summarize(t, info))
	}
	return page, nil
}

func summarize(t Target, info StreamInfo) StreamSummary {
	s := StreamSummary{Name: t.Name, Length: info.Length, Groups: len(info.Groups), DeadLetters: info.DeadLetters, Target: t}
	if t.Partitioned() {
		s.Partitions = len(t.Streams)
	}
	for _, g := range info.Groups {
		s.Pending += g.Pending
		if g.Lag > s.Lag || g.Lag == s.Lag && g.LagAtLeast {
			s.Lag, s.LagAtLeast = g.Lag, g.LagAtLeast
		}
		s.OldestPendingAge = max(s.OldestPendingAge, g.OldestPendingAge)
		if g.EntriesReadReported {
			s.Handled += max(g.EntriesRead-g.Pending, 0)
		} else {
			s.Handled += max(info.Length-g.Lag-g.Pending, 0)
		}
	}
	return s
}

// discover finds every stream key and groups them into Targets, by name.
func (o *Ops) discover(ctx context.Context) ([]Target, error) {
	keys, err := o.scanStreams(ctx, "*")
	if err != nil {
		return nil, err
	}
	sort.Strings(keys)
	exists := map[string]bool{}
	for _, k := range keys {
		exists[k] = true
	}
	type logical struct {
		highest int
		dead    []string // dead-letter streams of other names than the default
	}
	parts := map[string]*logical{}
	plain := map[string][]string{} // stream key → its dead-letter streams found
	var unknown []string           // keys that may be custom dead-letter streams
	var deadKeys []string
	for _, k := range keys {
		if pk, ok := parsePartitionKey(k); ok {
			l := parts[pk.name]
			if l == nil {
				l = &logical{highest: -1}
				parts[pk.name] = l
			}
			l.highest = max(l.highest, pk.index)
			continue
		}
		if _, ok := strings.CutSuffix(k, safesync.DeadLetterSuffix); ok {
			deadKeys = append(deadKeys, k)
			continue
		}
		unknown = append(unknown, k)
	}
	// A stream whose first entry carries the dead-letter fields is one.
	sources, err := o.deadLetterSources(ctx, unknown)
	if err != nil {
		return nil, err
	}
	for _, k := range unknown {
		if _, ok := sources[k]; !ok {
			plain[k] = nil
		}
	}
	attach := func(dead, src string) bool {
		if _, ok := plain[src]; ok {
			plain[src] = append(plain[src], dead)
			return true
		}
		if pk, ok := parsePartitionKey(src); ok && parts[pk.name] != nil {
			if dead != src+safesync.DeadLetterSuffix {
				parts[pk.name].dead = append(parts[pk.name].dead, dead)
			}
			return true
		}
		return false
	}
	for _, d := range deadKeys {
		src := strings.TrimSuffix(d, safesync.DeadLetterSuffix)
		if !attach(d, src) {
			plain[src] = append(plain[src], d) // its source is gone: list it under its name
		}
	}
	for _, k := range unknown {
		if src, ok := sources[k]; ok && !attach(k, src) {
			plain[k] = nil // an orphan: listed as the stream it is
		}
	}

	var out []Target
	for k, dead := range plain {
		t := Target{Name: k, Streams: []string{k}, DeadLetterStreams: dead}
		if len(dead) == 0 {
			t = Stream(k)
		}
		out = append(out, t)
	}
	for name, l := range parts {
		p, err := safesync.NewPartitions(name, l.highest+1)
		if err != nil {
			return nil, err
		}
		t := Partitioned(p)
		for _, d := range l.dead {
			if !contains(t.DeadLetterStreams, d) {
				t.DeadLetterStreams = append(t.DeadLetterStreams, d)
			}
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// deadLetterSources reads the first entry of each key, and returns the
// keys whose first entry is a dead letter, with the stream it came from.
func (o *Ops) deadLetterSources(ctx context.Context, keys []string) (map[string]string, error) {
	out := map[string]string{}
	if len(keys) == 0 {
		return out, nil
	}
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = o.client.B().Xrange().Key(k).Start("-").End("+").Count(1).Build()
	}
	for i, r := range o.client.DoMulti(ctx, cmds...) {
		xs, err := r.AsXRange()
		if err != nil {
			return nil, keyErr("XRANGE", keys[i], err)
		}
		if len(xs) == 0 {
			continue
		}
		f := xs[0].FieldValues
		src, ok := f[safesync.DeadLetterFieldStream]
		_, hasGroup := f[safesync.DeadLetterFieldGroup]
		_, hasReason := f[safesync.DeadLetterFieldReason]
		if ok && hasGroup && hasReason && src != keys[i] {
			out[keys[i]] = src
		}
	}
	return out, nil
}

// partitionKey is a key recognised as partition index of the partitioned
// stream name, or its default dead-letter stream.
type partitionKey struct {
	name  string
	index int
	dead  bool
}

var partitionKeyPattern = regexp.MustCompile(`^(.+):\{([0-9]+)\.[0-9]+\}(` + regexp.QuoteMeta(safesync.DeadLetterSuffix) + `)?$`)

// parsePartitionKey recognises the key of a partition (or of its default
// dead-letter stream): "name:{i.k}" where "name:{i.k}" is exactly what
// safesync.Partitions names partition i of name.
func parsePartitionKey(key string) (partitionKey, bool) {
	m := partitionKeyPattern.FindStringSubmatch(key)
	if m == nil || strings.ContainsAny(m[1], "{}") {
		return partitionKey{}, false
	}
	i, err := strconv.Atoi(m[2])
	if err != nil || i >= safesync.MaxPartitions {
		return partitionKey{}, false
	}
	p, err := safesync.NewPartitions(m[1], i+1)
	if err != nil || p.Stream(i)+m[3] != key {
		return partitionKey{}, false
	}
	return partitionKey{name: m[1], index: i, dead: m[3] != ""}, true
}

// scanStreams returns the stream keys matching the SCAN pattern match, on
// every master.
func (o *Ops) scanStreams(ctx context.Context, match string) ([]string, error) {
	nodes, err := o.masters(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for addr, node := range nodes {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(match).Count(int64(o.cfg.ScanCount)).Type("stream").Build()).AsScanEntry()
			if err != nil {
				return nil, fmt.Errorf("safesync/ops: SCAN on %s: %w", addr, err)
			}
			for _, k := range e.Elements {
				if !seen[k] {
					seen[k] = true
					out = append(out, k)
				}
			}
			if e.Cursor == 0 {
				break
			}
			cursor = e.Cursor
		}
	}
	return out, nil
}

// masters returns the clients of the servers whose keys make the
// database: the client itself, or on a cluster every master (ROLE).
func (o *Ops) masters(ctx context.Context) (map[string]rueidis.Client, error) {
	if o.client.Mode() != rueidis.ClientModeCluster {
		return map[string]rueidis.Client{"the server": o.client}, nil
	}
	out := map[string]rueidis.Client{}
	for addr, node := range o.client.Nodes() {
		role, err := node.Do(ctx, node.B().Role().Build()).ToArray()
		if re, ok := rueidis.IsRedisErr(err); ok && strings.Contains(strings.ToLower(re.Error()), "unknown command") {
			out[addr] = node // a server without ROLE (an embedded one) has no replicas either
			continue
		}
		if err == nil && len(role) == 0 {
			err = fmt.Errorf("empty reply")
		}
		if err != nil {
			return nil, fmt.Errorf("safesync/ops: ROLE on %s: %w", addr, err)
		}
		if r, _ := role[0].ToString(); r == "master" {
			out[addr] = node
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("safesync/ops: the cluster client knows no master")
	}
	return out, nil
}
