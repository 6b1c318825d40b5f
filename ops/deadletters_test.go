package ops_test

import (
	"context"
	"errors"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/ops"
)

// deadScenario writes six dead letters to orders:dead, one a minute from
// t0: reasons handler, decode, handler, max_deliveries, handler, decode;
// groups alternating workers and audit.
func deadScenario(t *testing.T, cfg ops.Config) (*server, []string) {
	s := newServer(t, cfg)
	reasons := []string{"handler", "decode", "handler", "max_deliveries", "handler", "decode"}
	errs := []string{"Unknown currency XYZ", "invalid character 'x'", "unknown CURRENCY abc", "", "timeout talking to the tax service", "unexpected EOF"}
	var ids []string
	for i, r := range reasons {
		s.setTime(t0.Add(time.Duration(i) * time.Minute))
		group := "workers"
		if i%2 == 1 {
			group = "audit"
		}
		ids = append(ids, s.addDead("orders:dead", deadLetter{src: "orders", group: group, id: "1699999999000-" + string(rune('0'+i)), reason: r, err: errs[i]}))
	}
	s.setTime(t0.Add(10 * time.Minute))
	return s, ids
}

func TestDeadLettersAreFilteredByReasonGroupTimeAndErrorText(t *testing.T) {
	s, all := deadScenario(t, ops.Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		f    ops.Filter
		want []string
	}{
		{"no filter lists all", ops.Filter{}, all},
		{"by reason", ops.Filter{Reason: "handler"}, []string{all[0], all[2], all[4]}},
		{"by group", ops.Filter{Group: "audit"}, []string{all[1], all[3], all[5]}},
		{"by error text, ignoring case", ops.Filter{ErrorContains: "currency"}, []string{all[0], all[2]}},
		{"since is inclusive", ops.Filter{Since: t0.Add(2 * time.Minute)}, all[2:]},
		{"until is exclusive", ops.Filter{Until: t0.Add(2 * time.Minute)}, all[:2]},
		{"a time range and a reason", ops.Filter{Since: t0.Add(time.Minute), Until: t0.Add(5 * time.Minute), Reason: "handler"}, []string{all[2], all[4]}},
		{"by ids, with other filters", ops.Filter{IDs: []string{all[5], all[0], all[1]}, Reason: "decode"}, []string{all[1], all[5]}},
		{"nothing matches", ops.Filter{Reason: "none"}, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			page, err := s.ops.DeadLetters(ctx, ops.Stream("orders"), ops.DeadLetterQuery{Filter: tc.f})
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(page.Entries); !reflect.DeepEqual(got, tc.want) || page.Next != "" {
				t.Fatalf("got %v (next %q), want %v", got, page.Next, tc.want)
			}
		})
	}
}

func TestDeadLettersComeInPagesThatResumeWhereTheyStopped(t *testing.T) {
	s, all := deadScenario(t, ops.Config{})
	ctx := context.Background()
	var got []string
	q := ops.DeadLetterQuery{Limit: 4}
	for pages := 0; ; pages++ {
		page, err := s.ops.DeadLetters(ctx, ops.Stream("orders"), q)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids(page.Entries)...)
		if page.Next == "" {
			if pages != 1 {
				t.Fatalf("%d pages, want 2", pages+1)
			}
			break
		}
		q.After = page.Next
	}
	if !reflect.DeepEqual(got, all) {
		t.Fatalf("pages = %v, want %v", got, all)
	}
	if _, err := s.ops.DeadLetters(ctx, ops.Stream("orders"), ops.DeadLetterQuery{After: "nonsense"}); !errors.Is(err, ops.ErrBadCursor) {
		t.Fatalf("bad cursor: %v", err)
	}
}

func TestAFilteredListingStopsAfterMaxExamineWithACursorToGoOn(t *testing.T) {
	s, all := deadScenario(t, ops.Config{MaxExamine: 2})
	ctx := context.Background()
	var got []string
	q := ops.DeadLetterQuery{Filter: ops.Filter{Reason: "max_deliveries"}}
	for range 10 {
		page, err := s.ops.DeadLetters(ctx, ops.Stream("orders"), q)
		if err != nil {
			t.Fatal(err)
		}
		if page.Examined > 2 {
			t.Fatalf("examined %d, want at most 2", page.Examined)
		}
		got = append(got, ids(page.Entries)...)
		if page.Next == "" {
			break
		}
		q.After = page.Next
	}
	if !reflect.DeepEqual(got, []string{all[3]}) {
		t.Fatalf("got %v, want %v", got, all[3:4])
	}
}

