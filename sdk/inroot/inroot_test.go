//go:build linux

package inroot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// setup makes a root with a few files and, next to it, a secret the root
// must never reach.
func setup(t *testing.T) (*Root, string, string) {
	t.Helper()
	base := t.TempDir()
	root := filepath.Join(base, "root")
	secret := filepath.Join(base, "secret")
	must(t, os.WriteFile(secret, []byte("HOST SECRET"), 0o600))
	must(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "etc", "hosts"), []byte("inside"), 0o644))
	r, err := Open(root)
	must(t, err)
	t.Cleanup(func() { r.Close() })
	return r, root, secret
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, r *Root, p string) (string, error) {
	t.Helper()
	f, err := r.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return string(b), err
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{"a/b": "/a/b", "/a/../b": "/b", "../../b": "/b", "/": "/", ".": "/", "a//b/": "/a/b"} {
		got, err := Clean(in)
		if err != nil || got != want {
			t.Errorf("Clean(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a\x00b", string(bytes.Repeat([]byte("a"), MaxPathLen+1))} {
		if _, err := Clean(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Clean(%q) = %v, want invalid argument", bad, err)
		}
	}
}

func TestEscapes(t *testing.T) {
	r, root, secret := setup(t)
	// Links that would leave the root on the host: absolute, relative with
	// .., to /proc magic links.
	must(t, os.Symlink(secret, filepath.Join(root, "abs")))
	must(t, os.Symlink("../secret", filepath.Join(root, "rel")))
	must(t, os.Symlink("../../../../secret", filepath.Join(root, "etc", "deep")))
	must(t, os.Symlink("/proc/1/root"+secret, filepath.Join(root, "proc1")))
	must(t, os.Symlink("/proc/self/root"+secret, filepath.Join(root, "procself")))
	must(t, os.Symlink("/", filepath.Join(root, "slash")))
	must(t, os.Symlink("/etc/hosts", filepath.Join(root, "hostslink")))
	for _, p := range []string{"abs", "rel", "etc/deep", "proc1", "procself", "../secret", "../../secret", "/../secret", "slash/../secret", "etc/../../secret"} {
		got, err := readAll(t, r, p)
		if got == "HOST SECRET" || err == nil {
			t.Errorf("read %s = %q, %v: escaped the root", p, got, err)
		}
	}
	// An absolute link resolves inside the root.
	if got, err := readAll(t, r, "hostslink"); err != nil || got != "inside" {
		t.Errorf("read hostslink = %q, %v; want the root's /etc/hosts", got, err)
	}
	// Writes through links are refused or stay inside.
	for _, p := range []string{"abs", "rel", "proc1"} {
		w, err := r.Create(p, WriteOptions{})
		if err == nil {
			w.Abort()
			t.Errorf("create %s through a link succeeded", p)
		} else if !errdefs.IsInvalidArgument(err) {
			t.Errorf("create %s = %v, want invalid argument", p, err)
		}
	}
	for _, p := range []string{"etc/deep/x", "slash/../../x"} {
		if w, err := r.Create(p, WriteOptions{}); err == nil {
			w.Commit()
		}
	}
	if b, _ := os.ReadFile(secret); string(b) != "HOST SECRET" {
		t.Fatalf("secret changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(root), "x")); err == nil {
		t.Fatal("a file was created outside the root")
	}
	// mkdir, rename and remove through links stay inside.
	must(t, r.MkdirAll("slash/../../made", 0o755))
	if _, err := os.Stat(filepath.Join(root, "made")); err != nil {
		t.Fatalf("mkdir through / link: %v", err)
	}
	if err := r.Rename("etc/hosts", "rel/../../stolen"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "stolen")); err != nil {
		t.Fatalf("rename through a link left the root: %v", err)
	}
	// Remove of a link removes the link, never its target.
	must(t, r.Remove("abs", false))
	if _, err := os.Stat(secret); err != nil {
		t.Fatal("remove followed a link")
	}
	if err := r.Remove("/", true); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("remove / = %v", err)
	}
}

// TestRecursiveOpsDoNotFollowLinks: remove -r, list -r and tar of a tree
// holding links to a host directory leave the host directory alone and
// do not list or archive its files.
func TestRecursiveOpsDoNotFollowLinks(t *testing.T) {
	r, root, secret := setup(t)
	hostDir := filepath.Dir(secret)
	must(t, os.MkdirAll(filepath.Join(root, "tree", "sub"), 0o755))
	must(t, os.Symlink(hostDir, filepath.Join(root, "tree", "abs")))
	must(t, os.Symlink("../../../..", filepath.Join(root, "tree", "sub", "up")))
	must(t, os.Symlink(hostDir, filepath.Join(root, "hostlink")))
	entries, _, err := r.List("/tree", true, 1000)
	must(t, err)
	for _, e := range entries {
		if filepath.Base(e.Path) == "secret" {
			t.Fatalf("list -r followed a link: %s", e.Path)
		}
	}
	var buf bytes.Buffer
	must(t, r.WriteTar("/tree", &buf))
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		if filepath.Base(h.Name) == "secret" {
			t.Fatalf("tar followed a link: %s", h.Name)
		}
	}
	must(t, r.Remove("/tree", true))
	must(t, r.Remove("/hostlink", true))
	if b, err := os.ReadFile(secret); err != nil || string(b) != "HOST SECRET" {
		t.Fatalf("host directory touched: %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(root, "tree")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("tree left: %v", err)
	}
}

func TestSpecialFilesNeverOpened(t *testing.T) {
	r, root, _ := setup(t)
	must(t, unix.Mkfifo(filepath.Join(root, "fifo"), 0o666))
	must(t, os.Symlink("/fifo", filepath.Join(root, "fifolink")))
	paths := []string{"fifo", "fifolink", "etc"}
	if os.Geteuid() == 0 {
		// /dev/zero's numbers: reading it would never end.
		must(t, unix.Mknod(filepath.Join(root, "zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))))
		paths = append(paths, "zero")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range paths {
			if _, err := r.Open(p); !errdefs.IsInvalidArgument(err) {
				t.Errorf("open %s = %v, want invalid argument", p, err)
			}
			if w, err := r.Create(p, WriteOptions{}); err == nil {
				w.Abort()
				t.Errorf("create %s succeeded", p)
			}
			if w, err := r.Create(p, WriteOptions{Mode: Append}); err == nil {
				w.Abort()
				t.Errorf("append %s succeeded", p)
			}
		}
		var buf bytes.Buffer
		must(t, r.WriteTar("/", &buf))
		tr := tar.NewReader(&buf)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			must(t, err)
			if h.Name == "fifo" || h.Name == "zero" {
				t.Errorf("tar archived special file %s", h.Name)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("opening a special file blocked")
	}
}

func TestMountPointNotCrossed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind mount")
	}
	r, root, secret := setup(t)
	mnt := filepath.Join(root, "mnt")
	must(t, os.Mkdir(mnt, 0o755))
	must(t, unix.Mount(filepath.Dir(secret), mnt, "", unix.MS_BIND, ""))
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	if got, err := readAll(t, r, "mnt/secret"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("read through a mount point = %q, %v", got, err)
	}
	entries, _, err := r.List("/", true, 1000)
	must(t, err)
	for _, e := range entries {
		if e.Path == "/mnt/secret" {
			t.Fatal("list crossed a mount point")
		}
	}
}

// TestSwapRace swaps a file for a link to a host file while it is read and
// written: no read returns the host file, no write changes it.
func TestSwapRace(t *testing.T) {
	r, root, secret := setup(t)
	target := filepath.Join(root, "target")
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tmpf, tmpl := filepath.Join(root, "tf"), filepath.Join(root, "tl")
		for !stop.Load() {
			_ = os.WriteFile(tmpf, []byte("inside"), 0o644)
			_ = os.Rename(tmpf, target)
			_ = os.Symlink(secret, tmpl)
			_ = os.Rename(tmpl, target)
			_ = os.Symlink("../secret", tmpl)
			_ = os.Rename(tmpl, target)
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		if got, _ := readAll(t, r, "target"); got == "HOST SECRET" {
			t.Fatal("read the host's file")
		}
		if w, err := r.Create("target", WriteOptions{Mode: []WriteMode{Truncate, Append}[i%2]}); err == nil {
			_, _ = w.Write([]byte("pwned"))
			_, _ = w.Commit()
		}
	}
	stop.Store(true)
	wg.Wait()
	if b, _ := os.ReadFile(secret); string(b) != "HOST SECRET" {
		t.Fatalf("secret changed: %q", b)
	}
}

func TestOperations(t *testing.T) {
	r, root, _ := setup(t)
	must(t, r.MkdirAll("/a/b/c", 0o750))
	if fi, err := os.Stat(filepath.Join(root, "a/b/c")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("mkdir -p: %v %v", fi, err)
	}
	must(t, r.MkdirAll("/a/b", 0o755)) // exists
	if err := r.Mkdir("/a", 0o755); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("mkdir existing = %v", err)
	}
	if err := r.Mkdir("/x/y", 0o755); !errdefs.IsNotFound(err) {
		t.Fatalf("mkdir without parent = %v", err)
	}
	write := func(p string, o WriteOptions, data string) (Info, error) {
		w, err := r.Create(p, o)
		if err != nil {
			return Info{}, err
		}
		if _, err := w.Write([]byte(data)); err != nil {
			w.Abort()
			return Info{}, err
		}
		return w.Commit()
	}
	info, err := write("/a/f", WriteOptions{Perm: 0o600}, "hello")
	must(t, err)
	if info.Size != 5 || info.Mode != 0o600 || info.Type != TypeRegular || info.Path != "/a/f" {
		t.Fatalf("info = %+v", info)
	}
	_, err = write("/a/f", WriteOptions{Mode: Append}, " world")
	must(t, err)
	if got, _ := readAll(t, r, "/a/f"); got != "hello world" {
		t.Fatalf("append: %q", got)
	}
	if _, err := write("/a/f", WriteOptions{Mode: CreateNew}, "x"); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("create new over existing = %v", err)
	}
	if _, err := write("/a/f", WriteOptions{Mode: CreateNew, Atomic: true}, "x"); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("atomic create new over existing = %v", err)
	}
	_, err = write("/a/f", WriteOptions{Atomic: true}, "new")
	must(t, err)
	if got, _ := readAll(t, r, "/a/f"); got != "new" {
		t.Fatalf("atomic: %q", got)
	}
	// An aborted atomic write leaves the file and no temporary file.
	w, err := r.Create("/a/f", WriteOptions{Atomic: true})
	must(t, err)
	_, _ = w.Write([]byte("partial"))
	w.Abort()
	if got, _ := readAll(t, r, "/a/f"); got != "new" {
		t.Fatalf("after abort: %q", got)
	}
	if _, err := write("/a/big", WriteOptions{MaxSize: 3}, "four"); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("over the size bound = %v", err)
	}
	if _, err := write("/a", WriteOptions{}, "x"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("write a directory = %v", err)
	}
	if _, err := write("/nodir/f", WriteOptions{}, "x"); !errdefs.IsNotFound(err) {
		t.Fatalf("write without directory = %v", err)
	}
	entries, truncated, err := r.List("/a", false, 10)
	must(t, err)
	if len(entries) != 3 || truncated || entries[0].Path != "/a/b" || entries[1].Path != "/a/big" || entries[2].Path != "/a/f" {
		t.Fatalf("list = %+v %v", entries, truncated)
	}
	entries, truncated, err = r.List("/", true, 4)
	must(t, err)
	if len(entries) != 4 || !truncated {
		t.Fatalf("list limit = %+v %v", entries, truncated)
	}
	if _, err := r.Stat("/missing"); !errdefs.IsNotFound(err) {
		t.Fatalf("stat missing = %v", err)
	}
	must(t, r.Symlink("/a/f", "/a/link"))
	if info, err := r.Stat("/a/link"); err != nil || info.Type != TypeSymlink || info.SymlinkTarget != "/a/f" {
		t.Fatalf("stat link = %+v %v", info, err)
	}
	must(t, r.Rename("/a/f", "/a/g"))
	if err := r.Remove("/a", false); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("remove non-empty = %v", err)
	}
	must(t, r.Remove("/a", true))
	if _, err := os.Stat(filepath.Join(root, "a")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("remove -r: %v", err)
	}
}

