package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// writePlots writes the report's SVG plots into dir; a plot with nothing
// measured is left out (a log scale cannot draw an empty plot).
func writePlots(r *Results, dir string) error {
	for name, mk := range map[string]func(*Results) (*plot.Plot, error){
		"pod-start.svg": func(r *Results) (*plot.Plot, error) {
			return boxes(r, "Serial pod start (RunPodSandbox + CreateContainer + StartContainer)", func(s *Serial) []float64 { return s.PodStart })
		},
		"first-output.svg": func(r *Results) (*plot.Plot, error) {
			return boxes(r, "Time to the container's first log line (from RunPodSandbox)", func(s *Serial) []float64 { return s.FirstOutput })
		},
		"parallel.svg": parallelPlot,
		"memory.svg":   memoryPlot,
	} {
		p, err := mk(r)
		if err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
		path := filepath.Join(dir, name)
		if p == nil {
			// Nothing measured for it (a run stopped early): a stale plot
			// from an earlier run must not pass for this one's.
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		if err := savePlot(p, path); err != nil {
			return fmt.Errorf("plot %s: %w", name, err)
		}
	}
	return nil
}

// savePlot renders p as SVG and writes it crash-safely.
func savePlot(p *plot.Plot, path string) error {
	w, err := p.WriterTo(8*vg.Inch, 4.5*vg.Inch, "svg")
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		return err
	}
	return writeFile(path, buf.Bytes())
}

// logY puts p's Y axis on a log scale with readable ticks.
func logY(p *plot.Plot) {
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
}

// boxes draws one box plot per kind of a serial measurement, in ms.
func boxes(r *Results, title string, get func(*Serial) []float64) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "milliseconds (log scale)"
	logY(p)
	var names []string
	for _, k := range r.Kinds {
		s := r.Serial[k.Name]
		if s == nil || len(get(s)) == 0 {
			continue
		}
		bp, err := plotter.NewBoxPlot(vg.Points(30), float64(len(names)), plotter.Values(get(s)))
		if err != nil {
			return nil, err
		}
		bp.FillColor = plotutil.Color(len(names))
		p.Add(bp)
		names = append(names, k.Label)
	}
	if len(names) == 0 {
		return nil, nil
	}
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p, nil
}

// parallelPlot draws, per kind, the median time until N pods started at
// once were all started, against N.
func parallelPlot(r *Results) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Pods started at once: until all started (median)"
	p.X.Label.Text = "pods"
	p.Y.Label.Text = "milliseconds (log scale)"
	logY(p)
	i := 0
	for _, k := range r.Kinds {
		var xys plotter.XYs
		for _, b := range r.Parallel {
			if b.Kind == k.Name && len(b.Started) > 0 {
				xys = append(xys, plotter.XY{X: float64(b.Pods), Y: median(b.Started)})
			}
		}
		if len(xys) == 0 {
			continue
		}
		if err := addLine(p, k.Label, xys, i); err != nil {
			return nil, err
		}
		i++
	}
	if i == 0 {
		return nil, nil
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	return p, nil
}

// memoryPlot draws, per kind, the host memory (PSS) the running pods
// added against their number.
func memoryPlot(r *Results) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Host memory added by running pods (PSS, containerd's growth excluded)"
	p.X.Label.Text = "pods"
	p.Y.Label.Text = "MB (log scale)"
	logY(p)
	i := 0
	for _, k := range r.Kinds {
		d := r.Density[k.Name]
		if d == nil {
			continue
		}
		var xys plotter.XYs
		for _, pt := range d.Points {
			// A log scale has no room for nothing (or a shrinking heap).
			xys = append(xys, plotter.XY{X: float64(pt.Pods), Y: max(float64(pt.AddedKB)/1024, 0.01)})
		}
		if len(xys) == 0 {
			continue
		}
		if err := addLine(p, k.Label, xys, i); err != nil {
			return nil, err
		}
		i++
	}
	if i == 0 {
		return nil, nil
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	return p, nil
}

// addLine adds a line with points in the i-th color and shape.
func addLine(p *plot.Plot, label string, xys plotter.XYs, i int) error {
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color = plotutil.Color(i)
	l.Dashes = plotutil.Dashes(i)
	s.Color = plotutil.Color(i)
	s.Shape = plotutil.Shape(i)
	s.GlyphStyle.Radius = vg.Points(3)
	p.Add(l, s)
	p.Legend.Add(label, l, s)
	return nil
}
