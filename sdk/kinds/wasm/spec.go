package wasm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// wasmPageSize is the size of a WebAssembly memory page.
const wasmPageSize = 64 << 10

// maxPages is the most pages a 32-bit wasm memory can have (4 GiB).
const maxPages = 65536

// wasmMagic starts every binary wasm module.
var wasmMagic = []byte{0, 'a', 's', 'm'}

// modulePath resolves the module named by args[0] to an absolute path
// inside the rootfs: absolute, or relative to cwd. It refuses ".."
// components; symlinks are resolved inside the rootfs when it is opened.
func modulePath(arg0, cwd string) (string, error) {
	if arg0 == "" {
		return "", fmt.Errorf("process.args[0] must name the .wasm module: %w", errdefs.ErrInvalidArgument)
	}
	if slices.Contains(strings.Split(arg0, "/"), "..") {
		return "", fmt.Errorf("module path %q leaves the rootfs: %w", arg0, errdefs.ErrInvalidArgument)
	}
	if cwd == "" {
		cwd = "/"
	}
	if !path.IsAbs(cwd) {
		return "", fmt.Errorf("process.cwd %q is not absolute: %w", cwd, errdefs.ErrInvalidArgument)
	}
	if path.IsAbs(arg0) {
		return path.Clean(arg0), nil
	}
	return path.Join(path.Clean(cwd), arg0), nil
}

// checkModule verifies that module (an in-rootfs path) is a regular file
// inside rootfs that starts like a wasm binary.
func checkModule(rootfs, module string) error {
	h, err := pathrs.OpenInRoot(rootfs, module)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("module %s not found in the rootfs: %w", module, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("module %s: %v: %w", module, err, errdefs.ErrInvalidArgument)
	}
	defer h.Close()
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return fmt.Errorf("module %s: %v: %w", module, err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("module %s is not a regular file: %w", module, errdefs.ErrInvalidArgument)
	}
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != string(wasmMagic) {
		return fmt.Errorf("module %s is not a WebAssembly binary: %w", module, errdefs.ErrInvalidArgument)
	}
	return nil
}

// memoryLimit is the spec's memory limit, or def.
func memoryLimit(spec *specs.Spec, def uint64) uint64 {
	if spec.Linux != nil && spec.Linux.Resources != nil && spec.Linux.Resources.Memory != nil &&
		spec.Linux.Resources.Memory.Limit != nil && *spec.Linux.Resources.Memory.Limit > 0 {
		return uint64(*spec.Linux.Resources.Memory.Limit)
	}
	return def
}

// memoryPages converts a byte limit to wasm pages; 0 means no limit.
func memoryPages(limit uint64) uint32 {
	if limit == 0 {
		return 0
	}
	return uint32(min(max(limit/wasmPageSize, 1), maxPages))
}

// preopens lists the spec's bind mounts of directories.
func preopens(spec *specs.Spec) []preopen {
	var out []preopen
	for _, m := range spec.Mounts {
		bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
		if !bind || !path.IsAbs(m.Destination) || path.Clean(m.Destination) == "/" {
			continue
		}
		if st, err := os.Stat(m.Source); err != nil || !st.IsDir() {
			continue // files (/etc/hosts, ...) cannot be preopened
		}
		out = append(out, preopen{Host: m.Source, Guest: path.Clean(m.Destination), ReadOnly: slices.Contains(m.Options, "ro")})
	}
	return out
}

// moduleEnv is the module's environment: the spec's, plus PWD, which Go's
// wasip1 port takes as its working directory.
func moduleEnv(env []string, cwd string) []string {
	out := slices.Clone(env)
	for _, kv := range env {
		if strings.HasPrefix(kv, "PWD=") {
			return out
		}
	}
	return append(out, "PWD="+cwd)
}