func TestDeadLettersOfPartitionsAreMergedInTimeOrder(t *testing.T) {
	s := newServer(t, ops.Config{})
	p, _ := safesync.NewPartitions("payments", 3)
	var want []string
	for i := range 6 {
		s.setTime(t0.Add(time.Duration(i/2) * time.Second)) // two at each time: equal ids in different keys
		k := p.Stream(i % 3)
		id := s.addDead(k+safesync.DeadLetterSuffix, deadLetter{src: k, group: "g", id: "1-0", reason: "handler"})
		want = append(want, id+"@"+k+safesync.DeadLetterSuffix)
	}
	sort.Strings(want) // (id, key) order: the ids here have the same length
	var got []string
	q := ops.DeadLetterQuery{Limit: 1}
	for {
		page, err := s.ops.DeadLetters(context.Background(), ops.Partitioned(p), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Entries {
			got = append(got, d.ID+"@"+d.DeadLetterStream)
		}
		if page.Next == "" {
			break
		}
		q.After = page.Next
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

func TestADeadLetterShowsEverythingTheConsumerRecorded(t *testing.T) {
	s := newServer(t, ops.Config{})
	first, last := t0.Add(-time.Hour), t0.Add(-time.Minute)
	s.do(s.client.B().Xadd().Key("orders:dead").Id("*").FieldValue().
		FieldValue(safesync.DeadLetterFieldStream, "orders").
		FieldValue(safesync.DeadLetterFieldGroup, "workers").
		FieldValue(safesync.DeadLetterFieldID, "1699999999000-7").
		FieldValue(safesync.DeadLetterFieldReason, "max_deliveries").
		FieldValue(safesync.DeadLetterFieldDeliveries, "11").
		FieldValue(safesync.DeadLetterFieldError, "deadlock").
		FieldValue(safesync.DeadLetterFieldConsumer, "w1").
		FieldValue(safesync.DeadLetterFieldFailures, "10").
		FieldValue(safesync.DeadLetterFieldFirstFail, first.Format(safesync.DeadLetterTimeFormat)).
		FieldValue(safesync.DeadLetterFieldLastFail, last.Format(safesync.DeadLetterTimeFormat)).
		FieldValue(safesync.OriginFieldStream, "orders").
		FieldValue(safesync.OriginFieldID, "1699999990000-0").
		FieldValue("data", `{"order_id":7}`).Build())
	page, err := s.ops.DeadLetters(context.Background(), ops.Stream("orders"), ops.DeadLetterQuery{})
	if err != nil || len(page.Entries) != 1 {
		t.Fatalf("%+v, %v", page, err)
	}
	d, err := s.ops.DeadLetter(context.Background(), ops.Stream("orders"), page.Entries[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.Stream != "orders" || d.Group != "workers" || d.OriginalID != "1699999999000-7" || d.Reason != "max_deliveries" ||
		d.Deliveries != 11 || d.Error != "deadlock" || d.Consumer != "w1" || d.Failures != 10 ||
		!d.FirstFailure.Equal(first) || !d.LastFailure.Equal(last) || !d.DeadLetteredAt.Equal(t0) ||
		d.Origin == nil || *d.Origin != (ops.Origin{Stream: "orders", ID: "1699999990000-0"}) ||
		string(d.Payload) != `{"order_id":7}` || len(d.Fields) != 3 {
		t.Fatalf("DeadLetter = %+v", d)
	}
	if e := d.Entry(); e.Failures != 10 || e.Fields["data"] != `{"order_id":7}` {
		t.Fatalf("Entry = %+v", e)
	}
	if _, err := s.ops.DeadLetter(context.Background(), ops.Stream("orders"), "1-0"); !errors.Is(err, ops.ErrDeadLetterNotFound) {
		t.Fatalf("missing: %v", err)
	}
}
