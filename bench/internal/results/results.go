// Package results is the machine-readable form of a benchmark run, written
// by the bench programs with -json and read by the report.
package results

import (
	"encoding/json"
	"math"
	"os"
	"slices"
	"time"
)

// Sample is one repetition of one contender.
type Sample struct {
	Contender string  `json:"contender"`
	Rep       int     `json:"rep"`
	Entries   int     `json:"entries"`
	Seconds   float64 `json:"seconds"`
	Allocs    float64 `json:"allocs_per_entry"`
	Bytes     float64 `json:"bytes_per_entry"`
	// CPU is the process's user and system CPU time per entry over the
	// run, in microseconds, where a program measures it (servers are
	// other processes); Load the 1-minute load average after it.
	CPU  float64 `json:"cpu_us_per_entry,omitempty"`
	Load float64 `json:"load1,omitempty"`
}

// Run is every sample of one invocation of a bench program.
type Run struct {
	Benchmark string            `json:"benchmark"`
	Params    map[string]string `json:"params"`
	Samples   []Sample          `json:"samples"`
}

// Add records one sample.
func (r *Run) Add(contender string, rep, entries int, elapsed time.Duration, allocs, bytes float64) {
	r.Samples = append(r.Samples, Sample{Contender: contender, Rep: rep, Entries: entries, Seconds: elapsed.Seconds(), Allocs: allocs, Bytes: bytes})
}

// Write stores r as indented JSON at path.
func (r *Run) Write(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Read loads a Run written by Write.
func Read(path string) (*Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Run
	return &r, json.Unmarshal(b, &r)
}

// Of returns the samples of one contender in repetition order.
func (r *Run) Of(contender string) []Sample {
	var out []Sample
	for _, s := range r.Samples {
		if s.Contender == contender {
			out = append(out, s)
		}
	}
	return out
}

// Median returns the sample with the median time of a contender's
// samples, and false when it has none.
func (r *Run) Median(contender string) (Sample, bool) {
	s := r.Of(contender)
	if len(s) == 0 {
		return Sample{}, false
	}
	slices.SortFunc(s, func(a, b Sample) int {
		switch {
		case a.Seconds < b.Seconds:
			return -1
		case a.Seconds > b.Seconds:
			return 1
		}
		return 0
	})
	return s[len(s)/2], true
}

// Rate is entries per second.
func (s Sample) Rate() float64 { return float64(s.Entries) / s.Seconds }

// Elapsed is the sample's time.
func (s Sample) Elapsed() time.Duration { return time.Duration(s.Seconds * float64(time.Second)) }

// Ratio is how many times faster contender ran than base: the median time
// of base over the median time of contender. It is NaN when either has no
// samples.
func (r *Run) Ratio(base, contender string) float64 {
	b, okB := r.Median(base)
	c, okC := r.Median(contender)
	if !okB || !okC {
		return math.NaN()
	}
	return b.Seconds / c.Seconds
}

// PairedRatio is the median over repetitions of base's time over
// contender's time in the same repetition: less sensitive than Ratio to
// load that changes during a run. It is NaN when no repetition has both.
func (r *Run) PairedRatio(base, contender string) float64 {
	var ratios []float64
	for _, b := range r.Of(base) {
		for _, c := range r.Of(contender) {
			if b.Rep == c.Rep {
				ratios = append(ratios, b.Seconds/c.Seconds)
			}
		}
	}
	if len(ratios) == 0 {
		return math.NaN()
	}
	slices.Sort(ratios)
	return ratios[len(ratios)/2]
}

// MedianOf is the median over a contender's samples of what of picks
// (CPU, say), taken on its own rather than from the sample of median time;
// NaN when it has none.
func (r *Run) MedianOf(contender string, of func(Sample) float64) float64 {
	var v []float64
	for _, s := range r.Of(contender) {
		v = append(v, of(s))
	}
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// PairedRatioOf is the median over repetitions of what of picks of
// contender over the same of base in the same repetition (CPU per entry
// against a baseline's, say); NaN when no repetition has both.
func (r *Run) PairedRatioOf(base, contender string, of func(Sample) float64) float64 {
	var ratios []float64
	for _, b := range r.Of(base) {
		for _, c := range r.Of(contender) {
			if b.Rep == c.Rep && of(b) != 0 {
				ratios = append(ratios, of(c)/of(b))
			}
		}
	}
	if len(ratios) == 0 {
		return math.NaN()
	}
	slices.Sort(ratios)
	return ratios[len(ratios)/2]
}

// SampleCPU picks a sample's CPU per entry, for MedianOf and PairedRatioOf.
func SampleCPU(s Sample) float64 { return s.CPU }
