package e2e

import (
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkPodStart measures what kubelet waits for: RunPodSandbox,
// CreateContainer and StartContainer of a busybox container through CRI
// with the magnetar-runc handler (teardown is outside the timer).
func BenchmarkPodStart(b *testing.B) {
	e := setup(b)
	for b.Loop() {
		p := e.runPod(b, false) // removed by b.Cleanup at the end
		e.startContainer(b, p, "bench", "sleep 600")
		b.StopTimer()
		_, _ = e.rt.StopPodSandbox(ctxT(b), &runtime.StopPodSandboxRequest{PodSandboxId: p.id})
		b.StartTimer()
	}
}
