#!/usr/bin/env bash
# examples/agent-loop in every kind, in direct mode (no containerd): it
# starts magnetar-sandboxer with private state and sockets and a
# configuration of its own (a bridge network on a bridge and subnet of its
# own, and `[backends.gvisor] host_files = true` so that the file service
# reaches gvisor containers), then runs the agent loop in a runc, a gvisor,
# a vm and a wasm sandbox: a script written, run with its output streamed,
# its result file read and served over HTTP through DialPort, usage, pause
# and resume, removal (wasm: the subset WASI preview 1 allows, the rest
# said). A kind this host lacks (no runsc, no QEMU or guest image) is
# reported and left out, or fails the demo with REQUIRED=1. Everything is
# torn down at the end (trap), also on failure or Ctrl-C.
#
# Usage (root): hack/demo-agent-loop.sh   (or: make demo-agent-loop)
# Env: BIN (default <repo>/.tmp/bin), EXAMPLES (default <repo>/.tmp/examples),
#      GUEST (default <repo>/.tmp/guest), KINDS (default "runc gvisor vm wasm"),
#      REQUIRED=1 to fail when a kind is not available.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-$ROOT/.tmp/bin}"
EXAMPLES="${EXAMPLES:-$ROOT/.tmp/examples}"
GUEST="${GUEST:-$ROOT/.tmp/guest}"
KINDS="${KINDS:-runc gvisor vm wasm}"
[[ $EUID -eq 0 ]] || { echo "demo-agent-loop: needs root (runc, cgroups, bridges)" >&2; exit 1; }

DEMO=demo-agent-loop
# shellcheck source=hack/direct-lib.sh
source "$ROOT/hack/direct-lib.sh"
direct_setup mgagent
BRIDGE="mgdemo$((RANDOM % 10000))"
demo_teardown() { ip link del "$BRIDGE" 2>/dev/null; }

cat >"$WORK/sandboxer.toml" <<EOF
version = 1
[[networks]]
  name = "demo"
  bridge = "$BRIDGE"
  subnet = "10.212.$((RANDOM % 200 + 20)).0/24"
  nat = true
[backends.gvisor]
  host_files = true
EOF

say "magnetar-sandboxer (direct mode; bridge network $BRIDGE; gvisor with host_files)"
direct_start --config "$WORK/sandboxer.toml"
"$BIN/magnetar" kinds

ran=() missing=()
for kind in $KINDS; do
	if ! "$BIN/magnetar" -o json kinds | tr -d ' \n' | grep -q "\"name\":\"$kind\",[^}]*\"available\":true"; then
		missing+=("$kind")
		echo "demo-agent-loop: kind $kind is not available here (magnetar kinds says why)" >&2
		continue
	fi
	image="$EXAMPLES/busybox.oci.tar"
	[[ "$kind" == wasm ]] && image="$EXAMPLES/hello-wasm.oci.tar"
	say "examples/agent-loop -kind $kind $(basename "$image")"
	t=$(date +%s%N)
	"$EXAMPLES/agent-loop" -kind "$kind" "$image"
	echo "agent loop in $kind: $(( ($(date +%s%N) - t) / 1000000 )) ms"
	ran+=("$kind")
done

say "ran in: ${ran[*]:-none}${missing[*]:+; not available: ${missing[*]}}"
if [[ "${REQUIRED:-}" == 1 && ${#missing[@]} -gt 0 ]]; then
	exit 1
fi
