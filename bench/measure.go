package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/sdk"
)

// bench drives the measurements of one run.
type bench struct {
	e     *env
	o     *options
	kinds []*kind
	res   *Results
	seq   int
	mu    sync.Mutex // guards seq
	// runcPods are the serial magnetar-runc pods (for the phases).
	runcPods []string
	logf     func(format string, args ...any)
	// claims counts the warm VMs the pods adopted; warmLog counts the
	// pool's lines in the sandboxer's log.
	claims  int
	warmLog logCounter
	// restores counts the VMs restored from the template for the pods;
	// tmplLog counts the template's lines in the sandboxer's log.
	restores int
	tmplLog  logCounter
}

// logCounter counts lines with given words in a growing log file, reading
// only what was appended since the last call.
type logCounter struct {
	off    int64
	counts map[string]int
}

// count returns how many lines of path have contained each of words so
// far.
func (c *logCounter) count(path string, words ...string) (map[string]int, error) {
	if c.counts == nil {
		c.counts = map[string]int{}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(c.off, 0); err != nil {
		return nil, err
	}
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err != nil { // a partial last line is read again next time
			break
		}
		c.off += int64(len(line))
		for _, w := range words {
			if strings.Contains(line, w) {
				c.counts[w]++
			}
		}
	}
	return c.counts, nil
}

const (
	warmReady     = "warm vm ready"
	warmClaimed   = "warm vm claimed"
	templateBuilt = "vm template built"
	templateUsed  = "vm restored from template"
)

// waitTemplate waits until the sandboxer has built its VM template.
func (b *bench) waitTemplate(ctx context.Context) error {
	var n map[string]int
	err := waitFor(ctx, 5*time.Minute, func() bool {
		var err error
		n, err = b.tmplLog.count(b.e.sbLogPath, templateBuilt, templateUsed)
		return err == nil && n[templateBuilt] > 0
	})
	if err != nil {
		return fmt.Errorf("no vm template was built: %w\n%s", err, tail(b.e.sbLogPath, 2000))
	}
	return nil
}

// waitWarm waits until the pool holds a VM not yet claimed (the pool
// booted every VM the pods took, and one more).
func (b *bench) waitWarm(ctx context.Context) error {
	var n map[string]int
	err := waitFor(ctx, 5*time.Minute, func() bool {
		var err error
		n, err = b.warmLog.count(b.e.sbLogPath, warmReady, warmClaimed)
		return err == nil && n[warmReady] > b.claims
	})
	if err != nil {
		return fmt.Errorf("the warm pool has no VM ready (%d ready, %d claimed): %w\n%s", n[warmReady], b.claims, err, tail(b.e.sbLogPath, 2000))
	}
	return nil
}

// pod is a pod started by the bench.
type pod struct {
	id      string
	logPath string // the container's CRI log
	t0      time.Time
	// Durations of the three calls.
	runPod, create, start time.Duration
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (b *bench) name(k *kind) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	return fmt.Sprintf("bench-%s-%d", k.Name, b.seq)
}

