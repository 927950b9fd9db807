package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// helloWatImage is examples/hello-wat as an image in containerd.
const helloWatImage = "docker.io/magnetar/hello-wat:e2e"

var (
	watImageOnce sync.Once
	watImageErr  error
	pauseOnce    sync.Once
	pauseErr     error
)

// importHelloWat assembles examples/hello-wat with wabt's wat2wasm,
// packages it as an OCI image whose entrypoint is /hello.wasm and imports
// it into containerd.
func (e *env) importHelloWat(t testing.TB) {
	t.Helper()
	wat2wasm, err := exec.LookPath("wat2wasm")
	if err != nil {
		testutil.SkipOrFail(t, "wat2wasm (wabt, hack/install-deps.sh) assembles examples/hello-wat: %v", err)
	}
	watImageOnce.Do(func() {
		root, err := harness.ModuleRoot()
		if err != nil {
			watImageErr = err
			return
		}
		dir, err := os.MkdirTemp("", "hello-wat-")
		if err != nil {
			watImageErr = err
			return
		}
		defer os.RemoveAll(dir)
		rootfs := filepath.Join(dir, "rootfs")
		if watImageErr = os.MkdirAll(rootfs, 0o755); watImageErr != nil {
			return
		}
		if out, err := exec.Command(wat2wasm, filepath.Join(root, "examples", "hello-wat", "hello.wat"), "-o", filepath.Join(rootfs, "hello.wasm")).CombinedOutput(); err != nil {
			watImageErr = fmt.Errorf("wat2wasm: %v: %s", err, out)
			return
		}
		ctx := context.Background()
		layer, err := ociimage.BuildLayer(ctx, rootfs)
		if err != nil {
			watImageErr = err
			return
		}
		archive := filepath.Join(dir, "hello-wat.tar")
		if watImageErr = ociimage.WriteArchiveFile(ctx, archive, ociimage.Image{
			Name: helloWatImage, Config: ociimage.Config{Entrypoint: []string{"/hello.wasm"}}, Layers: []ociimage.Layer{layer},
		}); watImageErr != nil {
			return
		}
		watImageErr = e.ctrd.ImportImage(ctx, archive)
	})
	if watImageErr != nil {
		t.Fatalf("hello-wat image: %v", watImageErr)
	}
}

// benchKind is one way of running a pod with one container that prints a
// line, compared by the benchmarks below.
type benchKind struct {
	name    string
	handler string
	// container is the container's config; sleep: it stays up after
	// printing.
	container func(sleep bool) *runtime.ContainerConfig
}

func benchKinds(e *env, t testing.TB) []benchKind {
	busybox := func(sleep bool) *runtime.ContainerConfig {
		script := "echo Hello from busybox"
		if sleep {
			script += "; exec sleep 3600"
		}
		return &runtime.ContainerConfig{
			Metadata: &runtime.ContainerMetadata{Name: "c"},
			Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
			Command:  []string{"sh", "-c", script},
			LogPath:  "c.log",
		}
	}
	wasm := func(image string, sleepArgs ...string) func(bool) *runtime.ContainerConfig {
		return func(sleep bool) *runtime.ContainerConfig {
			c := &runtime.ContainerConfig{
				Metadata: &runtime.ContainerMetadata{Name: "c"},
				Image:    &runtime.ImageSpec{Image: image},
				LogPath:  "c.log",
			}
			if sleep {
				c.Args = sleepArgs
			}
			return c
		}
	}
	e.importHelloWat(t)
	e.importHelloWasm(t)
	pauseOnce.Do(func() { pauseErr = e.ctrd.ImportPause(context.Background()) }) // stock runc's pods
	if pauseErr != nil {
		t.Fatalf("pause image: %v", pauseErr)
	}
	return []benchKind{
		{name: "stock-runc", handler: harness.RuncHandler, container: busybox},
		{name: "magnetar-runc", handler: handler, container: busybox},
		{name: "magnetar-wasm-wat", handler: "magnetar-wasm", container: wasm(helloWatImage, "sleep")},
		{name: "magnetar-wasm-go", handler: "magnetar-wasm", container: wasm(helloWasmImage, "-sleep", "1h")},
	}
}

