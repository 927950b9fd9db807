package e2e

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
)

// podIP is the IP CRI reports for a pod.
func (e *env) podIP(t *testing.T, p *pod) string {
	t.Helper()
	ps, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	ip := ps.GetStatus().GetNetwork().GetIp()
	if ip == "" {
		t.Fatalf("pod %s has no IP: %v", p.id, ps.GetStatus())
	}
	return ip
}

// inNetNS runs a command in the network namespace at path, a bind mount
// in containerd's private mount namespace.
func (e *env) inNetNS(path string, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(e.ctrd.Pid()), "-m", "--", "nsenter", "--net=" + path}, args...)...).CombinedOutput()
	return string(out), err
}

// sendScript sends msg to ip:8080 until a server takes it.
func sendScript(ip, msg string) string {
	return "ip -o addr; for i in $(seq 1 150); do echo " + msg + " | nc " + ip + " 8080 && exit 0; sleep 0.2; done; exit 1"
}

// TestVMPodNetwork: a VM pod is on the pod network CRI made for it. A runc
// pod on the same CNI bridge reaches a server in the VM pod and a VM
// container reaches one in the runc pod and sees the pod IP CRI reported
// on its interface, the sandbox info names the tap, and removing
// the pod after a sandboxer restart (the network state comes from the
// sandbox state) leaves no tap.
func TestVMPodNetwork(t *testing.T) {
	e := setup(t)
	e.requireGuest(t)
	vmPod := e.runPodWith(t, "magnetar-vm", false)
	netns := e.assertVMPodNetwork(t, vmPod)

	// The sandboxer restarts under the running VM (its containers are
	// stopped: containers are not recovered); removal then works from the
	// recovered state.
	e.stopSandboxer()
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	e.removePod(t, vmPod)
	e.assertNoTap(t, netns)
}

// assertNoTap checks that no tap is left in the netns of a removed pod.
func (e *env) assertNoTap(t *testing.T, netns string) {
	t.Helper()
	if _, err := os.Stat(netns); err == nil {
		out, err := e.inNetNS(netns, "ip", "-o", "link", "show", "type", "tun")
		if err == nil && strings.TrimSpace(out) != "" {
			t.Errorf("a tap remains in the pod netns %s after removal:\n%s", netns, out)
		} else if err != nil && !strings.Contains(out, "No such file") && !strings.Contains(out, "Invalid argument") {
			t.Errorf("inspect netns %s: %v\n%s", netns, err, out)
		}
	}
}

// assertVMPodNetwork checks the pod network of a running VM pod: a runc
// pod on the same CNI bridge reaches a server in the VM pod and a VM
// container reaches one in the runc pod and sees the pod IP CRI reported
// on its interface; the sandbox info names the tap. It returns the pod's
// netns path.
func (e *env) assertVMPodNetwork(t *testing.T, vmPod *pod) string {
	t.Helper()
	runcPod := e.runPod(t, false)
	vmIP, runcIP := e.podIP(t, vmPod), e.podIP(t, runcPod)

	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: vmPod.id})
	if err != nil {
		t.Fatal(err)
	}
	netns := sb.GetSandbox().GetNetnsPath()
	if netns == "" {
		t.Fatalf("VM pod has no netns: %v", sb.GetSandbox())
	}
	if got := sb.GetSandbox().GetInfo()["network"]; !strings.HasPrefix(got, "tap0 <-> eth0 "+vmIP+"/") {
		t.Errorf("sandbox info network = %q, want tap0 <-> eth0 %s/<prefix>", got, vmIP)
	}

	if out, err := e.inNetNS(netns, "ip", "-o", "link", "show", "type", "tun"); err != nil || !strings.Contains(out, "tap0") {
		t.Errorf("no tap0 in the pod netns %s: %v\n%s", netns, err, out)
	}
	if out, err := e.inNetNS(netns, "tc", "filter", "show", "dev", "eth0", "ingress"); err != nil || !strings.Contains(out, "Egress Redirect to device tap0") {
		t.Errorf("no redirect from eth0 to tap0 in the pod netns: %v\n%s", err, out)
	}

	srvRunc := e.startContainer(t, runcPod, "srv-runc", "nc -l -p 8080")
	srvVM := e.startContainer(t, vmPod, "srv-vm", "nc -l -p 8080")

	fromRunc := e.startContainer(t, runcPod, "to-vm", sendScript(vmIP, "sent-by-the-runc-pod"))
	if st := e.waitExited(t, fromRunc); st.ExitCode != 0 {
		t.Errorf("runc pod sending to the VM pod %s: exit %d, log:\n%s", vmIP, st.ExitCode, e.logOf(t, runcPod, "to-vm", "-"))
	}
	if got := e.logOf(t, vmPod, "srv-vm", "sent-by-the-runc-pod"); !strings.Contains(got, "sent-by-the-runc-pod") {
		t.Errorf("VM pod server log = %q, want the runc pod's message", got)
	}

	fromVM := e.startContainer(t, vmPod, "to-runc", sendScript(runcIP, "sent-by-the-vm-pod"))
	st := e.waitExited(t, fromVM)
	got := e.logOf(t, vmPod, "to-runc", " inet "+vmIP+"/")
	if st.ExitCode != 0 {
		t.Errorf("VM pod sending to the runc pod %s: exit %d, log:\n%s", runcIP, st.ExitCode, got)
	}
	if !strings.Contains(got, " inet "+vmIP+"/") {
		t.Errorf("the VM container's addresses lack the pod IP %s:\n%s", vmIP, got)
	}
	if got := e.logOf(t, runcPod, "srv-runc", "sent-by-the-vm-pod"); !strings.Contains(got, "sent-by-the-vm-pod") {
		t.Errorf("runc pod server log = %q, want the VM pod's message", got)
	}
	for _, id := range []string{srvRunc, srvVM} {
		if _, err := e.rt.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: id, Timeout: 2}); err != nil {
			t.Errorf("StopContainer: %v", err)
		}
	}
	e.removePod(t, runcPod)
	return netns
}
