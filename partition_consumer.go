package safesync

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/rueidis"
)

// PartitionedConsumer reads every partition of a logical stream (see
// Partitions) as one named consumer of a group, and hands decoded entries
// to handlers.
//
// Each partition has a reader of its own, a goroutine sending blocking
// XREADGROUPs on that partition's key only (on Redis Cluster, to the
// master of its slot), so an idle partition costs a parked goroutine and
// a blocked connection, no CPU, and a busy one is never held up by the
// others. Reclaim (XAUTOCLAIM), the pending gauges and dead letters are
// per partition too: an entry of partition i is dead-lettered to
// Stream(i) + DeadLetterSuffix, in the same slot, in one MULTI/EXEC.
// Handlers share one capacity: at most Concurrency handler calls run at
// once over all partitions, and the readers together read ahead about one
// read's worth of entries (each reader may add one read to it).
//
// The group is created on every partition. A PartitionedConsumer is safe
// for concurrent use; only one of Run, RunBatch and ClaimStale runs at a
// time on it.
type PartitionedConsumer[T any] struct {
	c     *Consumer[T]
	parts Partitions
}

// NewPartitionedConsumer returns a consumer of every partition of p as
// cfg.Consumer in cfg.Group. cfg.Stream must be empty or p.Name(); the
// other fields apply to each partition. cfg.DeadLetterStream, when set,
// receives the dead letters of every partition; on Redis Cluster a move to
// a stream in another slot than the partition's is not atomic (see
// StreamConfig.DeadLetterStream): leave it empty to get one dead-letter
// stream per partition in its slot. It validates cfg and sends nothing to
// Redis.
func NewPartitionedConsumer[T any](client rueidis.Client, p Partitions, cfg StreamConfig, decode Decoder[T], opts ...ConsumerOption[T]) (*PartitionedConsumer[T], error) {
	if p.Len() == 0 {
		return nil, errors.New("safesync: NewPartitionedConsumer with a zero Partitions; use NewPartitions")
	}
	if cfg.Stream != "" && cfg.Stream != p.Name() {
		return nil, fmt.Errorf("%w: Stream %q is not the partitioned stream's name %q; leave it empty", ErrInvalidStreamConfig, cfg.Stream, p.Name())
	}
	first := cfg
	first.Stream = p.Stream(0)
	c, err := NewConsumer(client, first, decode, opts...)
	if err != nil {
		return nil, err
	}
	c.parts = c.parts[:0]
	for i := range p.Len() {
		pc := cfg
		pc.Stream = p.Stream(i)
		if err := pc.Validate(); err != nil {
			return nil, err
		}
		c.parts = append(c.parts, newPartitionCore(client, pc.withDefaults(), p.Name(), i))
	}
	c.core = c.parts[0]
	return &PartitionedConsumer[T]{c: c, parts: p}, nil
}

// Partitions returns the partitioned stream the consumer reads.
func (pc *PartitionedConsumer[T]) Partitions() Partitions { return pc.parts }

// Config returns the configuration of partition i, with defaults filled
// in: Stream and DeadLetterStream are that partition's.
func (pc *PartitionedConsumer[T]) Config(i int) StreamConfig { return pc.c.parts[i].cfg }

// Run is Consumer.Run over every partition: it reads all of them and
// calls h for each entry, up to Concurrency at a time in all, until ctx is
// cancelled. Messages carry their partition's key in Stream. With OrderBy
// on the key that chose the partition (see Partitions.For), entries of one
// key run one at a time, in publish order. Everything else (ctx, reclaim,
// dead letters, shutdown, errors) is as for Consumer.Run, per partition.
// Concurrency 1 does not make the reader handle entries itself as
// Consumer.Run does: with several partitions a worker handles them.
func (pc *PartitionedConsumer[T]) Run(ctx context.Context, h Handler[T]) error {
	return pc.c.Run(ctx, h)
}

// RunBatch is Consumer.RunBatch over every partition. A batch holds
// entries of one partition only.
func (pc *PartitionedConsumer[T]) RunBatch(ctx context.Context, size int, h BatchHandler[T]) error {
	return pc.c.RunBatch(ctx, size, h)
}

// ClaimStale is Consumer.ClaimStale over every partition.
func (pc *PartitionedConsumer[T]) ClaimStale(ctx context.Context, h Handler[T]) error {
	return pc.c.ClaimStale(ctx, h)
}

// Ack is Consumer.Ack: msgs may come from any partitions.
func (pc *PartitionedConsumer[T]) Ack(ctx context.Context, msgs ...Message[T]) error {
	return pc.c.Ack(ctx, msgs...)
}

// DeadLetter is Consumer.DeadLetter, to the dead-letter stream of msg's
// partition.
func (pc *PartitionedConsumer[T]) DeadLetter(ctx context.Context, msg Message[T], reason string) error {
	return pc.c.DeadLetter(ctx, msg, reason)
}

// RunPartitioned is Run over every partition of p (see
// PartitionedConsumer): one reader per partition, the pipeline's
// Concurrency shared by all. cfg.Stream must be empty or p.Name(). A
// batch holds entries of one partition only.
func (p Pipeline[T]) RunPartitioned(ctx context.Context, client rueidis.Client, parts Partitions, cfg StreamConfig) error {
	opts, err := p.consumerOptions("RunPartitioned")
	if err != nil {
		return err
	}
	pc, err := NewPartitionedConsumer(client, parts, cfg, p.decode, opts...)
	if err != nil {
		return err
	}
	return p.withMetrics(cfg.Metrics).runOn(ctx, pc.c)
}