// phases are the times of a pod's start, from RunPodSandbox until the
// container's first line was in its CRI log.
type phases struct {
	runPod, create, start, output, total time.Duration
	cid                                  string // the container
}

// runBenchPod runs a pod of kind k with its container and returns how long
// each phase took.
func (e *env) runBenchPod(t testing.TB, k benchKind, sleep bool) (*pod, phases) {
	t.Helper()
	var ph phases
	begin := time.Now()
	p := e.runPodWith(t, k.handler, false)
	t1 := time.Now()
	cfg := k.container(sleep)
	ctx := ctxT(t)
	resp, err := e.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.cfg})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	t2 := time.Now()
	if _, err := e.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	t3 := time.Now()
	ph.runPod, ph.create, ph.start, ph.cid = t1.Sub(begin), t2.Sub(t1), t3.Sub(t2), resp.ContainerId
	log := filepath.Join(p.cfg.LogDirectory, cfg.LogPath)
	deadline := begin.Add(time.Minute)
	for {
		if data, err := os.ReadFile(log); err == nil && bytes.IndexByte(data, '\n') >= 0 {
			now := time.Now()
			ph.output, ph.total = now.Sub(t3), now.Sub(begin)
			return p, ph
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no output in %s after a minute", k.name, log)
		}
		time.Sleep(200 * time.Microsecond) // the measurement's resolution
	}
}

// BenchmarkFirstOutput measures, for each kind in turn within every
// iteration (so that they share the machine's state), the time from
// RunPodSandbox until the container's first line is in its CRI log:
// stock runc (shim and pause container), magnetar-runc (busybox echo),
// and magnetar-wasm with examples/hello-wat and examples/hello-wasm. It
// reports each kind's median in ms (the total, and the medians of its
// phases: RunPodSandbox, CreateContainer, StartContainer, then until the
// output was logged) and the other kinds' ratio to stock runc; removing
// the pods is outside the timings.
func BenchmarkFirstOutput(b *testing.B) {
	e := setup(b)
	kinds := benchKinds(e, b)
	for _, k := range kinds { // warm-up: images unpacked, modules compiled
		p, _ := e.runBenchPod(b, k, false)
		e.removePod(b, p)
	}
	took := make([][]phases, len(kinds))
	for b.Loop() {
		for i, k := range kinds {
			p, ph := e.runBenchPod(b, k, false)
			took[i] = append(took[i], ph)
			b.StopTimer()
			e.removePod(b, p)
			b.StartTimer()
		}
	}
	med := make([]float64, len(kinds))
	ms := func(ph []phases, f func(phases) time.Duration) float64 {
		d := make([]time.Duration, len(ph))
		for i, p := range ph {
			d[i] = f(p)
		}
		return median(d).Seconds() * 1000
	}
	for i, k := range kinds {
		med[i] = ms(took[i], func(p phases) time.Duration { return p.total })
		b.ReportMetric(med[i], k.name+"-ms")
		b.ReportMetric(ms(took[i], func(p phases) time.Duration { return p.runPod }), k.name+"-runp-ms")
		b.ReportMetric(ms(took[i], func(p phases) time.Duration { return p.create }), k.name+"-create-ms")
		b.ReportMetric(ms(took[i], func(p phases) time.Duration { return p.start }), k.name+"-start-ms")
		b.ReportMetric(ms(took[i], func(p phases) time.Duration { return p.output }), k.name+"-output-ms")
	}
	for i, k := range kinds[1:] {
		b.ReportMetric(med[i+1]/med[0], k.name+"/stock")
	}
}

