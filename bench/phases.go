package main

import (
	"strconv"
	"strings"
	"time"
)

// logFields parses the key=value pairs of an hclog line (values may be
// quoted).
func logFields(line string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(line); {
		eq := strings.IndexByte(line[i:], '=')
		if eq < 0 {
			break
		}
		eq += i
		ks := strings.LastIndexByte(line[:eq], ' ') + 1
		key := line[ks:eq]
		j := eq + 1
		var val string
		if j < len(line) && line[j] == '"' {
			if v, err := strconv.QuotedPrefix(line[j:]); err == nil {
				val, _ = strconv.Unquote(v)
				j += len(v)
			} else {
				end := strings.IndexByte(line[j+1:], '"')
				if end < 0 {
					end = len(line) - j - 1
				}
				val = line[j+1 : j+1+end]
				j += end + 2
			}
		} else {
			end := strings.IndexByte(line[j:], ' ')
			if end < 0 {
				end = len(line) - j
			}
			val = line[j : j+end]
			j += end
		}
		if key != "" {
			m[key] = val
		}
		i = min(j, len(line))
	}
	return m
}

// parsePhases reads the sandboxer's log for the pods in ids: its
// Controller and Task API calls (debug lines with a method and a
// duration) and the runc kind's spans (trace lines with a phase).
func parsePhases(lines []string, ids []string) *Phases {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	calls := map[string]map[string]float64{} // pod -> method -> ms
	counts := map[string]map[string]float64{}
	spans := map[string]map[string]float64{}
	for _, line := range lines {
		if !strings.Contains(line, "duration=") {
			continue
		}
		f := logFields(line)
		id := f["sandbox_id"]
		if !want[id] {
			continue
		}
		d, err := time.ParseDuration(f["duration"])
		if err != nil {
			continue
		}
		switch {
		case f["phase"] != "":
			add(spans, id, f["phase"], ms(d))
		case f["method"] != "":
			m := shortMethod(f["method"])
			add(calls, id, m, ms(d))
			add(counts, id, m, 1)
		}
	}
	p := &Phases{Pods: len(ids), Calls: map[string][]float64{}, CallCounts: map[string]float64{}, Spans: map[string][]float64{}}
	for _, id := range ids {
		for m, v := range calls[id] {
			p.Calls[m] = append(p.Calls[m], v)
		}
		for s, v := range spans[id] {
			p.Spans[s] = append(p.Spans[s], v)
		}
	}
	perMethod := map[string][]float64{}
	for _, id := range ids {
		for m, n := range counts[id] {
			perMethod[m] = append(perMethod[m], n)
		}
	}
	for m, ns := range perMethod {
		p.CallCounts[m] = median(ns)
	}
	return p
}

func add(m map[string]map[string]float64, id, key string, v float64) {
	if m[id] == nil {
		m[id] = map[string]float64{}
	}
	m[id][key] += v
}

// shortMethod turns "/containerd.services.sandbox.v1.Controller/Create"
// into "Controller.Create".
func shortMethod(m string) string {
	m = strings.TrimPrefix(m, "/")
	svc, name, ok := strings.Cut(m, "/")
	if !ok {
		return m
	}
	if i := strings.LastIndexByte(svc, '.'); i >= 0 {
		svc = svc[i+1:]
	}
	return svc + "." + name
}
