package integration

import (
	"context"
	"testing"

	"github.com/safesync-go/safesync/ops"
)

// Redis 7 reports entries-read per group; Streams sums up, per stream, the
// entries its groups are done with (delivered less pending), the counter
// whose growth the dashboard charts as throughput.
func TestStreamsCountTheEntriesTheGroupsAreDoneWith(t *testing.T) {
	client := openRedis(t)
	stream := uniqueName(t, "ops")
	t.Cleanup(func() { _ = client.Do(context.Background(), client.B().Del().Key(stream).Build()).Error() })
	do := func(args ...string) {
		t.Helper()
		if err := client.Do(context.Background(), client.B().Arbitrary(args...).Build()).Error(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	var ids []string
	for range 10 {
		id, err := client.Do(context.Background(), client.B().Xadd().Key(stream).Id("*").FieldValue().FieldValue("data", "{}").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	do("XGROUP", "CREATE", stream, "workers", "0")
	do("XGROUP", "CREATE", stream, "audit", "0")
	do("XREADGROUP", "GROUP", "workers", "w1", "COUNT", "6", "STREAMS", stream, ">") // 6 delivered
	do("XACK", stream, "workers", ids[0], ids[1], ids[2], ids[3])                    // 4 done, 2 pending
	do("XREADGROUP", "GROUP", "audit", "a1", "COUNT", "3", "STREAMS", stream, ">")   // 3 delivered
	do("XACK", stream, "audit", ids[0])                                              // 1 done, 2 pending

	x := ops.New(client, ops.Config{})
	info, err := x.Inspect(context.Background(), ops.Stream(stream))
	if err != nil {
		t.Fatal(err)
	}
	read := map[string]int64{}
	for _, g := range info.Groups {
		if !g.EntriesReadReported {
			t.Fatalf("group %s: Redis did not report entries-read (Redis 7 does)", g.Name)
		}
		read[g.Name] = g.EntriesRead
	}
	if read["workers"] != 6 || read["audit"] != 3 {
		t.Errorf("entries read %v, want workers 6, audit 3", read)
	}
	page, err := x.Streams(context.Background(), ops.StreamsQuery{Match: stream})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Streams) != 1 || page.Streams[0].Handled != 5 {
		t.Fatalf("Streams = %+v, want %s with 5 handled (4 by workers, 1 by audit)", page.Streams, stream)
	}
}
