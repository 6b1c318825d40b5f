package ops_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// t0 is the embedded server's clock in these tests: entry ids start at
// 1700000000000-0.
var t0 = time.UnixMilli(1700000000000).UTC()

// server is an embedded Redis on a fixed clock, a client on it and an Ops
// whose clock the test moves with it.
type server struct {
	t      testing.TB
	srv    *miniredis.Miniredis
	client rueidis.Client
	now    time.Time
	ops    *ops.Ops
}

func newServer(t testing.TB, cfg ops.Config) *server {
	t.Helper()
	srv := miniredis.RunT(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	s := &server{t: t, srv: srv, client: client}
	s.setTime(t0)
	cfg.Now = func() time.Time { return s.now }
	s.ops = ops.New(client, cfg)
	return s
}

// setTime sets the server's clock (entry ids, idle times) and the Ops'.
func (s *server) setTime(at time.Time) {
	s.now = at
	s.srv.SetTime(at)
}

func (s *server) do(cmd rueidis.Completed) rueidis.RedisResult {
	s.t.Helper()
	r := s.client.Do(context.Background(), cmd)
	if err := r.Error(); err != nil {
		s.t.Fatalf("%v: %v", cmd.Commands(), err)
	}
	return r
}

// publish adds n entries {"data": {"n": i}} to stream and returns their ids.
func (s *server) publish(stream string, n int) []string {
	s.t.Helper()
	ids := make([]string, n)
	for i := range n {
		id, err := safesync.Publish(context.Background(), s.client, stream, map[string]string{"data": `{"n":` + strconv.Itoa(i) + `}`})
		if err != nil {
			s.t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

// group creates group on stream at its start.
func (s *server) group(stream, group string) {
	s.do(s.client.B().XgroupCreate().Key(stream).Group(group).Id("0").Mkstream().Build())
}

// read delivers up to n new entries of stream to consumer, and returns
// their ids.
func (s *server) read(stream, group, consumer string, n int64) []string {
	s.t.Helper()
	res, err := s.client.Do(context.Background(), s.client.B().Xreadgroup().Group(group, consumer).Count(n).Streams().Key(stream).Id(">").Build()).AsXRead()
	if err != nil {
		s.t.Fatal(err)
	}
	var ids []string
	for _, x := range res[stream] {
		ids = append(ids, x.ID)
	}
	return ids
}

// deadLetter is a dead letter as a safesync consumer writes it.
type deadLetter struct {
	src, group, id, reason, err string
	fields                      map[string]string
}

// addDead writes d to the dead-letter stream dead and returns its id.
func (s *server) addDead(dead string, d deadLetter) string {
	s.t.Helper()
	b := s.client.B().Xadd().Key(dead).Id("*").FieldValue().
		FieldValue(safesync.DeadLetterFieldStream, d.src).
		FieldValue(safesync.DeadLetterFieldGroup, d.group).
		FieldValue(safesync.DeadLetterFieldID, d.id).
		FieldValue(safesync.DeadLetterFieldReason, d.reason).
		FieldValue(safesync.DeadLetterFieldDeliveries, "3")
	if d.err != "" {
		b = b.FieldValue(safesync.DeadLetterFieldError, d.err)
	}
	fields := d.fields
	if fields == nil {
		fields = map[string]string{"data": `{"id":"` + d.id + `"}`}
	}
	for k, v := range fields {
		b = b.FieldValue(k, v)
	}
	id, err := s.do(b.Build()).ToString()
	if err != nil {
		s.t.Fatal(err)
	}
	return id
}

func (s *server) entries(stream string) []rueidis.XRangeEntry {
	s.t.Helper()
	xs, err := s.do(s.client.B().Xrange().Key(stream).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		s.t.Fatal(err)
	}
	return xs
}

func ids(ds []ops.DeadLetter) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}
