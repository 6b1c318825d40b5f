package main

import (
	"fmt"
	"math"

	"github.com/safesync-go/safesync/bench/internal/results"
)

// The batch handlers' contenders, measured by the pipeline step beside
// the per-entry ones.
const (
	perEntryPipeline = "pipeline"
	handSingleRow    = "hand-written loop, batches of 100"
	handMultiRow     = "hand-written multi-row batches of 100"
	handleBatch      = "HandleBatch(100) + InsertRows"
	handleBatchOnce  = "HandleBatch(100) + InsertRows + Once"
)

var batchHandlerContenders = []string{
	perEntryPipeline, "pipeline Batch(100)", handSingleRow,
	handMultiRow, handleBatch, handleBatchOnce,
}

// renderBatchHandlers writes the section on batch handlers from the
// pipeline run r; nothing when r has none of their samples (results from
// before they existed).
func renderBatchHandlers(p printer, r *results.Run) {
	if _, ok := r.Median(handleBatch); !ok {
		return
	}
	p("## Batch handlers\n\n")
	p("The same workload (%s entries over %s accounts, %s transactions in flight,\n", r.Params["entries"], r.Params["accounts"], r.Params["concurrency"])
	p("`interpolateParams=true`), written a batch at a time: the hand-written loop\n")
	p("sends one multi-row `INSERT … ON DUPLICATE KEY UPDATE balance = balance +\n")
	p("VALUES(balance)` per batch of 100; the pipeline's `HandleBatch` handler builds\n")
	p("the same statement with `InsertRows(…, OnDuplicateAdd(\"balance\"))`; with\n")
	p("`Once` the batch's exactly-once records are one more multi-row `INSERT`.\n")
	p("From the same run as the table above.\n\n")
	base, _ := r.Median(perEntryPipeline)
	p("| contender | median s | entries/s | allocs/entry | B/entry | vs per-entry pipeline |\n|---|---:|---:|---:|---:|---:|\n")
	for _, c := range batchHandlerContenders {
		s, ok := r.Median(c)
		if !ok {
			continue
		}
		p("| %s | %.2f | %.0f | %.1f | %.0f | %.1f× |\n", c, s.Seconds, s.Rate(), s.Allocs, s.Bytes, base.Seconds/s.Seconds)
	}
	figure := func(v float64) string {
		if math.IsNaN(v) {
			return "–"
		}
		return fmt.Sprintf("%.2f×", v)
	}
	p("\n| measure | figure | target |\n|---|---:|---|\n")
	p("| `HandleBatch(100)` + `InsertRows` + `Once` / per-entry pipeline | **%s** | ≥ 20× |\n", figure(r.Ratio(perEntryPipeline, handleBatchOnce)))
	p("| `HandleBatch(100)` + `InsertRows` + `Once` / per-entry pipeline + `Once` (both exactly-once) | **%s** | |\n", figure(r.Ratio(perEntryPipeline+" + Once", handleBatchOnce)))
	p("| `HandleBatch(100)` + `InsertRows` / per-entry pipeline | %s | |\n", figure(r.Ratio(perEntryPipeline, handleBatch)))
	p("| `HandleBatch(100)` + `InsertRows` / hand-written multi-row batches | **%s** (per repetition: %s) | |\n", figure(r.Ratio(handMultiRow, handleBatch)), figure(r.PairedRatio(handMultiRow, handleBatch)))
	p("| `HandleBatch(100)` + `InsertRows` + `Once` / hand-written multi-row batches | %s | |\n", figure(r.Ratio(handMultiRow, handleBatchOnce)))
	p("| hand-written: multi-row / 100 single-row `UPDATE`s a batch | %s | (what the statement shape gains) |\n", figure(r.Ratio(handSingleRow, handMultiRow)))
	p("| hand-written multi-row batches / per-entry pipeline | %s | |\n", figure(r.Ratio(perEntryPipeline, handMultiRow)))
	p("| cost of `Once`, batch handler | %.0f%% | |\n\n", 100*(1-r.Ratio(handleBatch, handleBatchOnce)))
	p("A batch of 100 single-row `UPDATE`s costs the server 100 statements; one\n")
	p("multi-row statement costs it one parse and one round trip, which is why the\n")
	p("statement's shape, not the pipeline, sets these figures. `Once` doubles the\n")
	p("rows a batch writes (100 records beside 100 account rows, into a table with\n")
	p("a three-column binary key and a time index), which is its cost here.\n\n")
}
