package ops

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// StreamInfo describes a stream, or a partitioned stream as a whole (then
// Partitions describes each partition, and the rest sums them up).
type StreamInfo struct {
	// Name is the stream's key, or the partitioned stream's logical name.
	Name string `json:"name"`
	// Exists is false when no stream key of the Target exists (the
	// dead-letter streams may).
	Exists bool `json:"exists"`
	// Length is the number of entries (XLEN), summed over partitions.
	Length int64 `json:"length"`
	// FirstID and LastID are the ids of the first and last entries; empty
	// for a partitioned stream as a whole and for an empty stream.
	FirstID string `json:"first_id,omitempty"`
	LastID  string `json:"last_id,omitempty"`
	// Groups are the consumer groups, by name; for a partitioned stream
	// each group sums up its state on every partition.
	Groups []GroupInfo `json:"groups"`
	// DeadLetters is the number of entries of the dead-letter streams.
	DeadLetters int64 `json:"dead_letters"`
	// DeadLetterStreams are the dead-letter streams' keys.
	DeadLetterStreams []string `json:"dead_letter_streams"`
	// DeadLettersByGroupPartial is true when the dead-letter streams hold
	// more than Config.MaxExamine entries: then GroupInfo.DeadLetters
	// counts only the oldest of them.
	DeadLettersByGroupPartial bool `json:"dead_letters_by_group_partial,omitempty"`
	// Partitions describes each partition of a partitioned stream.
	Partitions []StreamInfo `json:"partitions,omitempty"`
}

// GroupInfo describes a consumer group of a stream.
type GroupInfo struct {
	Name string `json:"name"`
	// Consumers are the group's consumers by name, with their pending
	// entries and idle time.
	Consumers []ConsumerInfo `json:"consumers"`
	// Pending is the number of entries delivered and not acknowledged.
	Pending int64 `json:"pending"`
	// Lag is the number of entries not yet delivered to the group. Redis
	// 7 reports it; where it does not (Redis 6.2, or after deletions) the
	// entries after LastDeliveredID are counted, up to Config.MaxExamine:
	// LagCounted says so, and LagAtLeast that the count stopped there.
	Lag        int64 `json:"lag"`
	LagCounted bool  `json:"lag_counted,omitempty"`
	LagAtLeast bool  `json:"lag_at_least,omitempty"`
	// LastDeliveredID is the id of the last entry delivered to the group
	// (empty for a partitioned stream as a whole).
	LastDeliveredID string `json:"last_delivered_id,omitempty"`
	// EntriesRead is the number of entries delivered to the group, as
	// Redis 7 reports it (entries-read), summed over partitions;
	// EntriesReadReported is false where Redis did not report it (Redis
	// 6.2, or on any partition of a partitioned stream).
	EntriesRead         int64 `json:"entries_read,omitempty"`
	EntriesReadReported bool  `json:"entries_read_reported,omitempty"`
	// OldestPendingID is the pending entry with the oldest id, in
	// OldestPendingStream, and OldestPendingAge the time since that id was
	// generated: how long the oldest unfinished entry has been in the
	// stream. (The oldest_pending_age_seconds metric reports the idle time
	// since its last delivery instead.)
	OldestPendingID     string        `json:"oldest_pending_id,omitempty"`
	OldestPendingStream string        `json:"oldest_pending_stream,omitempty"`
	OldestPendingAge    time.Duration `json:"oldest_pending_age_ns"`
	// DeadLetters is the number of entries this group moved to the
	// dead-letter streams (see StreamInfo.DeadLettersByGroupPartial).
	DeadLetters int64 `json:"dead_letters"`
}

// ConsumerInfo describes a consumer of a group.
type ConsumerInfo struct {
	Name string `json:"name"`
	// Pending is the number of entries delivered to it and not
	// acknowledged.
	Pending int64 `json:"pending"`
	// Idle is the time since it last read or claimed (the least over
	// partitions).
	Idle time.Duration `json:"idle_ns"`
}

