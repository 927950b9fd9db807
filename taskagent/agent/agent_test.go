package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	typesv1 "github.com/magnetar-io/magnetar/gen/magnetar/types/v1"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

func TestParseModuleOrder(t *testing.T) {
	in := `# comment
virtio_ring.ko
virtio.ko

insmod /lib/modules/6.1.0-56-amd64/kernel/drivers/virtio/virtio_mmio.ko
builtin crc32c
virtio.ko
`
	got, err := ParseModuleOrder(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring.ko", "virtio.ko", "/lib/modules/6.1.0-56-amd64/kernel/drivers/virtio/virtio_mmio.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if _, err := ParseModuleOrder(strings.NewReader("rmmod x\n")); err == nil {
		t.Fatal("want an error for a bad line")
	}
}

func TestRenderResolvConf(t *testing.T) {
	got := RenderResolvConf(&typesv1.DNSConfig{
		Servers:  []string{"10.96.0.10", "8.8.8.8"},
		Searches: []string{"default.svc.cluster.local", "svc.cluster.local"},
		Options:  []string{"ndots:5", "edns0"},
	})
	want := "nameserver 10.96.0.10\nnameserver 8.8.8.8\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := RenderResolvConf(nil); got != "" {
		t.Fatalf("nil config: got %q", got)
	}
}