// startPod runs a pod of kind k and starts its container, timing each call.
func (b *bench) startPod(ctx context.Context, k *kind) (_ *pod, err error) {
	name := b.name(k)
	cfg := &runtime.PodSandboxConfig{
		Metadata:     &runtime.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name + "-uid"},
		Hostname:     name,
		LogDirectory: filepath.Join(b.e.logDir, name),
		Linux: &runtime.LinuxPodSandboxConfig{
			CgroupParent: cgroupParent,
			SecurityContext: &runtime.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_POD, Pid: runtime.NamespaceMode_CONTAINER, Ipc: runtime.NamespaceMode_POD},
			},
		},
	}
	if k.memoryLimit > 0 {
		cfg.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: k.memoryLimit}
	}
	if err := os.MkdirAll(cfg.LogDirectory, 0o755); err != nil {
		return nil, err
	}
	if k.warm {
		if err := b.waitWarm(ctx); err != nil {
			return nil, err
		}
	}
	if k.template {
		if err := b.waitTemplate(ctx); err != nil {
			return nil, err
		}
	}
	p := &pod{logPath: filepath.Join(cfg.LogDirectory, "c.log")}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	p.t0 = time.Now()
	rp, err := b.e.rt.RunPodSandbox(cctx, &runtime.RunPodSandboxRequest{Config: cfg, RuntimeHandler: k.handler()})
	if err != nil {
		return nil, fmt.Errorf("%s: RunPodSandbox: %w", k.Name, err)
	}
	t1 := time.Now()
	p.id, p.runPod = rp.PodSandboxId, t1.Sub(p.t0)
	defer func() {
		if err != nil {
			_ = b.removePod(context.WithoutCancel(ctx), p)
		}
	}()
	if k.warm {
		// The sandboxer logs the claim before RunPodSandbox returns.
		n, err := b.warmLog.count(b.e.sbLogPath, warmReady, warmClaimed)
		if err != nil {
			return nil, err
		}
		if n[warmClaimed] != b.claims+1 {
			return nil, fmt.Errorf("%s: pod %s did not adopt a warm VM (%d claims logged, %d expected)\n%s", k.Name, p.id, n[warmClaimed], b.claims+1, tail(b.e.sbLogPath, 2000))
		}
		b.claims++
	}
	if k.template {
		// The sandboxer logs the restore before RunPodSandbox returns.
		n, err := b.tmplLog.count(b.e.sbLogPath, templateBuilt, templateUsed)
		if err != nil {
			return nil, err
		}
		if n[templateUsed] != b.restores+1 {
			return nil, fmt.Errorf("%s: pod %s did not get a restored VM (%d restores logged, %d expected)\n%s", k.Name, p.id, n[templateUsed], b.restores+1, tail(b.e.sbLogPath, 2000))
		}
		b.restores++
	}
	cc, err := b.e.rt.CreateContainer(cctx, &runtime.CreateContainerRequest{PodSandboxId: p.id, SandboxConfig: cfg, Config: &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "c"},
		Image:    &runtime.ImageSpec{Image: k.image},
		Command:  k.command,
		Args:     k.args,
		LogPath:  "c.log",
		Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
			NamespaceOptions: cfg.Linux.SecurityContext.NamespaceOptions,
		}},
	}})
	if err != nil {
		return nil, fmt.Errorf("%s: CreateContainer: %w", k.Name, err)
	}
	t2 := time.Now()
	p.create = t2.Sub(t1)
	if _, err := b.e.rt.StartContainer(cctx, &runtime.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		return nil, fmt.Errorf("%s: StartContainer: %w", k.Name, err)
	}
	p.start = time.Since(t2)
	return p, nil
}

// removePod stops and removes a pod.
func (b *bench) removePod(ctx context.Context, p *pod) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := b.e.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("StopPodSandbox %s: %w", p.id, err)
	}
	if _, err := b.e.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("RemovePodSandbox %s: %w", p.id, err)
	}
	return nil
}

// firstOutput waits for the container's first CRI log line and returns
// how long after the pod's RunPodSandbox call containerd read it (the
// line's own timestamp).
func (b *bench) firstOutput(ctx context.Context, p *pod) (time.Duration, error) {
	var ts time.Time
	err := waitFor(ctx, 3*time.Minute, func() bool {
		data, err := os.ReadFile(p.logPath)
		if err != nil {
			return false
		}
		var ok bool
		ts, ok = firstLogTime(data)
		return ok
	})
	if err != nil {
		data, _ := os.ReadFile(p.logPath)
		return 0, fmt.Errorf("pod %s: no output in its CRI log (%w): %q", p.id, err, data)
	}
	return ts.Sub(p.t0), nil
}

// firstLogTime parses the timestamp of the first complete line of a CRI
// log ("2006-01-02T15:04:05.999999999Z07:00 stdout F text").
func firstLogTime(data []byte) (time.Time, bool) {
	line, _, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		return time.Time{}, false
	}
	f := strings.Fields(string(line))
	if len(f) < 3 {
		return time.Time{}, false
	}
	ts, err := time.Parse(time.RFC3339Nano, f[0])
	return ts, err == nil
}

// warmUp starts and removes one pod and one direct-mode sandbox of every
// kind, outside the figures: images unpacked, Wasm modules compiled,
// caches filled.
func (b *bench) warmUp(ctx context.Context) error {
	for _, k := range b.kinds {
		t := time.Now()
		p, err := b.startPod(ctx, k)
		if err != nil {
			return err
		}
		if _, err := b.firstOutput(ctx, p); err != nil {
			return err
		}
		if err := b.removePod(ctx, p); err != nil {
			return err
		}
		b.logf("warm-up: %s pod: %v", k.Name, time.Since(t).Round(time.Millisecond))
		if k.warm {
			if err := b.waitWarm(ctx); err != nil {
				return err
			}
		}
		if k.direct != "" && k.directN > 0 {
			t = time.Now()
			if _, err := b.directOnce(ctx, k); err != nil {
				return err
			}
			b.logf("warm-up: %s in direct mode: %v", k.direct, time.Since(t).Round(time.Millisecond))
		}
	}
	return nil
}

// rotated returns the kinds starting at the i-th, so that no kind always
// runs first or after the same one.
func rotated[T any](xs []T, i int) []T {
	if len(xs) == 0 {
		return nil
	}
	i %= len(xs)
	return append(slices.Clone(xs[i:]), xs[:i]...)
}

