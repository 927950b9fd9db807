#!/usr/bin/env bash
# Magnetar's main demo, in direct mode: no containerd. It starts
# magnetar-sandboxer with private state and sockets, then uses the `magnetar`
# CLI to run
#   1. examples/hello-wasm (a WASI module packaged as an OCI image) in a Wasm
#      sandbox, and
#   2. a busybox image in a runc sandbox,
#   3. examples/agent-loop: files, exec, a port, usage and pause of a
#      sandbox through the Go SDK,
# showing their output and how long each took to start. Everything is torn
# down at the end (trap), also on failure or Ctrl-C.
#
# With VM=1 (make demo-vm) it also runs busybox in a microVM (QEMU; the
# guest of `make guest`) and shows the VM's per-phase boot timings.
#
# Usage (root): hack/demo.sh   (or: make demo, make demo-vm)
# Env: BIN (default <repo>/.tmp/bin), GUEST (default <repo>/.tmp/guest),
#      VM=1, KEEP=1 to pause before teardown.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/.tmp/bin}"
EXAMPLES="${EXAMPLES:-$ROOT/.tmp/examples}"
GUEST="${GUEST:-$ROOT/.tmp/guest}"
[[ $EUID -eq 0 ]] || { echo "demo: needs root (runc, cgroups)" >&2; exit 1; }

DEMO=demo
# shellcheck source=hack/direct-lib.sh
source "$ROOT/hack/direct-lib.sh"
direct_setup mgdirect

say "magnetar-sandboxer (direct mode: Magnetar's API only, no containerd)"
direct_start
echo "API: $MAGNETAR_ADDRESS"

say "magnetar kinds"
"$BIN/magnetar" kinds

say "magnetar run --kind wasm hello-wasm.oci.tar -- from the demo"
t=$(date +%s%N)
"$BIN/magnetar" run --rm --kind wasm -e GREETING=hello "$EXAMPLES/hello-wasm.oci.tar" -- from the demo
echo "wasm container: $(( ($(date +%s%N) - t) / 1000000 )) ms from the command to its exit (first run compiles the module)"
t=$(date +%s%N)
"$BIN/magnetar" run --rm --kind wasm "$EXAMPLES/hello-wasm.oci.tar" -- again >/dev/null
echo "second wasm run (compilation cache warm): $(( ($(date +%s%N) - t) / 1000000 )) ms"

say "magnetar run --kind runc busybox.oci.tar -- sh -c ..."
t=$(date +%s%N)
"$BIN/magnetar" run --rm --kind runc "$EXAMPLES/busybox.oci.tar" -- sh -c 'echo hello from runc in $(hostname); id'
echo "runc container: $(( ($(date +%s%N) - t) / 1000000 )) ms from the command to its exit"

say "examples/agent-loop: a code-execution platform's round trip (files, exec, ports, usage, pause)"
"$EXAMPLES/agent-loop" -kind runc "$EXAMPLES/busybox.oci.tar"

if [[ "${VM:-}" == 1 ]]; then
	say "busybox in a microVM (QEMU; TCG where KVM cannot run a guest)"
	t=$(date +%s%N)
	"$BIN/magnetar" sandbox create --kind vm --id demo-vm >/dev/null
	echo "VM sandbox ready: $(( ($(date +%s%N) - t) / 1000000 )) ms; its boot phases:"
	"$BIN/magnetar" -o json inspect demo-vm | grep -E '"(vm_start|agent_ready|setup|boot_total|accel)"' | sed 's/^ */    /'
	t=$(date +%s%N)
	"$BIN/magnetar" run --rm --sandbox demo-vm "$EXAMPLES/busybox.oci.tar" -- \
		sh -c 'echo hello from a microVM; echo "guest kernel $(uname -r), host kernel '"$(uname -r)"'"'
	echo "container in the VM: $(( ($(date +%s%N) - t) / 1000000 )) ms from the command to its exit"
	"$BIN/magnetar" sandbox rm -f demo-vm >/dev/null
fi

say "magnetar ps --sandboxes (all removed by --rm)"
"$BIN/magnetar" ps --sandboxes
if [[ "${KEEP:-}" == 1 ]]; then
	say "KEEP=1: press Enter to tear down"
	read -r _
fi
