package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
)

// Defaults of Config and of the listings.
const (
	// DefaultLimit is a listing's page size when its Limit is 0.
	DefaultLimit = 100
	// MaxLimit is the largest page a listing returns.
	MaxLimit = 10000
	// DefaultMaxExamine is how many entries one call reads at most to
	// answer a filtered listing, count a lag Redis did not report, or count
	// dead letters per group.
	DefaultMaxExamine = 10000
	// DefaultScanCount is the COUNT hint of each SCAN that finds streams.
	DefaultScanCount = 1000
	// DefaultBatch is how many entries a replay or purge moves per round
	// trip.
	DefaultBatch = 100
)

// Errors the operations return, wrapped with what was not found and what to
// do about it; match them with errors.Is.
var (
	// ErrStreamNotFound: no stream, and no partitioned stream, by that name.
	ErrStreamNotFound = errors.New("safesync/ops: stream not found")
	// ErrGroupNotFound: the stream has no consumer group by that name.
	ErrGroupNotFound = errors.New("safesync/ops: consumer group not found")
	// ErrDeadLetterNotFound: no dead letter with that id.
	ErrDeadLetterNotFound = errors.New("safesync/ops: dead letter not found")
	// ErrNoSelection: Replay or Purge was given an empty Filter without All.
	ErrNoSelection = errors.New("safesync/ops: no dead letters selected")
	// ErrWrongType: a key the operation needs holds something else than a
	// stream.
	ErrWrongType = errors.New("safesync/ops: key is not a stream")
)

// Config tunes an Ops. Every zero value means the default named in its
// comment.
type Config struct {
	// Now is the clock that ages (time since an entry's id was generated)
	// are measured against (time.Now).
	Now func() time.Time
	// MaxExamine bounds the entries one call reads to answer a filtered
	// listing, count a lag Redis did not report, or count dead letters per
	// group (DefaultMaxExamine). A listing that reaches it returns what it
	// found with a Next cursor to go on from.
	MaxExamine int
	// ScanCount is the COUNT hint of the SCANs that find streams
	// (DefaultScanCount).
	ScanCount int
}

// Ops inspects and repairs the streams of a safesync deployment: streams,
// consumer groups, consumers, pending entries and dead letters, on one
// Redis or a Redis Cluster, for plain and partitioned streams. It is the
// engine of the safesync command-line tool and of dashboards.
//
// Every method takes a ctx that bounds all the commands it sends; a
// listing or an inspection reads only, Replay and Purge write only to the
// streams of their Target's dead letters and to the streams those came
// from. An Ops is safe for concurrent use. It does not own the client.
type Ops struct {
	client rueidis.Client
	cfg    Config
}

// New returns an Ops on client, which may be a single-server or a cluster
// client. It sends nothing to Redis.
func New(client rueidis.Client, cfg Config) *Ops {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxExamine <= 0 {
		cfg.MaxExamine = DefaultMaxExamine
	}
	if cfg.ScanCount <= 0 {
		cfg.ScanCount = DefaultScanCount
	}
	return &Ops{client: client, cfg: cfg}
}

// Target names what an operation works on: one stream, or every partition
// of a partitioned stream, with the dead-letter streams their consumers
// write to. Build it with Stream, Partitioned or Ops.Resolve; set
// DeadLetterStreams yourself when consumers were configured with a
// StreamConfig.DeadLetterStream of their own.
type Target struct {
	// Name is the stream's key, or the partitioned stream's logical name.
	Name string `json:"name"`
	// Streams are the stream keys: the one key, or one per partition.
	Streams []string `json:"streams"`
	// DeadLetterStreams are the dead-letter streams of Streams.
	DeadLetterStreams []string `json:"dead_letter_streams"`
}

// Stream returns the Target of the stream key, whose dead letters are in
// key + safesync.DeadLetterSuffix (StreamConfig's default).
func Stream(key string) Target {
	return Target{Name: key, Streams: []string{key}, DeadLetterStreams: []string{key + safesync.DeadLetterSuffix}}
}

