package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/magnetar-io/magnetar/internal/ociimage"
)

// Stand-in programs of the critest images.
const (
	webserverPackage  = modulePath + "/internal/harness/webserver"
	nonewprivsPackage = modulePath + "/internal/harness/nonewprivs"
)

// standInLabel is the image label naming what a critest stand-in image
// stands in for.
const standInLabel = "io.magnetar.test.stand-in"

// nginxTitle is the first argument of the nginx stand-in: critest looks for
// "master process" in its /proc/<pid>/cmdline.
const nginxTitle = "nginx: master process /usr/sbin/nginx"

// pgrepScript stands in for pgrep PATTERN: the IDs of the processes whose
// name (comm) is PATTERN.
const pgrepScript = `#!/bin/sh
# pgrep stand-in (magnetar test image): exact process names only.
found=1
for d in /proc/[0-9]*; do
	read -r comm < "$d/comm" 2>/dev/null || continue
	if [ "$comm" = "$1" ]; then echo "${d#/proc/}"; found=0; fi
done
exit $found
`

// ipcsScript stands in for ipcs -m: the System V shared memory segments
// of the IPC namespace, from /proc/sysvipc/shm.
const ipcsScript = `#!/bin/sh
# ipcs -m stand-in (magnetar test image).
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch"
# A kernel without /proc/sysvipc (gVisor's) lists nothing.
[ -r /proc/sysvipc/shm ] || exit 0
tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do
	echo "$key $shmid $uid $perms $size $nattch"
done
`

// Image name prefixes cri-tools v1.37's critest pulls from
// (sigs.k8s.io/cri-tools/pkg/framework, pkg/validate/consts.go).
const (
	e2eTestImages  = "registry.k8s.io/e2e-test-images/"
	criToolsImages = "gcr.io/k8s-staging-cri-tools/"
)

