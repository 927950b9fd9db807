#!/usr/bin/env bash
# Demo: a busybox pod through a private containerd and magnetar-sandboxer.
#
#   1. builds the pinned tools (no-op when up to date) and the harness CLI;
#   2. starts a private containerd (hack/cmd/harness, internal/harness) whose
#      proxy sandbox plugin "magnetar" points at $SANDBOXER_SOCKET;
#   3. starts the sandboxer ($SANDBOXER_CMD) with CONTAINERD_ADDRESS,
#      CONTAINERD_TTRPC_ADDRESS and SANDBOXER_SOCKET in its environment;
#   4. runs a pod with `crictl runp --runtime $HANDLER`, creates and starts a
#      busybox container that prints hello, shows `crictl logs`;
#   5. shows with ps that there is no pause process and no containerd-shim
#      process for the pod, and the container's process ancestry;
#   6. tears everything down (trap), also on failure or Ctrl-C.
#
# Usage (root): hack/demo-containerd.sh         (or: make demo-containerd)
# Env:
#   BIN            tools and magnetar binaries (default <repo>/.tmp/bin)
#   HANDLER        runtime handler (default magnetar-runc). HANDLER=runc runs
#                  the same demo on containerd's stock runc handler, for
#                  comparison; no sandboxer is started then.
#   SANDBOXER_CMD  command line starting the sandboxer in the foreground;
#                  it must serve the Sandbox Controller API (gRPC) on
#                  $SANDBOXER_SOCKET. Default: see below.
#   KEEP=1         pause before teardown (inspect with crictl/ctr; the
#                  environment is printed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-go}"
BIN="${BIN:-$ROOT/.tmp/bin}"
HANDLER="${HANDLER:-magnetar-runc}"

cd "$ROOT" # the harness builds the pause image from the module
[[ $EUID -eq 0 ]] || { echo "demo: needs root (containerd, runc, CNI)" >&2; exit 1; }

say() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# Short work directory: unix socket paths must stay under 108 bytes and
# containerd's shim socket_dir under 42.
WORK="$(mktemp -d /tmp/mgdemo.XXXXXX)"
SANDBOXER_SOCKET="$WORK/sandboxer.sock"
export SANDBOXER_SOCKET

