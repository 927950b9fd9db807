package e2e

import (
	"fmt"

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

// BenchmarkWasmContainerStart measures CreateContainer+StartContainer of
// examples/hello-wasm through CRI (magnetar-wasm handler) until it exited,
// in one pod; the compilation cache is warm after the first iteration.
func BenchmarkWasmContainerStart(b *testing.B) {
	e := setup(b)
	e.importHelloWasm(b)
	p := e.runPodWith(b, "magnetar-wasm", false)
	e.waitExited(b, e.startWasm(b, p, "warmup")) // fills the compilation cache
	i := 0
	for b.Loop() {
		i++
		e.waitExited(b, e.startWasm(b, p, fmt.Sprintf("bench-%d", i)))
	}
}

// BenchmarkGVisorPodStart is BenchmarkPodStart with the magnetar-gvisor
// handler: the runsc sandbox (root container) and one subcontainer.
func BenchmarkGVisorPodStart(b *testing.B) {
	e := setup(b)
	requireRunsc(b)
	for b.Loop() {
		p := e.runPodWith(b, gvisorHandler, false)
		e.startContainer(b, p, "bench", "sleep 600")
		b.StopTimer()
		_, _ = e.rt.StopPodSandbox(ctxT(b), &runtime.StopPodSandboxRequest{PodSandboxId: p.id})
		b.StartTimer()
	}
}
