package ociimage

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultBusybox is where Debian's busybox-static package installs the
// statically linked busybox.
const DefaultBusybox = "/bin/busybox"

// BusyboxConfig is the image configuration of the busybox image.
var BusyboxConfig = Config{Cmd: []string{"sh"}}

const (
	etcPasswd = "root:x:0:0:root:/root:/bin/sh\n" +
		"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n" +
		"nobody:x:65534:65534:nobody:/home:/bin/false\n"
	etcGroup = "root:x:0:\n" +
		"daemon:x:1:\n" +
		"tty:x:5:\n" +
		"users:x:100:\n" +
		"nogroup:x:65534:\n"
)

// BuildBusyboxRootfs populates the empty or missing directory dir with a
// minimal busybox root filesystem: the statically linked busybox binary at
// /bin/busybox, a hard link to it in /bin for every applet it lists
// (`busybox --list`; hard links rather than symlinks so that masking one
// applet's path does not mask busybox itself), /etc/passwd and /etc/group
// with root and nobody, and the usual empty directories (/tmp is 1777).
//
// busybox is the binary to copy, DefaultBusybox if "". It must be statically
// linked since the image has no libc.
func BuildBusyboxRootfs(ctx context.Context, busybox, dir string) error {
	if busybox == "" {
		busybox = DefaultBusybox
	}
	if err := checkStatic(busybox); err != nil {
		return err
	}
	applets, err := busyboxApplets(ctx, busybox)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if entries, err := os.ReadDir(dir); err != nil {
		return err
	} else if len(entries) > 0 {
		return fmt.Errorf("busybox rootfs: %s is not empty", dir)
	}

	dirs := []struct {
		name string
		mode os.FileMode
	}{
		{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"home", 0o755},
		{"proc", 0o555}, {"root", 0o700}, {"sys", 0o555}, {"tmp", os.ModeSticky | 0o777},
		{"usr", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755}, {"sbin", 0o755},
		{"var", 0o755}, {"var/run", 0o755}, {"var/tmp", os.ModeSticky | 0o777},
	}
	for _, d := range dirs {
		p := filepath.Join(dir, d.name)
		if err := os.Mkdir(p, 0o755); err != nil {
			return err
		}
		// Mkdir is subject to the umask and drops the sticky bit.
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}

	bin := filepath.Join(dir, "bin", "busybox")
	if err := copyExecutable(busybox, bin); err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if err := os.Link(bin, filepath.Join(dir, "bin", a)); err != nil {
			return fmt.Errorf("busybox rootfs: link applet: %w", err)
		}
	}
	for name, content := range map[string]string{"etc/passwd": etcPasswd, "etc/group": etcGroup} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
		if err := os.Chmod(p, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// BusyboxImage builds the busybox root filesystem in a temporary directory
// below tmpDir ("" for the system default) and returns it as a single-layer
// image named name.
func BusyboxImage(ctx context.Context, busybox, name, tmpDir string) (Image, error) {
	dir, err := os.MkdirTemp(tmpDir, "busybox-rootfs-")
	if err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(dir)
	if err := BuildBusyboxRootfs(ctx, busybox, dir); err != nil {
		return Image{}, err
	}
	layer, err := BuildLayer(ctx, dir)
	if err != nil {
		return Image{}, err
	}
	return Image{Name: name, Config: BusyboxConfig, Layers: []Layer{layer}}, nil
}

// busyboxApplets returns the applet names busybox was built with, sorted.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, busybox, "--list")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w: %s", busybox, err, strings.TrimSpace(stderr.String()))
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		a := strings.TrimSpace(sc.Text())
		if a == "" {
			continue
		}
		if a != path.Base(a) || a == "." || a == ".." {
			return nil, fmt.Errorf("%s --list: unexpected applet name %q", busybox, a)
		}
		applets = append(applets, a)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list printed no applet", busybox)
	}
	slices.Sort(applets)
	return slices.Compact(applets), nil
}

// checkStatic fails unless path is an ELF executable without an interpreter.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("busybox %s: %w (install the busybox-static package)", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked; install the busybox-static package", path)
		}
	}
	return nil
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Chmod(0o755); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