func TestTarRoundTrip(t *testing.T) {
	r, _, secret := setup(t)
	must(t, r.MkdirAll("/src/sub", 0o755))
	w, err := r.Create("/src/sub/file", WriteOptions{Perm: 0o755})
	must(t, err)
	_, _ = w.Write([]byte("data"))
	_, err = w.Commit()
	must(t, err)
	must(t, r.Symlink("sub/file", "/src/link"))
	var buf bytes.Buffer
	must(t, r.WriteTar("/src", &buf))
	n, _, err := r.ExtractTar("/dst", bytes.NewReader(buf.Bytes()), TarLimits{})
	must(t, err)
	if n != 3 {
		t.Fatalf("extracted %d entries", n)
	}
	if got, _ := readAll(t, r, "/dst/link"); got != "data" {
		t.Fatalf("extracted link: %q", got)
	}
	if info, _ := r.Stat("/dst/sub/file"); info.Mode != 0o755 {
		t.Fatalf("mode %o", info.Mode)
	}
	// A hostile archive: .. names, a link out then a file through it, a
	// device, too many entries.
	var evil bytes.Buffer
	tw := tar.NewWriter(&evil)
	_ = tw.WriteHeader(&tar.Header{Name: "../../../escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	_, _ = tw.Write([]byte("x"))
	_ = tw.WriteHeader(&tar.Header{Name: "out", Typeflag: tar.TypeSymlink, Linkname: filepath.Dir(secret)})
	_ = tw.WriteHeader(&tar.Header{Name: "out/secret", Typeflag: tar.TypeReg, Size: 5, Mode: 0o644})
	_, _ = tw.Write([]byte("pwned"))
	_ = tw.Close()
	_, _, err = r.ExtractTar("/dst2", bytes.NewReader(evil.Bytes()), TarLimits{})
	if err != nil && !errdefs.IsNotFound(err) {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "HOST SECRET" {
		t.Fatalf("secret changed: %q", b)
	}
	if got, _ := readAll(t, r, "/dst2/escape"); got != "x" {
		t.Fatalf("../ entry not kept inside: %q", got)
	}
	var dev bytes.Buffer
	tw = tar.NewWriter(&dev)
	_ = tw.WriteHeader(&tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3})
	_ = tw.Close()
	if _, _, err := r.ExtractTar("/dst3", &dev, TarLimits{}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("device entry = %v", err)
	}
	if _, _, err := r.ExtractTar("/dst4", bytes.NewReader(buf.Bytes()), TarLimits{MaxEntries: 1}); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("entry bound = %v", err)
	}
}

func TestWatch(t *testing.T) {
	r, root, _ := setup(t)
	must(t, r.MkdirAll("/w/sub", 0o755))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	evc := make(chan Event, 100)
	errc := make(chan error, 1)
	go func() {
		errc <- Watch(ctx, root, "/w", true, func() error { close(started); return nil }, func(evs []Event, _ bool) error {
			for _, e := range evs {
				evc <- e
			}
			return nil
		})
	}()
	select {
	case <-started:
	case err := <-errc:
		t.Fatal(err)
	}
	expect := func(want Event) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case e := <-evc:
				if e == want {
					return
				}
			case <-timeout:
				t.Fatalf("no event %+v", want)
			}
		}
	}
	must(t, os.WriteFile(filepath.Join(root, "w/f"), []byte("1"), 0o644))
	expect(Event{Type: Created, Path: "/w/f"})
	expect(Event{Type: Modified, Path: "/w/f"})
	must(t, os.WriteFile(filepath.Join(root, "w/sub/g"), []byte("1"), 0o644))
	expect(Event{Type: Created, Path: "/w/sub/g"})
	must(t, os.Mkdir(filepath.Join(root, "w/new"), 0o755))
	expect(Event{Type: Created, Path: "/w/new", IsDir: true})
	// A directory made after the watch started is watched too.
	must(t, os.WriteFile(filepath.Join(root, "w/new/h"), []byte("1"), 0o644))
	expect(Event{Type: Created, Path: "/w/new/h"})
	must(t, os.Remove(filepath.Join(root, "w/f")))
	expect(Event{Type: Removed, Path: "/w/f"})
	// Removing the watched directory ends the watch.
	must(t, os.RemoveAll(filepath.Join(root, "w")))
	select {
	case err := <-errc:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end when its directory was removed")
	}
}
