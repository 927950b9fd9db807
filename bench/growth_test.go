package main

import "testing"

// TestGrowth: new processes count whole, old ones by their change, and a
// process that ended between the snapshots counts for nothing.
func TestGrowth(t *testing.T) {
	base := snapshot{
		1: {PID: 1, Class: "sandboxer", PSSKB: 1000},
		2: {PID: 2, Class: "runner", PSSKB: 5000}, // ends before the second
		3: {PID: 3, Class: classContainerd, PSSKB: 7000},
	}
	s := snapshot{
		1:  {PID: 1, Class: "sandboxer", PSSKB: 1200},
		3:  {PID: 3, Class: classContainerd, PSSKB: 7100},
		10: {PID: 10, Class: "workload", PSSKB: 300},
		11: {PID: 11, Class: "workload", PSSKB: 400},
	}
	total, by, n := growth(base, s, classContainerd)
	if total != 200+700 || n != 2 || by["workload"] != 700 || by["sandboxer"] != 200 || by[classContainerd] != 100 || by["runner"] != 0 {
		t.Fatalf("growth = %d, %v, %d new", total, by, n)
	}
}
