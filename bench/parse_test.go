package main

import (
	"math"
	"strings"
	"testing"
)

func TestStats(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if m := median(xs); m != 3 {
		t.Errorf("median = %v, want 3", m)
	}
	if m := median([]float64{1, 2, 3, 4}); m != 2.5 {
		t.Errorf("even median = %v, want 2.5", m)
	}
	if p := percentile(xs, 90); p != 5 {
		t.Errorf("p90 = %v, want 5", p)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(ratio(1, 0)) {
		t.Error("empty median or ratio to 0 is not NaN")
	}
}

func TestParsePhases(t *testing.T) {
	lines := []string{
		`2026-12-05T22:00:00.000Z [DEBUG] magnetar-sandboxer.controller: sandbox controller call: method=/containerd.services.sandbox.v1.Controller/Create sandbox_id=p1 code=OK duration=2.5ms error=<nil>`,
		`2026-12-05T22:00:00.000Z [DEBUG] magnetar-sandboxer: task api: method=/containerd.task.v3.Task/State sandbox_id=p1 duration=500µs error=<nil>`,
		`2026-12-05T22:00:00.000Z [DEBUG] magnetar-sandboxer: task api: method=/containerd.task.v3.Task/State sandbox_id=p1 duration=1.5ms error=<nil>`,
		`2026-12-05T22:00:00.000Z [TRACE] magnetar-sandboxer.runc: span: phase=create.runc sandbox_id=p1 container_id=c1 duration=20ms`,
		`2026-12-05T22:00:00.000Z [DEBUG] magnetar-sandboxer: task api: method=/containerd.task.v3.Task/State sandbox_id=other duration=9ms error="a b"`,
	}
	p := parsePhases(lines, []string{"p1"})
	if got := p.Calls["Controller.Create"]; len(got) != 1 || got[0] != 2.5 {
		t.Errorf("Controller.Create = %v, want [2.5]", got)
	}
	if got := p.Calls["Task.State"]; len(got) != 1 || got[0] != 2 || p.CallCounts["Task.State"] != 2 {
		t.Errorf("Task.State = %v (%v calls), want [2] over 2 calls", got, p.CallCounts["Task.State"])
	}
	if got := p.Spans["create.runc"]; len(got) != 1 || got[0] != 20 {
		t.Errorf("create.runc = %v, want [20]", got)
	}
}

func TestParseGoBench(t *testing.T) {
	out := parseGoBench(strings.Split("pkg: github.com/magnetar-io/magnetar/test/e2e\nBenchmarkCrash50Pods-2 \t 3\t 250.0 ms-p50/serve\t 0 ns/op\nBenchmarkX-2 --- FAIL\n", "\n"))
	if len(out) != 1 || out[0].Name != "BenchmarkCrash50Pods-2" || out[0].N != 3 || out[0].Metrics[0] != (Metric{250, "ms-p50/serve"}) {
		t.Errorf("parseGoBench = %+v", out)
	}
}

func TestParseProc(t *testing.T) {
	if ppid, ok := parsePPID([]byte("42 (a) b) S 7 42 42 0")); !ok || ppid != 7 {
		t.Errorf("parsePPID = %d, %v; want 7", ppid, ok)
	}
	if pss, ok := parsePSS([]byte("Rss: 100 kB\nPss:  37 kB\n")); !ok || pss != 37 {
		t.Errorf("parsePSS = %d, %v; want 37", pss, ok)
	}
	if ts, ok := firstLogTime([]byte("2026-12-05T22:00:00.5Z stdout F ready\n")); !ok || ts.Nanosecond() != 5e8 {
		t.Errorf("firstLogTime = %v, %v", ts, ok)
	}
	if _, ok := firstLogTime([]byte("2026-12-05T22:00:00.5Z stdout P rea")); ok {
		t.Error("an incomplete line has a time")
	}
}
