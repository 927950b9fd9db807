package e2e

import (
	"os"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodFilesShmAndSysctls: for each kind, a pod's containers get its
// /etc/hostname and /etc/hosts (containerd writes them only for its own
// pause-container pods), share one /dev/shm (a file written by one is read
// by the other), and see the pod's sysctls; after the pod is removed no
// mount of it remains.
func TestPodFilesShmAndSysctls(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	for _, tc := range []struct {
		handler string
		sysctls map[string]string
	}{
		{handler, map[string]string{"kernel.shm_rmid_forced": "1", "net.ipv4.ip_local_port_range": "20000 30000"}},
		// gVisor implements few sysctls: no kernel.shm*, msg* or fs.mqueue.
		{gvisorHandler, map[string]string{"net.ipv4.tcp_sack": "0", "net.ipv4.ip_local_port_range": "20000 30000"}},
		{"magnetar-vm", map[string]string{"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100", "net.ipv4.ip_local_port_range": "20000 30000"}},
	} {
		t.Run(tc.handler, func(t *testing.T) {
			switch tc.handler {
			case gvisorHandler:
				requireRunsc(t)
			case "magnetar-vm":
				e.requireGuest(t)
			}
			p := e.runPodWith(t, tc.handler, false, func(c *runtime.PodSandboxConfig) { c.Linux.Sysctls = tc.sysctls })
			writer := e.startContainer(t, p, "writer", "echo shared-by-the-pod > /dev/shm/x && sleep 600")
			reader := e.startContainer(t, p, "reader", "sleep 600")
			script := "for i in $(seq 1 100); do [ -s /dev/shm/x ] && break; sleep 0.1; done; cat /dev/shm/x; cat /etc/hostname; grep ' /dev/shm ' /proc/mounts; grep -c localhost /etc/hosts"
			for k := range tc.sysctls {
				script += "; cat /proc/sys/" + strings.ReplaceAll(k, ".", "/")
			}
			ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: reader, Cmd: []string{"sh", "-c", script}, Timeout: 60})
			if err != nil {
				t.Fatalf("ExecSync: %v", err)
			}
			out := strings.Join(strings.Fields(string(ex.Stdout)), " ")
			// A tmpfs in every kind (in gVisor's kernel, not a host
			// directory through the gofer).
			for _, want := range []string{"shared-by-the-pod", p.cfg.Hostname, "/dev/shm tmpfs"} {
				if !strings.Contains(out, want) {
					t.Errorf("reader sees %q (stderr %q), want %q in it", out, ex.Stderr, want)
				}
			}
			for _, v := range tc.sysctls {
				if !strings.Contains(out, v) {
					t.Errorf("reader sees %q, want sysctl value %q in it", out, v)
				}
			}
			if ex.ExitCode != 0 {
				t.Errorf("ExecSync exit %d (stderr %q): /etc/hosts has no localhost line?", ex.ExitCode, ex.Stderr)
			}
			_ = writer
			e.removePod(t, p)
			if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), p.id) {
				t.Errorf("a mount of pod %s remains after its removal", p.id)
			}
		})
	}
}

// TestGVisorUnsupportedSysctl: a sysctl gVisor's kernel lacks fails the
// pod with a clear error, and nothing of it remains.
func TestGVisorUnsupportedSysctl(t *testing.T) {
	e := setup(t)
	requireRunsc(t)
	_, err := e.rt.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{RuntimeHandler: gvisorHandler, Config: &runtime.PodSandboxConfig{
		Metadata: &runtime.PodSandboxMetadata{Name: "bad-sysctl", Namespace: "e2e", Uid: "bad-sysctl-uid"},
		Linux:    &runtime.LinuxPodSandboxConfig{CgroupParent: "/magnetar-e2e", Sysctls: map[string]string{"kernel.shm_rmid_forced": "1"}},
	}})
	if err == nil || !strings.Contains(err.Error(), "kernel/shm_rmid_forced") || !strings.Contains(err.Error(), "gVisor") {
		t.Fatalf("RunPodSandbox with kernel.shm_rmid_forced: %v; want an error naming the sysctl and gVisor", err)
	}
	if procs := runscProcesses("bad-sysctl"); len(procs) > 0 {
		t.Errorf("runsc processes remain: %v", procs)
	}
	assertNoPodProcesses(t)
}
