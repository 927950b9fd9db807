package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
)

// TestAgentLoopExample runs the program examples/agent-loop, built as
// `make examples` builds it, against a sandboxer configured as `make
// demo-agent-loop` configures it (a bridge network, gvisor with host
// files), in each kind, and checks what it prints: for runc, gvisor and
// vm the whole round trip (script written, run with its output streamed,
// result file read and served over HTTP through DialPort, usage, pause
// and resume, removal); for wasm the subset a WASI module allows (task
// file in, module run, result file out, usage), the other steps said not
// to apply. No sandbox remains after each run.
func TestAgentLoopExample(t *testing.T) {
	testutil.RequireRoot(t, "sandboxes, bridge networks")
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		testutil.SkipOrFail(t, "needs the CNI plugins (containernetworking-plugins): gvisor's ports need a bridge network")
	}
	cfgDir := t.TempDir()
	_, cfg := bridgeConfig(t, cfgDir, false)
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("[backends.gvisor]\n  host_files = true\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	s := startAPISandboxer(t, "--config", cfg)
	address := "unix://" + filepath.Join(s.runDir, "api.sock")

	// The program and its two images, as `make examples` makes them.
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	program := filepath.Join(work, "agent-loop")
	build := exec.Command("go", "build", "-trimpath", "-o", program, "./examples/agent-loop")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build examples/agent-loop: %v\n%s", err, out)
	}
	wasmRoot := filepath.Join(work, "hello-wasm")
	build = exec.Command("go", "build", "-trimpath", "-o", filepath.Join(wasmRoot, "hello.wasm"), "./examples/hello-wasm")
	build.Dir = root
	build.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build examples/hello-wasm: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	layer, err := ociimage.BuildLayer(ctx, wasmRoot)
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]string{"busybox": filepath.Join(work, "busybox.oci.tar"), "wasm": filepath.Join(work, "hello-wasm.oci.tar")}
	if err := ociimage.WriteArchiveFile(ctx, images["wasm"], ociimage.Image{
		Name: "docker.io/magnetar/hello-wasm:agent-loop", Config: ociimage.Config{Entrypoint: []string{"/hello.wasm"}}, Layers: []ociimage.Layer{layer},
	}); err != nil {
		t.Fatal(err)
	}
	bb, err := ociimage.BusyboxImage(ctx, "", "docker.io/library/busybox:agent-loop", work)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociimage.WriteArchiveFile(ctx, images["busybox"], bb); err != nil {
		t.Fatal(err)
	}
	c, err := sdk.Dial(ctx, address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	full := []string{
		"--> wrote /work/task.sh; running it:",
		"    | step 3 of 3",
		"--> task.sh exited with 0",
		`--> read /work/result.txt: "the answer is 42"`,
		`--> GET http://sandbox:8080/result.txt through DialPort: "the answer is 42"`,
		"--> usage: cpu ",
		"--> paused (state paused)",
		"--> resumed (state ready)",
		"--> remove the sandbox",
	}
	for _, tc := range []struct {
		kind, image string
		want        []string
	}{
		{"runc", "busybox", full},
		{"gvisor", "busybox", append([]string{`(gvisor, bridge network "e2e", 10.215.`}, full...)},
		{"vm", "busybox", full},
		{"wasm", "wasm", []string{
			"--- a shell script: does not apply: ",
			`--> wrote /work/task.txt ("2 3 7")`,
			"    | step 3 of 3: times 7 makes 42",
			"--> the module exited with 0",
			`--> read /work/result.txt: "the answer is 42"`,
			"--- exec: does not apply: ",
			"--- HTTP through DialPort: does not apply: ",
			"--> usage: cpu ",
			"--- pause and resume: does not apply: ",
			"--> remove the sandbox",
		}},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			switch tc.kind {
			case "gvisor":
				if _, err := exec.LookPath("runsc"); err != nil {
					testutil.SkipOrFail(t, "runsc not installed (make deps)")
				}
			case "vm":
				testutil.GuestImage(t)
			}
			cmd := exec.CommandContext(ctx, program, "-address", address, "-kind", tc.kind, images[tc.image])
			b, err := cmd.CombinedOutput()
			out := string(b)
			if err != nil {
				t.Fatalf("agent-loop -kind %s: %v\n%s", tc.kind, err, out)
			}
			at := 0
			for _, w := range tc.want {
				i := strings.Index(out[at:], w)
				if i < 0 {
					t.Fatalf("agent-loop -kind %s: no %q (in order) in its output:\n%s", tc.kind, w, out)
				}
				at += i + len(w)
			}
			// Standard error, streamed apart from standard output.
			if !strings.Contains(out, "    ! wrote /work/result.txt\n") {
				t.Errorf("agent-loop -kind %s: no standard error of the task in its output:\n%s", tc.kind, out)
			}
			if tc.kind != "wasm" && strings.Contains(out, "does not apply") || strings.Contains(out, "files go through exec") {
				t.Errorf("agent-loop -kind %s left steps out:\n%s", tc.kind, out)
			}
			sbs, err := c.Sandboxes(ctx)
			if err != nil || len(sbs) != 0 {
				t.Errorf("after agent-loop -kind %s: sandboxes %v (%v), want none", tc.kind, sbs, err)
			}
		})
	}
}