// CritestImages builds, in the scratch directory tmp, every image cri-tools'
// critest (v1.37, pinned in tools/go.mod) pulls, under the exact names it
// pulls, for a local registry (StartRegistry). They are stand-ins built from
// the host's static busybox and small Go programs of this module:
//
//   - e2e-test-images/busybox:1.29-2, the default test image: busybox;
//   - nginx:1.14-2, httpd:2.4.39-4 and cri-tools' hostnet-nginx-<arch>:
//     busybox plus internal/harness/webserver installed as nginx (port 80,
//     /var/run/nginx.pid), httpd (port 80) or nginx on port 12003;
//   - nonewprivs:1.3: internal/harness/nonewprivs, set-user-ID root;
//   - cri-tools' test-image-*: busybox with the user, group and tag layout
//     each image spec checks (three distinct images test-image-1..3, one
//     image tagged test-image-tags:1..3, users 1002, www-data, 1003:1003,
//     www-data:www-data, and default-user 1000 in group 50000);
//   - pause:3.9 under registry.k8s.io and k8s.gcr.io: one stand-in pause,
//     and PauseImage (critest removes images, the runc handler pulls it).
//
// Not built: cri-tools' test-image-digest@sha256:9700f9…, named by the
// digest of the upstream image, which only that registry serves.
func CritestImages(ctx context.Context, tmp string) ([]ociimage.Image, error) {
	dir, err := os.MkdirTemp(tmp, "critest-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bbRoot := filepath.Join(dir, "busybox")
	if err := ociimage.BuildBusyboxRootfs(ctx, "", bbRoot); err != nil {
		return nil, err
	}
	busybox, err := ociimage.BuildLayer(ctx, bbRoot)
	if err != nil {
		return nil, err
	}
	// layer builds a layer on top of busybox from files (path -> content,
	// mode) and programs (path -> package).
	n := 0
	layer := func(files map[string]string, programs map[string]string, setuid ...string) (ociimage.Layer, error) {
		n++
		root := filepath.Join(dir, fmt.Sprintf("layer-%d", n))
		for p, content := range files {
			mode := os.FileMode(0o644)
			if strings.HasPrefix(content, "#!") {
				mode = 0o755
			}
			if err := writeFile(filepath.Join(root, p), []byte(content), mode); err != nil {
				return ociimage.Layer{}, err
			}
		}
		for p, pkg := range programs {
			out := filepath.Join(root, p)
			if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
				return ociimage.Layer{}, err
			}
			if err := buildProgram(ctx, pkg, out); err != nil {
				return ociimage.Layer{}, err
			}
			mode := os.FileMode(0o755)
			if slices.Contains(setuid, p) {
				mode |= os.ModeSetuid
			}
			if err := os.Chmod(out, mode); err != nil {
				return ociimage.Layer{}, err
			}
		}
		return ociimage.BuildLayer(ctx, root)
	}
	// The host's busybox may lack applets critest runs: pgrep and ipcs
	// (Debian's busybox-static has neither).
	tools, err := layer(map[string]string{"usr/bin/pgrep": pgrepScript, "usr/bin/ipcs": ipcsScript}, nil)
	if err != nil {
		return nil, err
	}
	web, err := layer(nil, map[string]string{"usr/sbin/nginx": webserverPackage, "usr/local/apache2/bin/httpd": webserverPackage})
	if err != nil {
		return nil, err
	}
	nnp, err := layer(nil, map[string]string{"usr/local/bin/nonewprivs": nonewprivsPackage}, "usr/local/bin/nonewprivs")
	if err != nil {
		return nil, err
	}
	users, err := layer(map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n" +
			"www-data:x:33:33:www-data:/var/www:/bin/false\n" +
			"default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group": "root:x:0:\n" +
			"www-data:x:33:\n" +
			"default-user:x:1000:\n" +
			"group-defined-in-image:x:50000:default-user\n" +
			"nogroup:x:65534:\n",
	}, nil)
	if err != nil {
		return nil, err
	}
	var distinct [3]ociimage.Layer
	for i := range distinct {
		if distinct[i], err = layer(map[string]string{"etc/test-image": fmt.Sprintf("test-image-%d\n", i+1)}, nil); err != nil {
			return nil, err
		}
	}

	// Every name is a distinct image (critest removes images by ID), but
	// for the tags critest expects to share one: the label tells them apart.
	bb := func(name string, cfg ociimage.Config, more ...ociimage.Layer) ociimage.Image {
		if cfg.Cmd == nil && cfg.Entrypoint == nil {
			cfg.Cmd = ociimage.BusyboxConfig.Cmd
		}
		label := name
		if strings.HasPrefix(name, criToolsImages+"test-image-tags:") {
			label = criToolsImages + "test-image-tags"
		}
		cfg.Labels = map[string]string{standInLabel: label}
		return ociimage.Image{Name: name, Config: cfg, Layers: append([]ociimage.Layer{busybox, tools}, more...)}
	}
	images := []ociimage.Image{
		bb(e2eTestImages+"busybox:1.29-2", ociimage.BusyboxConfig),
		bb(e2eTestImages+"nginx:1.14-2", ociimage.Config{Entrypoint: []string{"/usr/sbin/nginx", "-title", nginxTitle, "-port", "80", "-pidfile", "/var/run/nginx.pid"}}, web),
		bb(e2eTestImages+"httpd:2.4.39-4", ociimage.Config{Entrypoint: []string{"/usr/local/apache2/bin/httpd", "-port", "80"}}, web),
		bb(criToolsImages+"hostnet-nginx-"+runtime.GOARCH, ociimage.Config{Entrypoint: []string{"/usr/sbin/nginx", "-title", nginxTitle, "-port", "12003", "-pidfile", "/var/run/nginx.pid"}}, web),
		bb(e2eTestImages+"nonewprivs:1.3", ociimage.Config{Entrypoint: []string{"/usr/local/bin/nonewprivs"}}, nnp),
		bb(criToolsImages+"test-image-latest", ociimage.Config{}),
		bb(criToolsImages+"test-image-tag:test", ociimage.Config{}),
		bb(criToolsImages+"test-image-tag:all", ociimage.Config{}),
		bb(criToolsImages+"test-image-user-uid", ociimage.Config{User: "1002"}, users),
		bb(criToolsImages+"test-image-user-username", ociimage.Config{User: "www-data"}, users),
		bb(criToolsImages+"test-image-user-uid-group", ociimage.Config{User: "1003:1003"}, users),
		bb(criToolsImages+"test-image-user-username-group", ociimage.Config{User: "www-data:www-data"}, users),
		bb(criToolsImages+"test-image-predefined-group", ociimage.Config{User: "1000"}, users),
	}
	for i, l := range distinct {
		images = append(images, bb(fmt.Sprintf("%stest-image-%d:latest", criToolsImages, i+1), ociimage.Config{}, l))
	}
	for i := 1; i <= 3; i++ {
		images = append(images, bb(fmt.Sprintf("%stest-image-tags:%d", criToolsImages, i), ociimage.Config{}))
	}
	// PauseImage too: critest's image specs remove images, the stock runc
	// handler pulls it back.
	pause, err := pauseImage(ctx, dir, PauseImage)
	if err != nil {
		return nil, err
	}
	images = append(images, pause)
	pause.Name = "registry.k8s.io/pause:3.9"
	pause.Config.Labels = map[string]string{standInLabel: "pause:3.9"}
	images = append(images, pause)
	pause.Name = "k8s.gcr.io/pause:3.9"
	images = append(images, pause)
	return images, nil
}

// writeFile writes a file, creating its parent directories, with exactly
// mode (not subject to the umask).
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}