// Inspect describes t's streams: length, first and last ids, groups with
// their consumers, pending entries, lag and oldest pending entry, and the
// dead letters, counted per group. It reads only. Its cost is a few
// pipelined round trips for any number of partitions, plus reading up to
// Config.MaxExamine entries for each lag Redis does not report and for the
// dead letters per group. A Target whose keys do not exist is described as
// empty, with Exists false.
func (o *Ops) Inspect(ctx context.Context, t Target) (StreamInfo, error) {
	return o.inspect(ctx, t, true)
}

// keyState is what the first round trip learns of one stream key.
type keyState struct {
	info   StreamInfo
	groups []rawGroup
}

// rawGroup is one group of XINFO GROUPS.
type rawGroup struct {
	name, lastDelivered string
	lag, read           int64
	lagReported         bool
	readReported        bool
}

func (o *Ops) inspect(ctx context.Context, t Target, deadByGroup bool) (StreamInfo, error) {
	if err := t.check(true); err != nil {
		return StreamInfo{}, err
	}
	c := o.client
	var cmds rueidis.Commands
	for _, k := range t.Streams {
		cmds = append(cmds,
			c.B().Xlen().Key(k).Build(),
			c.B().Xrange().Key(k).Start("-").End("+").Count(1).Build(),
			c.B().Xrevrange().Key(k).End("+").Start("-").Count(1).Build(),
			c.B().XinfoGroups().Key(k).Build())
	}
	for _, d := range t.DeadLetterStreams {
		cmds = append(cmds, c.B().Xlen().Key(d).Build())
	}
	res := c.DoMulti(ctx, cmds...)
	keys := make([]keyState, len(t.Streams))
	for i, k := range t.Streams {
		st, err := parseKeyState(k, res[4*i:4*i+4])
		if err != nil {
			return StreamInfo{}, err
		}
		keys[i] = st
	}
	out := StreamInfo{Name: t.Name, DeadLetterStreams: t.DeadLetterStreams, Groups: []GroupInfo{}}
	paired := len(t.Streams) > 1 && len(t.DeadLetterStreams) == len(t.Streams)
	for i, d := range t.DeadLetterStreams {
		n, err := res[4*len(t.Streams)+i].AsInt64()
		if err != nil {
			return StreamInfo{}, keyErr("XLEN", d, err)
		}
		out.DeadLetters += n
		if paired { // one dead-letter stream per partition, as Partitioned makes them
			keys[i].info.DeadLetters, keys[i].info.DeadLetterStreams = n, []string{d}
		}
	}

	if err := o.describeGroups(ctx, keys); err != nil {
		return StreamInfo{}, err
	}
	var deadCounts map[string]int64
	if deadByGroup {
		var err error
		deadCounts, out.DeadLettersByGroupPartial, err = o.countDeadByGroup(ctx, t.DeadLetterStreams)
		if err != nil {
			return StreamInfo{}, err
		}
	}

	if len(keys) == 1 {
		k := keys[0].info
		k.Name, k.DeadLetters, k.DeadLetterStreams = t.Name, out.DeadLetters, out.DeadLetterStreams
		k.DeadLettersByGroupPartial = out.DeadLettersByGroupPartial
		for i := range k.Groups {
			k.Groups[i].DeadLetters = deadCounts[k.Groups[i].Name]
		}
		return k, nil
	}
	byName := map[string]*GroupInfo{}
	for _, ks := range keys {
		p := ks.info
		out.Exists = out.Exists || p.Exists
		out.Length += p.Length
		for _, g := range p.Groups {
			agg := byName[g.Name]
			if agg == nil {
				agg = &GroupInfo{Name: g.Name, DeadLetters: deadCounts[g.Name], EntriesReadReported: true}
				byName[g.Name] = agg
			}
			mergeGroup(agg, g)
		}
		out.Partitions = append(out.Partitions, p)
	}
	for _, g := range byName {
		out.Groups = append(out.Groups, *g)
	}
	sort.Slice(out.Groups, func(i, j int) bool { return out.Groups[i].Name < out.Groups[j].Name })
	return out, nil
}

