package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// soakKinds are the pods of TestSoakWorkerCrashes: 20 of mixed kinds.
var soakKinds = []struct {
	handler string
	n       int
	ops     bool // the client creates, execs and removes containers in them
}{
	{handler, 12, true},
	{"magnetar-wasm", 4, false}, // no exec in WASI
	{gvisorHandler, 3, true},
	{"magnetar-vm", 1, true}, // its container's pid is the guest's
}

// TestSoakWorkerCrashes kills the sandboxer's worker (kill -9) five times
// in a row under 20 running pods of mixed kinds while a client keeps
// creating, exec-ing into and removing containers. Every operation that
// starts while a worker serves succeeds (those a crash cuts may fail), no
// long-running container is lost (same process, still running, no exit on
// containerd's event stream), and the pods then serve every operation.
func TestSoakWorkerCrashes(t *testing.T) {
	e := setup(t)
	requireRunsc(t)
	e.requireGuest(t)
	e.importHelloWasm(t)
	exits := e.watchTaskExits(t)

	type member struct {
		p        *pod
		cid, rh  string
		pid      int
		clientOK bool
	}
	var pods []*member
	for _, k := range soakKinds {
		for range k.n {
			m := &member{p: e.runPodWith(t, k.handler, false), rh: k.handler, clientOK: k.ops}
			if k.handler == "magnetar-wasm" {
				m.cid = e.startWasm(t, m.p, "long", "-sleep", "1h")
			} else {
				m.cid = e.startContainer(t, m.p, "long", "exec sleep 3600")
			}
			m.pid = e.containerPid(t, m.cid)
			pods = append(pods, m)
		}
	}

	// op creates a container in m's pod, execs into it and removes it.
	var seq atomic.Int64
	op := func(ctx context.Context, m *member) error {
		name := fmt.Sprintf("op-%d", seq.Add(1))
		resp, err := e.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{PodSandboxId: m.p.id, SandboxConfig: m.p.cfg, Config: &runtime.ContainerConfig{
			Metadata: &runtime.ContainerMetadata{Name: name},
			Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
			Command:  []string{"sleep", "600"},
			LogPath:  name + ".log",
			Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
				NamespaceOptions: m.p.cfg.Linux.GetSecurityContext().GetNamespaceOptions(),
			}},
		}})
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		cid := resp.ContainerId
		defer func() {
			// Removed whatever happened (force: also a running one).
			rctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, _ = e.rt.RemoveContainer(rctx, &runtime.RemoveContainerRequest{ContainerId: cid})
		}()
		if _, err := e.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: cid}); err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		ex, err := e.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"echo", name}, Timeout: 30})
		if err != nil {
			return fmt.Errorf("exec in %s: %w", name, err)
		}
		if got := strings.TrimSpace(string(ex.Stdout)); got != name || ex.ExitCode != 0 {
			return fmt.Errorf("exec in %s: exit %d, output %q", name, ex.ExitCode, got)
		}
		if _, err := e.rt.StopContainer(ctx, &runtime.StopContainerRequest{ContainerId: cid, Timeout: 0}); err != nil {
			return fmt.Errorf("stop %s: %w", name, err)
		}
		if _, err := e.rt.RemoveContainer(ctx, &runtime.RemoveContainerRequest{ContainerId: cid}); err != nil {
			return fmt.Errorf("remove %s: %w", name, err)
		}
		return nil
	}

	// gen is even while a worker serves, odd from a kill until the next
	// worker serves: an operation that starts and ends in the same even
	// gen must succeed.
	var (
		gen     atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		mu      sync.Mutex
		failed  []string
		cut     int
		okCount int
	)
	var clients []*member
	for _, m := range pods {
		if m.clientOK {
			clients = append(clients, m)
		}
	}
	for w := range 2 { // two clients
		wg.Go(func() {
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := clients[i%len(clients)]
				g0 := gen.Load()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				err := op(ctx, m)
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					okCount++
				case g0%2 == 0 && gen.Load() == g0:
					failed = append(failed, fmt.Sprintf("%s pod: %v", m.rh, err))
				default:
					cut++
				}
				mu.Unlock()
			}
		})
	}

	for round := range 5 {
		old := e.workerPid(t)
		mu.Lock()
		before := okCount
		mu.Unlock()
		gen.Add(1)
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		e.waitNewWorker(t, old, pods[0].p)
		gen.Add(1)
		// Let the clients get an operation through the new worker before
		// the next crash.
		testutil.Eventually(t, 2*time.Minute, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return okCount >= before+2
		}, "client operations succeed after crash %d", round+1)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d operations succeeded, %d were cut by a crash", okCount, cut)
	for _, f := range failed {
		t.Errorf("operation failed while a worker served: %s", f)
	}

	for _, m := range pods {
		e.requireRunning(t, m.cid)
		if e.containerPid(t, m.cid) != m.pid || m.rh != "magnetar-vm" && !alive(m.pid) {
			t.Errorf("%s container %s: process %d lost across the crashes", m.rh, m.cid, m.pid)
		}
		if code, ok := exits.exited(m.cid); ok {
			t.Errorf("%s container %s: containerd published an exit (%d) for a running container", m.rh, m.cid, code)
		}
	}
	for _, m := range clients {
		if err := op(ctxT(t), m); err != nil {
			t.Errorf("%s pod after the crashes: %v", m.rh, err)
		}
	}
}
