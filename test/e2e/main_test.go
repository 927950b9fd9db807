package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// env is the shared containerd + sandboxer for all tests of the package.
type env struct {
	base      string // the run's directory, removed by close
	ctrd      *harness.Containerd
	rt        runtime.RuntimeServiceClient
	img       runtime.ImageServiceClient
	stateDir  string
	runDir    string
	sandboxer *exec.Cmd
	sbLog     *testutil.Buffer
	sbDone    chan struct{}
	logDir    string
	binDir    string
	// sbConfig, when set, is the sandboxer's config file (a test that
	// needs one restarts the sandboxer with it, then without).
	sbConfig string
}

// startSandboxer starts magnetar-sandboxer. It joins containerd's private
// mount namespace: CRI's netns bind mounts live there.
func (e *env) startSandboxer() error {
	e.sandboxer = exec.Command("nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", e.ctrd.Pid()), "--",
		filepath.Join(e.binDir, "magnetar-sandboxer"),
		"--listen", e.ctrd.SandboxerSocket(),
		"--state-dir", e.stateDir,
		"--run-dir", e.runDir,
		"--containerd-ttrpc-address", e.ctrd.TTRPCAddress(),
		"--log-level", "debug",
		"--vm-guest-dir", e.guestDir(),
	)
	if e.sbConfig != "" {
		e.sandboxer.Args = append(e.sandboxer.Args, "--config", e.sbConfig)
	}
	e.sandboxer.Stdout = e.sbLog
	e.sandboxer.Stderr = e.sandboxer.Stdout
	if err := e.sandboxer.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	e.sbDone = done
	cmd := e.sandboxer
	go func() { _ = cmd.Wait(); close(done) }()
	if err := waitSocket(e.ctrd.SandboxerSocket(), 10*time.Second); err != nil {
		return fmt.Errorf("sandboxer did not come up: %v\n%s", err, e.sbLog)
	}
	return nil
}

// stopSandboxer stops magnetar-sandboxer gracefully (SIGTERM).
func (e *env) stopSandboxer() {
	if e.sandboxer == nil || e.sandboxer.Process == nil {
		return
	}
	_ = e.sandboxer.Process.Signal(os.Interrupt)
	select {
	case <-e.sbDone:
	case <-time.After(10 * time.Second):
		_ = e.sandboxer.Process.Kill()
		<-e.sbDone
	}
}

var (
	shared    *env
	setupErr  error
	setupOnce sync.Once
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 && shared != nil {
		shared.report()
	}
	if shared != nil {
		shared.close()
	}
	os.Exit(code)
}

// setup starts containerd and the sandboxer once.
func setup(t testing.TB) *env {
	t.Helper()
	binDir, err := harness.DefaultBinDir()
	if err != nil {
		testutil.SkipOrFail(t, "%v", err)
	}
	if err := harness.CheckPrerequisites(binDir); err != nil {
		testutil.SkipOrFail(t, "e2e prerequisites: %v", err)
	}
	for _, b := range []string{"magnetar-sandboxer", "containerd-shim-magnetar-v2"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			testutil.SkipOrFail(t, "%s not built (make build): %v", b, err)
		}
	}
	setupOnce.Do(func() { shared, setupErr = start(binDir) })
	if setupErr != nil {
		t.Fatalf("start containerd and sandboxer: %v", setupErr)
	}
	return shared
}

func start(binDir string) (_ *env, err error) {
	ctx := context.Background()
	base, err := os.MkdirTemp("", "mgn-e2e-")
	if err != nil {
		return nil, err
	}
	e := &env{base: base, stateDir: filepath.Join(base, "sbstate"), runDir: filepath.Join(base, "sbrun"), logDir: filepath.Join(base, "logs")}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.ctrd, err = harness.Start(ctx, harness.Options{
		BinDir:   binDir,
		ShimPath: filepath.Join(binDir, "containerd-shim-magnetar-v2"),
		// The parent of the pods the tests make: removed at the end.
		CgroupParents: []string{"/magnetar-e2e"},
	})
	if err != nil {
		return nil, err
	}
	e.binDir = binDir
	e.sbLog = &testutil.Buffer{}
	if err := e.startSandboxer(); err != nil {
		return nil, err
	}
	if err := e.ctrd.ImportBusybox(ctx); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(e.ctrd.CRIEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	e.rt = runtime.NewRuntimeServiceClient(conn)
	e.img = runtime.NewImageServiceClient(conn)
	return e, nil
}

// report tells, after failed tests, whether containerd ended under them
// and how, with the end of its log: tests see only "connection refused".
func (e *env) report() {
	if e.ctrd == nil {
		return
	}
	if ended, err := e.ctrd.Exited(); ended {
		fmt.Fprintf(os.Stderr, "e2e: containerd (pid %d) ended during the tests: %v\n", e.ctrd.Pid(), err)
	}
	lines := strings.Split(strings.TrimRight(e.ctrd.LogTail(), "\n"), "\n")
	fmt.Fprintf(os.Stderr, "--- the last lines of containerd's log ---\n%s\n", strings.Join(lines[max(0, len(lines)-40):], "\n"))
}

func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if e.ctrd != nil {
		// Remove pods left by failed tests while the sandboxer still runs.
		if out, err := e.ctrd.Crictl(ctx, "pods", "-q"); err == nil {
			for _, id := range strings.Fields(string(out)) {
				_, _ = e.ctrd.Crictl(ctx, "stopp", id)
				_, _ = e.ctrd.Crictl(ctx, "rmp", "-f", id)
			}
		}
	}
	e.stopSandboxer()
	if e.ctrd != nil {
		_ = e.ctrd.Stop(ctx)
	}
	if os.Getenv("MAGNETAR_E2E_LOGS") == "1" && e.sbLog != nil {
		fmt.Fprintf(os.Stderr, "--- sandboxer log ---\n%s\n", e.sbLog)
	}
	// Leave nothing in /tmp.
	if err := harness.RemoveTree(e.base); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
	}
}

func waitSocket(path string, timeout time.Duration) error {
	if testutil.Poll(timeout, func() bool { _, err := os.Stat(path); return err == nil }) {
		return nil
	}
	return fmt.Errorf("%s did not appear in %s", path, timeout)
}

// guestDir is where `make guest` puts the microVM guest image.
func (e *env) guestDir() string { return guestDir() }

// guestDir is where `make guest` puts the microVM guest image.
func guestDir() string {
	if d := os.Getenv("MAGNETAR_GUEST_DIR"); d != "" {
		return d
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		return ""
	}
	return filepath.Join(root, ".tmp", "guest")
}
