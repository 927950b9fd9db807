// Package layering checks the import rule of docs/design.md ("Layers and
// the import rule") on the real package graph, as `go list` reports it:
// programs depend on the library, never the reverse; the client package
// stays portable and light; protobuf stays at the edges; the guest agent
// stays lean.
package layering

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/magnetar-io/magnetar"

// clientDepBudget bounds the non-standard packages (Magnetar's included)
// that a program importing only the client package `sdk` compiles. It is
// 61 when written; raise it only with a reason in the commit.
const clientDepBudget = 70

// pkg is what the test reads of `go list -json`.
type pkg struct {
	ImportPath string
	Standard   bool
	Imports    []string
	Deps       []string
	Error      *struct{ Err string }
}

// short strips the module path: "sdk/engine", "gen/magnetar/...".
func short(p string) string {
	if p == module {
		return "."
	}
	return strings.TrimPrefix(p, module+"/")
}

func own(p string) bool { return p == module || strings.HasPrefix(p, module+"/") }

// under reports whether short path p is dir or below it.
func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// graph lists every package of the module (tests excluded: the rule is
// about what programs and libraries link) with GOOS=goos.
func graph(t *testing.T, goos string) map[string]*pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Standard,Imports,Deps,Error", "./...")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(cmd.Environ(), "GOOS="+goos)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]*pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[short(p.ImportPath)] = &p
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// rule is one line of the import rule.
type rule struct {
	// from selects the packages the rule is about (short paths).
	from func(p string) bool
	// deps: check every package linked (transitively); else only direct
	// imports.
	deps bool
	// bad reports why importing q (a full import path) breaks the rule, or "".
	bad func(q string) string
}

func ownUnder(dirs ...string) func(q string) string {
	return func(q string) string {
		if !own(q) {
			return ""
		}
		for _, d := range dirs {
			if under(short(q), d) {
				return "may not import " + d
			}
		}
		return ""
	}
}

func named(why string, paths ...string) func(q string) string {
	return func(q string) string {
		for _, p := range paths {
			if q == p || strings.HasPrefix(q, p+"/") {
				return why
			}
		}
		return ""
	}
}

func exactly(why string, paths ...string) func(q string) string {
	return func(q string) string {
		if slices.Contains(paths, q) {
			return why
		}
		return ""
	}
}

func anyOf(fs ...func(string) string) func(string) string {
	return func(q string) string {
		for _, f := range fs {
			if why := f(q); why != "" {
				return why
			}
		}
		return ""
	}
}

func is(paths ...string) func(string) bool {
	return func(p string) bool { return slices.Contains(paths, p) }
}

func in(dirs ...string) func(string) bool {
	return func(p string) bool {
		for _, d := range dirs {
			if under(p, d) {
				return true
			}
		}
		return false
	}
}

// protobufAtEdges: packages of the domain work in Go types; only the
// edges (API server, containerd edge, task service, kinds talking to a
// guest) touch protobuf and RPC frameworks themselves.
var protobufAtEdges = named("is an edge concern (protobuf/RPC): keep it in sdk/apiserver, sdk/taskservice or sandboxer/controller",
	"google.golang.org/protobuf", "google.golang.org/grpc", "connectrpc.com", "github.com/containerd/ttrpc", module+"/gen")