// parseKeyState reads XLEN, XRANGE COUNT 1, XREVRANGE COUNT 1 and XINFO
// GROUPS of key. A missing key is an empty stream without groups.
func parseKeyState(key string, res []rueidis.RedisResult) (keyState, error) {
	st := keyState{info: StreamInfo{Name: key, Groups: []GroupInfo{}}}
	n, err := res[0].AsInt64()
	if err != nil {
		return st, keyErr("XLEN", key, err)
	}
	st.info.Length = n
	for j, id := range []*string{&st.info.FirstID, &st.info.LastID} {
		xs, err := res[1+j].AsXRange()
		if err != nil {
			return st, keyErr("XRANGE", key, err)
		}
		if len(xs) > 0 {
			*id = xs[0].ID
		}
	}
	groups, err := res[3].ToArray()
	if re, ok := rueidis.IsRedisErr(err); ok && strings.Contains(re.Error(), "no such key") {
		return st, nil
	}
	if err != nil {
		return st, keyErr("XINFO GROUPS", key, err)
	}
	st.info.Exists = true
	for _, g := range groups {
		m, err := g.AsMap()
		if err != nil {
			return st, keyErr("XINFO GROUPS", key, err)
		}
		rg := rawGroup{name: mapString(m, "name"), lastDelivered: mapString(m, "last-delivered-id")}
		read, hasRead := m["entries-read"]
		lag, hasLag := m["lag"]
		if hasRead && !read.IsNil() {
			rg.read, err = read.AsInt64()
			rg.readReported = err == nil
		}
		if hasRead && hasLag && !read.IsNil() && !lag.IsNil() {
			rg.lag, err = lag.AsInt64()
			rg.lagReported = err == nil
		}
		st.groups = append(st.groups, rg)
	}
	return st, nil
}

