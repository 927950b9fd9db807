package wasm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hoststdio"
)

func TestModulePath(t *testing.T) {
	for _, tc := range []struct{ arg0, cwd, want string }{
		{"/app/m.wasm", "/", "/app/m.wasm"},
		{"m.wasm", "/app", "/app/m.wasm"},
		{"./m.wasm", "", "/m.wasm"},
		{"/a//b/./m.wasm", "/", "/a/b/m.wasm"},
	} {
		got, err := modulePath(tc.arg0, tc.cwd)
		if err != nil || got != tc.want {
			t.Errorf("modulePath(%q, %q) = %q, %v; want %q", tc.arg0, tc.cwd, got, err, tc.want)
		}
	}
	for _, bad := range [][2]string{{"../m.wasm", "/"}, {"/a/../../m.wasm", "/"}, {"", "/"}, {"m.wasm", "rel"}} {
		if _, err := modulePath(bad[0], bad[1]); !errdefs.IsInvalidArgument(err) {
			t.Errorf("modulePath(%q, %q): err = %v, want invalid argument", bad[0], bad[1], err)
		}
	}
}

func TestCheckModuleStaysInRoot(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "evil.wasm")
	if err := os.WriteFile(outside, []byte("\x00asm\x01\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An absolute symlink resolves inside the rootfs, where there is no
	// such file.
	if err := os.Symlink(outside, filepath.Join(root, "link.wasm")); err != nil {
		t.Fatal(err)
	}
	if err := checkModule(root, "/link.wasm"); !errdefs.IsNotFound(err) {
		t.Errorf("symlink out of the rootfs: err = %v, want not found", err)
	}
	if err := os.WriteFile(filepath.Join(root, "ok.wasm"), []byte("\x00asm\x01\x00\x00\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/ok.wasm", filepath.Join(root, "inside.wasm")); err != nil {
		t.Fatal(err)
	}
	if err := checkModule(root, "/inside.wasm"); err != nil {
		t.Errorf("symlink inside the rootfs: %v", err)
	}
}

func TestMemory(t *testing.T) {
	if got := memoryPages(0); got != 0 {
		t.Errorf("memoryPages(0) = %d", got)
	}
	if got := memoryPages(128 << 20); got != 2048 {
		t.Errorf("memoryPages(128 MiB) = %d, want 2048", got)
	}
	if got := memoryPages(1); got != 1 {
		t.Errorf("memoryPages(1) = %d, want 1", got)
	}
	if got := memoryPages(1 << 40); got != maxPages {
		t.Errorf("memoryPages(1 TiB) = %d, want %d", got, maxPages)
	}
	l := int64(64 << 20)
	spec := &specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &l}}}}
	if got := memoryLimit(spec, 1); got != 64<<20 {
		t.Errorf("memoryLimit = %d", got)
	}
	if got := memoryLimit(&specs.Spec{}, 7); got != 7 {
		t.Errorf("default memoryLimit = %d", got)
	}
}

func TestPreopensAndEnv(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hosts")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/data", Type: "bind", Source: dir, Options: []string{"rbind", "ro"}},
		{Destination: "/etc/hosts", Type: "bind", Source: file, Options: []string{"rbind"}},
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/work/", Source: dir, Options: []string{"bind"}},
	}}
	got := preopens(spec)
	if len(got) != 2 || got[0] != (preopen{Host: dir, Guest: "/data", ReadOnly: true}) || got[1] != (preopen{Host: dir, Guest: "/work"}) {
		t.Errorf("preopens = %+v", got)
	}
	if env := moduleEnv([]string{"A=1"}, "/app"); len(env) != 2 || env[1] != "PWD=/app" {
		t.Errorf("moduleEnv = %v", env)
	}
	if env := moduleEnv([]string{"PWD=/x"}, "/app"); len(env) != 1 {
		t.Errorf("moduleEnv keeps PWD: %v", env)
	}
}

func TestStdioPath(t *testing.T) {
	for _, tc := range []struct {
		in     string
		want   string
		isFile bool
	}{
		{"/run/x/stdout", "/run/x/stdout", false},
		{"fifo:///run/x/stdout", "/run/x/stdout", false},
		{"file:///var/log/x.log", "/var/log/x.log", true},
	} {
		got, isFile, err := hoststdio.Path(tc.in)
		if err != nil || got != tc.want || isFile != tc.isFile {
			t.Errorf("hoststdio.Path(%q) = %q, %v, %v", tc.in, got, isFile, err)
		}
	}
	if _, _, err := hoststdio.Path("binary:///usr/bin/logger"); !errdefs.IsNotImplemented(err) {
		t.Errorf("binary:// err = %v, want not implemented", err)
	}
}
