package safesync

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// streamOutcome is what became of one stream's rows of a batch.
type streamOutcome struct {
	stream    string
	rows      []relayRow // in id order
	ids       []string   // the entries' ids, when added
	err       error
	decodeErr bool // err is a row that cannot be made into an entry

	first, n int // where the stream's commands are in its pipeline
}

// relayCommandTimeout bounds one batch's round trip to Redis.
const relayCommandTimeout = 30 * time.Second

// maxParallelSlots bounds the pipelines a batch sends at once on Redis
// Cluster, one per slot.
const maxParallelSlots = 16

// addToStreams adds rows (in id order) to their streams. A stream with one
// row gets an XADD; a stream with several gets its XADDs inside MULTI and
// EXEC, so that it gets all of them, in order, or none (Redis runs a
// transaction without interleaving other commands, and refuses the whole
// of it when it rejects a command as it is queued, under maxmemory for
// one). Everything goes in one pipelined round trip; on Redis Cluster one
// per slot, sent in parallel, since a transaction stays within a slot. It
// records the relay latency of each row added; readAt is when the rows
// were read.
func (r *Relay) addToStreams(ctx context.Context, rows []relayRow, readAt time.Time) []*streamOutcome {
	var outcomes []*streamOutcome
	byStream := map[string]*streamOutcome{}
	for _, row := range rows {
		o := byStream[row.stream]
		if o == nil {
			o = &streamOutcome{stream: row.stream}
			byStream[row.stream] = o
			outcomes = append(outcomes, o)
		}
		o.rows = append(o.rows, row)
	}

	// One pipeline, or one per slot on a cluster.
	var pipelines []*relayPipeline
	bySlot := map[uint16]*relayPipeline{}
	cluster := r.client.Mode() == rueidis.ClientModeCluster
	for _, o := range outcomes {
		if o.stream == "" {
			o.err, o.decodeErr = fmt.Errorf("row %d names no stream", o.rows[0].id), true
			continue
		}
		var slot uint16
		if cluster {
			slot = KeySlot(o.stream)
		}
		p := bySlot[slot]
		if p == nil {
			p = &relayPipeline{}
			bySlot[slot] = p
			pipelines = append(pipelines, p)
		}
		if err := r.appendCommands(p, o); err != nil {
			o.err, o.decodeErr = err, true
		}
	}

	cmdCtx, cancel := context.WithTimeout(ctx, relayCommandTimeout)
	defer cancel()
	if len(pipelines) == 1 {
		pipelines[0].send(cmdCtx, r.client)
	} else {
		var wg sync.WaitGroup
		slots := make(chan struct{}, maxParallelSlots)
		for _, p := range pipelines {
			wg.Add(1)
			slots <- struct{}{}
			go func() {
				defer wg.Done()
				p.send(cmdCtx, r.client)
				<-slots
			}()
		}
		wg.Wait()
	}
	for _, p := range pipelines {
		for _, o := range p.outcomes {
			o.ids, o.err = entryIDs(p.results[o.first:o.first+o.n], len(o.rows))
			if o.err != nil {
				o.err = fmt.Errorf("add %d entries to %q: %w", len(o.rows), o.stream, o.err)
				continue
			}
			for _, row := range o.rows {
				r.metrics.observeLatency(row.age + p.replied.Sub(readAt))
			}
		}
	}
	return outcomes
}

// relayPipeline is the commands of a batch sent in one round trip, and
// their replies.
type relayPipeline struct {
	cmds     rueidis.Commands
	outcomes []*streamOutcome
	results  []rueidis.RedisResult
	replied  time.Time
}

func (p *relayPipeline) send(ctx context.Context, client rueidis.Client) {
	if len(p.cmds) > 0 {
		p.results = client.DoMulti(ctx, p.cmds...)
	}
	p.replied = time.Now()
}

// appendCommands appends to p the commands that add o's rows to o's
// stream: an XADD for one row, MULTI, an XADD per row and EXEC for
// several.
func (r *Relay) appendCommands(p *relayPipeline, o *streamOutcome) error {
	cmds := make(rueidis.Commands, 0, len(o.rows)+2)
	if len(o.rows) > 1 {
		cmds = append(cmds, r.client.B().Multi().Build())
	}
	var pairs []string
	for _, row := range o.rows {
		var err error
		if pairs, err = r.appendEntry(pairs[:0], row); err != nil {
			return err // the commands built so far are dropped unsent
		}
		key := r.client.B().Xadd().Key(o.stream)
		if r.cfg.MaxLen > 0 {
			cmds = append(cmds, withPairs(key.Maxlen().Almost().Threshold(strconv.FormatInt(r.cfg.MaxLen, 10)).Id("*").FieldValue(), pairs))
		} else {
			cmds = append(cmds, withPairs(key.Id("*").FieldValue(), pairs))
		}
	}
	if len(o.rows) > 1 {
		cmds = append(cmds, r.client.B().Exec().Build())
	}
	o.first, o.n = len(p.cmds), len(cmds)
	p.cmds = append(p.cmds, cmds...)
	p.outcomes = append(p.outcomes, o)
	return nil
}

// entryIDs reads the ids of n entries from the replies to an XADD (n = 1)
// or to MULTI, n XADDs and EXEC.
func entryIDs(res []rueidis.RedisResult, n int) ([]string, error) {
	if n == 1 {
		id, err := res[0].ToString()
		if err != nil {
			return nil, err
		}
		return []string{id}, nil
	}
	for _, q := range res[:len(res)-1] { // MULTI's OK and the QUEUEDs
		if err := q.Error(); err != nil {
			return nil, err // the transaction is discarded
		}
	}
	replies, err := res[len(res)-1].ToArray()
	switch {
	case rueidis.IsRedisNil(err):
		return nil, errors.New("the transaction was aborted")
	case err != nil:
		return nil, err
	case len(replies) != n:
		return nil, fmt.Errorf("EXEC returned %d replies, want %d", len(replies), n)
	}
	ids := make([]string, n)
	for i, rep := range replies {
		if ids[i], err = rep.ToString(); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// withPairs appends the fields and values in pairs and builds.
func withPairs[B fieldAdder[B]](b B, pairs []string) rueidis.Completed {
	for i := 0; i < len(pairs); i += 2 {
		b = b.FieldValue(pairs[i], pairs[i+1])
	}
	return b.Build()
}

// appendEntry appends the fields of row's entry to pairs, each name
// followed by its value: the data column as "data", the packed fields
// (in name order), and, unless PlainEntries, the origin fields.
func (r *Relay) appendEntry(pairs []string, row relayRow) ([]string, error) {
	start := len(pairs)
	if row.data.Valid {
		pairs = append(pairs, DataField, row.data.String)
	}
	pairs, err := appendPackedFields(pairs, row.fields)
	if err != nil {
		return nil, fmt.Errorf("row %d: %w", row.id, err)
	}
	if !r.cfg.PlainEntries {
		pairs = append(pairs, OriginFieldStream, r.cfg.Origin, OriginFieldID, originID(row))
	}
	if len(pairs) == start {
		return nil, fmt.Errorf("row %d has no field", row.id)
	}
	return pairs, nil
}

// originID is the origin id of a row's entry: its id and nonce, so that a
// reused id (after TRUNCATE, or a restore) never matches an old record in
// a consumer's exactly-once table.
func originID(row relayRow) string {
	return strconv.FormatInt(row.id, 10) + "." + strconv.FormatInt(row.nonce, 16)
}
