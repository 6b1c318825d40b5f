package ops

import (
	"context"
	"errors"

	"github.com/redis/rueidis"
)

// PurgeOptions tunes Purge.
type PurgeOptions struct {
	// DryRun selects the entries and calls Each for each, deleting
	// nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Batch is how many entries are deleted per pipelined round trip
	// (DefaultBatch).
	Batch int `json:"batch,omitempty"`
	// Each, if not nil, is called with every entry deleted (or, in a dry
	// run, that would be), in order.
	Each func(DeadLetter) `json:"-"`
}

// PurgeResult is what Purge did.
type PurgeResult struct {
	DryRun bool `json:"dry_run,omitempty"`
	// Purged counts the entries deleted (in a dry run: that would be).
	Purged int `json:"purged"`
	// Skipped counts the selected entries left in place because they are
	// not dead letters a safesync consumer wrote (no source stream).
	Skipped int `json:"skipped,omitempty"`
}

// Purge deletes the dead letters of t that f selects (XDEL), for good,
// oldest first, and returns what it did, also when it stops on an error.
// Like Replay, it refuses an empty Filter without All, and takes only the
// entries present when it starts. It leaves entries that are not dead
// letters (without a source stream) in place, so that a Target naming the
// wrong stream as a dead-letter stream deletes nothing. The dead-letter
// streams themselves stay, empty or not.
func (o *Ops) Purge(ctx context.Context, t Target, f Filter, opts PurgeOptions) (PurgeResult, error) {
	res := PurgeResult{DryRun: opts.DryRun}
	batch := opts.Batch
	if batch <= 0 {
		batch = DefaultBatch
	}
	err := o.eachSelected(ctx, t, f, batch, func(selected []DeadLetter) error {
		ds := selected[:0:0]
		for _, d := range selected {
			if d.Stream == "" {
				res.Skipped++
				continue
			}
			ds = append(ds, d)
		}
		if len(ds) == 0 {
			return nil
		}
		if opts.DryRun {
			for _, d := range ds {
				res.count(d, opts.Each)
			}
			return nil
		}
		cmds := make(rueidis.Commands, len(ds))
		for i, d := range ds {
			cmds[i] = o.client.B().Xdel().Key(d.DeadLetterStream).Id(d.ID).Build()
		}
		var errs []error
		for i, r := range o.client.DoMulti(ctx, cmds...) {
			n, err := r.AsInt64()
			if err != nil {
				errs = append(errs, keyErr("XDEL", ds[i].DeadLetterStream, err))
				continue
			}
			if n > 0 {
				res.count(ds[i], opts.Each)
			}
		}
		return errors.Join(errs...)
	})
	return res, err
}

func (r *PurgeResult) count(d DeadLetter, each func(DeadLetter)) {
	r.Purged++
	if each != nil {
		each(d)
	}
}
