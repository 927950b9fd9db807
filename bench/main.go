package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/magnetar-io/magnetar/internal/harness"
)

// options are the command line's.
type options struct {
	short          bool
	out            string
	binDir         string
	guestDir       string
	busyboxArchive string
	wasmArchive    string
	wasmImage      string
	wasmArgs       []string
	gobench        string
	render         string
	only           map[string]bool
	steps          map[string]bool
	required       bool
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	root, _ := harness.ModuleRoot()
	tmp := filepath.Join(root, ".tmp")
	o := &options{}
	fs.BoolVar(&o.short, "short", os.Getenv("BENCH_SHORT") == "1", "few iterations and small counts (CI); also BENCH_SHORT=1")
	fs.StringVar(&o.out, "out", filepath.Join(root, "bench"), "directory for report.md, results.json and the SVG plots")
	fs.StringVar(&o.binDir, "bin", filepath.Join(tmp, "bin"), "Magnetar's binaries and the pinned tools (make build tools)")
	fs.StringVar(&o.guestDir, "guest", filepath.Join(tmp, "guest"), "the microVM guest (make guest)")
	fs.StringVar(&o.busyboxArchive, "busybox", filepath.Join(tmp, "examples", "busybox.oci.tar"), "busybox OCI archive for direct mode (make examples)")
	fs.StringVar(&o.wasmArchive, "wasm", filepath.Join(tmp, "examples", "hello-wasm.oci.tar"), "the Wasm workload's OCI archive (make examples)")
	fs.StringVar(&o.wasmImage, "wasm-image", "docker.io/magnetar/hello-wasm:latest", "the Wasm workload's image name in that archive")
	wasmArgs := fs.String("wasm-args", "-sleep 1h", "the Wasm workload's arguments (space-separated): it must print a line, then keep running")
	fs.StringVar(&o.gobench, "gobench", "", "`go test -bench` output to fold into the report")
	fs.StringVar(&o.render, "render", "", "render the report and plots from this results.json only (no measurement)")
	steps := fs.String("steps", "", "run only these measurements (comma-separated of serial, parallel, direct, network, memory; the warm-up always runs): a focused run")
	only := fs.String("kinds", "", "measure only these handlers (comma-separated; runc, the stock one, is always measured)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o.wasmArgs = strings.Fields(*wasmArgs)
	o.required = os.Getenv("MAGNETAR_E2E_REQUIRED") == "1"
	if *steps != "" {
		o.steps = map[string]bool{"warm-up": true}
		for _, s := range strings.Split(*steps, ",") {
			o.steps[strings.TrimSpace(s)] = true
		}
	}
	if *only != "" {
		o.only = map[string]bool{harness.RuncHandler: true}
		for _, k := range strings.Split(*only, ",") {
			o.only[strings.TrimSpace(k)] = true
		}
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	}
	if o.render != "" {
		r, err := readResults(o.render)
		if err == nil {
			err = writeReport(r, o.out)
		}
		if err != nil {
			logf("%v", err)
			return 1
		}
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := measure(ctx, o, logf)
	if err != nil {
		logf("FAILED: %v", err)
	}
	if r != nil {
		if werr := writeOutputs(r, o); werr != nil {
			logf("FAILED: writing the report: %v", werr)
			err = errors.Join(err, werr)
		} else {
			logf("wrote %s", filepath.Join(o.out, "report.md"))
		}
	}
	if err != nil {
		return 1
	}
	return 0
}

// transferBytes is the size of a network benchmark's download.
func (o *options) transferBytes() int64 {
	if o.short {
		return 8 << 20
	}
	return 64 << 20
}

// transferSamples is how many downloads a network benchmark's variant
// makes (a third of it, at least one, for the vm kind).
func (o *options) transferSamples() int {
	if o.short {
		return 1
	}
	return 5
}

// writeOutputs writes results.json, report.md and the plots.
func writeOutputs(r *Results, o *options) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(o.out, "results.json"), r); err != nil {
		return err
	}
	return writeReport(r, o.out)
}

