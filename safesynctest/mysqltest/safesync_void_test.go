package mysqltest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/safesync-go/safesync"
)

// The forms a new user reached for first (issue 13): a transaction that
// returns only an error, a row lock whose callback returns only an error,
// and an optimistic update whose row type is inferred from mutate.

func TestRunTxCommitsOnNilAndRollsBackOnError(t *testing.T) {
	db := embeddedDB(t)
	ctx := context.Background()
	err := safesync.RunTx(ctx, db, func(ctx context.Context, tx *safesync.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = balance - 10 WHERE id = 1")
		return err
	})
	if err != nil || balance(t, db, 1) != 90 {
		t.Fatalf("RunTx = %v, balance %d; want nil, 90", err, balance(t, db, 1))
	}
	err = safesync.RunTx(ctx, db, func(ctx context.Context, tx *safesync.Tx) error {
		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = 0 WHERE id = 1"); err != nil {
			return err
		}
		return errBusiness
	}, safesync.Label("void"))
	if !errors.Is(err, errBusiness) || balance(t, db, 1) != 90 {
		t.Fatalf("RunTx = %v, balance %d; want errBusiness and the update rolled back", err, balance(t, db, 1))
	}
}

func TestLockRowRunsAVoidCallbackOnTheLockedRow(t *testing.T) {
	db := embeddedDB(t)
	ctx := context.Background()
	debit := func(id int64) func(context.Context, *safesync.Tx) error {
		return safesync.LockRow("accounts", safesync.Key{"id": id}, func(ctx context.Context, tx *safesync.Tx, a acctRow) error {
			if a.Balance < 60 {
				return errBusiness
			}
			_, err := tx.ExecContext(ctx, "UPDATE accounts SET balance = ? WHERE id = ?", a.Balance-60, a.ID)
			return err
		})
	}
	if err := safesync.RunTx(ctx, db, debit(1)); err != nil || balance(t, db, 1) != 40 {
		t.Fatalf("first debit = %v, balance %d; want nil, 40", err, balance(t, db, 1))
	}
	if err := safesync.RunTx(ctx, db, debit(1)); !errors.Is(err, errBusiness) || balance(t, db, 1) != 40 {
		t.Fatalf("second debit = %v, balance %d; want errBusiness, 40", err, balance(t, db, 1))
	}
	if err := safesync.RunTx(ctx, db, debit(9)); !errors.Is(err, safesync.ErrNotFound) {
		t.Fatalf("missing row = %v, want ErrNotFound", err)
	}
	// It composes with the typed world through NoResult.
	if _, err := safesync.WithTx(db, safesync.WithAdvisoryLock("acct:1", 0, safesync.NoResult(debit(2))))(ctx); !errors.Is(err, errBusiness) {
		t.Fatalf("under an advisory lock = %v, want errBusiness", err)
	}
}

func TestOCCRowInfersTheRowTypeFromMutate(t *testing.T) {
	db := occDB(t)
	ctx := context.Background()
	deposit := func(a versionedAccount) (versionedAccount, error) { a.Balance += 5; return a, nil }
	for i := int64(1); i <= 2; i++ {
		got, err := safesync.WithTx(db, safesync.OCCRow("accounts", safesync.Key{"id": 1}, "version", deposit))(ctx)
		if err != nil || got.Balance != 100+5*i || got.Version != i {
			t.Fatalf("OCCRow %d = %+v, %v", i, got, err)
		}
	}
	if _, err := safesync.WithTx(db, safesync.OCCRow("accounts", safesync.Key{"id": 7}, "", deposit))(ctx); !errors.Is(err, safesync.ErrNotFound) {
		t.Fatalf("missing row = %v, want ErrNotFound", err)
	}
}
