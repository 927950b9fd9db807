package main

import (
	"strconv"
	"strings"
)

// parseGoBench reads `go test -bench` output: "pkg:" lines name the
// package of the "Benchmark..." lines after them.
func parseGoBench(lines []string) []GoBench {
	var out []GoBench
	pkg := ""
	for _, line := range lines {
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || len(f)%2 != 0 {
			continue // a benchmark's log line, or one that failed
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		b := GoBench{Package: pkg, Name: f[0], N: n}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			b.Metrics = append(b.Metrics, Metric{Value: v, Unit: f[i+1]})
		}
		if len(b.Metrics) > 0 {
			out = append(out, b)
		}
	}
	return out
}