func TestRenderHosts(t *testing.T) {
	h := RenderHosts("pod-a")
	if !strings.HasPrefix(h, "127.0.0.1\tlocalhost\n") || !strings.HasSuffix(h, "127.0.1.1\tpod-a\n") {
		t.Fatalf("hosts: %q", h)
	}
	if strings.Contains(RenderHosts(""), "127.0.1.1") {
		t.Fatal("no host name: no 127.0.1.1 line wanted")
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	writeFile(t, filepath.Join(sys, "vport0p0", "name"), "\n") // the console port has no name
	writeFile(t, filepath.Join(sys, "vport0p1", "name"), "other\n")
	writeFile(t, filepath.Join(sys, "vport0p2", "name"), "agent\n")
	got, err := FindPort(sys, "/dev", "agent")
	if err != nil {
		t.Fatal(err)
	}
	if got != "/dev/vport0p2" {
		t.Fatalf("got %q", got)
	}
	_, err = FindPort(sys, "/dev", "missing")
	if err == nil || !strings.Contains(err.Error(), "vport0p1=other") {
		t.Fatalf("want a not-found error listing the ports, got %v", err)
	}
	if _, err := FindPort(filepath.Join(sys, "absent"), "/dev", "agent"); err == nil {
		t.Fatal("want an error without a sysfs dir")
	}
}

func TestWaitPort(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	go func() {
		time.Sleep(50 * time.Millisecond) // the port appears while waitPort waits
		writeFile(t, filepath.Join(dev, "vport1p1"), "")
		writeFile(t, filepath.Join(sys, "vport1p1", "name"), "agent\n")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := waitPort(ctx, sys, dev, "agent")
	if err != nil {
		t.Fatal(err)
	}
	if got != filepath.Join(dev, "vport1p1") {
		t.Fatalf("got %q", got)
	}
}

func TestParseStat(t *testing.T) {
	state, ppid, err := parseStat("123 (a) b (c)) Z 1 123 123 0 -1 4194564 0 0")
	if err != nil || state != "Z" || ppid != 1 {
		t.Fatalf("got %q %d %v", state, ppid, err)
	}
	if _, _, err := parseStat("garbage"); err == nil {
		t.Fatal("want an error")
	}
}

func TestZombieChildren(t *testing.T) {
	proc := t.TempDir()
	writeFile(t, filepath.Join(proc, "10", "stat"), "10 (sh) Z 1 10 10 0")
	writeFile(t, filepath.Join(proc, "11", "stat"), "11 (sh) S 1 11 11 0")
	writeFile(t, filepath.Join(proc, "12", "stat"), "12 (sh) Z 7 12 12 0")
	writeFile(t, filepath.Join(proc, "self", "stat"), "1 (init) S 0 1 1 0")
	got, err := zombieChildren(proc, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []int{10}) {
		t.Fatalf("got %v", got)
	}
}

// TestReaperSparesOwned checks that the reaper reaps an orphan-like zombie
// child but leaves the one started through it to its owner.
func TestReaperSparesOwned(t *testing.T) {
	r := NewReaper("/proc", 100*time.Millisecond)
	owned := osexec.Command("true")
	if err := r.Start(owned); err != nil {
		t.Fatal(err)
	}
	stray := osexec.Command("true")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayPid := stray.Process.Pid
	start := time.Now()
	reaped := testutil.Poll(5*time.Second, func() bool {
		for _, p := range r.ReapOnce() {
			if p == owned.Process.Pid {
				t.Fatal("reaped an owned process")
			}
			if p == strayPid {
				return true
			}
		}
		return false
	})
	if !reaped {
		t.Fatal("stray zombie not reaped")
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Fatal("reaped before the grace period")
	}
	if err := owned.Wait(); err != nil {
		t.Fatalf("owner lost the exit status: %v", err)
	}
	r.Release(owned.Process.Pid)
}

// TestReaperLeavesWaitedChildren checks that a child somebody waits for
// keeps its exit status although the reaper scans meanwhile.
func TestReaperLeavesWaitedChildren(t *testing.T) {
	r := NewReaper("/proc", time.Second)
	for range 20 {
		cmd := osexec.Command("sh", "-c", "exit 3")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r.ReapOnce()
		err := cmd.Wait()
		if ee, ok := err.(*osexec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Fatalf("exit status lost: %v", err)
		}
	}
}

func TestParseMountOptions(t *testing.T) {
	flags, data := ParseMountOptions("9p", []string{"ro", "nodev", "msize=65536", "cache=none"})
	if flags != unix.MS_RDONLY|unix.MS_NODEV {
		t.Fatalf("flags %#x", flags)
	}
	if data != "msize=65536,cache=none,trans=virtio,version=9p2000.L" {
		t.Fatalf("data %q", data)
	}
	flags, data = ParseMountOptions("none", []string{"rbind", "ro", "rw"})
	if flags != unix.MS_BIND|unix.MS_REC || data != "" {
		t.Fatalf("got %#x %q", flags, data)
	}
}

func TestBuildRoute(t *testing.T) {
	r, err := BuildRoute(&agentv1.Route{Gateway: "10.88.0.1", Device: "eth0"})
	if err != nil || r.Dst != nil || r.Gw.String() != "10.88.0.1" || r.Family != unix.AF_INET {
		t.Fatalf("default route: %+v %v", r, err)
	}
	r, err = BuildRoute(&agentv1.Route{Destination: "fd00::/64", Source: "fd00::5"})
	if err != nil || r.Dst.String() != "fd00::/64" || r.Family != unix.AF_INET6 || r.Scope != unix.RT_SCOPE_LINK {
		t.Fatalf("v6 link route: %+v %v", r, err)
	}
	if _, err := BuildRoute(&agentv1.Route{Destination: "nope"}); err == nil {
		t.Fatal("want an error")
	}
}

func TestCmdlineFlag(t *testing.T) {
	f := filepath.Join(t.TempDir(), "cmdline")
	writeFile(t, f, "console=ttyS0 quiet magnetar.debug=1 panic=-1\n")
	if !cmdlineFlag(f, "magnetar.debug") || cmdlineFlag(f, "magnetar.other") {
		t.Fatal("cmdlineFlag")
	}
	writeFile(t, f, "magnetar.debug=0")
	if cmdlineFlag(f, "magnetar.debug") {
		t.Fatal("magnetar.debug=0 is off")
	}
}

func TestEventsKeepLogLines(t *testing.T) {
	hub := newEventHub(2)
	level := new(slog.LevelVar)
	log := slog.New(newTeeHandler(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: level}), hub, level)).With("sandbox", "s1")
	log.Debug("dropped: below the level")
	log.Info("one")
	log.Info("two", "k", 1)
	log.Warn("three")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a, _ := hub.next(ctx)
	b, _ := hub.next(ctx)
	if a.GetLog().GetMessage() != "two" || b.GetLog().GetMessage() != "three" {
		t.Fatalf("got %q %q (the oldest is dropped at the limit)", a.GetLog().GetMessage(), b.GetLog().GetMessage())
	}
	if a.GetLog().GetAttrs()["sandbox"] != "s1" || a.GetLog().GetAttrs()["k"] != "1" {
		t.Fatalf("attrs %v", a.GetLog().GetAttrs())
	}
	hub.unshift(b)
	if c, _ := hub.next(ctx); c != b {
		t.Fatal("unshift")
	}
	if _, err := hub.next(ctx); err == nil {
		t.Fatal("want ctx error on an empty hub")
	}
}

func TestCopyTree(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "out")
	writeFile(t, filepath.Join(src, "a", "b.txt"), "hello")
	if err := os.Chmod(filepath.Join(src, "a", "b.txt"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a/b.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := copyTree(src, dst); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dst, "link"))
	if err != nil || string(b) != "hello" {
		t.Fatalf("copied link: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "a", "b.txt")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("mode: %v %v", fi.Mode(), err)
	}
}
