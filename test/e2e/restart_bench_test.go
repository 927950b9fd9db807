package e2e

import (
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// restartPods is how many running pods the restart benchmarks hold.
const restartPods = 50

// restartBench runs restartPods magnetar-runc pods, each with a running
// container, then measures restart (given the worker's pid) in a loop:
//
//   - ms-p50/serve and ms-max/serve: from the restart's start until every
//     pod is served by the new worker again (its PodSandboxStatus, which
//     containerd asks of the sandboxer's Controller, and its container's
//     ContainerStats, which go through the pod's task socket, both answered
//     after the new worker appeared);
//   - ms-max/call: the longest CRI call of a client that keeps calling
//     ContainerStats round the pods throughout (how long a caller waits);
//   - refused: calls of that client that failed (goal 0).
//
// Nothing is asserted on timings (make bench reports them).
func restartBench(b *testing.B, restart func(b *testing.B, old int)) {
	e := setup(b)
	type podc struct {
		p   *pod
		cid string
	}
	pods := make([]podc, restartPods)
	for i := range pods {
		p := e.runPod(b, false)
		pods[i] = podc{p, e.startContainer(b, p, "c", "exec sleep 600")}
	}

	// The steady client.
	var (
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		refused atomic.Int64
		calls   atomic.Int64
		maxCall atomic.Int64
	)
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			_, err := e.rt.ContainerStats(ctxT(b), &runtime.ContainerStatsRequest{ContainerId: pods[i%len(pods)].cid})
			d := int64(time.Since(t0))
			calls.Add(1)
			if err != nil {
				refused.Add(1)
				b.Logf("call refused during the restart: %v", err)
			}
			for {
				m := maxCall.Load()
				if d <= m || maxCall.CompareAndSwap(m, d) {
					break
				}
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()

	var serve []time.Duration
	for b.Loop() {
		old := e.workerPid(b)
		t0 := time.Now()
		restart(b, old)
		for {
			if pid, _ := e.findWorker(b); pid != 0 && pid != old {
				break
			}
			if time.Since(t0) > time.Minute {
				b.Fatal("no new worker within a minute")
			}
			time.Sleep(time.Millisecond) // polling /proc, not synchronising
		}
		var pw sync.WaitGroup
		for _, pc := range pods {
			pw.Go(func() {
				for time.Since(t0) < time.Minute {
					_, err1 := e.rt.PodSandboxStatus(ctxT(b), &runtime.PodSandboxStatusRequest{PodSandboxId: pc.p.id})
					_, err2 := e.rt.ContainerStats(ctxT(b), &runtime.ContainerStatsRequest{ContainerId: pc.cid})
					if err1 == nil && err2 == nil {
						return
					}
				}
				b.Errorf("pod %s not served again within a minute", pc.p.id)
			})
		}
		pw.Wait()
		serve = append(serve, time.Since(t0))
	}
	for _, pc := range pods {
		e.requireRunning(b, pc.cid)
	}
	slices.Sort(serve)
	b.ReportMetric(ms(serve[len(serve)/2]), "ms-p50/serve")
	b.ReportMetric(ms(serve[len(serve)-1]), "ms-max/serve")
	b.ReportMetric(ms(time.Duration(maxCall.Load())), "ms-max/call")
	b.ReportMetric(float64(refused.Load()), "refused")
	b.ReportMetric(float64(calls.Load()), "calls")
	b.ReportMetric(0, "ns/op") // the loop's own time says nothing here
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkLiveUpgrade50Pods measures a live upgrade (SIGHUP to the
// supervisor, as `magnetar-sandboxer upgrade` sends) under 50 running
// runc pods: goal ≤ 100 ms at p50 until served, no call refused.
func BenchmarkLiveUpgrade50Pods(b *testing.B) {
	restartBench(b, func(b *testing.B, _ int) {
		if err := setup(b).sandboxer.Process.Signal(syscall.SIGHUP); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkCrash50Pods measures a crash of the worker (kill -9) under 50
// running runc pods: goal ≤ 1 s until every pod is served again.
func BenchmarkCrash50Pods(b *testing.B) {
	restartBench(b, func(b *testing.B, old int) {
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
	})
}