// BenchmarkPodPSS measures the host memory an extra running pod costs, per
// kind: the proportional set size (smaps_rollup) summed over containerd,
// the sandboxer's processes (supervisor, worker, wasm runner) and every
// process of the stock runc shims of this containerd, with the pods
// running, minus the same before, divided by the number of pods. Each
// pod's container prints a line and stays up. It also reports the wasm
// runner's share ("-runner-") and a wasm module's linear memory in RAM
// (the working set of CRI's ContainerStats). The Go heaps of containerd and the
// sandboxer make single samples noisy (a GC in between can even make a
// delta negative): the median over the iterations is reported.
// Each sample is taken pssSettle after the last start (the steady state
// of pods that run for long: the wasm runner returns the garbage of
// instantiations to the host a second after the last start).
// MAGNETAR_BENCH_PODS sets the number of pods per kind (default 20).
func BenchmarkPodPSS(b *testing.B) {
	e := setup(b)
	kinds := benchKinds(e, b)
	n := 20
	if v, err := strconv.Atoi(os.Getenv("MAGNETAR_BENCH_PODS")); err == nil && v > 0 {
		n = v
	}
	perPod := make([][]float64, len(kinds))
	runnerPerPod := make([][]float64, len(kinds))
	linear := make([][]float64, len(kinds))
	for b.Loop() {
		for i, k := range kinds {
			// One pod first (a wasm runner starts, images are unpacked),
			// then n more.
			first, _ := e.runBenchPod(b, k, true)
			time.Sleep(pssSettle)
			before := e.benchPSS(b)
			pods := make([]*pod, 0, n)
			var last phases
			for range n {
				var p *pod
				p, last = e.runBenchPod(b, k, true)
				pods = append(pods, p)
			}
			time.Sleep(pssSettle)
			after := e.benchPSS(b)
			if strings.Contains(k.name, "wasm") {
				// The module's linear memory in RAM: the working set CRI
				// reports.
				st, err := e.rt.ContainerStats(ctxT(b), &runtime.ContainerStatsRequest{ContainerId: last.cid})
				if err != nil {
					b.Fatalf("ContainerStats: %v", err)
				}
				linear[i] = append(linear[i], float64(st.GetStats().GetMemory().GetWorkingSetBytes().GetValue())/1024)
			}
			perPod[i] = append(perPod[i], float64(after.total-before.total)/float64(n))
			runnerPerPod[i] = append(runnerPerPod[i], float64(after.runner-before.runner)/float64(n))
			b.StopTimer()
			for _, p := range append(pods, first) {
				e.removePod(b, p)
			}
			b.StartTimer()
		}
	}
	med := make([]float64, len(kinds))
	for i, k := range kinds {
		med[i] = medianF(perPod[i])
		b.ReportMetric(med[i], k.name+"-pss-KiB/pod")
		if strings.Contains(k.name, "wasm") {
			b.ReportMetric(medianF(runnerPerPod[i]), k.name+"-runner-pss-KiB/pod")
			b.ReportMetric(medianF(linear[i]), k.name+"-linear-memory-KiB")
		}
	}
	for i, k := range kinds[1:] {
		b.ReportMetric(med[i+1]/med[0], k.name+"/stock")
	}
}

// pssSettle is how long BenchmarkPodPSS lets the processes settle before
// a sample (a measurement's condition, not a synchronisation).
const pssSettle = 2 * time.Second

// pss is a sum of PSS in KiB, with the wasm runner's share.
type pss struct{ total, runner int64 }

// benchPSS sums the PSS (KiB) of containerd, the sandboxer and its
// descendants, and this containerd's shims with their descendants.
func (e *env) benchPSS(t testing.TB) pss {
	t.Helper()
	ppid := map[int]int{}
	runners := map[int]bool{}
	roots := []int{e.ctrd.Pid(), e.sandboxer.Process.Pid}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(st)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		ppid[pid], _ = strconv.Atoi(f[1])
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmd), "containerd-shim") && strings.Contains(string(cmd), e.ctrd.Address()) {
			roots = append(roots, pid)
		}
		if strings.HasPrefix(string(cmd), "magnetar-wasm-runner") {
			runners[pid] = true
		}
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	for changed := true; changed; {
		changed = false
		for pid, pp := range ppid {
			if !in[pid] && in[pp] {
				in[pid], changed = true, true
			}
		}
	}
	var sum pss
	for pid := range in {
		kib := int64(pssKiB(pid))
		sum.total += kib
		if runners[pid] {
			sum.runner += kib
		}
	}
	return sum
}

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// pssKiB is a process's proportional set size in KiB, 0 if it is gone.
func pssKiB(pid int) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
