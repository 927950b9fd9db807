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

say() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }

WORK="$(mktemp -d /tmp/mgagent.XXXXXX)"
API="$WORK/run/api.sock"
BRIDGE="mgdemo$((RANDOM % 10000))"
SANDBOXER_PID=""
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	say "teardown"
	if [[ -S "$API" ]]; then
		for sb in $("$BIN/magnetar" --address "unix://$API" ps --sandboxes -q 2>/dev/null); do
			"$BIN/magnetar" --address "unix://$API" sandbox rm -f "$sb" >/dev/null 2>&1
		done
	fi
	if [[ -n "$SANDBOXER_PID" ]]; then
		kill -TERM "$SANDBOXER_PID" 2>/dev/null
		wait "$SANDBOXER_PID" 2>/dev/null
	fi
	ip link del "$BRIDGE" 2>/dev/null
	if ((rc != 0)) && [[ -f "$WORK/sandboxer.log" ]]; then
		echo "demo-agent-loop: FAILED (exit $rc); sandboxer log:" >&2
		tail -n 40 "$WORK/sandboxer.log" >&2
	fi
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
"$BIN/magnetar-sandboxer" --config "$WORK/sandboxer.toml" --state-dir "$WORK/state" --run-dir "$WORK/run" \
	--listen "$WORK/run/sandboxer.sock" --api-listen "$API" --vm-guest-dir "$GUEST" >"$WORK/sandboxer.log" 2>&1 &
SANDBOXER_PID=$!
for _ in $(seq 100); do
	[[ -S "$API" ]] && break
	kill -0 "$SANDBOXER_PID" 2>/dev/null || { echo "demo-agent-loop: sandboxer exited" >&2; exit 1; }
	sleep 0.1
done
[[ -S "$API" ]] || { echo "demo-agent-loop: no API socket after 10s" >&2; exit 1; }
export MAGNETAR_ADDRESS="unix://$API"
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
