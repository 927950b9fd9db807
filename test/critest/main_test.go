// Package critest runs cri-tools' critest (pinned in tools/go.mod) against
// the stock runc handler and every Magnetar handler of one private
// containerd (internal/harness) with magnetar-sandboxer, and checks the
// results against expectations.toml. Root only; run it with
// `make test-critest`.
package critest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// env is the registry, containerd and sandboxer of a run.
type env struct {
	base      string // the run's directory, removed by close
	tmp       string // critest's TMPDIR (host paths it mounts into pods)
	binDir    string
	reg       *harness.Registry
	ctrd      *harness.Containerd
	sandboxer *exec.Cmd
	sbDone    chan struct{}
	sbLog     *testutil.Buffer
}

// setup starts everything; t.Cleanup tears it down.
func setup(t *testing.T) *env {
	t.Helper()
	binDir, err := harness.DefaultBinDir()
	if err != nil {
		testutil.SkipOrFail(t, "%v", err)
	}
	if err := harness.CheckPrerequisites(binDir); err != nil {
		testutil.SkipOrFail(t, "critest prerequisites: %v", err)
	}
	for _, b := range []string{"magnetar-sandboxer", "containerd-shim-magnetar-v2", "critest"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			testutil.SkipOrFail(t, "%s not built (make tools build): %v", b, err)
		}
	}
	ctx := context.Background()
	base, err := os.MkdirTemp("", "mgn-critest-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{base: base, tmp: filepath.Join(base, "tmp"), binDir: binDir, sbLog: &testutil.Buffer{}}
	t.Cleanup(func() { e.close(t) })
	if err := os.Mkdir(e.tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	// critest's host IPC specs make System V shared memory segments on
	// the host (ipcmk) and never remove them: remove the new ones.
	shmBefore := shmIDs(t)
	t.Cleanup(func() {
		for id := range shmIDs(t) {
			if !shmBefore[id] {
				if out, err := exec.Command("ipcrm", "-m", id).CombinedOutput(); err != nil {
					t.Errorf("ipcrm -m %s: %v: %s", id, err, out)
				}
			}
		}
	})

	start := time.Now()
	images, err := harness.CritestImages(ctx, base)
	if err != nil {
		t.Fatalf("build critest images: %v", err)
	}
	if e.reg, err = harness.StartRegistry(images...); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d critest images built and served on %s in %v", len(images), e.reg.Addr(), time.Since(start).Round(time.Millisecond))

	e.ctrd, err = harness.Start(ctx, harness.Options{
		BinDir:   binDir,
		ShimPath: filepath.Join(binDir, "containerd-shim-magnetar-v2"),
		Registry: e.reg.Addr(),
		// critest mounts host paths below its TMPDIR with propagation
		// and reaches pods by IP and host port, as on a node.
		SharedDir:     e.tmp,
		ReachablePods: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ctrd.ImportPause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	return e
}

// startSandboxer starts magnetar-sandboxer in containerd's private mount
// namespace, where CRI's netns bind mounts live.
func (e *env) startSandboxer() error {
	root, err := harness.ModuleRoot()
	if err != nil {
		return err
	}
	guest := os.Getenv("MAGNETAR_GUEST_DIR")
	if guest == "" {
		guest = filepath.Join(root, ".tmp", "guest")
	}
	e.sandboxer = exec.Command("nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", e.ctrd.Pid()), "--",
		filepath.Join(e.binDir, "magnetar-sandboxer"),
		"--listen", e.ctrd.SandboxerSocket(),
		"--state-dir", filepath.Join(e.base, "sbstate"),
		"--run-dir", filepath.Join(e.base, "sbrun"),
		"--containerd-ttrpc-address", e.ctrd.TTRPCAddress(),
		"--log-level", "debug",
		"--vm-guest-dir", guest,
	)
	e.sandboxer.Stdout = e.sbLog
	e.sandboxer.Stderr = e.sbLog
	if err := e.sandboxer.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	e.sbDone = done
	cmd := e.sandboxer
	go func() { _ = cmd.Wait(); close(done) }()
	if !testutil.Poll(10*time.Second, func() bool { _, err := os.Stat(e.ctrd.SandboxerSocket()); return err == nil }) {
		return fmt.Errorf("sandboxer did not come up\n%s", e.sbLog)
	}
	return nil
}

func (e *env) close(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if e.ctrd != nil {
		// Remove pods critest left while the sandboxer still runs.
		if _, err := e.ctrd.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
			t.Logf("remove pods: %v", err)
		}
	}
	if e.sandboxer != nil && e.sandboxer.Process != nil {
		_ = e.sandboxer.Process.Signal(os.Interrupt)
		select {
		case <-e.sbDone:
		case <-time.After(10 * time.Second):
			_ = e.sandboxer.Process.Kill()
			<-e.sbDone
		}
	}
	if e.ctrd != nil {
		if err := e.ctrd.Stop(ctx); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	}
	if e.reg != nil {
		if err := e.reg.Close(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	}
	if t.Failed() || os.Getenv("MAGNETAR_E2E_LOGS") == "1" {
		t.Logf("--- sandboxer log (tail) ---\n%s", lastBytes(e.sbLog.String(), 32<<10))
	}
	if err := harness.RemoveTree(e.base); err != nil {
		t.Errorf("remove %s: %v", e.base, err)
	}
}

// shmIDs returns the IDs of the host's System V shared memory segments.
func shmIDs(t *testing.T) map[string]bool {
	data, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); i > 0 && len(f) > 1 {
			ids[f[1]] = true
		}
	}
	return ids
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