// serial measures pods one at a time, the kinds interleaved.
func (b *bench) serial(ctx context.Context) error {
	most := 0
	for _, k := range b.kinds {
		most = max(most, k.serial)
		b.res.Serial[k.Name] = &Serial{}
	}
	for i := range most {
		for _, k := range rotated(b.kinds, i) {
			if i >= k.serial {
				continue
			}
			p, err := b.startPod(ctx, k)
			if err != nil {
				return err
			}
			first, err := b.firstOutput(ctx, p)
			if err != nil {
				return errors.Join(err, b.removePod(ctx, p))
			}
			t := time.Now()
			if err := b.removePod(ctx, p); err != nil {
				return err
			}
			stopRemove := time.Since(t)
			if k.warm { // the refill's boot must not overlap the next measurement
				if err := b.waitWarm(ctx); err != nil {
					return err
				}
			}
			s := b.res.Serial[k.Name]
			s.RunPod = append(s.RunPod, ms(p.runPod))
			s.Create = append(s.Create, ms(p.create))
			s.Start = append(s.Start, ms(p.start))
			s.PodStart = append(s.PodStart, ms(p.runPod+p.create+p.start))
			s.FirstOutput = append(s.FirstOutput, ms(first))
			s.StopRemove = append(s.StopRemove, ms(stopRemove))
			if k.Name == "magnetar-runc" {
				b.runcPods = append(b.runcPods, p.id)
			}
		}
		b.logf("serial: round %d/%d done", i+1, most)
	}
	return nil
}

// parallel measures batches of pods started at once.
func (b *bench) parallel(ctx context.Context) error {
	type key struct {
		kind string
		n    int
	}
	idx := map[key]int{}
	for _, k := range b.kinds {
		for _, n := range k.parallel {
			idx[key{k.Name, n}] = len(b.res.Parallel)
			b.res.Parallel = append(b.res.Parallel, Parallel{Kind: k.Name, Pods: n})
		}
	}
	most := 0
	for _, k := range b.kinds {
		most = max(most, k.batches)
	}
	for rep := range most {
		for i, k := range rotated(b.kinds, rep) {
			if rep >= k.batches {
				continue
			}
			for _, n := range rotated(k.parallel, i) {
				started, first, removed, err := b.batch(ctx, k, n)
				if err != nil {
					return fmt.Errorf("parallel: %s x%d: %w", k.Name, n, err)
				}
				r := &b.res.Parallel[idx[key{k.Name, n}]]
				r.Started = append(r.Started, ms(started))
				r.FirstOutput = append(r.FirstOutput, ms(first))
				r.Removed = append(r.Removed, ms(removed))
				b.logf("parallel: %s x%d: started in %v, all printed in %v, removed in %v", k.Name, n, started.Round(time.Millisecond), first.Round(time.Millisecond), removed.Round(time.Millisecond))
			}
		}
	}
	return nil
}

