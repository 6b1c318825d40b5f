package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// stepLoad is the 1-minute load average when a step started and when it
// ended: on two cores shared with the servers, a figure means little
// without it.
type stepLoad struct {
	Start, End float64
}

const loadsFile = "loads.json"

// loadAverage reads the 1-minute load average, or -1.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// readLoads returns the loads recorded by the last measurement, by the
// step's output file; none when the results predate them.
func readLoads() (map[string]stepLoad, error) {
	b, err := os.ReadFile(filepath.Join(*resultsDir, loadsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]stepLoad{}, nil
	}
	if err != nil {
		return nil, err
	}
	m := map[string]stepLoad{}
	return m, json.Unmarshal(b, &m)
}

func writeLoads(m map[string]stepLoad) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(*resultsDir, loadsFile), append(b, '\n'), 0o644)
}

// sectionSteps names, for each section heading of the report, the steps
// whose outputs its figures come from.
var sectionSteps = map[string][]string{
	"## WithTx against hand-written database/sql": {"withtx.txt"},
	"## Concurrency strategies under contention":  {"strategies.txt"},
	"## Draining a stream":                        {"streamdrain.txt"},
	"## Stream → MariaDB pipelines":               {"pipeline.txt", "pipeline-prepared.txt"},
	"## Batch handlers":                           {"pipeline.txt"},
	"### From 1,000 to 100,000 entries":           {"scale-n1000.txt", "scale-n10000.txt", "pipeline.txt"},
	"### From 1 to 16 transactions in flight":     {"scale-c1.txt", "scale-c2.txt", "scale-c4.txt", "scale-c8.txt", "scale-c16.txt"},
}

// loadLine says what the load average was while the steps behind the
// section headed heading ran, or "" when it was not recorded.
func loadLine(loads map[string]stepLoad, heading string) string {
	var parts []string
	for _, out := range sectionSteps[heading] {
		l, ok := loads[out]
		if !ok || l.Start < 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%.2f → %.2f (%s)", l.Start, l.End, strings.TrimSuffix(out, ".txt")))
	}
	if len(parts) == 0 {
		return ""
	}
	return "Load average (1 min) at the start and end of the measurement: " + strings.Join(parts, ", ") + ".\n\n"
}
