package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// templateQEMUs counts the QEMU processes building a VM template.
func templateQEMUs(t *testing.T) int {
	t.Helper()
	n := 0
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "qemu") && strings.Contains(string(b), "magnetar-tmpl-") {
			n++
		}
	}
	return n
}

// TestVMTemplate: with VM templates on, the sandboxer builds the default
// size's template; two magnetar-vm pods get VMs restored from it (the
// sandbox info says so), each its own: VM, agent session, host name, pod
// address, and random numbers. The first pod's network works as a cold
// boot's. Removing the pods ends their VMs and leaves no directory or tap.
// A corrupt template is dropped (logged) and the next pod boots cold and
// works; restarting without templates removes them.
func TestVMTemplate(t *testing.T) {
	e := setup(t)
	e.requireGuest(t)
	cfg := filepath.Join(e.base, "template.toml")
	if err := os.WriteFile(cfg, []byte("version = 1\n[backends.vm.template]\nenabled = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.stopSandboxer()
	e.sbConfig = cfg
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	tmplRoot := filepath.Join(e.runDir, "vmtemplate")
	t.Cleanup(func() {
		e.stopSandboxer()
		if n := templateQEMUs(t); n > 0 {
			t.Errorf("%d template VMs left after the sandboxer stopped", n)
		}
		e.sbConfig = ""
		if err := e.startSandboxer(); err != nil {
			t.Errorf("restart the sandboxer without templates: %v", err)
		}
		if _, err := os.Stat(tmplRoot); !os.IsNotExist(err) {
			t.Errorf("templates remain after a restart without them: %v", err)
		}
	})
	built := func() int { return strings.Count(e.sbLog.String(), "vm template built") }
	testutil.Eventually(t, 3*time.Minute, func() bool { return built() >= 1 }, "no template was built:\n%s", e.sbLog)

	type restored struct {
		p    *pod
		vm   string
		info map[string]string
	}
	var pods []restored
	for range 2 {
		p := e.runPodWith(t, "magnetar-vm", false)
		sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
		if err != nil {
			t.Fatal(err)
		}
		info := sb.GetSandbox().GetInfo()
		if info["template_restore"] == "" || !strings.HasPrefix(info["warm_vm"], "pool-") {
			t.Fatalf("the pod's VM was not restored from the template: info %v", info)
		}
		t.Logf("restored %s: restore %s (vmm %s), claim %s", info["warm_vm"], info["template_restore"], info["vmm_restore"], info["claim_total"])
		pods = append(pods, restored{p, info["warm_vm"], info})
	}
	if pods[0].vm == pods[1].vm {
		t.Fatalf("both pods got VM %s", pods[0].vm)
	}
	netns := e.assertVMPodNetwork(t, pods[0].p)
	var outs []string
	for i, r := range pods {
		ip := e.podIP(t, r.p)
		e.startContainer(t, r.p, "who", "echo host=$(hostname); ip -o -4 addr show eth0; echo uuid=$(cat /proc/sys/kernel/random/uuid)")
		out := e.logOf(t, r.p, "who", "uuid=")
		if !strings.Contains(out, "host="+r.p.cfg.GetHostname()) || !strings.Contains(out, " "+ip+"/") {
			t.Errorf("pod %d (hostname %s, ip %s) sees:\n%s", i, r.p.cfg.GetHostname(), ip, out)
		}
		_, u, _ := strings.Cut(out, "uuid=")
		outs = append(outs, strings.TrimSpace(u))
	}
	if outs[0] == "" || outs[0] == outs[1] {
		t.Errorf("the restored VMs drew the same random uuid %q", outs[0])
	}
	for _, r := range pods {
		e.removePod(t, r.p)
		if _, ok := poolQEMUs(t)[r.vm]; ok {
			t.Errorf("the VM %s outlived its removed pod", r.vm)
		}
		if _, err := os.Stat(filepath.Join(e.runDir, "vmpool", strings.TrimPrefix(r.vm, "pool-"))); !os.IsNotExist(err) {
			t.Errorf("the VM's directory remains after the pod's removal: %v", err)
		}
	}
	e.assertNoTap(t, netns)

	// A truncated state file: dropped, logged, the pod boots cold.
	states, _ := filepath.Glob(filepath.Join(tmplRoot, "*", "state"))
	if len(states) != 1 {
		t.Fatalf("template state files %v, want one", states)
	}
	if err := os.Truncate(states[0], 100); err != nil {
		t.Fatal(err)
	}
	p := e.runPodWith(t, "magnetar-vm", false)
	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	if info := sb.GetSandbox().GetInfo(); info["template_restore"] != "" || info["boot_total"] == "" {
		t.Errorf("the pod was not booted cold after the template broke: info %v", info)
	}
	if !strings.Contains(e.sbLog.String(), "vm template dropped") {
		t.Errorf("the broken template was not logged:\n%s", e.sbLog)
	}
	e.startContainer(t, p, "c", "echo cold-after-bad-template")
	if got := e.logOf(t, p, "c", "cold-after-bad-template"); !strings.Contains(got, "cold-after-bad-template") {
		t.Errorf("cold-booted pod's container log %q", got)
	}
	e.removePod(t, p)
}
