package main

import (
	"strings"
	"testing"
)

// TestNetworkSection: the network benchmark's tables show each kind's
// start per mode with the difference, and each variant's throughput with
// its ratio to the host-network baseline, in the order measured.
func TestNetworkSection(t *testing.T) {
	r := &Results{Network: &Network{
		Start: map[string]map[string][]float64{
			"runc":   {"none": {100, 120}, "bridge": {200, 260}},
			"gvisor": {"none": {500}, "bridge": {480}},
		},
		Throughput:    map[string][]float64{"runc, host network": {100, 300, 200}, "gvisor, bridge": {50}},
		Variants:      []string{"runc, host network", "gvisor, bridge"},
		TransferBytes: 64 << 20,
	}}
	var b strings.Builder
	r.networkSection(&b)
	out := b.String()
	for _, want := range []string{
		"| runc | 2 | 110 ms / ", "| +120 ms |",
		"| gvisor | 1 | 500 ms / 500 ms | 480 ms / 480 ms | -20 ms |",
		"download of 64 MiB",
		"| runc, host network | 3 | 200 (100-300) | 1.00× |",
		"| gvisor, bridge | 1 | 50 (50-50) | 0.25× |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "runc, host network") > strings.Index(out, "gvisor, bridge") {
		t.Error("variants out of order")
	}
	var empty strings.Builder
	(&Results{}).networkSection(&empty)
	if empty.Len() != 0 {
		t.Errorf("no network results rendered %q", empty.String())
	}
}
