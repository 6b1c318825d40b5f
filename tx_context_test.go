package safesync

import (
	"context"
	"testing"
	"time"
)

type ctxTestKey struct{}

// The ctx a transaction's function receives carries the transaction and
// everything of its parent: values, deadline and cancellation, which
// reaches contexts derived from it.
func TestTxContextIsItsParentWithTheTransaction(t *testing.T) {
	parent, cancel := context.WithTimeout(context.WithValue(context.Background(), ctxTestKey{}, "v"), time.Hour)
	tx := &Tx{}
	tx.fnCtx = txContext{Context: parent, tx: tx}
	var ctx context.Context = &tx.fnCtx
	if got := ctx.Value(txKey{}); got != tx {
		t.Fatalf("Value(txKey{}) = %v, want the transaction", got)
	}
	if got := ctx.Value(ctxTestKey{}); got != "v" {
		t.Fatalf("a parent's value = %v, want v", got)
	}
	if d, ok := ctx.Deadline(); !ok || d.IsZero() {
		t.Fatal("the parent's deadline is lost")
	}
	child, stop := context.WithCancel(ctx)
	defer stop()
	cancel()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the parent did not reach a context derived from the transaction's")
	}
	if ctx.Err() == nil {
		t.Fatal("the transaction's ctx did not end with its parent")
	}
}

// BEGIN's ctx keeps its parent's values but neither its deadline nor its
// cancellation, as context.WithoutCancel.
func TestDetachedContextKeepsValuesOnly(t *testing.T) {
	parent, cancel := context.WithTimeout(context.WithValue(context.Background(), ctxTestKey{}, "v"), time.Hour)
	tx := &Tx{}
	tx.beginCtx.parent = parent
	var ctx context.Context = &tx.beginCtx
	cancel()
	if ctx.Done() != nil || ctx.Err() != nil {
		t.Fatal("the detached ctx ended with its parent")
	}
	if _, ok := ctx.Deadline(); ok {
		t.Fatal("the detached ctx has its parent's deadline")
	}
	if got := ctx.Value(ctxTestKey{}); got != "v" {
		t.Fatalf("a parent's value = %v, want v", got)
	}
	child, stop := context.WithCancel(ctx)
	defer stop()
	if child.Err() != nil {
		t.Fatal("a context derived from the detached ctx ended with the parent")
	}
}