var rules = []rule{
	{from: in("sdk"), deps: true, bad: ownUnder("sandboxer", "taskagent", "test", "hack", "examples")},
	{from: in("gen"), deps: true, bad: ownUnder("sdk", "sandboxer", "taskagent", "internal")},
	{from: in("sandboxer", "sdk", "internal"), deps: true, bad: ownUnder("taskagent")},
	{from: in("taskagent"), deps: true, bad: ownUnder("sandboxer")},
	// The client and the CLI link no engine, kind, store or server.
	{from: is("sdk", "sdk/cli", "sdk/cmd/magnetar"), deps: true, bad: anyOf(
		ownUnder("sdk/engine", "sdk/kinds", "sdk/backend", "sdk/image", "sdk/apiserver", "sdk/direct", "sdk/taskservice", "sdk/embedded", "internal"),
		named("is a heavy, Linux-only dependency the client must not link",
			"github.com/containerd/containerd/v2", "github.com/tetratelabs/wazero", "github.com/containerd/go-runc",
			"github.com/opencontainers/runc", "github.com/cyphar/filepath-securejoin"),
		exactly("is gRPC's transport; the client speaks Connect (the generated ttrpc stubs link only grpc/status and grpc/codes)",
			"google.golang.org/grpc"))},
	// The contract is a leaf.
	{from: is("sdk/backend"), bad: func(q string) string {
		if own(q) {
			return "the backend contract imports no other Magnetar package"
		}
		return ""
	}},
	// The domain core knows no edge and no kind.
	{from: in("sdk/engine", "sdk/backend", "sdk/image", "sdk/direct"), bad: protobufAtEdges},
	{from: in("sdk/engine", "sdk/image"), deps: true, bad: ownUnder("sdk/kinds", "sdk/apiserver", "sdk/direct", "sdk/taskservice", "sdk/embedded", "gen")},
	// Direct mode's domain links no API code (protobuf itself comes in
	// through containerd's mount and OCI packages, which the contract uses;
	// it imports none itself: rule above).
	{from: in("sdk/direct"), deps: true, bad: anyOf(ownUnder("sdk/kinds", "sdk/apiserver", "sdk/taskservice", "sdk/embedded", "gen"),
		named("is API code; direct mode's domain works in Go types", "connectrpc.com"))},
	// Kinds implement the contract; they do not drive the engine or serve APIs.
	{from: in("sdk/kinds"), deps: true, bad: ownUnder("sdk/engine", "sdk/apiserver", "sdk/direct", "sdk/taskservice", "sdk/embedded", "sdk/cli", "internal")},
	{from: in("sdk/kinds"), deps: true, bad: func(q string) string {
		if q == module+"/sdk" {
			return "may not import the client"
		}
		return ""
	}},
	// Edges of the library do not import each other or the kinds.
	{from: in("sdk/apiserver", "sdk/taskservice"), deps: true, bad: ownUnder("sdk/kinds", "sdk/embedded")},
	{from: in("sdk/taskservice"), deps: true, bad: ownUnder("sdk/apiserver", "sdk/direct", "sdk/image")},
	// The guest agent (PID 1 of every microVM) stays lean.
	{from: in("taskagent"), deps: true, bad: named("is host-side weight the guest agent must not link",
		"k8s.io/cri-api", "github.com/hashicorp/go-hclog", "github.com/containerd/containerd/api/services/sandbox",
		"connectrpc.com", "github.com/tetratelabs/wazero", module+"/sdk/apiserver", module+"/sdk/image", module+"/sdk/kinds/wasm", module+"/sdk/kinds/vm/qemu")},
}

func TestImportRule(t *testing.T) {
	pkgs := graph(t, "linux")
	for _, p := range pkgs {
		if p.Error != nil {
			t.Errorf("%s: %s", p.ImportPath, p.Error.Err)
		}
	}
	checked := 0
	for i, r := range rules {
		for name, p := range pkgs {
			if !own(p.ImportPath) || !r.from(name) {
				continue
			}
			checked++
			list := p.Imports
			if r.deps {
				list = p.Deps
			}
			for _, q := range list {
				if why := r.bad(q); why != "" {
					t.Errorf("rule %d: %s links %s: %s", i, name, q, why)
				}
			}
		}
	}
	if checked < len(rules) {
		t.Fatalf("only %d package checks for %d rules: a rule selects no package", checked, len(rules))
	}
}

// TestGuestAgentGRPC: no Magnetar package of the guest agent imports gRPC
// itself; it is linked only through containerd's own API and runc shim
// packages (their generated gRPC stubs), which the agent imports for the
// Task API types and the runc process handling.
func TestGuestAgentGRPC(t *testing.T) {
	pkgs := graph(t, "linux")
	agent := pkgs["taskagent/cmd/magnetar-agent"]
	if agent == nil {
		t.Fatal("no taskagent/cmd/magnetar-agent")
	}
	for _, d := range append([]string{agent.ImportPath}, agent.Deps...) {
		p := pkgs[short(d)]
		if p == nil || !own(d) {
			continue
		}
		for _, q := range p.Imports {
			if q == "google.golang.org/grpc" || strings.HasPrefix(q, "google.golang.org/grpc/") {
				t.Errorf("%s imports %s: the guest speaks ttrpc only", short(d), q)
			}
		}
	}
}

// TestClientPortable: the client, the CLI and the magnetar program resolve
// for macOS with no build-constraint errors (make cross-build compiles
// them), and the client's dependency count stays within its budget.
func TestClientPortable(t *testing.T) {
	pkgs := graph(t, "darwin")
	for _, name := range []string{"sdk", "sdk/cli", "sdk/cmd/magnetar"} {
		p := pkgs[name]
		if p == nil {
			t.Fatalf("%s not listed", name)
		}
		if p.Error != nil {
			t.Errorf("%s on darwin: %s", name, p.Error.Err)
		}
	}
	// Dependencies of the client that do not build on darwin show up as
	// errors of those packages.
	for _, d := range pkgs["sdk/cmd/magnetar"].Deps {
		if p := pkgs[short(d)]; p != nil && p.Error != nil {
			t.Errorf("%s on darwin: %s", d, p.Error.Err)
		}
	}
	n := 0
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./sdk")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(cmd.Environ(), "GOOS=darwin", "GOARCH=arm64")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./sdk: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" {
			n++
		}
	}
	t.Logf("the client package links %d non-standard packages (budget %d)", n, clientDepBudget)
	if n > clientDepBudget {
		t.Errorf("the client package links %d non-standard packages, over its budget of %d", n, clientDepBudget)
	}
}