// Partitioned returns the Target of every partition of p, each with its
// own dead-letter stream Stream(i) + safesync.DeadLetterSuffix
// (NewPartitionedConsumer's default).
func Partitioned(p safesync.Partitions) Target {
	t := Target{Name: p.Name(), Streams: p.Streams()}
	for _, k := range t.Streams {
		t.DeadLetterStreams = append(t.DeadLetterStreams, k+safesync.DeadLetterSuffix)
	}
	return t
}

// Partitioned reports whether t has more than one stream key.
func (t Target) Partitioned() bool { return len(t.Streams) > 1 }

func (t Target) check(needStreams bool) error {
	for _, d := range t.DeadLetterStreams {
		if contains(t.Streams, d) {
			return fmt.Errorf("safesync/ops: Target %q names %q both as a stream and as a dead-letter stream", t.Name, d)
		}
	}
	switch {
	case needStreams && len(t.Streams) == 0:
		return fmt.Errorf("safesync/ops: Target %q has no Streams; build it with Stream, Partitioned or Resolve", t.Name)
	case !needStreams && len(t.DeadLetterStreams) == 0:
		return fmt.Errorf("safesync/ops: Target %q has no DeadLetterStreams; build it with Stream, Partitioned or Resolve", t.Name)
	}
	return nil
}

// Resolve finds what name stands for: a stream key; a dead-letter stream
// key (name ending in safesync.DeadLetterSuffix), whose source is name
// without the suffix; or the logical name of a partitioned stream, whose
// partitions are found with SCAN on every master (partition i is counted
// when its key or its dead-letter stream exists; the Target has as many
// partitions as the highest found plus one). It returns an error matching
// ErrStreamNotFound when it is none of these.
func (o *Ops) Resolve(ctx context.Context, name string) (Target, error) {
	typ, err := o.keyType(ctx, name)
	if err != nil {
		return Target{}, err
	}
	switch typ {
	case "stream":
		if src, ok := strings.CutSuffix(name, safesync.DeadLetterSuffix); ok && src != "" {
			srcType, err := o.keyType(ctx, src)
			if err != nil {
				return Target{}, err
			}
			if srcType == "stream" || srcType == "none" {
				return Target{Name: src, Streams: []string{src}, DeadLetterStreams: []string{name}}, nil
			}
		}
		return Stream(name), nil
	case "none":
		deadType, err := o.keyType(ctx, name+safesync.DeadLetterSuffix)
		if err != nil {
			return Target{}, err
		}
		if deadType == "stream" {
			return Stream(name), nil // the stream is gone, its dead letters are not
		}
	default:
		return Target{}, fmt.Errorf("%w: %q holds a %s", ErrWrongType, name, typ)
	}
	if strings.ContainsAny(name, "{}") {
		return Target{}, notFound(name)
	}
	keys, err := o.scanStreams(ctx, escapeGlob(name)+":{*")
	if err != nil {
		return Target{}, err
	}
	highest := -1
	for _, k := range keys {
		if pk, ok := parsePartitionKey(k); ok && pk.name == name {
			highest = max(highest, pk.index)
		}
	}
	if highest < 0 {
		return Target{}, notFound(name)
	}
	p, err := safesync.NewPartitions(name, highest+1)
	if err != nil {
		return Target{}, err
	}
	return Partitioned(p), nil
}

func notFound(name string) error {
	return fmt.Errorf("%w: no stream and no partitioned stream named %q (list them with `safesync streams`)", ErrStreamNotFound, name)
}

func (o *Ops) keyType(ctx context.Context, key string) (string, error) {
	typ, err := o.client.Do(ctx, o.client.B().Type().Key(key).Build()).ToString()
	if err != nil {
		return "", fmt.Errorf("safesync/ops: TYPE %s: %w", key, err)
	}
	return typ, nil
}

// escapeGlob escapes the characters SCAN MATCH gives a meaning to.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// isRedisErr reports whether err is a Redis error reply starting with
// prefix (NOGROUP, ERR no such key, WRONGTYPE).
func isRedisErr(err error, prefix string) bool {
	re, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(re.Error(), prefix)
}

// limit returns the page size for a requested limit.
func limit(n int) int {
	switch {
	case n <= 0:
		return DefaultLimit
	case n > MaxLimit:
		return MaxLimit
	}
	return n
}
