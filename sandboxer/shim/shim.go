// Package shim is the containerd-shim-magnetar-v2 helper binary.
//
// containerd resolves a shim binary for every runtime_type, even when the
// runtime's sandboxer is an external one: it runs "<shim> -info" to learn
// the runtime's features and mount capabilities, and "<shim> ... delete"
// to clean up after a Task API connection dropped (core/runtime/v2
// binary.go, shim.go cleanupAfterDeadShim). Magnetar's containers run in
// magnetar-sandboxer, so this binary only answers those two calls and never
// starts a shim server.
//
// containerd runs "delete" whenever a task's connection closes: after a
// normal task delete (nothing is left then), and when magnetar-sandboxer
// went away, after which containerd reports the task as exited with 137.
// So that this report is true, delete kills what is left of the container
// with the runtime recorded in the bundle (see [shimrecord.File]).
package shim

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// RuntimeName is the runtime_type to configure in containerd's CRI
// runtimes for Magnetar; containerd looks for this binary under the name
// containerd-shim-magnetar-v2.
const RuntimeName = "io.containerd.magnetar.v2"

// killedExitStatus is reported for a task whose connection dropped: its
// fate is unknown to the shim, and 128+SIGKILL is what containerd itself
// reports for tasks it has given up on.
const killedExitStatus = 137

// featuresTypeURL is the type URL containerd registers for the OCI runtime
// features document (core/runtime/typeurl.go).
const featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// boolFlags are the flags containerd's shim protocol passes without a
// value; every other flag takes one (pkg/shim/shim.go parseFlags).
var boolFlags = map[string]bool{"debug": true, "v": true, "version": true, "info": true}

// Main runs the shim with args (without the program name) and returns the
// exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	flags, values, action, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "containerd-shim-magnetar-v2: %v\n", err)
		return 2
	}
	switch {
	case flags["v"] || flags["version"]:
		fmt.Fprintf(stdout, "containerd-shim-magnetar-v2:\n  Version:  %s\n  Runtime:  %s\n", version(), RuntimeName)
		return 0
	case flags["info"]:
		return write(stdout, stderr, info(stdin))
	}
	switch action {
	case "delete":
		if err := cleanup(values["id"], values["bundle"]); err != nil {
			// containerd only logs a failed delete; say what is left.
			fmt.Fprintf(stderr, "containerd-shim-magnetar-v2: %v\n", err)
		}
		data, err := deleteResponse(killedExitStatus, time.Now())
		if err == nil {
			_, err = stdout.Write(data)
		}
		if err != nil {
			fmt.Fprintf(stderr, "containerd-shim-magnetar-v2: %v\n", err)
			return 1
		}
		return 0
	case "start":
		fmt.Fprintf(stderr, "containerd-shim-magnetar-v2: magnetar runs containers through magnetar-sandboxer, not a shim per pod; "+
			"configure the CRI runtime with runtime_type = %q and sandboxer = \"<the proxy plugin of magnetar-sandboxer>\"\n", RuntimeName)
		return 1
	case "":
		fmt.Fprintln(stderr, "containerd-shim-magnetar-v2: no action; containerd runs this binary with \"delete\" or -info")
		return 2
	default:
		fmt.Fprintf(stderr, "containerd-shim-magnetar-v2: unknown action %q\n", action)
		return 2
	}
}

// parseArgs reads containerd's shim flags ("-namespace ns -id x ...
// delete"): which flags are set, their values, and the action. Unknown
// flags are accepted, so that a newer containerd's extra flags do not break
// cleanup.
func parseArgs(args []string) (map[string]bool, map[string]string, string, error) {
	set, values := map[string]bool{}, map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if i+1 < len(args) {
				return set, values, args[i+1], nil
			}
			return set, values, "", nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			return set, values, a, nil
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "" {
			return nil, nil, "", fmt.Errorf("bad flag %q", a)
		}
		set[name] = true
		if !hasValue && !boolFlags[name] {
			if i+1 >= len(args) {
				return nil, nil, "", fmt.Errorf("flag -%s needs a value", name)
			}
			i++
			value = args[i]
		}
		values[name] = value
	}
	return set, values, "", nil
}

// info describes the runtime for "-info". Options read from stdin (an Any)
// are echoed, as the runc shim does.
func info(stdin io.Reader) *types.RuntimeInfo {
	ri := &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: version()},
	}
	if stdin != nil {
		if data, err := io.ReadAll(io.LimitReader(stdin, 1<<20)); err == nil && len(data) > 0 {
			var opts anypb.Any
			if proto.Unmarshal(data, &opts) == nil && opts.GetTypeUrl() != "" {
				ri.Options = &opts
			}
		}
	}
	// Conservative features: no user namespaces or idmapped mounts are
	// promised, so CRI does not enable them for this runtime. Recursive
	// read-only bind mounts ("rro", which CRI uses only where the kernel
	// has mount_setattr) are honoured by every kind: runc and the guest's
	// runc apply them, the gvisor kind hands them to runsc as read-only
	// mounts of a sandbox that cannot mount below them.
	feat, err := json.Marshal(&features.Features{OCIVersionMin: "1.0.0", OCIVersionMax: specs.Version, MountOptions: []string{"rro"}})
	if err == nil {
		ri.Features = &anypb.Any{TypeUrl: featuresTypeURL, Value: feat}
	}
	return ri
}

// deleteResponse encodes a containerd.task.v3.DeleteResponse {pid = 1,
// exit_status = 2, exited_at = 3}. It is written by hand so that this
// binary does not link the gRPC and ttrpc stubs of the task API package.
func deleteResponse(exitStatus uint32, exitedAt time.Time) ([]byte, error) {
	ts, err := proto.Marshal(timestamppb.New(exitedAt))
	if err != nil {
		return nil, err
	}
	var b []byte
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(exitStatus))
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	return b, nil
}

func write(stdout, stderr io.Writer, m proto.Message) int {
	data, err := proto.Marshal(m)
	if err == nil {
		_, err = stdout.Write(data)
	}
	if err != nil {
		fmt.Fprintf(stderr, "containerd-shim-magnetar-v2: %v\n", err)
		return 1
	}
	return 0
}

// version is the main module's version, or "devel".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
