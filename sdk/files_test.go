package sdk_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/internal/testutil/wasmtest"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
	"github.com/magnetar-io/magnetar/sdk/kinds/gvisor"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
	"github.com/magnetar-io/magnetar/sdk/kinds/wasm"
)

// fileKind is a kind under test of the file service: a root file system
// and how to run a script in it.
type fileKind struct {
	backend func(t testing.TB) backend.Backend
	rootfs  func(t testing.TB) string
	// sleep runs for long; write writes "text\n" to path; read prints path.
	sleep        []string
	write, read  func(path, text string) []string
	writeAndExit func(path, text string) []string
}

var fileKinds = map[string]fileKind{
	"runc": {
		backend: func(t testing.TB) backend.Backend {
			testutil.RequireRunc(t)
			b, err := runc.New(runc.Config{Root: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		rootfs: func(t testing.TB) string {
			return testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
		},
		sleep: []string{"sleep", "300"},
		write: func(p, text string) []string { return []string{"sh", "-c", "echo " + text + " > " + p} },
		read:  func(p, _ string) []string { return []string{"cat", p} },
		writeAndExit: func(p, text string) []string {
			return []string{"sh", "-c", "echo " + text + " > " + p + "; exit 3"}
		},
	},
	"gvisor": {
		backend: func(t testing.TB) backend.Backend {
			testutil.RequireRunsc(t)
			// Host files: the container's root is its host directory.
			b, err := gvisor.New(gvisor.Config{Root: t.TempDir(), HostFiles: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		rootfs: func(t testing.TB) string {
			return testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
		},
		sleep: []string{"sleep", "300"},
		write: func(p, text string) []string { return []string{"sh", "-c", "echo " + text + " > " + p} },
		read:  func(p, _ string) []string { return []string{"cat", p} },
		writeAndExit: func(p, text string) []string {
			return []string{"sh", "-c", "echo " + text + " > " + p + "; exit 3"}
		},
	},
	"wasm": {
		backend: func(t testing.TB) backend.Backend {
			testutil.RequireRoot(t, "the wasm kind: cgroups, mount namespaces")
			b, err := wasm.New(wasm.Config{Root: wasmtest.CacheRoot(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		rootfs: func(t testing.TB) string {
			module := wasmtest.Build(t, "minish")
			rootfs := filepath.Join(t.TempDir(), "rootfs")
			if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(module)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(rootfs, "bin", "minish.wasm"), data, 0o755); err != nil {
				t.Fatal(err)
			}
			return rootfs
		},
		sleep: []string{wasmtest.ShellModule, "-c", "sleep 300"},
		write: func(p, text string) []string { return []string{wasmtest.ShellModule, "-c", "write " + p + " " + text} },
		read:  func(p, _ string) []string { return []string{wasmtest.ShellModule, "-c", "read " + p} },
		writeAndExit: func(p, text string) []string {
			return []string{wasmtest.ShellModule, "-c", "write " + p + " " + text + "; exit 3"}
		},
	},
}

// patterned is a reproducible stream of n pseudo-random bytes.
func patterned(n int64) io.Reader {
	return io.LimitReader(&prng{r: rand.NewChaCha8([32]byte{7})}, n)
}

type prng struct{ r *rand.ChaCha8 }

func (p *prng) Read(b []byte) (int, error) { return p.r.Read(b) }

func hashOf(t *testing.T, r io.Reader) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func TestFiles(t *testing.T) {
	for name, k := range fileKinds {
		t.Run(name, func(t *testing.T) {
			sock := apitest.Serve(t, k.backend(t))
			rootfs := k.rootfs(t)
			// A secret on the host, next to the root file system, and
			// traps in the root pointing at it.
			secret := filepath.Join(filepath.Dir(rootfs), "secret")
			plantTraps(t, rootfs, secret)
			for proto, opts := range protocols {
				t.Run(proto, func(t *testing.T) {
					testFiles(t, name, k, dial(t, sock, opts...), rootfs, secret, proto)
				})
			}
		})
	}
}

// TestFilesGVisorDefault: without HostFiles a gvisor sandbox's files are
// behind runsc's own overlay; the service says so rather than serve the
// host directory, which is not what the container sees.
func TestFilesGVisorDefault(t *testing.T) {
	testutil.RequireRunsc(t)
	b, err := gvisor.New(gvisor.Config{Root: t.TempDir()})
	must(t, err)
	t.Cleanup(func() { b.Close() })
	c := dial(t, apitest.Serve(t, b))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb, err := c.CreateSandbox(ctx, "gvisor")
	must(t, err)
	defer sb.Delete(context.Background(), sdk.Force())
	ctr, err := sb.Run(ctx, sdk.FromRootfs(testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))), sdk.Args("sleep", "300"))
	must(t, err)
	if _, err := ctr.Files().Stat(ctx, "/"); !errdefs.IsNotImplemented(err) {
		t.Errorf("Stat in a gvisor sandbox without host files = %v, want NotImplemented", err)
	}
}

// BenchmarkFiles measures the file service per kind over a unix socket
// (Connect): 1 MiB writes and reads (throughput), and the latency of a
// stat and of a 4 KiB read.
func BenchmarkFiles(b *testing.B) {
	for _, name := range []string{"runc", "wasm", "gvisor"} {
		k := fileKinds[name]
		b.Run(name, func(b *testing.B) {
			c := dialTB(b, apitest.Serve(b, k.backend(b)))
			ctx := context.Background()
			sb, err := c.CreateSandbox(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			defer sb.Delete(context.Background(), sdk.Force())
			ctr, err := sb.Run(ctx, sdk.FromRootfs(k.rootfs(b)), sdk.Args(k.sleep...))
			if err != nil {
				b.Fatal(err)
			}
			files := ctr.Files()
			small, big := bytes.Repeat([]byte("x"), 4096), bytes.Repeat([]byte("y"), 1<<20)
			for _, f := range []struct {
				name string
				data []byte
			}{{"/small", small}, {"/big", big}} {
				if _, err := files.WriteFile(ctx, f.name, bytes.NewReader(f.data), sdk.WriteOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("write-1MiB", func(b *testing.B) {
				b.SetBytes(int64(len(big)))
				for b.Loop() {
					if _, err := files.WriteFile(ctx, "/w", bytes.NewReader(big), sdk.WriteOptions{}); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("read-1MiB", func(b *testing.B) {
				b.SetBytes(int64(len(big)))
				for b.Loop() {
					if data, err := files.ReadFile(ctx, "/big"); err != nil || len(data) != len(big) {
						b.Fatal(len(data), err)
					}
				}
			})
			b.Run("stat", func(b *testing.B) {
				for b.Loop() {
					if _, err := files.Stat(ctx, "/small"); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("read-4KiB", func(b *testing.B) {
				for b.Loop() {
					if data, err := files.ReadFile(ctx, "/small"); err != nil || len(data) != len(small) {
						b.Fatal(len(data), err)
					}
				}
			})
		})
	}
}

func dialTB(t testing.TB, sock string) *sdk.Client {
	t.Helper()
	c, err := sdk.Dial(context.Background(), "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func testFiles(t *testing.T, kind string, k fileKind, c *sdk.Client, rootfs, secret, proto string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sb, err := c.CreateSandbox(ctx, kind)
	must(t, err)
	defer sb.Delete(context.Background(), sdk.Force())
	checkFiles(ctx, t, k, c, sb, rootfs, secret, proto)
}

// plantTraps puts links to secret (a host file next to rootfs) and to the
// host's /etc/shadow, a FIFO and a device node into rootfs.
func plantTraps(t *testing.T, rootfs, secret string) {
	must(t, os.WriteFile(secret, []byte("HOST SECRET\n"), 0o600))
	must(t, os.Symlink(secret, filepath.Join(rootfs, "abs")))
	must(t, os.Symlink("../../../../../../../../"+secret, filepath.Join(rootfs, "dotdot")))
	must(t, os.Symlink("/proc/1/root"+secret, filepath.Join(rootfs, "proc1")))
	must(t, os.Symlink("/etc/shadow", filepath.Join(rootfs, "shadow")))
	must(t, unix.Mkfifo(filepath.Join(rootfs, "fifo"), 0o644))
	if os.Geteuid() == 0 {
		must(t, unix.Mknod(filepath.Join(rootfs, "zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))))
	}
}

// checkFiles runs the file service's assertions in sandbox sb (of kind
// k), on containers made from rootfs (with plantTraps' traps).
func checkFiles(ctx context.Context, t *testing.T, k fileKind, c *sdk.Client, sb *sdk.Sandbox, rootfs, secret, proto string) {
	ctr, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args(k.sleep...))
	must(t, err)
	files := ctr.Files()
	dir := "/work-" + proto

	// Write, read back, modes.
	must(t, files.MkdirAll(ctx, dir+"/a/b", 0o750))
	info, err := files.WriteFile(ctx, dir+"/a/hello", strings.NewReader("hello\n"), sdk.WriteOptions{Perm: 0o600})
	must(t, err)
	if info.Type != sdk.FileRegular || info.Bytes != 6 || info.Perm != 0o600 || info.Path != dir+"/a/hello" {
		t.Errorf("WriteFile = %+v", info)
	}
	_, err = files.WriteFile(ctx, dir+"/a/hello", strings.NewReader("again\n"), sdk.WriteOptions{Mode: sdk.WriteAppend})
	must(t, err)
	if b, err := files.ReadFile(ctx, dir+"/a/hello"); err != nil || string(b) != "hello\nagain\n" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	if _, err := files.WriteFile(ctx, dir+"/a/hello", strings.NewReader("x"), sdk.WriteOptions{Mode: sdk.WriteCreateNew}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("create new over a file = %v", err)
	}
	_, err = files.WriteFile(ctx, dir+"/a/hello", strings.NewReader("atomic\n"), sdk.WriteOptions{Atomic: true})
	must(t, err)
	r, err := files.OpenRange(ctx, dir+"/a/hello", 1, 3)
	must(t, err)
	if b, _ := io.ReadAll(r); string(b) != "tom" {
		t.Errorf("OpenRange = %q", b)
	}
	r.Close()
	// An aborted atomic write leaves the file as it was.
	w, err := files.Create(ctx, dir+"/a/hello", sdk.WriteOptions{Atomic: true})
	must(t, err)
	_, _ = w.Write([]byte("partial"))
	w.Abort()
	testutil.Eventually(t, 10*time.Second, func() bool {
		entries, _, err := files.List(ctx, dir+"/a", sdk.ListOptions{})
		return err == nil && len(entries) == 2 // b and hello, no temporary file
	}, "temporary file of an aborted write is left")
	if b, _ := files.ReadFile(ctx, dir+"/a/hello"); string(b) != "atomic\n" {
		t.Errorf("after abort = %q", b)
	}

	// The container sees what was written, and the reverse.
	out, st, err := execOut(ctx, sb, ctr, k.read(dir+"/a/hello", ""))
	if err != nil || st != 0 || out != "atomic\n" {
		t.Errorf("container reads %q (exit %d, %v)", out, st, err)
	}

	// Watch: changes by the container and through the API.
	watch, err := files.Watch(ctx, dir, true)
	must(t, err)
	defer watch.Close()
	_, st, err = execOut(ctx, sb, ctr, k.write(dir+"/a/b/fromctr", "made-inside"))
	if err != nil || st != 0 {
		t.Fatalf("container write: %d, %v", st, err)
	}
	expectEvent(t, watch, sdk.FileEvent{Type: sdk.FileCreated, Path: dir + "/a/b/fromctr"})
	if b, err := files.ReadFile(ctx, dir+"/a/b/fromctr"); err != nil || string(b) != "made-inside\n" {
		t.Errorf("read the container's file = %q, %v", b, err)
	}
	must(t, files.Rename(ctx, dir+"/a/b/fromctr", dir+"/a/moved"))
	expectEvent(t, watch, sdk.FileEvent{Type: sdk.FileRemoved, Path: dir + "/a/b/fromctr"})
	expectEvent(t, watch, sdk.FileEvent{Type: sdk.FileCreated, Path: dir + "/a/moved"})
	must(t, files.Remove(ctx, dir+"/a/moved"))
	expectEvent(t, watch, sdk.FileEvent{Type: sdk.FileRemoved, Path: dir + "/a/moved"})

	// List, Stat, fs.FS.
	entries, truncated, err := files.List(ctx, dir, sdk.ListOptions{Recursive: true})
	must(t, err)
	var paths []string
	for _, e := range entries {
		paths = append(paths, e.Path)
	}
	if truncated || strings.Join(paths, " ") != dir+"/a "+dir+"/a/b "+dir+"/a/hello" {
		t.Errorf("List = %v, %v", paths, truncated)
	}
	if entries, truncated, err := files.List(ctx, dir, sdk.ListOptions{Recursive: true, Limit: 1}); err != nil || len(entries) != 1 || !truncated {
		t.Errorf("List limit 1 = %d entries, %v, %v", len(entries), truncated, err)
	}
	if info, err := files.Stat(ctx, "/abs"); err != nil || info.Type != sdk.FileSymlink || info.SymlinkTarget != secret {
		t.Errorf("Stat of a link = %+v, %v", info, err)
	}
	sub, err := fs.Sub(files.FS(ctx), strings.TrimPrefix(dir, "/"))
	must(t, err)
	must(t, fstest.TestFS(sub, "a/hello", "a/b"))

	// Errors users see.
	if _, err := files.Stat(ctx, "/missing"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat missing = %v", err)
	}
	if _, err := files.ReadFile(ctx, dir); !errdefs.IsInvalidArgument(err) {
		t.Errorf("read a directory = %v", err)
	}
	if err := files.Remove(ctx, dir); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("remove a non-empty directory = %v", err)
	}
	if err := files.Remove(ctx, "/"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("remove / = %v", err)
	}
	if _, err := c.Files("no-such-container").Stat(ctx, "/"); !errdefs.IsNotFound(err) {
		t.Errorf("missing container = %v", err)
	}

	// Escapes: links to the host, .., a FIFO and a device node are never
	// read or written through.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range []string{"/abs", "/dotdot", "/proc1", "../../../../" + secret, "/../.." + secret, "/fifo", "/zero"} {
			if b, err := files.ReadFile(ctx, p); err == nil || strings.Contains(string(b), "SECRET") {
				t.Errorf("read %s = %q, %v", p, b, err)
			}
			if _, err := files.WriteFile(ctx, p, strings.NewReader("pwned"), sdk.WriteOptions{}); err == nil {
				t.Errorf("write %s succeeded", p)
			}
		}
		if b, err := files.ReadFile(ctx, "/shadow"); err == nil {
			t.Errorf("read /shadow (link to /etc/shadow) = %q: the host's", b)
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("an escape attempt blocked (FIFO or device opened?)")
	}
	if b, _ := os.ReadFile(secret); string(b) != "HOST SECRET\n" {
		t.Fatalf("host secret changed: %q", b)
	}
	// A write to ../../x lands inside the root.
	if _, err := files.WriteFile(ctx, "../../../escaped-"+proto, strings.NewReader("x"), sdk.WriteOptions{}); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "escaped-"+proto)); err != nil {
		t.Errorf("../ write not inside the root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(rootfs), "escaped-"+proto)); err == nil {
		t.Error("../ write left the root")
	}

	// Tar: download a directory, upload it elsewhere.
	tr, err := files.DownloadTar(ctx, dir)
	must(t, err)
	var archive bytes.Buffer
	_, err = io.Copy(&archive, tr)
	tr.Close()
	must(t, err)
	names := tarNames(t, archive.Bytes())
	if strings.Join(names, " ") != "a/ a/b/ a/hello" {
		t.Errorf("tar entries = %v", names)
	}
	n, nb, err := files.UploadTar(ctx, dir+"-copy", bytes.NewReader(archive.Bytes()))
	if err != nil || n != 3 || nb != 7 {
		t.Errorf("UploadTar = %d, %d, %v", n, nb, err)
	}
	if b, err := files.ReadFile(ctx, dir+"-copy/a/hello"); err != nil || string(b) != "atomic\n" {
		t.Errorf("uploaded file = %q, %v", b, err)
	}
	must(t, files.RemoveAll(ctx, dir+"-copy"))
	if _, err := files.Stat(ctx, dir+"-copy"); !errdefs.IsNotFound(err) {
		t.Errorf("RemoveAll left %v", err)
	}

	// A file of many messages both ways (the 100 MB one, with the
	// daemon's memory checked, is in test/e2e).
	const size = 8<<20 + 12345
	_, err = files.WriteFile(ctx, dir+"/big", patterned(size), sdk.WriteOptions{})
	must(t, err)
	r, err = files.Open(ctx, dir+"/big")
	must(t, err)
	got := hashOf(t, r)
	r.Close()
	if got != hashOf(t, patterned(size)) {
		t.Error("8 MB file read back differs")
	}
	if fi, err := os.Stat(filepath.Join(rootfs, dir, "big")); err != nil || fi.Size() != size {
		t.Errorf("big file on disk: %v, %v", fi, err)
	}
	must(t, files.Remove(ctx, dir+"/big"))

	// A read-only root is read, not written.
	ro, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.ReadonlyRootfs(), sdk.Args(k.sleep...))
	must(t, err)
	if _, err := ro.Files().Stat(ctx, dir+"/a/hello"); err != nil {
		t.Errorf("Stat in a read-only root = %v", err)
	}
	if _, err := ro.Files().WriteFile(ctx, "/ro-"+proto, strings.NewReader("x"), sdk.WriteOptions{}); !errdefs.IsPermissionDenied(err) {
		t.Errorf("write into a read-only root = %v, want PermissionDenied", err)
	}
	if err := ro.Files().RemoveAll(ctx, dir); !errdefs.IsPermissionDenied(err) {
		t.Errorf("remove in a read-only root = %v, want PermissionDenied", err)
	}
	must(t, ro.Delete(ctx, sdk.Force()))

	// After the container exited, until it is deleted.
	done2, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args(k.writeAndExit("/exited-"+proto, "bye")...))
	must(t, err)
	if st, err := done2.Wait(ctx); err != nil || st.Code != 3 {
		t.Fatalf("Wait = %+v, %v", st, err)
	}
	if b, err := done2.Files().ReadFile(ctx, "/exited-"+proto); err != nil || string(b) != "bye\n" {
		t.Errorf("read after exit = %q, %v", b, err)
	}
	must(t, done2.Delete(ctx))
	if _, err := done2.Files().Stat(ctx, "/"); !errdefs.IsNotFound(err) {
		t.Errorf("files of a deleted container = %v", err)
	}
}

// execOut runs args in the container (runc), or in a new container of the
// sandbox on the same root file system (wasm modules cannot be exec'd
// into), and returns its output and exit code.
func execOut(ctx context.Context, sb *sdk.Sandbox, ctr *sdk.Container, args []string) (string, int, error) {
	if ctr.Process.Args[0] == wasmtest.ShellModule {
		c, err := sb.Run(ctx, sdk.FromRootfs(ctr.RootfsPath), sdk.Args(args...))
		if err != nil {
			return "", 0, err
		}
		defer c.Delete(context.WithoutCancel(ctx), sdk.Force())
		out, st, err := c.CombinedOutput(ctx)
		return string(out), st.Code, err
	}
	p, err := ctr.Exec(ctx, sdk.Args(args...))
	if err != nil {
		return "", 0, err
	}
	out, st, err := p.CombinedOutput(ctx)
	return string(out), st.Code, err
}

func expectEvent(t *testing.T, w *sdk.FileWatch, want sdk.FileEvent) {
	t.Helper()
	for {
		e, err := w.Next()
		if err != nil {
			t.Fatalf("waiting for %+v: %v", want, err)
		}
		if e == want {
			return
		}
	}
}

func tarNames(t *testing.T, b []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		must(t, err)
		names = append(names, h.Name)
	}
}
