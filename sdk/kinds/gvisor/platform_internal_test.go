package gvisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRunsc writes a runsc stand-in that counts its runs in a file and
// answers --version and `help platforms`.
func fakeRunsc(t *testing.T, dir, date string) (bin, runs string) {
	t.Helper()
	bin, runs = filepath.Join(dir, "runsc"), filepath.Join(dir, "runs")
	script := "#!/bin/sh\necho \"$@\" >> " + runs + "\n" +
		"case \"$1\" in\n--version) echo 'runsc version 0.0~" + date + ".0';;\nhelp) echo 'kvm ptrace systrap';;\nesac\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, runs
}

func countRuns(t *testing.T, runs string) int {
	t.Helper()
	data, err := os.ReadFile(runs)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

// forget drops the in-process cache, as a new sandboxer process starts
// without it.
func forget() {
	platformsMu.Lock()
	clear(platforms)
	platformsMu.Unlock()
}

// TestPlatformChoiceKept: a new process (a restarted or upgraded worker)
// takes the platform choice kept in the runsc root instead of running
// runsc again, as long as the binary is the same; a replaced binary or a
// damaged record is detected afresh.
func TestPlatformChoiceKept(t *testing.T) {
	dir := t.TempDir()
	bin, runs := fakeRunsc(t, dir, "20240729")
	cfg := Config{Binary: bin, Root: t.TempDir(), Platform: PlatformSystrap}
	t.Cleanup(forget)

	forget()
	p, reason, v, err := choosePlatform(cfg)
	if err != nil || p != PlatformSystrap || reason != "configured" || v != 20240729 {
		t.Fatalf("first choice: %q %q %d %v", p, reason, v, err)
	}
	first := countRuns(t, runs)
	if first == 0 {
		t.Fatal("the first choice ran no runsc")
	}

	forget()
	p2, reason2, v2, err := choosePlatform(cfg)
	if err != nil || p2 != p || reason2 != reason || v2 != v {
		t.Fatalf("kept choice: %q %q %d %v, want %q %q %d", p2, reason2, v2, err, p, reason, v)
	}
	if n := countRuns(t, runs); n != first {
		t.Fatalf("a new process with the same runsc ran it again (%d runs, want %d)", n, first)
	}

	// An upgraded runsc (another binary at the same path) is detected.
	forget()
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	fakeRunsc(t, dir, "20250101")
	_, _, v3, err := choosePlatform(cfg)
	if err != nil || v3 != 20250101 {
		t.Fatalf("after replacing runsc: version %d, %v; want 20250101", v3, err)
	}
	after := countRuns(t, runs)
	if after == first {
		t.Fatal("a replaced runsc was not detected again")
	}

	// A damaged record is ignored.
	forget()
	if err := os.WriteFile(filepath.Join(cfg.Root, "platform.json"), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, v4, err := choosePlatform(cfg); err != nil || v4 != 20250101 {
		t.Fatalf("with a damaged record: version %d, %v", v4, err)
	}
	if countRuns(t, runs) == after {
		t.Fatal("a damaged record was trusted")
	}

	// A too old runsc is not kept: every start reports it.
	forget()
	old := Config{Binary: bin, Root: t.TempDir(), Platform: PlatformSystrap}
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	fakeRunsc(t, dir, "20200101")
	if _, _, _, err := choosePlatform(old); err == nil {
		t.Fatal("a too old runsc was accepted")
	}
	if _, err := os.Stat(filepath.Join(old.Root, "platform.json")); !os.IsNotExist(err) {
		t.Fatalf("a failed detection was kept: %v", err)
	}
}
