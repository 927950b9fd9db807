package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/pdeathsig"
	"github.com/magnetar-io/magnetar/sdk"
)

// cgroupParent is the cgroup parent of the bench's pods.
const cgroupParent = "/magnetar-bench"

// env is the private containerd and the sandboxer the run measures.
type env struct {
	base      string
	binDir    string
	ctrd      *harness.Containerd
	conn      *grpc.ClientConn
	rt        runtime.RuntimeServiceClient
	sandboxer *exec.Cmd
	sbDone    chan struct{}
	sbLogPath string
	sbLog     *os.File
	runDir    string
	api       *sdk.Client
	logDir    string
	// bridge is the bridge of the sandboxer's network ("": none, the CNI
	// plugins are missing).
	bridge string
}

// cniBridge is the CNI bridge plugin (Debian's containernetworking-plugins).
const cniBridge = "/usr/lib/cni/bridge"

// startEnv starts containerd (harness) and magnetar-sandboxer (joining
// containerd's mount namespace, trace log to a file), imports busybox,
// the pause image and the Wasm example into containerd and, for direct
// mode, into the sandboxer's image store.
func startEnv(ctx context.Context, o *options, warmPool, template bool) (_ *env, err error) {
	base, err := os.MkdirTemp("", "mgn-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{base: base, binDir: o.binDir, runDir: filepath.Join(base, "sbrun"), logDir: filepath.Join(base, "logs"),
		sbLogPath: filepath.Join(base, "sandboxer.log")}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.ctrd, err = harness.Start(ctx, harness.Options{
		BinDir:        o.binDir,
		ShimPath:      filepath.Join(o.binDir, "containerd-shim-magnetar-v2"),
		LogWriter:     io.Discard,
		CgroupParents: []string{cgroupParent},
	})
	if err != nil {
		return nil, err
	}
	if e.sbLog, err = os.OpenFile(e.sbLogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
		return nil, err
	}
	e.sandboxer = exec.Command("nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", e.ctrd.Pid()), "--",
		filepath.Join(o.binDir, "magnetar-sandboxer"),
		"--listen", e.ctrd.SandboxerSocket(),
		"--state-dir", filepath.Join(base, "sbstate"),
		"--run-dir", e.runDir,
		"--containerd-ttrpc-address", e.ctrd.TTRPCAddress(),
		"--log-level", "trace",
		"--vm-guest-dir", o.guestDir,
	)
	conf := "version = 1\n"
	if _, err := os.Stat(cniBridge); err == nil {
		// A bridge of the run's own (removed by close) on a subnet no
		// other run is likely to use.
		e.bridge = fmt.Sprintf("mgr%04x", rand.IntN(1<<16))
		conf += networkConfig(e.bridge, fmt.Sprintf("10.217.%d.0/24", rand.IntN(200)+20))
	}
	if warmPool {
		conf += strings.TrimPrefix(warmPoolConfig, "version = 1\n")
	}
	if template {
		conf += templateConfig
	}
	cfg := filepath.Join(base, "sandboxer.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	e.sandboxer.Args = append(e.sandboxer.Args, "--config", cfg)
	e.sandboxer.Stdout, e.sandboxer.Stderr = e.sbLog, e.sbLog
	// Should the bench die, the sandboxer stops (gracefully) with it.
	if err := pdeathsig.Start(e.sandboxer, syscall.SIGTERM); err != nil {
		return nil, err
	}
	e.sbDone = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(e.sandboxer, e.sbDone)
	apiSock := filepath.Join(e.runDir, "api.sock")
	if err := waitFor(ctx, 15*time.Second, func() bool {
		_, err1 := os.Stat(e.ctrd.SandboxerSocket())
		_, err2 := os.Stat(apiSock)
		return err1 == nil && err2 == nil
	}); err != nil {
		return nil, fmt.Errorf("sandboxer did not come up: %w\n%s", err, tail(e.sbLogPath, 2000))
	}
	if err := e.ctrd.ImportBusybox(ctx); err != nil {
		return nil, err
	}
	if err := e.ctrd.ImportPause(ctx); err != nil {
		return nil, err
	}
	if err := e.ctrd.ImportImage(ctx, o.wasmArchive); err != nil {
		return nil, err
	}
	if e.conn, err = grpc.NewClient(e.ctrd.CRIEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return nil, err
	}
	e.rt = runtime.NewRuntimeServiceClient(e.conn)
	if e.api, err = sdk.Dial(ctx, "unix://"+apiSock); err != nil {
		return nil, err
	}
	for _, a := range []string{o.busyboxArchive, o.wasmArchive} {
		if _, err := e.api.ImportImage(ctx, a, nil); err != nil {
			return nil, fmt.Errorf("import %s through Magnetar's API: %w", a, err)
		}
	}
	return e, nil
}

// close removes every pod and sandbox left, stops the sandboxer and
// containerd, and removes the run's directory.
func (e *env) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if e.api != nil {
		if sbs, err := e.api.Sandboxes(ctx); err == nil {
			for _, sb := range sbs {
				if err := sb.Delete(ctx, sdk.Force()); err != nil {
					errs = append(errs, err)
				}
			}
		}
		e.api.Close()
	}
	if e.ctrd != nil {
		if out, err := e.ctrd.Crictl(ctx, "pods", "-q"); err == nil {
			for _, id := range strings.Fields(string(out)) {
				_, _ = e.ctrd.Crictl(ctx, "stopp", id)
				if _, err := e.ctrd.Crictl(ctx, "rmp", "-f", id); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if e.conn != nil {
		e.conn.Close()
	}
	if e.sandboxer != nil && e.sandboxer.Process != nil {
		_ = e.sandboxer.Process.Signal(os.Interrupt)
		select {
		case <-e.sbDone:
		case <-time.After(15 * time.Second):
			_ = e.sandboxer.Process.Kill()
			<-e.sbDone
		}
	}
	if e.sbLog != nil {
		e.sbLog.Close()
	}
	if e.ctrd != nil {
		if err := e.ctrd.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if e.bridge != "" {
		if l, err := netlink.LinkByName(e.bridge); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("remove bridge %s: %w", e.bridge, err))
			}
		}
	}
	if err := harness.RemoveTree(e.base); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// snapshot takes the processes of the run.
func (e *env) snapshot() snapshot {
	return takeSnapshot("/proc", []int{e.ctrd.Pid(), e.sandboxer.Process.Pid}, e.ctrd.Address(), e.ctrd.Pid(), e.sandboxer.Process.Pid)
}

// waitFor polls cond every 10 ms until it holds, ctx ends or timeout
// passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// tail returns the last n bytes of a file.
func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}