// batch starts n pods of k at once and removes them at once.
func (b *bench) batch(ctx context.Context, k *kind, n int) (started, first, removed time.Duration, err error) {
	pods := make([]*pod, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range n {
		wg.Go(func() { pods[i], errs[i] = b.startPod(ctx, k) })
	}
	wg.Wait()
	started = time.Since(t0)
	removeAll := func() time.Duration {
		t := time.Now()
		var rw sync.WaitGroup
		for i, p := range pods {
			if p != nil {
				rw.Go(func() {
					if err := b.removePod(ctx, p); err != nil {
						errs[i] = errors.Join(errs[i], err)
					}
				})
			}
		}
		rw.Wait()
		return time.Since(t)
	}
	if err := errors.Join(errs...); err != nil {
		removeAll()
		return 0, 0, 0, err
	}
	for _, p := range pods {
		d, err := b.firstOutput(ctx, p)
		if err != nil {
			removeAll()
			return 0, 0, 0, err
		}
		first = max(first, d+p.t0.Sub(t0))
	}
	removed = removeAll()
	return started, first, removed, errors.Join(errs...)
}

// settle is how long the memory measurement waits after the last pod's
// first output before it reads the processes' PSS: a runtime may still be
// growing after the container printed.
const settle = time.Second

// density measures the host memory and processes that 1, 5, 10, 20 pods
// of each kind add, one kind at a time.
func (b *bench) density(ctx context.Context) error {
	for _, k := range b.kinds {
		if len(k.density) == 0 {
			continue
		}
		base := b.e.snapshot()
		d := &Dense{BaselineKB: base.total("")}
		b.res.Density[k.Name] = d
		var pods []*pod
		var err error
		for _, n := range k.density {
			for len(pods) < n && err == nil {
				var p *pod
				if p, err = b.startPod(ctx, k); err == nil {
					pods = append(pods, p)
					_, err = b.firstOutput(ctx, p)
				}
			}
			if err != nil {
				break
			}
			select {
			case <-time.After(settle):
			case <-ctx.Done():
				err = ctx.Err()
			}
			if err != nil {
				break
			}
			s := b.e.snapshot()
			pt := DensityPoint{Pods: n}
			pt.AddedKB, pt.ByClassKB, pt.Processes = growth(base, s, classContainerd)
			pt.ContainerdKB = pt.ByClassKB[classContainerd]
			d.Points = append(d.Points, pt)
			b.logf("density: %s x%d: %.1f MB added (%.2f MB a pod), %d processes", k.Name, n, float64(pt.AddedKB)/1024, float64(pt.AddedKB)/1024/float64(n), pt.Processes)
		}
		var rw sync.WaitGroup
		errs := make([]error, len(pods))
		for i, p := range pods {
			rw.Go(func() { errs[i] = b.removePod(ctx, p) })
		}
		rw.Wait()
		if err := errors.Join(append(errs, err)...); err != nil {
			return err
		}
		// Everything the pods added must go with them.
		if err := waitFor(ctx, 30*time.Second, func() bool { return len(b.e.snapshot()) <= len(base) }); err != nil {
			return fmt.Errorf("%s: processes left after the pods were removed: %s", k.Name, describe(b.e.snapshot(), base))
		}
	}
	return nil
}

// describe lists the processes of s that base lacks.
func describe(s, base snapshot) string {
	var out []string
	for pid, p := range s {
		if _, ok := base[pid]; !ok {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			out = append(out, fmt.Sprintf("%d (%s) %q", pid, p.Class, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

// directSample is one sandbox started through Magnetar's API.
type directSample struct{ run, first, del time.Duration }

// directOnce creates a sandbox of k's Magnetar kind (with sbOpts) with one
// container through the Go SDK, waits for its first output and deletes it.
func (b *bench) directOnce(ctx context.Context, k *kind, sbOpts ...sdk.SandboxOption) (directSample, error) {
	var s directSample
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	opts := []sdk.ContainerOption{sdk.FromImage(k.image)}
	if k.command != nil {
		opts = append(opts, sdk.Entrypoint(k.command...))
	}
	if k.args != nil {
		opts = append(opts, sdk.Args(k.args...))
	}
	t0 := time.Now()
	sb, err := b.e.api.CreateSandbox(ctx, k.direct, sbOpts...)
	if err != nil {
		return s, fmt.Errorf("direct %s: CreateSandbox: %w", k.direct, err)
	}
	defer func() {
		if sb != nil {
			_ = sb.Delete(context.WithoutCancel(ctx), sdk.Force())
		}
	}()
	c, err := sb.Run(ctx, opts...)
	if err != nil {
		return s, fmt.Errorf("direct %s: Run: %w", k.direct, err)
	}
	s.run = time.Since(t0)
	if b.res.Machine.VMAccel == "" && k.direct == "vm" {
		if err := sb.Refresh(ctx); err == nil && sb.Info["accel"] != "" {
			b.res.Machine.VMAccel = strings.TrimSpace(sb.Info["accel"] + " (" + sb.Info["accel_reason"] + ")")
		}
	}
	for chunk, err := range c.Output(ctx) {
		if err != nil {
			return s, fmt.Errorf("direct %s: output: %w", k.direct, err)
		}
		if len(chunk.Data) > 0 {
			s.first = time.Since(t0)
			break
		}
	}
	if s.first == 0 {
		return s, fmt.Errorf("direct %s: the container exited without output", k.direct)
	}
	t := time.Now()
	err = sb.Delete(ctx, sdk.Force())
	sb = nil
	if err != nil {
		return s, fmt.Errorf("direct %s: delete: %w", k.direct, err)
	}
	s.del = time.Since(t)
	return s, nil
}

// directMode measures sandboxes started through Magnetar's API, the kinds
// interleaved.
func (b *bench) directMode(ctx context.Context) error {
	most := 0
	for _, k := range b.kinds {
		if k.direct != "" {
			most = max(most, k.directN)
			b.res.Direct[k.direct] = &Direct{}
		}
	}
	for i := range most {
		for _, k := range rotated(b.kinds, i) {
			if k.direct == "" || i >= k.directN {
				continue
			}
			s, err := b.directOnce(ctx, k)
			if err != nil {
				return err
			}
			d := b.res.Direct[k.direct]
			d.Run = append(d.Run, ms(s.run))
			d.FirstOutput = append(d.FirstOutput, ms(s.first))
			d.Delete = append(d.Delete, ms(s.del))
		}
	}
	for _, k := range b.kinds {
		if k.direct == "gvisor" && k.directN > 0 {
			if err := b.runscFloor(ctx, k.directN); err != nil {
				return fmt.Errorf("runsc run by hand: %w", err)
			}
		}
	}
	return nil
}

// readLines returns the lines of a file.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}
