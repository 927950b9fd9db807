package shim

import (
	"bytes"
	"strings"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	_ "github.com/containerd/containerd/v2/core/runtime" // registers the OCI features type URL, as containerd does
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
)

func run(t *testing.T, stdin []byte, args ...string) (int, []byte, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(args, bytes.NewReader(stdin), &stdout, &stderr)
	return code, stdout.Bytes(), stderr.String()
}

func TestDelete(t *testing.T) {
	// The exact command line containerd's binary.Delete uses.
	before := time.Now().Add(-time.Second)
	code, out, errOut := run(t, nil, "-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock",
		"-publish-binary", "/usr/bin/containerd", "-id", "ctr1", "-bundle", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/ctr1",
		"-debug", "delete")
	if code != 0 || errOut != "" {
		t.Fatalf("delete: exit %d, stderr %q", code, errOut)
	}
	var resp taskapi.DeleteResponse
	if err := proto.Unmarshal(out, &resp); err != nil {
		t.Fatalf("stdout is not a DeleteResponse: %v", err)
	}
	if resp.GetExitStatus() != 137 || resp.GetPid() != 0 {
		t.Errorf("delete response %v", &resp)
	}
	if at := resp.GetExitedAt().AsTime(); at.Before(before) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("exited_at %v is not now", at)
	}
}

func TestStartRefused(t *testing.T) {
	code, out, errOut := run(t, nil, "-namespace", "k8s.io", "-id", "x", "-address", "/run/c.sock", "start")
	if code == 0 || len(out) != 0 || !strings.Contains(errOut, "magnetar-sandboxer") || !strings.Contains(errOut, "sandboxer") {
		t.Errorf("start: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestVersionAndUsage(t *testing.T) {
	for _, arg := range []string{"-v", "--version"} {
		if code, out, _ := run(t, nil, arg); code != 0 || !bytes.Contains(out, []byte(RuntimeName)) {
			t.Errorf("%s: exit %d, %q", arg, code, out)
		}
	}
	if code, _, _ := run(t, nil); code == 0 {
		t.Error("no action: exit 0")
	}
	if code, _, _ := run(t, nil, "-namespace"); code == 0 {
		t.Error("flag without value: exit 0")
	}
	if code, _, _ := run(t, nil, "-namespace", "x", "frobnicate"); code == 0 {
		t.Error("unknown action: exit 0")
	}
	// A flag containerd may add in the future does not break cleanup.
	if code, _, errOut := run(t, nil, "-namespace", "x", "-socket-dir", "/run/s", "delete"); code != 0 {
		t.Errorf("unknown flag: exit %d, %s", code, errOut)
	}
}

func TestInfo(t *testing.T) {
	opts, err := typeurl.MarshalAnyToProto(&options.Options{BinaryName: "/usr/sbin/runc"})
	if err != nil {
		t.Fatal(err)
	}
	in, err := proto.Marshal(opts)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, in, "-info")
	if code != 0 {
		t.Fatalf("-info: exit %d, %s", code, errOut)
	}
	var info types.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.GetName() != RuntimeName || info.GetOptions().GetTypeUrl() != opts.GetTypeUrl() {
		t.Errorf("runtime info %v", &info)
	}
	// CRI decodes the features with typeurl (introspectRuntimeFeatures).
	f, err := typeurl.UnmarshalAny(info.GetFeatures())
	if err != nil {
		t.Fatalf("features: %v", err)
	}
	if ff, ok := f.(*features.Features); !ok || ff.OCIVersionMax == "" {
		t.Errorf("features %#v", f)
	}
}
