package daemon

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// unitFile is the systemd unit shipped for magnetar-sandboxer.
const unitFile = "../systemd/magnetar-sandboxer.service"

// unitSettings returns the unit's key=value settings (last one wins).
func unitSettings(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	kv := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: line %q is not key=value", unitFile, line)
		}
		kv[k] = v
	}
	return kv
}

// TestSystemdUnit checks the shipped unit against the program: its
// command line parses, a reload is a live upgrade (SIGHUP to the
// supervisor, the main process) and stopping the service signals the
// supervisor only, never the containers; systemd-analyze accepts it.
func TestSystemdUnit(t *testing.T) {
	kv := unitSettings(t)
	args := strings.Fields(kv["ExecStart"])
	if len(args) == 0 || filepath.Base(args[0]) != "magnetar-sandboxer" {
		t.Fatalf("ExecStart=%q does not run magnetar-sandboxer", kv["ExecStart"])
	}
	var out bytes.Buffer
	if code := Main(context.Background(), append(args[1:], "--version"), &out); code != 0 {
		t.Errorf("ExecStart's flags are not the program's: exit %d: %s", code, out.String())
	}
	if got := kv["ExecReload"]; got != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload=%q, want a SIGHUP to the supervisor (live upgrade)", got)
	}
	if kv["KillMode"] != "process" {
		t.Errorf("KillMode=%q: stopping the service would kill the node's containers", kv["KillMode"])
	}

	analyze, err := exec.LookPath("systemd-analyze")
	testutil.Require(t, err == nil, "no systemd-analyze in PATH")
	// systemd-analyze verify wants ExecStart's program to exist.
	dir := t.TempDir()
	exe := filepath.Join(dir, "magnetar-sandboxer")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "magnetar-sandboxer.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(data, []byte(args[0]), []byte(exe)), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(analyze, "verify", unit).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, b)
	}
}
