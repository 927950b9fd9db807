package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
)

// Results is everything one run measured; results.json holds it and the
// report is rendered from it alone.
type Results struct {
	Date     time.Time `json:"date"`
	Short    bool      `json:"short"`
	Duration float64   `json:"durationSeconds"`
	Machine  Machine   `json:"machine"`
	// Kinds are the measured kinds in report order (stock runc first).
	Kinds []KindInfo `json:"kinds"`
	// Notes are remarks on this run (kinds skipped, counts reduced).
	Notes []string `json:"notes,omitempty"`

	Serial   map[string]*Serial `json:"serial"`
	Parallel []Parallel         `json:"parallel"`
	Density  map[string]*Dense  `json:"density"`
	Direct   map[string]*Direct `json:"direct"`
	Network  *Network           `json:"network,omitempty"`
	// Phases are the sandboxer's calls and the runc kind's phases during
	// the serial magnetar-runc pods.
	Phases *Phases `json:"phases,omitempty"`
	// GoBench are the Go benchmarks' results (go test -bench).
	GoBench []GoBench `json:"goBench,omitempty"`
}

// KindInfo names a measured kind.
type KindInfo struct {
	// Name is the CRI runtime handler ("runc" is containerd's stock one),
	// or names a variant of Handler.
	Name string `json:"name"`
	// Handler is the CRI runtime handler of a variant (empty: Name).
	Handler string `json:"handler,omitempty"`
	// Label is how the report names it.
	Label string `json:"label"`
	// Workload is what its containers run.
	Workload string `json:"workload"`
}

// Serial holds one sample per serial pod, in milliseconds.
type Serial struct {
	RunPod      []float64 `json:"runPodSandbox"`
	Create      []float64 `json:"createContainer"`
	Start       []float64 `json:"startContainer"`
	PodStart    []float64 `json:"podStart"`
	FirstOutput []float64 `json:"firstOutput"`
	StopRemove  []float64 `json:"stopRemove"`
}

// Parallel is one kind's batches of Pods pods started at once, one sample
// per batch, in milliseconds.
type Parallel struct {
	Kind string `json:"kind"`
	Pods int    `json:"pods"`
	// Started: until every StartContainer returned.
	Started []float64 `json:"started"`
	// FirstOutput: until every container's first log line.
	FirstOutput []float64 `json:"firstOutput"`
	// Removed: StopPodSandbox + RemovePodSandbox of all, at once.
	Removed []float64 `json:"removed"`
}

// Dense is one kind's host memory and processes at several pod counts.
type Dense struct {
	// BaselineKB is the PSS of the processes measured before the first
	// pod (containerd, the sandboxer).
	BaselineKB int64          `json:"baselineKB"`
	Points     []DensityPoint `json:"points"`
}

// DensityPoint is the host's state with Pods running pods of a kind.
type DensityPoint struct {
	Pods int `json:"pods"`
	// AddedKB is the PSS added by the pods, containerd's growth excluded.
	AddedKB int64 `json:"addedKB"`
	// ContainerdKB is containerd's growth.
	ContainerdKB int64 `json:"containerdKB"`
	// ByClassKB breaks AddedKB (and containerd's growth) down by process
	// class (see classOf).
	ByClassKB map[string]int64 `json:"byClassKB"`
	// Processes is how many processes the pods added.
	Processes int `json:"processes"`
}

// Network holds the network benchmark's samples (direct mode).
type Network struct {
	// Start: CreateSandbox + Run per kind and network mode ("none",
	// "bridge"), in milliseconds.
	Start map[string]map[string][]float64 `json:"start"`
	// Throughput: MB/s of a TCP download of TransferBytes from a server
	// in a namespace of the run, per variant (in Variants' order).
	Throughput    map[string][]float64 `json:"throughput"`
	Variants      []string             `json:"variants"`
	TransferBytes int64                `json:"transferBytes"`
}

// Direct holds one sample per sandbox started through Magnetar's API, in
// milliseconds.
type Direct struct {
	// Run: CreateSandbox + Run (create and start the container).
	Run []float64 `json:"run"`
	// FirstOutput: from CreateSandbox's call until the first output chunk
	// reached the client.
	FirstOutput []float64 `json:"firstOutput"`
	// Delete: the sandbox's forced delete.
	Delete []float64 `json:"delete"`
}

// Phases is where the magnetar-runc pods' start went.
type Phases struct {
	// Pods is how many pods the figures are over.
	Pods int `json:"pods"`
	// Calls are the sandboxer's calls per pod (summed over calls of the
	// same method), in milliseconds, keyed by method.
	Calls map[string][]float64 `json:"calls"`
	// CallCounts is how many calls of each method a pod got (median).
	CallCounts map[string]float64 `json:"callCounts"`
	// Spans are the runc kind's phases per pod, in milliseconds.
	Spans map[string][]float64 `json:"spans"`
}

// GoBench is one line of `go test -bench` output.
type GoBench struct {
	Package string   `json:"package"`
	Name    string   `json:"name"`
	N       int64    `json:"n"`
	Metrics []Metric `json:"metrics"`
}

// Metric is one value and unit of a Go benchmark.
type Metric struct {
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(path, append(data, '\n'))
}

func readResults(path string) (*Results, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// writeFile writes data to path crash-safely (temporary file, fsync,
// rename).
func writeFile(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o644)
}
