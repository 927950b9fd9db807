package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

func TestFilesCommands(t *testing.T) {
	sock := serveRunc(t)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	if r := run(t, sock, "", "run", "-d", "--name", "fc", "--rootfs", rootfs, "--", "sleep", "300"); r.code != 0 {
		t.Fatalf("run -d = %+v", r)
	}
	defer run(t, sock, "", "rm", "-f", "fc")

	// A local tree with a file, a subdirectory and a link.
	local := t.TempDir()
	src := filepath.Join(local, "proj")
	must(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "main.py"), []byte("print('hi')\n"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "sub", "data.txt"), []byte("data\n"), 0o644))
	must(t, os.Symlink("sub/data.txt", filepath.Join(src, "link")))

	// Host to container: a directory into an existing directory, a file
	// under a new name.
	if r := run(t, sock, "", "cp", src, "fc:/tmp"); r.code != 0 {
		t.Fatalf("cp dir in = %+v", r)
	}
	if r := run(t, sock, "", "cp", filepath.Join(src, "main.py"), "fc:/tmp/renamed.py"); r.code != 0 {
		t.Fatalf("cp file in = %+v", r)
	}
	if r := run(t, sock, "", "files", "cat", "fc:/tmp/proj/link"); r.code != 0 || r.stdout != "data\n" {
		t.Errorf("files cat = %+v", r)
	}
	if r := run(t, sock, "", "exec", "fc", "cat", "/tmp/renamed.py"); r.code != 0 || r.stdout != "print('hi')\n" {
		t.Errorf("the container reads = %+v", r)
	}
	r := run(t, sock, "", "files", "ls", "-r", "fc:/tmp/proj")
	for _, want := range []string{"/tmp/proj/main.py", "/tmp/proj/sub/data.txt", "/tmp/proj/link -> sub/data.txt", "-rwxr-xr-x", "drwxr-xr-x"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("files ls -r lacks %q: %+v", want, r)
		}
	}
	if r := run(t, sock, "", "files", "ls", "-o", "json", "--limit", "1", "fc:/tmp/proj"); r.code != 0 || !strings.Contains(r.stdout, `"truncated": true`) {
		t.Errorf("files ls --limit 1 -o json = %+v", r)
	}

	// Container to host: a directory, a file to stdout.
	out := filepath.Join(local, "out")
	if r := run(t, sock, "", "exec", "fc", "sh", "-c", "mkdir -p /res/d && echo result > /res/d/r.txt"); r.code != 0 {
		t.Fatalf("exec = %+v", r)
	}
	if r := run(t, sock, "", "cp", "fc:/res", out); r.code != 0 {
		t.Fatalf("cp dir out = %+v", r)
	}
	if b, err := os.ReadFile(filepath.Join(out, "d", "r.txt")); err != nil || string(b) != "result\n" {
		t.Errorf("copied out = %q, %v", b, err)
	}
	if r := run(t, sock, "", "cp", "fc:/res/d/r.txt", "-"); r.code != 0 || r.stdout != "result\n" {
		t.Errorf("cp to stdout = %+v", r)
	}
	// A link in the container pointing at the host's files is resolved
	// inside the container.
	if r := run(t, sock, "", "exec", "fc", "ln", "-s", filepath.Join(local, "proj", "main.py"), "/hostlink"); r.code != 0 {
		t.Fatalf("ln = %+v", r)
	}
	if r := run(t, sock, "", "files", "cat", "fc:/hostlink"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("cat through a link to the host = %+v", r)
	}

	// Errors.
	if r := run(t, sock, "", "cp", "a", "b"); r.code != 1 || !strings.Contains(r.stderr, "exactly one of SRC and DST") {
		t.Errorf("cp between two host paths = %+v", r)
	}
	if r := run(t, sock, "", "files", "cat", "fc:/nope"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("cat missing = %+v", r)
	}
	if r := run(t, sock, "", "files", "cat", "nosuch:/etc/passwd"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("cat in a missing container = %+v", r)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
