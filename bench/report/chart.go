package main

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/safesync-go/safesync/bench/internal/results"
)

// The charts are plain SVG written here, so that rendering needs nothing
// but this program.

const (
	chartFont  = `font-family="Helvetica, Arial, sans-serif"`
	safeColour = "#2b6cb0"
	baseColour = "#a0aec0"
	peerColour = "#dd6b20"
)

type bar struct {
	label  string
	value  float64
	colour string
}

// barPanel draws horizontal bars with value labels at (x, y), width w.
func barPanel(b *strings.Builder, x, y, w float64, title, unit string, bars []bar) float64 {
	const rowH, labelW = 26.0, 230.0
	max := 0.0
	for _, br := range bars {
		max = math.Max(max, br.value)
	}
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" %s font-size="15" font-weight="bold">%s</text>`+"\n", x, y, chartFont, title)
	y += 14
	for i, br := range bars {
		ry := y + float64(i)*rowH
		bw := (w - labelW - 90) * br.value / max
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f" %s font-size="12" text-anchor="end">%s</text>`+"\n", x+labelW-8, ry+16, chartFont, escape(br.label))
		fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="%.1f" height="18" fill="%s"/>`+"\n", x+labelW, ry+3, math.Max(bw, 1), br.colour)
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f" %s font-size="12">%s %s</text>`+"\n", x+labelW+bw+6, ry+16, chartFont, thousands(br.value), unit)
	}
	return y + float64(len(bars))*rowH + 24
}

func colourFor(name string) string {
	switch {
	case strings.HasPrefix(name, "hand-written"):
		return baseColour
	case strings.HasPrefix(name, "watermill"):
		return peerColour
	}
	return safeColour
}

// throughputChart compares the contenders of the drain and the pipeline.
func throughputChart(drain, pipe *results.Run) string {
	var body strings.Builder
	y := 30.0
	var bars []bar
	for _, c := range []string{"hand-written rueidis loop", "safesync Run", "safesync Run, Concurrency 4", "safesync RunBatch", "watermill-redisstream"} {
		if s, ok := drain.Median(c); ok {
			bars = append(bars, bar{c, s.Rate(), colourFor(c)})
		}
	}
	y = barPanel(&body, 20, y, 760, "Draining a stream (entries/s, higher is better)", "/s", bars)
	bars = nil
	for _, c := range pipelineContenders {
		if s, ok := pipe.Median(c); ok {
			bars = append(bars, bar{c, s.Rate(), colourFor(c)})
		}
	}
	y = barPanel(&body, 20, y, 760, "Stream → MariaDB, one UPDATE per entry (entries/s)", "/s", bars)
	fmt.Fprintf(&body, `<text x="20" y="%.0f" %s font-size="11" fill="#4a5568">grey: hand-written baselines; blue: safesync; orange: watermill-redisstream. Medians; see BENCHMARKS.md.</text>`+"\n", y, chartFont)
	return svg(800, y+16, body.String())
}

// linePanel plots series of (x, y) points, x on a log2 or log10 scale.
func linePanel(b *strings.Builder, x0, y0, w, h float64, title, xLabel string, logBase float64, series map[string][][2]float64) {
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" %s font-size="14" font-weight="bold">%s</text>`+"\n", x0, y0-12, chartFont, title)
	minX, maxX, maxY := math.Inf(1), math.Inf(-1), 0.0
	names := make([]string, 0, len(series))
	for name, pts := range series {
		names = append(names, name)
		for _, p := range pts {
			minX, maxX, maxY = math.Min(minX, p[0]), math.Max(maxX, p[0]), math.Max(maxY, p[1])
		}
	}
	sort.Strings(names)
	if len(names) == 0 || maxX <= minX {
		return
	}
	lx := func(v float64) float64 { return math.Log(v) / math.Log(logBase) }
	px := func(v float64) float64 { return x0 + 50 + (w-70)*(lx(v)-lx(minX))/(lx(maxX)-lx(minX)) }
	py := func(v float64) float64 { return y0 + h - 30 - (h-40)*v/(maxY*1.1) }
	fmt.Fprintf(b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#718096"/>`+"\n", x0+50, y0+h-30, x0+w-20, y0+h-30)
	fmt.Fprintf(b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#718096"/>`+"\n", x0+50, y0+h-30, x0+50, y0)
	for _, t := range []float64{0, 0.5, 1} {
		v := maxY * t
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f" %s font-size="10" text-anchor="end">%s</text>`+"\n", x0+46, py(v)+4, chartFont, thousands(v))
	}
	ticks := map[float64]bool{}
	colours := []string{safeColour, "#38a169", baseColour, peerColour}
	for i, name := range names {
		pts := series[name]
		sort.Slice(pts, func(a, c int) bool { return pts[a][0] < pts[c][0] })
		var path []string
		for _, p := range pts {
			path = append(path, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
			ticks[p[0]] = true
		}
		col := colours[i%len(colours)]
		fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2.5"/>`+"\n", strings.Join(path, " "), col)
		for _, p := range pts {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", px(p[0]), py(p[1]), col)
		}
		fmt.Fprintf(b, `<text x="%.0f" y="%.0f" %s font-size="11" fill="%s">%s</text>`+"\n", x0+60, y0+12+float64(i)*14, chartFont, col, escape(name))
	}
	for _, t := range slices.Sorted(maps.Keys(ticks)) {
		fmt.Fprintf(b, `<text x="%.1f" y="%.0f" %s font-size="10" text-anchor="middle">%s</text>`+"\n", px(t), y0+h-16, chartFont, thousands(t))
	}
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" %s font-size="11" text-anchor="middle">%s</text>`+"\n", x0+w/2, y0+h, chartFont, xLabel)
}

func scalingChart(sc scaling) string {
	var body strings.Builder
	linePanel(&body, 10, 40, 390, 260, "entries/s by stream length", "entries in the stream", 10, sc.byEntries)
	linePanel(&body, 410, 40, 390, 260, "entries/s by transactions in flight", "transactions in flight", 2, sc.byConcurrency)
	return svg(810, 310, body.String())
}

func svg(w, h float64, body string) string {
	return fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f">`+"\n"+
		`<rect width="100%%" height="100%%" fill="white"/>`+"\n%s</svg>\n", w, h, w, h, body)
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// thousands formats v with thousands separators, no decimals.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}
