package runc

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// quickStatus tells a container's status ("created", "running", "paused"
// or "stopped") from runc's own state files, as `runc state` computes it
// (libcontainer's refreshState), without running runc: recovering many
// containers after a restart would otherwise start a runc per container.
// root is runc's root (its --root) and id the container's. ok is false
// when the files do not tell (another layout, cgroup v1): ask runc then.
//
// runc: the init (state.json's pid and start time) gone or a zombie means
// stopped; a frozen cgroup (see frozen) paused; the exec FIFO present
// (removed by `runc start`) created; otherwise running.
func quickStatus(root, id string) (status string, ok bool) {
	dir := filepath.Join(root, id)
	data, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return "", false
	}
	var st struct {
		InitProcessPid   int               `json:"init_process_pid"`
		InitProcessStart uint64            `json:"init_process_start"`
		CgroupPaths      map[string]string `json:"cgroup_paths"`
	}
	if err := json.Unmarshal(data, &st); err != nil || st.InitProcessPid <= 0 {
		return "", false
	}
	start, state, err := procstat.Stat(st.InitProcessPid)
	if err != nil {
		if os.IsNotExist(err) {
			return "stopped", true
		}
		return "", false
	}
	if start != st.InitProcessStart || state == 'Z' || state == 'X' {
		return "stopped", true
	}
	paused, ok := frozen(st.CgroupPaths)
	if !ok {
		return "", false
	}
	if paused {
		return "paused", true
	}
	if _, err := os.Lstat(filepath.Join(dir, "exec.fifo")); err == nil {
		return "created", true
	} else if !os.IsNotExist(err) {
		return "", false
	}
	return "running", true
}

// frozen reads the freezer state of a container's cgroups (runc's
// cgroup_paths): cgroup v1's freezer.state where there is a freezer
// hierarchy (also on hybrid hosts, whose "" path is the unified
// hierarchy without a freezer), else cgroup v2's cgroup.freeze.
func frozen(paths map[string]string) (paused, ok bool) {
	if p := paths["freezer"]; p != "" {
		data, err := os.ReadFile(filepath.Join(p, "freezer.state"))
		if err != nil {
			return false, false
		}
		switch string(bytes.TrimSpace(data)) {
		case "FROZEN":
			return true, true
		case "THAWED":
			return false, true
		}
		return false, false // FREEZING: runc waits; so does its answer
	}
	if p := paths[""]; p != "" && len(paths) == 1 {
		data, err := os.ReadFile(filepath.Join(p, "cgroup.freeze"))
		if err != nil {
			return false, false
		}
		return bytes.Equal(bytes.TrimSpace(data), []byte("1")), true
	}
	return false, false
}