// describeGroups fills in each key's groups: consumers and pending
// summary in one pipelined round trip, then the lags Redis did not report.
func (o *Ops) describeGroups(ctx context.Context, keys []keyState) error {
	c := o.client
	var cmds rueidis.Commands
	for _, ks := range keys {
		for _, g := range ks.groups {
			cmds = append(cmds,
				c.B().XinfoConsumers().Key(ks.info.Name).Group(g.name).Build(),
				c.B().Xpending().Key(ks.info.Name).Group(g.name).Build())
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	res := c.DoMulti(ctx, cmds...)
	now := o.cfg.Now()
	i := 0
	for ki := range keys {
		ks := &keys[ki]
		key := ks.info.Name
		for _, rg := range ks.groups {
			g := GroupInfo{Name: rg.name, LastDeliveredID: rg.lastDelivered, Consumers: []ConsumerInfo{},
				EntriesRead: rg.read, EntriesReadReported: rg.readReported}
			consumers, err := res[i].ToArray()
			if err != nil {
				return keyErr("XINFO CONSUMERS", key, err)
			}
			for _, cm := range consumers {
				m, err := cm.AsMap()
				if err != nil {
					return keyErr("XINFO CONSUMERS", key, err)
				}
				var ci ConsumerInfo
				ci.Name = mapString(m, "name")
				ci.Pending = mapInt(m, "pending")
				idle := mapInt(m, "idle")
				ci.Idle = time.Duration(max(idle, 0)) * time.Millisecond
				g.Consumers = append(g.Consumers, ci)
			}
			sort.Slice(g.Consumers, func(a, b int) bool { return g.Consumers[a].Name < g.Consumers[b].Name })
			summary, err := res[i+1].ToArray()
			if err != nil || len(summary) < 2 {
				return keyErr("XPENDING", key, err)
			}
			g.Pending, _ = summary[0].AsInt64()
			if g.Pending > 0 {
				g.OldestPendingID, _ = summary[1].ToString()
				g.OldestPendingStream = key
				g.OldestPendingAge = age(now, g.OldestPendingID)
			}
			switch {
			case rg.lagReported:
				g.Lag = rg.lag
			default:
				g.Lag, g.LagAtLeast, err = o.countAfter(ctx, key, rg.lastDelivered, ks.info.LastID)
				if err != nil {
					return err
				}
				g.LagCounted = true
			}
			ks.info.Groups = append(ks.info.Groups, g)
			i += 2
		}
		sort.Slice(ks.info.Groups, func(a, b int) bool { return ks.info.Groups[a].Name < ks.info.Groups[b].Name })
	}
	return nil
}

// countAfter counts the entries of key after the id after, up to
// MaxExamine (atLeast then says the count stopped there). last is the
// stream's last id, which spares the reads when nothing follows after.
func (o *Ops) countAfter(ctx context.Context, key, after, last string) (n int64, atLeast bool, err error) {
	a, okA := parseID(after)
	l, okL := parseID(last)
	if !okL || okA && !a.Less(l) {
		return 0, false, nil
	}
	start := "-"
	if okA {
		next, ok := a.Next()
		if !ok {
			return 0, false, nil
		}
		start = next.String()
	}
	for {
		page := min(1000, int64(o.cfg.MaxExamine)-n)
		if page <= 0 {
			return n, true, nil
		}
		xs, err := o.client.Do(ctx, o.client.B().Xrange().Key(key).Start(start).End("+").Count(page).Build()).AsXRange()
		if err != nil {
			return 0, false, keyErr("XRANGE", key, err)
		}
		n += int64(len(xs))
		if int64(len(xs)) < page {
			return n, false, nil
		}
		id, _ := parseID(xs[len(xs)-1].ID)
		next, ok := id.Next()
		if !ok {
			return n, false, nil
		}
		start = next.String()
	}
}

// countDeadByGroup counts the entries of the dead-letter streams by the
// group that moved them, reading at most MaxExamine entries.
func (o *Ops) countDeadByGroup(ctx context.Context, dead []string) (map[string]int64, bool, error) {
	counts := map[string]int64{}
	r := o.newMergedRange(dead, nil, noEnd)
	for examined := 0; ; examined++ {
		e, ok, err := r.next(ctx)
		if err != nil || !ok {
			return counts, false, err
		}
		if examined == o.cfg.MaxExamine {
			return counts, true, nil
		}
		counts[e.v.FieldValues[safesync.DeadLetterFieldGroup]]++
	}
}

// mergeGroup adds one partition's state of a group to its sum.
func mergeGroup(agg *GroupInfo, g GroupInfo) {
	agg.Pending += g.Pending
	agg.Lag += g.Lag
	agg.EntriesRead += g.EntriesRead
	agg.EntriesReadReported = agg.EntriesReadReported && g.EntriesReadReported
	agg.LagCounted = agg.LagCounted || g.LagCounted
	agg.LagAtLeast = agg.LagAtLeast || g.LagAtLeast
	if g.OldestPendingID != "" && (agg.OldestPendingID == "" || g.OldestPendingAge > agg.OldestPendingAge) {
		agg.OldestPendingID, agg.OldestPendingStream, agg.OldestPendingAge = g.OldestPendingID, g.OldestPendingStream, g.OldestPendingAge
	}
	for _, c := range g.Consumers {
		i := sort.Search(len(agg.Consumers), func(i int) bool { return agg.Consumers[i].Name >= c.Name })
		if i < len(agg.Consumers) && agg.Consumers[i].Name == c.Name {
			agg.Consumers[i].Pending += c.Pending
			agg.Consumers[i].Idle = min(agg.Consumers[i].Idle, c.Idle)
			continue
		}
		agg.Consumers = append(agg.Consumers, ConsumerInfo{})
		copy(agg.Consumers[i+1:], agg.Consumers[i:])
		agg.Consumers[i] = c
	}
	if agg.Consumers == nil {
		agg.Consumers = []ConsumerInfo{}
	}
}

// keyErr wraps a failed command on key, as ErrWrongType when the key holds
// something else.
func keyErr(cmd, key string, err error) error {
	if err == nil {
		err = fmt.Errorf("unexpected reply")
	}
	if isRedisErr(err, "WRONGTYPE") {
		return fmt.Errorf("%w: %s %s: %v", ErrWrongType, cmd, key, err)
	}
	return fmt.Errorf("safesync/ops: %s %s: %w", cmd, key, err)
}

// mapString returns the string at k of a map reply, or "".
func mapString(m map[string]rueidis.RedisMessage, k string) string {
	v, ok := m[k]
	if !ok {
		return ""
	}
	s, _ := v.ToString()
	return s
}

// mapInt returns the integer at k of a map reply, or 0.
func mapInt(m map[string]rueidis.RedisMessage, k string) int64 {
	v, ok := m[k]
	if !ok {
		return 0
	}
	n, _ := v.AsInt64()
	return n
}
