package dashboard

import (
	"strconv"
	"strings"
	"time"
)

// chart is an SVG line chart of a stream's samples, drawn on the server:
// entries handled per second (upper band) and pending entries (lower
// band) over the sampling window, each line scaled to its own maximum.
type chart struct {
	// Note says why there is nothing to draw, when Series is empty.
	Note   string
	Class  string // "spark" or "wide"
	W, H   int
	Mid    int // the line between the two bands
	Series []line
	Span   string // how far back the chart goes
	Label  string // for screen readers
}

// line is one series of a chart.
type line struct {
	Name   string
	Class  string
	Points string // SVG polyline points
	Last   string
	Max    string
}

// rate is one entries-per-second value between two samples.
type rate struct {
	at time.Time
	v  float64
}

// rates returns the handled entries per second between consecutive
// samples (0 where Handled went down: the stream was trimmed, or a group
// deleted).
func rates(pts []point) []rate {
	var out []rate
	for i := 1; i < len(pts); i++ {
		dt := pts[i].At.Sub(pts[i-1].At).Seconds()
		if dt <= 0 {
			continue
		}
		out = append(out, rate{pts[i].At, max(float64(pts[i].Handled-pts[i-1].Handled), 0) / dt})
	}
	return out
}

// currentRate is the last rate of pts, or -1 when there are fewer than two
// samples.
func currentRate(pts []point) float64 {
	r := rates(pts)
	if len(r) == 0 {
		return -1
	}
	return r[len(r)-1].v
}

// newChart draws pts over the window ending at now.
func newChart(name string, pts []point, now time.Time, window time.Duration, st samplingState, wide bool) chart {
	c := chart{Class: "spark", W: 160, H: 40, Span: human(window), Label: "Throughput and pending entries of " + name}
	if wide {
		c.Class, c.W, c.H = "wide", 600, 160
	}
	switch {
	case !st.Enabled:
		c.Note = "sampling is off"
		return c
	case len(pts) < 2:
		c.Note = "sampling: the chart fills in as samples arrive"
		if st.Failing {
			c.Note = "sampling fails (details in the service's log)"
		}
		return c
	}
	// The x axis spans the window, or the samples when they cover less.
	start := now.Add(-window)
	if pts[0].At.After(start) {
		start = pts[0].At
	}
	span := max(now.Sub(start), time.Second)
	c.Span = human(span)
	x := func(at time.Time) float64 {
		return max(0, min(float64(c.W), float64(at.Sub(start))/float64(span)*float64(c.W)))
	}
	// Each line has a band of its own, handled/s above and pending below,
	// scaled to its own maximum, so that neither hides the other.
	band := float64(c.H) / 2
	pad := 3.0
	y := func(i int, v, top float64) float64 {
		bottom := band*float64(i+1) - pad
		if top <= 0 {
			return bottom
		}
		return bottom - v/top*(band-2*pad)
	}

	rs := rates(pts)
	var top float64
	for _, r := range rs {
		top = max(top, r.v)
	}
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(coord(x(r.at), y(0, r.v, top)))
	}
	c.Series = append(c.Series, line{Name: "handled/s", Class: "handled", Points: strings.TrimSpace(b.String()),
		Last: perSecond(rs[len(rs)-1].v), Max: perSecond(top)})

	var ptop int64
	for _, p := range pts {
		ptop = max(ptop, p.Pending)
	}
	b.Reset()
	for _, p := range pts {
		b.WriteString(coord(x(p.At), y(1, float64(p.Pending), float64(ptop))))
	}
	c.Series = append(c.Series, line{Name: "pending", Class: "pending", Points: strings.TrimSpace(b.String()),
		Last: strconv.FormatInt(pts[len(pts)-1].Pending, 10), Max: strconv.FormatInt(ptop, 10)})
	c.Mid = c.H / 2
	return c
}

func coord(x, y float64) string {
	return strconv.FormatFloat(x, 'f', 1, 64) + "," + strconv.FormatFloat(y, 'f', 1, 64) + " "
}

// perSecond formats a rate: 0, 0.25, 3.5, 120.
func perSecond(v float64) string {
	switch {
	case v < 0:
		return "-"
	case v == 0:
		return "0"
	case v < 10:
		return strings.TrimRight(strings.TrimRight(strconv.FormatFloat(v, 'f', 2, 64), "0"), ".")
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}
