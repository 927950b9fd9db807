package direct_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

// service returns a service over an engine with a runc backend and, with
// images, an image store, and the engine's state directory. Everything,
// sandboxes included, is removed when the test ends.
func service(t *testing.T, images bool) (*direct.Service, string) {
	t.Helper()
	testutil.RequireRunc(t)
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	stateDir := t.TempDir()
	e, err := engine.New(context.Background(), engine.Config{StateDir: stateDir, Backends: []backend.Backend{b}, StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	t.Cleanup(func() { // leave nothing behind, also when a test failed
		for _, sb := range e.ListSandboxes(context.Background()) {
			_ = e.DeleteSandbox(context.Background(), sb.ID)
		}
	})
	opts := []direct.Option{direct.WithHostAccess(true)}
	if images {
		st, err := image.Open(filepath.Join(stateDir, "images"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		opts = append(opts, direct.WithImageStore(st))
	}
	s := direct.New(e, opts...)
	t.Cleanup(func() { s.Close() })
	return s, stateDir
}

// readySandbox creates and starts a runc sandbox.
func readySandbox(t *testing.T, ctx context.Context, s *direct.Service) string {
	t.Helper()
	sb, err := s.CreateSandbox(ctx, direct.SandboxRequest{Kind: "runc", Labels: map[string]string{"app": "test"}})
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	if _, err := s.StartSandbox(ctx, sb.ID); err != nil {
		t.Fatalf("StartSandbox: %v", err)
	}
	return sb.ID
}

// run starts a container and follows its output until it exits.
func run(t *testing.T, ctx context.Context, s *direct.Service, id string) (stdout, stderr string, code uint32) {
	t.Helper()
	if _, err := s.StartContainer(ctx, id); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	return follow(t, ctx, s, id, "")
}

func follow(t *testing.T, ctx context.Context, s *direct.Service, id, execID string) (stdout, stderr string, code uint32) {
	t.Helper()
	out, err := s.Output(ctx, id, execID)
	if err != nil {
		t.Fatalf("Output: %v", err)
	}
	var o, e strings.Builder
	exit, err := out.Follow(ctx, -1, func(c direct.Chunk) error {
		if c.Stream == direct.Stderr {
			e.Write(c.Data)
		} else {
			o.Write(c.Data)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	return o.String(), e.String(), exit.Code
}

func TestContainerLifecycle(t *testing.T) {
	s, _ := service(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))

	if k := s.Kinds(ctx); len(k) != 1 || k[0].Kind != "runc" || !k[0].Available {
		t.Fatalf("Kinds = %+v", k)
	}
	id := readySandbox(t, ctx, s)
	if got := s.ListSandboxes(ctx, direct.SandboxFilter{Kinds: []string{"runc"}, States: []engine.SandboxState{engine.SandboxReady}, Labels: map[string]string{"app": "test"}}); len(got) != 1 || got[0].ID != id {
		t.Errorf("ListSandboxes(matching) = %+v", got)
	}
	for _, f := range []direct.SandboxFilter{{Kinds: []string{"wasm"}}, {States: []engine.SandboxState{engine.SandboxStopped}}, {Labels: map[string]string{"app": "other"}}} {
		if got := s.ListSandboxes(ctx, f); len(got) != 0 {
			t.Errorf("ListSandboxes(%+v) = %+v, want none", f, got)
		}
	}

	c, err := s.CreateContainer(ctx, direct.ContainerRequest{
		SandboxID: id, RootfsPath: rootfs, Labels: map[string]string{"role": "shout"},
		Process: direct.Process{Args: []string{"sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 4"}, OpenStdin: true},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	cid := c.Status.ContainerID
	if c.Status.SandboxID != id || c.Status.State != engine.ProcessCreated || c.RootfsPath != rootfs || c.CreatedAt.IsZero() || !c.Process.OpenStdin {
		t.Errorf("created %+v", c)
	}
	if _, err := s.StartContainer(ctx, cid); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	if n, err := s.WriteStdin(ctx, cid, "", []byte("shout\n"), true); err != nil || n != 6 {
		t.Fatalf("WriteStdin = %d, %v", n, err)
	}
	if stdout, stderr, code := follow(t, ctx, s, cid, ""); stdout != "SHOUT\n" || stderr != "to-stderr\n" || code != 4 {
		t.Errorf("got stdout %q stderr %q exit %d; want SHOUT, to-stderr, 4", stdout, stderr, code)
	}
	got, err := s.Container(ctx, cid)
	if err != nil || got.Status.State != engine.ProcessStopped || got.StartedAt.IsZero() || got.Status.ExitCode != 4 {
		t.Errorf("Container = %+v, %v", got, err)
	}
	if cs, err := s.ListContainers(ctx, direct.ContainerFilter{Labels: map[string]string{"role": "shout"}}); err != nil || len(cs) != 1 || cs[0].Status.ContainerID != cid {
		t.Errorf("ListContainers(role=shout) = %+v, %v", cs, err)
	}
	if cs, err := s.ListContainers(ctx, direct.ContainerFilter{SandboxID: id, Labels: map[string]string{"role": "other"}}); err != nil || len(cs) != 0 {
		t.Errorf("ListContainers(role=other) = %+v, %v", cs, err)
	}
	if st, err := s.DeleteContainer(ctx, cid, false); err != nil || st.ExitCode != 4 {
		t.Fatalf("DeleteContainer = %+v, %v", st, err)
	}
	if _, err := s.Container(ctx, cid); !errdefs.IsNotFound(err) {
		t.Errorf("Container after delete: %v, want NotFound", err)
	}
	if err := s.DeleteSandbox(ctx, id, false); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("DeleteSandbox of a ready sandbox without force: %v, want FailedPrecondition", err)
	}
	if err := s.DeleteSandbox(ctx, id, true); err != nil {
		t.Fatalf("DeleteSandbox: %v", err)
	}
	if got := s.ListSandboxes(ctx, direct.SandboxFilter{}); len(got) != 0 {
		t.Errorf("ListSandboxes after delete = %+v", got)
	}
}

func TestExec(t *testing.T) {
	s, _ := service(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	id := readySandbox(t, ctx, s)
	c, err := s.CreateContainer(ctx, direct.ContainerRequest{
		SandboxID: id, RootfsPath: rootfs, Process: direct.Process{Args: []string{"sh", "-c", "read x"}, Env: []string{"WHO=init"}, OpenStdin: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	cid := c.Status.ContainerID
	if _, err := s.StartContainer(ctx, cid); err != nil {
		t.Fatal(err)
	}
	st, err := s.Exec(ctx, direct.ExecRequest{ContainerID: cid, Process: direct.Process{Args: []string{"sh", "-c", "echo $WHO $MORE; pwd; exit 2"}, Env: []string{"MORE=exec"}, Cwd: "/etc"}})
	if err != nil || st.ExecID == "" || st.Pid == 0 {
		t.Fatalf("Exec = %+v, %v", st, err)
	}
	if stdout, _, code := follow(t, ctx, s, cid, st.ExecID); stdout != "init exec\n/etc\n" || code != 2 {
		t.Errorf("exec output %q, exit %d", stdout, code)
	}
	if ps, err := s.Processes(ctx, cid); err != nil || len(ps) == 0 {
		t.Errorf("Processes = %+v, %v", ps, err)
	}
	if err := s.CloseStdin(ctx, cid, ""); err != nil {
		t.Fatalf("CloseStdin: %v", err)
	}
	if exit, err := s.Wait(ctx, cid, ""); err != nil || exit.Code != 1 {
		t.Errorf("Wait after stdin closed = %+v, %v; want exit 1 (read fails at EOF)", exit, err)
	}
}

func TestErrors(t *testing.T) {
	s, _ := service(t, false)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		want func(error) bool
	}{
		{"path-like sandbox id", func() error {
			_, err := s.CreateSandbox(ctx, direct.SandboxRequest{ID: "../x", Kind: "runc"})
			return err
		}, errdefs.IsInvalidArgument},
		{"unknown kind", func() error {
			_, err := s.CreateSandbox(ctx, direct.SandboxRequest{Kind: "nope"})
			return err
		}, errdefs.IsInvalidArgument},
		{"no kind", func() error {
			_, err := s.CreateSandbox(ctx, direct.SandboxRequest{})
			return err
		}, errdefs.IsInvalidArgument},
		{"netns without a path", func() error {
			_, err := s.CreateSandbox(ctx, direct.SandboxRequest{Kind: "runc", Network: direct.Network{Mode: direct.NetworkNetNS}})
			return err
		}, errdefs.IsInvalidArgument},
		{"missing sandbox", func() error {
			_, err := s.Sandbox(ctx, "missing")
			return err
		}, errdefs.IsNotFound},
		{"container in a missing sandbox", func() error {
			_, err := s.CreateContainer(ctx, direct.ContainerRequest{SandboxID: "missing", Image: "x:1"})
			return err
		}, errdefs.IsNotFound},
		{"missing container", func() error {
			_, err := s.Wait(ctx, "missing", "")
			return err
		}, errdefs.IsNotFound},
		{"no container id", func() error {
			return s.CloseStdin(ctx, "", "")
		}, errdefs.IsInvalidArgument},
		{"images without a store", func() error {
			_, err := s.ListImages(ctx)
			return err
		}, errdefs.IsFailedPrecondition},
	} {
		if err := tc.call(); !tc.want(err) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}

	// Errors of an existing container.
	id := readySandbox(t, ctx, s)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	c, err := s.CreateContainer(ctx, direct.ContainerRequest{
		SandboxID: id, RootfsPath: rootfs, Process: direct.Process{Args: []string{"true"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cid := c.Status.ContainerID
	if _, err := s.CreateContainer(ctx, direct.ContainerRequest{SandboxID: id, ID: cid, RootfsPath: rootfs, Process: direct.Process{Args: []string{"true"}}}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("a second container %s: %v, want AlreadyExists", cid, err)
	}
	if err := s.Signal(ctx, cid, "", 0, false); !errdefs.IsInvalidArgument(err) {
		t.Errorf("signal 0: %v, want InvalidArgument", err)
	}
	if err := s.UpdateResources(ctx, cid, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("no resources: %v, want InvalidArgument", err)
	}
	if _, err := s.WriteStdin(ctx, cid, "", []byte("x"), false); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("stdin without open_stdin: %v, want FailedPrecondition", err)
	}
	if _, err := s.Output(ctx, cid, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("output of a missing exec: %v, want NotFound", err)
	}
	if _, err := s.Exec(ctx, direct.ExecRequest{ContainerID: cid}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("exec without args: %v, want InvalidArgument", err)
	}
}

// containerMounts returns the mount points of this mount namespace below
// dir that belong to containers (not to sandboxes' namespaces).
func containerMounts(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		// "... mount-point options [optional fields] - fstype source ..."
		f := strings.Fields(line)
		if len(f) <= 4 || !strings.HasPrefix(f[4], dir) || !strings.Contains(f[4], "/containers/") {
			continue
		}
		_, after, _ := strings.Cut(line, " - ")
		fstype, _, _ := strings.Cut(after, " ")
		out = append(out, fstype+" "+f[4])
	}
	return out
}

func TestContainerFromImage(t *testing.T) {
	testutil.RequireRunc(t)
	testutil.RequireOverlay(t)
	s, stateDir := service(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	bb, err := ociimage.BusyboxImage(ctx, "", "docker.io/library/bbtest:1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bb.Config = ociimage.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo $GREETING $EXTRA; pwd; id -u; id -g; echo written >/tmp/f; cat /tmp/f; exit 3"},
		Env:        []string{"GREETING=hello", "EXTRA=image"},
		WorkingDir: "/etc",
		User:       "daemon",
	}
	archive := filepath.Join(t.TempDir(), "bb.oci.tar")
	if err := ociimage.WriteArchiveFile(ctx, archive, bb); err != nil {
		t.Fatal(err)
	}

	// Import, with progress, unpacking at once.
	var (
		started   bool
		sawUnpack bool
	)
	imgs, err := s.ImportImage(ctx, archive, direct.ImageOptions{
		Unpack:  true,
		Started: func() error { started = true; return nil },
		Progress: func(p image.Progress) {
			sawUnpack = sawUnpack || p.Phase == image.PhaseUnpack && p.LayersDone == 1
		},
	})
	if err != nil {
		t.Fatalf("ImportImage: %v", err)
	}
	if len(imgs) != 1 || imgs[0].Name != "docker.io/library/bbtest:1" || imgs[0].Config.User != "daemon" || !started || !sawUnpack {
		t.Fatalf("imported %+v (started %v, unpack progress %v)", imgs, started, sawUnpack)
	}
	if got, err := s.Image(ctx, "bbtest:1"); err != nil || got.Digest != imgs[0].Digest {
		t.Errorf("Image = %+v, %v", got, err)
	}
	if list, err := s.ListImages(ctx); err != nil || len(list) != 1 {
		t.Errorf("ListImages = %+v, %v", list, err)
	}

	sbID := readySandbox(t, ctx, s)
	if _, err := s.CreateContainer(ctx, direct.ContainerRequest{SandboxID: sbID, Image: "missing:1"}); !errdefs.IsNotFound(err) {
		t.Errorf("CreateContainer from a missing image = %v, want NotFound", err)
	}

	// The image's defaults, with the request's env on top.
	c, err := s.CreateContainer(ctx, direct.ContainerRequest{SandboxID: sbID, Image: "bbtest:1", Process: direct.Process{Env: []string{"EXTRA=request"}}})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	id := c.Status.ContainerID
	if c.Image != "bbtest:1" || strings.Join(c.Process.Args, " ") != "/bin/sh -c "+bb.Config.Cmd[0] {
		t.Errorf("created %+v", c)
	}
	if m := containerMounts(t, stateDir); len(m) != 1 || !strings.HasPrefix(m[0], "overlay ") || !strings.Contains(m[0], id) {
		t.Errorf("mounts under the state dir = %v, want the container's overlay", m)
	}
	if out, _, code := run(t, ctx, s, id); out != "hello request\n/etc\n1\n1\nwritten\n" || code != 3 {
		t.Errorf("output %q, exit %d; want the image's command as daemon in /etc, exit 3", out, code)
	}

	// Request args replace the image's cmd and follow its entrypoint
	// (/bin/sh -c); a read-only root.
	ro, err := s.CreateContainer(ctx, direct.ContainerRequest{
		SandboxID: sbID, Image: "docker.io/library/bbtest:1", ReadonlyRootfs: true,
		Process: direct.Process{Args: []string{"touch /x 2>/dev/null || echo read-only; cat /tmp/f 2>/dev/null || echo fresh"}},
	})
	if err != nil {
		t.Fatalf("CreateContainer read-only: %v", err)
	}
	if out, _, code := run(t, ctx, s, ro.Status.ContainerID); out != "read-only\nfresh\n" || code != 0 {
		t.Errorf("read-only container: output %q, exit %d", out, code)
	}

	if err := s.RemoveImage(ctx, "bbtest:1"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("RemoveImage of an image in use = %v, want FailedPrecondition", err)
	}
	for _, cid := range []string{id, ro.Status.ContainerID} {
		if _, err := s.DeleteContainer(ctx, cid, false); err != nil {
			t.Fatalf("DeleteContainer: %v", err)
		}
	}
	if m := containerMounts(t, stateDir); len(m) != 0 {
		t.Errorf("mounts left after DeleteContainer: %v", m)
	}
	if matches, _ := filepath.Glob(filepath.Join(stateDir, "*", "*", "containers", id)); len(matches) != 0 {
		t.Errorf("container dir left: %v", matches)
	}
	if err := s.RemoveImage(ctx, "bbtest:1"); err != nil {
		t.Errorf("RemoveImage after the containers are gone = %v", err)
	}

	// A container deleted with its sandbox leaves a use behind, which
	// RemoveImage releases.
	if _, err := s.ImportImage(ctx, archive, direct.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateContainer(ctx, direct.ContainerRequest{SandboxID: sbID, Image: "bbtest:1"}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if err := s.DeleteSandbox(ctx, sbID, true); err != nil {
		t.Fatal(err)
	}
	if m := containerMounts(t, stateDir); len(m) != 0 {
		t.Errorf("mounts left after DeleteSandbox: %v", m)
	}
	if err := s.RemoveImage(ctx, "bbtest:1"); err != nil {
		t.Errorf("RemoveImage after the sandbox is gone = %v", err)
	}
}

func TestImageErrors(t *testing.T) {
	s, _ := service(t, true)
	ctx := context.Background()
	for path, want := range map[string]func(error) bool{
		"relative.tar":           errdefs.IsInvalidArgument,
		"/a/../b.tar":            errdefs.IsInvalidArgument,
		"/nonexistent/image.tar": errdefs.IsNotFound,
		"/etc/hostname":          errdefs.IsInvalidArgument,
	} {
		if _, err := s.ImportImage(ctx, path, direct.ImageOptions{}); !want(err) {
			t.Errorf("ImportImage(%s) = %v", path, err)
		}
	}
	// Started is not called for an invalid request.
	if _, err := s.PullImage(ctx, "Not A Ref", direct.ImageOptions{Started: func() error { t.Error("started"); return nil }}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("PullImage(bad ref) = %v, want InvalidArgument", err)
	}
	if err := s.RemoveImage(ctx, "nope:1"); !errdefs.IsNotFound(err) {
		t.Errorf("RemoveImage(missing) = %v, want NotFound", err)
	}
	if _, err := s.Image(ctx, "Not A Ref"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Image(bad ref) = %v, want InvalidArgument", err)
	}
}
