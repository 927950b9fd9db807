# shellcheck shell=bash
# Sourced by the direct-mode demos (demo.sh, demo-agent-loop.sh): a
# private magnetar-sandboxer in direct mode (no containerd) and its
# teardown. The caller sets DEMO (its name, for messages), BIN and GUEST,
# and may define demo_teardown, run after the sandboxer stopped.

say() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }

# direct_setup PREFIX makes the work directory /tmp/PREFIX.* and sets the
# trap that tears everything down at exit, also on failure or Ctrl-C.
direct_setup() {
	WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
	API="$WORK/run/api.sock"
	SANDBOXER_PID=""
	trap direct_cleanup EXIT
	trap 'exit 130' INT TERM
}

# direct_cleanup removes every sandbox, stops the sandboxer, runs
# demo_teardown, shows the end of the sandboxer's log after a failure and
# removes the work directory.
direct_cleanup() {
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
	if declare -F demo_teardown >/dev/null; then
		demo_teardown
	fi
	if ((rc != 0)) && [[ -f "$WORK/sandboxer.log" ]]; then
		echo "$DEMO: FAILED (exit $rc); sandboxer log:" >&2
		tail -n 40 "$WORK/sandboxer.log" >&2
	fi
	rm -rf "$WORK"
	exit "$rc"
}

# direct_start [ARG...] starts magnetar-sandboxer with ARGs and private
# state and sockets under $WORK, waits (10 s at most) for its API socket
# and exports MAGNETAR_ADDRESS.
direct_start() {
	"$BIN/magnetar-sandboxer" "$@" --state-dir "$WORK/state" --run-dir "$WORK/run" \
		--listen "$WORK/run/sandboxer.sock" --api-listen "$API" --vm-guest-dir "$GUEST" >"$WORK/sandboxer.log" 2>&1 &
	SANDBOXER_PID=$!
	for _ in $(seq 100); do
		[[ -S "$API" ]] && break
		kill -0 "$SANDBOXER_PID" 2>/dev/null || { echo "$DEMO: sandboxer exited" >&2; exit 1; }
		sleep 0.1
	done
	[[ -S "$API" ]] || { echo "$DEMO: no API socket after 10s" >&2; exit 1; }
	export MAGNETAR_ADDRESS="unix://$API"
}
