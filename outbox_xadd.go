package safesync

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// relayScript adds several entries to one stream atomically, in order:
// KEYS[1] is the stream, ARGV[1] the approximate MAXLEN ("0" for none),
// then for each entry its field count followed by its fields and values.
// It returns the new entries' ids. Redis runs a script without
// interleaving other commands, so a stream gets all of a batch's entries
// for it, in order, or (when Redis fails before running it) none.
const relayScript = `local maxlen = ARGV[1]
local ids = {}
local i = 2
local n = #ARGV
while i <= n do
  local last = i + 2 * tonumber(ARGV[i])
  if maxlen == '0' then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, last))
  else
    ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, i + 1, last))
  end
  i = last + 1
end
return ids`

// streamOutcome is what became of one stream's rows of a batch.
type streamOutcome struct {
	stream    string
	rows      []relayRow // in id order
	ids       []string   // the entries' ids, when added
	err       error
	decodeErr bool // err is a row that cannot be made into an entry
}

// addToStreams adds rows (in id order) to their streams in one pipelined
// round trip: one command per stream, an XADD for a single row and
// relayScript for several. It records the relay latency of each row added;
// readAt is when the rows were read.
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

	cmds := make(rueidis.Commands, 0, len(outcomes))
	sent := make([]*streamOutcome, 0, len(outcomes))
	for _, o := range outcomes {
		cmd, err := r.addCommand(o)
		if err != nil {
			o.err, o.decodeErr = err, true
			continue
		}
		cmds = append(cmds, cmd)
		sent = append(sent, o)
	}
	if len(cmds) == 0 {
		return outcomes
	}
	cmdCtx, cancel := context.WithTimeout(ctx, relayCommandTimeout)
	defer cancel()
	results := r.client.DoMulti(cmdCtx, cmds...)
	replied := time.Now()
	for i, o := range sent {
		o.ids, o.err = entryIDs(results[i], len(o.rows))
		if o.err != nil {
			o.err = fmt.Errorf("add %d entries to %q: %w", len(o.rows), o.stream, o.err)
			continue
		}
		for _, row := range o.rows {
			r.metrics.observeLatency(row.age + replied.Sub(readAt))
		}
	}
	return outcomes
}

// relayCommandTimeout bounds one batch's round trip to Redis.
const relayCommandTimeout = 30 * time.Second

// addCommand builds the command that adds o's rows to o's stream.
func (r *Relay) addCommand(o *streamOutcome) (rueidis.Completed, error) {
	if o.stream == "" {
		return rueidis.Completed{}, fmt.Errorf("row %d names no stream", o.rows[0].id)
	}
	if len(o.rows) == 1 {
		pairs, err := r.appendEntry(nil, o.rows[0])
		if err != nil {
			return rueidis.Completed{}, err
		}
		key := r.client.B().Xadd().Key(o.stream)
		if r.cfg.MaxLen > 0 {
			return withPairs(key.Maxlen().Almost().Threshold(strconv.FormatInt(r.cfg.MaxLen, 10)).Id("*").FieldValue(), pairs), nil
		}
		return withPairs(key.Id("*").FieldValue(), pairs), nil
	}
	args := make([]string, 1, 1+len(o.rows)*8)
	args[0] = strconv.FormatInt(r.cfg.MaxLen, 10)
	for _, row := range o.rows {
		count := len(args)
		args = append(args, "")
		var err error
		if args, err = r.appendEntry(args, row); err != nil {
			return rueidis.Completed{}, err
		}
		args[count] = strconv.Itoa((len(args) - count - 1) / 2)
	}
	return r.client.B().Eval().Script(relayScript).Numkeys(1).Key(o.stream).Arg(args...).Build(), nil
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

// entryIDs reads the ids of n entries from the reply of an XADD (n = 1) or
// of relayScript.
func entryIDs(res rueidis.RedisResult, n int) ([]string, error) {
	if n == 1 {
		id, err := res.ToString()
		if err != nil {
			return nil, err
		}
		return []string{id}, nil
	}
	ids, err := res.AsStrSlice()
	if err != nil {
		return nil, err
	}
	if len(ids) != n {
		return nil, fmt.Errorf("the script added %d entries, want %d", len(ids), n)
	}
	return ids, nil
}