// measure runs every measurement. It returns the results gathered so far
// with any error.
func measure(ctx context.Context, o *options, logf func(string, ...any)) (_ *Results, retErr error) {
	began := time.Now()
	if err := harness.CheckPrerequisites(o.binDir); err != nil {
		return nil, err
	}
	for _, f := range []string{filepath.Join(o.binDir, "magnetar-sandboxer"), filepath.Join(o.binDir, "containerd-shim-magnetar-v2"), o.busyboxArchive, o.wasmArchive} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%w (make build examples)", err)
		}
	}
	res := &Results{
		Date: began.UTC(), Short: o.short, Machine: describeMachine(ctx, o.binDir),
		Serial: map[string]*Serial{}, Density: map[string]*Dense{}, Direct: map[string]*Direct{},
	}
	if o.gobench != "" {
		lines, err := readLines(o.gobench)
		if err != nil {
			return nil, err
		}
		res.GoBench = parseGoBench(lines)
	}
	var ks []*kind
	for _, k := range kinds(o) {
		if o.only != nil && !o.only[k.Name] {
			continue
		}
		if err := k.missing(); err != nil {
			if o.required {
				return nil, fmt.Errorf("%s: %w", k.Name, err)
			}
			res.Notes = append(res.Notes, fmt.Sprintf("%s not measured: %v.", k.Name, err))
			continue
		}
		ks = append(ks, k)
		res.Kinds = append(res.Kinds, k.KindInfo)
	}
	if !res.Machine.KVM {
		res.Notes = append(res.Notes, "No usable /dev/kvm: magnetar-vm runs QEMU under TCG (software emulation), with fewer pods (see the tables).")
	}
	warmPool, template := false, false
	for _, k := range ks {
		if k.template {
			template = true
			res.Notes = append(res.Notes, "magnetar-vm, restored from a template: the sandboxer boots one VM of 1 vCPU and 224 MiB at start "+
				"(these pods set a 96 MiB memory limit), saves it once its agent answers, and restores each pod's VM from it instead of booting: "+
				"the restored VMs map the template's memory file copy-on-write, so the pages they only read are shared (their PSS counts a share of them). "+
				"The template is built before the first measurement.")
		}
		if k.warm {
			warmPool = true
			res.Notes = append(res.Notes, "magnetar-vm, warm pool: the pods adopt a VM booted ahead by the sandboxer's warm pool "+
				"(one VM of 1 vCPU and 192 MiB kept ready: these pods set a 64 MiB memory limit; the cold magnetar-vm pods get 256 MiB). "+
				"Each pod waits for a ready VM before its clock starts, and the pool's refill ends before the next measurement.")
		}
	}
	logf("starting containerd and magnetar-sandboxer")
	e, err := startEnv(ctx, o, warmPool, template)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := e.close(); cerr != nil {
			retErr = errors.Join(retErr, fmt.Errorf("teardown: %w", cerr))
		}
		res.Duration = time.Since(began).Seconds()
	}()
	b := &bench{e: e, o: o, kinds: ks, res: res, logf: logf}
	err = b.all(ctx)
	if err != nil {
		// What the sandboxer said last, for a failure seen only in CI.
		err = fmt.Errorf("%w\nsandboxer log (tail):\n%s", err, tail(e.sbLogPath, 6000))
	}
	if lines, lerr := readLines(e.sbLogPath); lerr == nil && len(b.runcPods) > 0 {
		res.Phases = parsePhases(lines, b.runcPods)
	}
	return res, err
}

// all runs the measurements in order.
func (b *bench) all(ctx context.Context) error {
	steps := []struct {
		key, name string
		fn        func(context.Context) error
	}{
		{"warm-up", "warm-up", b.warmUp},
		{"serial", "serial pod start", b.serial},
		{"parallel", "parallel pod start", b.parallel},
		{"direct", "direct mode", b.directMode},
		{"network", "networks", b.network},
		{"memory", "host memory", b.density},
	}
	for _, s := range steps {
		if b.o.steps != nil && !b.o.steps[s.key] {
			continue
		}
		t := time.Now()
		b.logf("%s", s.name)
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.logf("%s: %v", s.name, time.Since(t).Round(time.Millisecond))
	}
	return nil
}
