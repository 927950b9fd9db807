package engine

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/magnetar-io/magnetar/internal/atomicfile"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// recordFile is the name of a sandbox's persisted record in its directory.
const recordFile = "sandbox.json"

// sandboxRecord is what survives a restart of the engine. It is written
// crash-safely (temporary file, fsync, rename) on every state change.
type sandboxRecord struct {
	Version        int    `json:"version"`
	ID             string `json:"id"`
	Kind           string `json:"kind"`
	Namespace      string `json:"namespace"`
	Hostname       string `json:"hostname,omitempty"`
	NetNSPath      string `json:"netnsPath,omitempty"`
	PrivateNetwork bool   `json:"privateNetwork,omitempty"`
	// Network is the sandbox's attachment to a network of the engine's.
	Network      *networkRecord    `json:"network,omitempty"`
	HostPID      bool              `json:"hostPID,omitempty"`
	HostIPC      bool              `json:"hostIPC,omitempty"`
	Sysctls      map[string]string `json:"sysctls,omitempty"`
	CgroupParent string            `json:"cgroupParent,omitempty"`
	DNS          backend.DNSConfig `json:"dns"`
	Labels       map[string]string `json:"labels,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	State        SandboxState      `json:"state"`
	Pid          uint32            `json:"pid,omitempty"`
	Info         map[string]string `json:"info,omitempty"`
	CreatedAt    time.Time         `json:"createdAt"`
	StartedAt    time.Time         `json:"startedAt,omitzero"`
	ExitedAt     time.Time         `json:"exitedAt,omitzero"`
	ExitCode     uint32            `json:"exitCode"`
	BackendState []byte            `json:"backendState,omitempty"`
	Paused       bool              `json:"paused,omitempty"`
	// PausedContainers are the containers the sandbox's pause froze.
	PausedContainers []string                    `json:"pausedContainers,omitempty"`
	Deadline         time.Time                   `json:"deadline,omitzero"`
	IdleTimeout      time.Duration               `json:"idleTimeout,omitempty"`
	Containers       map[string]*containerRecord `json:"containers,omitempty"`
}

// containerRecord is the persisted part of a container.
type containerRecord struct {
	ID     string              `json:"id"`
	Bundle string              `json:"bundle"`
	Rootfs []mount.Mount       `json:"rootfs,omitempty"`
	Stdio  backend.Stdio       `json:"stdio"`
	Pid    uint32              `json:"pid,omitempty"`
	State  ProcessState        `json:"state"`
	Exit   *backend.ExitStatus `json:"exit,omitempty"`
}

func writeRecord(dir string, rec *sandboxRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode sandbox record: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, recordFile), data, 0o600); err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	return nil
}

func readRecord(dir string) (*sandboxRecord, error) {
	data, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return nil, err
	}
	var rec sandboxRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Join(dir, recordFile), err)
	}
	return &rec, nil
}