HARNESS_PID=""
SANDBOXER_PID=""
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	say "teardown"
	if [[ -n "${CRI_CONFIG_FILE:-}" && -f "$CRI_CONFIG_FILE" ]]; then
		"$BIN/crictl" rmp --all --force >/dev/null 2>&1
	fi
	# The harness removes any pod left, stops containerd and its shims, the
	# CNI bridge, the pod cgroups and its base directory.
	if [[ -n "$HARNESS_PID" ]]; then
		kill -TERM "$HARNESS_PID" 2>/dev/null
		wait "$HARNESS_PID" 2>/dev/null
	fi
	if [[ -n "$SANDBOXER_PID" ]]; then
		kill -TERM "$SANDBOXER_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$SANDBOXER_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SANDBOXER_PID" 2>/dev/null
		wait "$SANDBOXER_PID" 2>/dev/null
	fi
	if ((rc != 0)); then
		echo "demo: FAILED (exit $rc); logs:" >&2
		for f in "$WORK"/*.log; do [[ -f "$f" ]] && { echo "--- $f (tail)" >&2; tail -n 40 "$f" >&2; }; done
	fi
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "tools"
GO="$GO" BIN="$BIN" "$ROOT/hack/build-tools.sh"
"$GO" build -C "$ROOT" -o "$BIN/harness" ./hack/cmd/harness
SHIM="$BIN/containerd-shim-magnetar-v2"

say "private containerd"
CGROUP_PARENT="/magnetar-demo-$$"
harness_args=(up -base "$WORK/ctrd" -bin "$BIN" -sandboxer-socket "$SANDBOXER_SOCKET" -images
	-cgroup-parent "$CGROUP_PARENT"
	-env-file "$WORK/env" -log "$WORK/containerd.log")
if [[ -x "$SHIM" ]]; then
	harness_args+=(-shim "$SHIM")
elif [[ "$HANDLER" != runc ]]; then
	echo "demo: $SHIM missing (make build)" >&2
	exit 1
fi
"$BIN/harness" "${harness_args[@]}" >"$WORK/harness.log" 2>&1 &
HARNESS_PID=$!
for _ in $(seq 600); do
	[[ -f "$WORK/env" ]] && break
	kill -0 "$HARNESS_PID" 2>/dev/null || { echo "demo: harness exited" >&2; cat "$WORK/harness.log" >&2; exit 1; }
	sleep 0.1
done
[[ -f "$WORK/env" ]] || { echo "demo: containerd did not come up in 60s" >&2; exit 1; }
set -a
# shellcheck disable=SC1091
source "$WORK/env"
set +a
sed 's/^/    /' "$WORK/env"
export PATH="$BIN:$PATH"

if [[ "$HANDLER" != runc ]]; then
	# The harness's containerd runs in a private mount namespace (libcni's
	# cache must stay private); the sandboxer joins it to see the network
	# namespaces CRI bind-mounts there. On a real host both simply share
	# the host's mount namespace.
	SANDBOXER_CMD="${SANDBOXER_CMD:-nsenter --mount=/proc/$CONTAINERD_PID/ns/mnt -- $BIN/magnetar-sandboxer --listen $SANDBOXER_SOCKET --state-dir $WORK/sbstate --run-dir $WORK/sbrun --containerd-ttrpc-address $CONTAINERD_TTRPC_ADDRESS}"
	say "sandboxer: $SANDBOXER_CMD"
	# Word splitting is intended: SANDBOXER_CMD is a command line.
	# shellcheck disable=SC2086
	$SANDBOXER_CMD >"$WORK/sandboxer.log" 2>&1 &
	SANDBOXER_PID=$!
	for _ in $(seq 100); do
		[[ -S "$SANDBOXER_SOCKET" ]] && break
		kill -0 "$SANDBOXER_PID" 2>/dev/null || { echo "demo: sandboxer exited" >&2; exit 1; }
		sleep 0.1
	done
	[[ -S "$SANDBOXER_SOCKET" ]] || { echo "demo: no sandboxer socket $SANDBOXER_SOCKET after 10s" >&2; exit 1; }
fi

say "pod and container (handler $HANDLER)"
cat >"$WORK/pod.json" <<EOF
{
  "metadata": {"name": "demo-pod", "namespace": "demo", "uid": "demo-pod-$$", "attempt": 0},
  "hostname": "demo-pod",
  "log_directory": "$WORK/pods/demo-pod",
  "linux": {
    "cgroup_parent": "$CGROUP_PARENT",
    "security_context": {"namespace_options": {"network": 0, "pid": 1, "ipc": 0}}
  }
}
EOF
cat >"$WORK/ctr.json" <<EOF
{
  "metadata": {"name": "hello"},
  "image": {"image": "docker.io/library/busybox:1.36"},
  "command": ["sh", "-c", "echo hello from magnetar; echo running as \$(id -u) in \$(hostname); exec sleep 3600"],
  "log_path": "hello.log",
  "linux": {"security_context": {"namespace_options": {"network": 0, "pid": 1, "ipc": 0}}}
}
EOF
t=$(date +%s%N); POD=$(crictl runp --runtime "$HANDLER" "$WORK/pod.json"); echo "runp    $(ms "$t") ms  pod $POD"
t=$(date +%s%N); CTR=$(crictl create "$POD" "$WORK/ctr.json" "$WORK/pod.json"); echo "create  $(ms "$t") ms  container $CTR"
t=$(date +%s%N); crictl start "$CTR" >/dev/null; echo "start   $(ms "$t") ms"
crictl pods
crictl ps -a

say "crictl logs"
for _ in $(seq 50); do
	crictl logs "$CTR" 2>/dev/null | grep -q hello && break
	sleep 0.1
done
crictl logs "$CTR"

say "processes"
CPID="$(crictl inspect -o go-template --template '{{.info.pid}}' "$CTR")"
echo "container process ancestry:"
p="$CPID"
while [[ -n "$p" && "$p" != 0 ]]; do
	printf '    %-8s %s\n' "$p" "$(tr '\0' ' ' </proc/"$p"/cmdline | cut -c1-100)"
	[[ "$p" == 1 ]] && break
	p="$(awk '{print $4}' /proc/"$p"/stat)"
done
pauses="$(pgrep -x pause || true)"
shims="$(pgrep 'containerd-shim' || true)"
echo "pause processes:           ${pauses:-none}"
echo "containerd-shim processes: ${shims:-none}"
ps -o pid,ppid,rss,comm,args -p "$(echo "$CPID" $pauses $shims "${SANDBOXER_PID:-}" | xargs | tr ' ' ',')" 2>/dev/null || true
if [[ "$HANDLER" == runc ]]; then
	echo "(stock runc handler: one pause process and one containerd-shim-runc-v2 per pod, for comparison)"
elif [[ -n "$pauses$shims" ]]; then
	echo "demo: expected no pause and no containerd-shim process with $HANDLER" >&2
	exit 1
else
	echo "OK: no pause process, no per-pod shim; the container is served by magnetar-sandboxer"
fi

if [[ "${KEEP:-}" == 1 ]]; then
	say "KEEP=1: environment above; press Enter to tear down"
	read -r _
fi
say "stop and remove the pod"
t=$(date +%s%N); crictl stopp "$POD" >/dev/null; echo "stopp   $(ms "$t") ms"
t=$(date +%s%N); crictl rmp "$POD" >/dev/null; echo "rmp     $(ms "$t") ms"
