package safesynctest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/safesync-go/safesync"
	"github.com/safesync-go/safesync/safesynctest"
)

type order struct {
	ID     int `json:"id"`
	Amount int `json:"amount"`
}

// applyOrder is the kind of handler a user tests: it rejects negative
// amounts for good, fails on amount 0 for now, and panics on amount 13.
func applyOrder(_ context.Context, m safesync.Message[order]) error {
	switch {
	case m.Value.Amount < 0:
		return safesync.Permanent(fmt.Errorf("order %d: negative amount", m.Value.ID))
	case m.Value.Amount == 0:
		return errors.New("ledger unavailable")
	case m.Value.Amount == 13:
		panic("unlucky")
	}
	return nil
}

func TestHandleJSONReportsWhatBecameOfEachEntry(t *testing.T) {
	rep := safesynctest.HandleJSON(t, applyOrder,
		order{ID: 1, Amount: 5}, order{ID: 2, Amount: -1}, order{ID: 3, Amount: 0}, order{ID: 4, Amount: 13}, order{ID: 5, Amount: 7})
	if len(rep.Acked) != 2 || rep.Acked[0].Value.ID != 1 || rep.Acked[1].Value.ID != 5 {
		t.Errorf("acked %+v, want orders 1 and 5", rep.Acked)
	}
	if len(rep.Failed) != 3 || rep.Failed[0].Message.Value.ID != 2 || !errors.Is(rep.Failed[0].Err, safesync.ErrPermanent) ||
		rep.Failed[1].Message.Value.ID != 3 || rep.Failed[2].Message.Value.ID != 4 {
		t.Errorf("failed %+v, want orders 2 (permanent), 3 and 4 (panic)", rep.Failed)
	}
	if len(rep.DeadLettered) != 1 || rep.DeadLettered[0].Reason != safesync.DeadLetterHandler {
		t.Errorf("dead-lettered %+v, want order 2 with reason handler", rep.DeadLettered)
	}
	if len(rep.Pending) != 2 || rep.Pending[0].ID != rep.Failed[1].Message.ID || rep.Pending[1].ID != rep.Failed[2].Message.ID {
		t.Errorf("pending %+v, want orders 3 and 4", rep.Pending)
	}
}

func TestHandleEntriesDeadLettersWhatCannotBeDecoded(t *testing.T) {
	rep := safesynctest.HandleEntries(t, safesync.JSON[order](), applyOrder,
		map[string]string{"data": `{"id": 1, "amount": 5}`},
		map[string]string{"data": `{"id": 2, "amount": NaN}`},
	)
	if len(rep.Acked) != 1 || len(rep.Failed) != 0 || len(rep.Pending) != 0 {
		t.Fatalf("report %+v, want one entry acked", rep)
	}
	if len(rep.DeadLettered) != 1 || rep.DeadLettered[0].Reason != safesync.DeadLetterDecode ||
		rep.DeadLettered[0].Fields["data"] != `{"id": 2, "amount": NaN}` {
		t.Fatalf("dead-lettered %+v, want the NaN entry with its fields", rep.DeadLettered)
	}
}

func TestPendingOfAMissingGroupIsEmpty(t *testing.T) {
	client := safesynctest.NewRedis(t)
	if p := safesynctest.Pending(t, client, "nothing", "nobody"); len(p) != 0 {
		t.Fatalf("pending = %v", p)
	}
}

// A handler's unit test needs no service: HandleJSON runs it the way
// Consumer.Run does, on an embedded Redis, and reports the outcome.
func ExampleHandleJSON() {
	t := &testing.T{} // in a test, the *testing.T it is given
	rep := safesynctest.HandleJSON(t, applyOrder, order{ID: 1, Amount: 5}, order{ID: 2, Amount: -3})
	for _, m := range rep.Acked {
		fmt.Println("acked order", m.Value.ID)
	}
	for _, f := range rep.Failed {
		fmt.Println("failed:", f.Err)
	}
	for _, d := range rep.DeadLettered {
		fmt.Println("dead-lettered:", d.Reason, d.Fields["data"])
	}
	// Output:
	// acked order 1
	// failed: safesync: permanent failure: order 2: negative amount
	// dead-lettered: handler {"id":2,"amount":-3}
}
