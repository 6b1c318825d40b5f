package ops

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"
)

// PendingQuery selects a page of a group's pending entries.
type PendingQuery struct {
	// Group is the consumer group. Required.
	Group string `json:"group"`
	// Consumer, when set, keeps only the entries delivered to it.
	Consumer string `json:"consumer,omitempty"`
	// MinIdle, when set, keeps only entries idle at least that long
	// (whole milliseconds).
	MinIdle time.Duration `json:"min_idle_ns,omitempty"`
	// After is the Next of the previous page; empty starts at the oldest.
	After string `json:"after,omitempty"`
	// Limit is the page size (DefaultLimit; at most MaxLimit).
	Limit int `json:"limit,omitempty"`
}

// PendingEntry is an entry delivered to a consumer and not acknowledged.
type PendingEntry struct {
	// Stream is the stream key (a partition's, for a partitioned stream).
	Stream   string `json:"stream"`
	ID       string `json:"id"`
	Consumer string `json:"consumer"`
	// Idle is the time since it was last delivered.
	Idle time.Duration `json:"idle_ns"`
	// Deliveries is how many times it was delivered.
	Deliveries int64 `json:"deliveries"`
	// Age is the time since its id was generated.
	Age time.Duration `json:"age_ns"`
}

// PendingPage is one page of pending entries, oldest id first.
type PendingPage struct {
	Entries []PendingEntry `json:"entries"`
	// Next is the cursor of the next page, empty after the last.
	Next string `json:"next,omitempty"`
}

// Pending lists the group's pending entries on every stream of t, oldest
// id first, a page at a time (XPENDING, extended form). It reads only. It
// returns an error matching ErrGroupNotFound when no stream of t has the
// group.
func (o *Ops) Pending(ctx context.Context, t Target, q PendingQuery) (PendingPage, error) {
	if err := t.check(true); err != nil {
		return PendingPage{}, err
	}
	if q.Group == "" {
		return PendingPage{}, fmt.Errorf("safesync/ops: PendingQuery.Group is empty")
	}
	cur, err := parseCursor(q.After)
	if err != nil {
		return PendingPage{}, err
	}
	n := limit(q.Limit)
	now := o.cfg.Now()
	missing := map[string]bool{}
	m := newMerged(t.Streams, cur, int64(min(n+1, readBatch)),
		func(p PendingEntry) string { return p.ID },
		func(ctx context.Context, key, start string, count int64) ([]PendingEntry, error) {
			rows, err := o.pendingRows(ctx, key, start, count, q)
			if isRedisErr(err, "NOGROUP") {
				missing[key] = true
				return nil, nil
			}
			return rows, err
		})
	page := PendingPage{Entries: []PendingEntry{}}
	for {
		it, ok, err := m.next(ctx)
		if err != nil {
			return PendingPage{}, err
		}
		if !ok {
			break
		}
		if len(page.Entries) == n {
			last := page.Entries[n-1]
			id, _ := parseID(last.ID)
			page.Next = position{id: id, key: last.Stream}.String()
			break
		}
		it.v.Age = age(now, it.v.ID)
		page.Entries = append(page.Entries, it.v)
	}
	if len(missing) == len(t.Streams) {
		return PendingPage{}, fmt.Errorf("%w: %q has no group %q (see the groups with `safesync streams --stream %s`)",
			ErrGroupNotFound, t.Name, q.Group, t.Name)
	}
	return page, nil
}

// pendingRows reads up to count pending entries of key from start on.
func (o *Ops) pendingRows(ctx context.Context, key, start string, count int64, q PendingQuery) ([]PendingEntry, error) {
	b := o.client.B().Xpending().Key(key).Group(q.Group)
	var cmd rueidis.Completed
	if ms := q.MinIdle.Milliseconds(); ms > 0 {
		r := b.Idle(ms).Start(start).End("+").Count(count)
		if q.Consumer != "" {
			cmd = r.Consumer(q.Consumer).Build()
		} else {
			cmd = r.Build()
		}
	} else {
		r := b.Start(start).End("+").Count(count)
		if q.Consumer != "" {
			cmd = r.Consumer(q.Consumer).Build()
		} else {
			cmd = r.Build()
		}
	}
	rows, err := o.client.Do(ctx, cmd).ToArray()
	if err != nil {
		if isRedisErr(err, "NOGROUP") {
			return nil, err
		}
		return nil, keyErr("XPENDING", key, err)
	}
	out := make([]PendingEntry, 0, len(rows))
	for _, row := range rows {
		f, err := row.ToArray()
		if err != nil || len(f) != 4 {
			return nil, keyErr("XPENDING", key, fmt.Errorf("unexpected row %v", row))
		}
		p := PendingEntry{Stream: key}
		p.ID, _ = f[0].ToString()
		p.Consumer, _ = f[1].ToString()
		ms, _ := f[2].AsInt64()
		p.Idle = time.Duration(ms) * time.Millisecond
		p.Deliveries, _ = f[3].AsInt64()
		out = append(out, p)
	}
	return out, nil
}
