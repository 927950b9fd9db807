package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestVMStdio drives the standard streams of a VM pod's containers
// through CRI, as users do with crictl: exec with stdin (to end of file),
// exec with a terminal, and attach to a container reading its stdin. One
// VM for all.
func TestVMStdio(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	e.requireGuest(t)
	if _, err := exec.LookPath("script"); err != nil {
		testutil.SkipOrFail(t, "script (bsdutils) is needed to give crictl a terminal: %v", err)
	}
	p := e.runPodWith(t, "magnetar-vm", false)
	bin, _ := harness.DefaultBinDir()
	crictl := filepath.Join(bin, "crictl")
	cid := e.startContainer(t, p, "sleeper", "sleep 600")

	// exec -i: stdin reaches the process, then end of file.
	data := strings.Repeat("magnetar-stdin\n", 20000) // 300000 bytes
	cmd := exec.CommandContext(ctxT(t), crictl, "--config", e.ctrd.CrictlConfig(), "exec", "-i", cid, "wc", "-c")
	cmd.Stdin = strings.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("crictl exec -i wc -c: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != fmt.Sprint(len(data)) {
		t.Errorf("wc -c in the VM counted %q bytes, want %d", got, len(data))
	}
	cmd = exec.CommandContext(ctxT(t), crictl, "--config", e.ctrd.CrictlConfig(), "exec", "-i", cid, "cat")
	cmd.Stdin = strings.NewReader("hello through stdin\n")
	out, err = cmd.CombinedOutput()
	if err != nil || string(out) != "hello through stdin\n" {
		t.Errorf("crictl exec -i cat = %q, %v; want the input back", out, err)
	}

	// exec -it: a pty in the guest.
	e.checkExecTerminal(t, cid)

	// attach: stdin of a running container, output in its CRI log.
	e.checkAttach(t, p)
}
