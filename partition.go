package safesync

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"

	"github.com/redis/rueidis"
)

// MaxPartitions is the most partitions a logical stream may have.
const MaxPartitions = 1024

// clusterSlots is the number of Redis Cluster hash slots.
const clusterSlots = 16384

// Partitions is a logical stream stored as P Redis streams, its
// partitions, each under its own hash tag so that on Redis Cluster they
// spread over slots and masters, and are read and written in parallel.
// An entry goes to the partition its key hashes to, so entries of one key
// stay in one partition, in publish order.
//
// # Naming
//
// Partition i of the logical stream "orders" is the stream key
// "orders:{i.k}", where k is the smallest number such that the tag
// "i.k" hashes to a slot in the i-th bucket of a sequence that spreads
// over the slot space: partitions 0, 1 and 2 fall in the first, second and
// third thirds of the slots (which redis-cli --cluster create gives to
// three different masters), partitions 3 to 8 in the ninths, and so on
// (the base-3 van der Corput sequence), and no two partitions share a
// slot. The key of partition i depends on i only, never on P or on the
// logical name's hash, so it stays the same when P changes. Stream(i)
// returns it; its dead-letter stream is Stream(i) + DeadLetterSuffix, in
// the same slot, so that a dead-letter move stays one MULTI/EXEC.
//
// # Keys and order
//
// For returns the partition of a key: FNV-1a (64 bits) of the key, then
// jump consistent hashing onto P partitions. The same key always goes to
// the same partition for a given P, so a consumer with OrderBy on the same
// key keeps per-key order across partitions.
//
// # Changing P
//
// Entries already written stay in the partition keys they were written
// to. A consumer configured with fewer partitions never reads the higher
// ones: before shrinking P, stop publishing to the partitions that go
// away and drain them (or keep a consumer with the old P until they are
// empty). Growing P changes the partition of some keys (jump hashing
// moves about 1/P' of them, all to the new partitions): entries of a moved
// key written before the change may still be pending in its old partition
// while newer ones are handled from the new one, so per-key order holds
// again only once the old entries are drained. Drain, then grow, when
// order matters.
//
// A Partitions is a value, safe for concurrent use.
type Partitions struct {
	name string
	keys []string
}

// NewPartitions returns the logical stream name with n partitions. name
// must not be empty nor contain "{" or "}"; n must be between 1 and
// MaxPartitions.
func NewPartitions(name string, n int) (Partitions, error) {
	switch {
	case name == "":
		return Partitions{}, errors.New("safesync: NewPartitions: empty name")
	case containsBrace(name):
		return Partitions{}, fmt.Errorf("safesync: NewPartitions: name %q contains a brace; the partitions' hash tags are added to it", name)
	case n < 1 || n > MaxPartitions:
		return Partitions{}, fmt.Errorf("safesync: NewPartitions: %d partitions, want 1 to %d", n, MaxPartitions)
	}
	tags := partitionTags(n)
	keys := make([]string, n)
	for i, tag := range tags {
		keys[i] = name + ":{" + tag + "}"
	}
	return Partitions{name: name, keys: keys}, nil
}

func containsBrace(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '{' || s[i] == '}' {
			return true
		}
	}
	return false
}

// Name returns the logical stream's name.
func (p Partitions) Name() string { return p.name }

// Len returns the number of partitions, P.
func (p Partitions) Len() int { return len(p.keys) }

// Stream returns the stream key of partition i (0 ≤ i < P); see Naming.
func (p Partitions) Stream(i int) string { return p.keys[i] }

// Streams returns the stream keys of every partition, in order.
func (p Partitions) Streams() []string { return append([]string(nil), p.keys...) }

// For returns the partition index of key, in [0, P).
func (p Partitions) For(key string) int {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return jumpHash(h.Sum64(), len(p.keys))
}

// jumpHash is Lamping and Veach's jump consistent hash: key onto [0, n),
// moving only about 1/n of the keys when n grows by one.
func jumpHash(key uint64, n int) int {
	var b, j int64 = -1, 0
	for j < int64(n) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int(b)
}

// Publish adds an entry with fields to the partition of key (see For and
// Publish) and returns its id and its partition. It is safe for
// concurrent use.
func (p Partitions) Publish(ctx context.Context, client rueidis.Client, key string, fields map[string]string, opts ...PublishOption) (id string, partition int, err error) {
	if len(p.keys) == 0 {
		return "", 0, errors.New("safesync: Publish on a zero Partitions; use NewPartitions")
	}
	partition = p.For(key)
	id, err = Publish(ctx, client, p.keys[partition], fields, opts...)
	return id, partition, err
}

// PublishPartitionedJSON publishes v, in the wire format of PublishJSON,
// to the partition of key(v), and returns its id and partition. Entries
// whose key is equal land in one partition, in the order they were
// published.
func PublishPartitionedJSON[T any](ctx context.Context, client rueidis.Client, p Partitions, v T, key func(T) string, opts ...PublishOption) (id string, partition int, err error) {
	fields, err := EncodeJSON(v)
	if err != nil {
		return "", 0, err
	}
	return p.Publish(ctx, client, key(v), fields, opts...)
}

// The tags of the partitions, computed on demand and kept: the tag of
// partition i depends on the tags before it (no two share a slot).
var tagCache struct {
	mu    sync.Mutex
	tags  []string
	slots map[uint16]bool
}

// partitionTags returns the hash tags of partitions 0 to n-1; see
// Partitions' Naming.
func partitionTags(n int) []string {
	tagCache.mu.Lock()
	defer tagCache.mu.Unlock()
	if tagCache.slots == nil {
		tagCache.slots = map[uint16]bool{}
	}
	for i := len(tagCache.tags); i < n; i++ {
		lo, hi := spreadBucket(i)
		prefix := strconv.Itoa(i) + "."
		for k := 0; ; k++ {
			tag := prefix + strconv.Itoa(k)
			slot := KeySlot(tag)
			if int(slot) >= lo && int(slot) < hi && !tagCache.slots[slot] {
				tagCache.tags = append(tagCache.tags, tag)
				tagCache.slots[slot] = true
				break
			}
		}
	}
	return tagCache.tags[:n:n]
}

// spreadBucket returns the slot range [lo, hi) of partition i: with d the
// number of base-3 digits of i (at least 1), the slots are cut in 3^d
// equal buckets, and i takes the bucket whose number is i's d base-3
// digits reversed. Every bucket holds at least 7 slots for i < 1024, more
// than the partitions before i that may sit in it.
func spreadBucket(i int) (lo, hi int) {
	d, size := 1, 3
	for size <= i {
		d++
		size *= 3
	}
	r := 0
	for x, k := i, 0; k < d; k++ {
		r = r*3 + x%3
		x /= 3
	}
	// Rounding the low end up and the high end down keeps the buckets of
	// the first thirds inside the ranges redis-cli gives each master.
	return (r*clusterSlots + size - 1) / size, (r + 1) * clusterSlots / size
}
