// Command bench is `make bench`: Magnetar's comparative benchmark.
//
// It starts a private containerd (internal/harness) configured with
// containerd's stock runc handler (io.containerd.runc.v2, a shim and a
// pause container per pod) and Magnetar's handlers (magnetar-runc,
// magnetar-wasm, magnetar-gvisor, magnetar-vm, served by one
// magnetar-sandboxer, whose vm kind keeps one VM warm in a pool: the
// "magnetar-vm-warm" variant's pods, of that VM's size, adopt it, and
// which keeps a VM template of another size: the "magnetar-vm-template"
// variant's pods get VMs restored from it, next to magnetar-vm's cold
// boots), and measures, in one run and interleaving the kinds:
//
//   - serial pod start: RunPodSandbox + CreateContainer + StartContainer of
//     a container that prints a line and keeps running;
//   - time to first output: from RunPodSandbox's call until the
//     container's first line in its CRI log (the line's timestamp, which
//     containerd sets when it reads the line);
//   - stop + remove: StopPodSandbox + RemovePodSandbox;
//   - parallel pod start: 10 and 30 pods started at once (fewer for the
//     microVM kind under QEMU TCG);
//   - host memory: the proportional set size (PSS, /proc/PID/smaps_rollup)
//     of every process the pods add — shims, pause, runc init, runsc,
//     QEMU, Wasm runners, the containers' own processes — plus the
//     growth of the sandboxer and of containerd, at 1, 5, 10 and 20 pods,
//     and the processes per pod;
//   - direct mode: a sandbox and a container started through Magnetar's
//     own API (the Go SDK, sdk.Dial to the same sandboxer), per kind;
//   - networks (direct mode; the sandboxer gets a bridge network of the
//     run's own and host access): sandbox + container start per network
//     mode (none, bridge) per kind, and the throughput of a TCP download
//     from a server in a network namespace the run makes (a veth pair to
//     the host, 198.18.0.0/15) into a bridge sandbox per kind, without
//     and with an egress policy, against a runc sandbox on the host's
//     network;
//   - where the runc kind's pod start goes: the sandboxer's calls
//     (Controller, Task API) and the runc kind's phases, from the
//     sandboxer's trace log.
//
// It writes report.md (medians, p90 and the ratio to stock runc from the
// same run; the machine described), results.json and SVG plots into the
// output directory. Go benchmarks run before (go test -bench, the
// -gobench file) are folded into the report. Nothing is asserted on a
// timing: the report shows them; errors (a pod that does not start, a
// process left behind) fail the run.
//
// Usage (root): bench [-short] [-out DIR] [-gobench FILE] [-render FILE]
// [-kinds HANDLERS] [-steps serial,parallel,direct,network,memory]
package main
