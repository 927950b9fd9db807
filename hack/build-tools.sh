#!/usr/bin/env bash
# Build the pinned third-party tools the tests and demos drive:
#   containerd, ctr,         github.com/containerd/containerd/v2 (same version as the root go.mod)
#   containerd-shim-runc-v2  (the stock runc shim, for the `runc` comparison handler)
#   crictl, critest          sigs.k8s.io/cri-tools
#   ginkgo                   github.com/onsi/ginkgo/v2 (the version critest is built
#                            with; `critest --parallel N` runs its nodes through it)
# The versions come from tools/go.mod (`tool` directives); the binaries land in
# $BIN (default <repo>/.tmp/bin). A stamp file records what was built, so a
# second run is a no-op until tools/go.mod, tools/go.sum, this script or the Go
# toolchain change.
#
# Usage: hack/build-tools.sh [-f]     (-f: rebuild even if up to date)
# Env:   GO (default go), BIN (output dir)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO="${GO:-go}"
BIN="${BIN:-$ROOT/.tmp/bin}"
TOOLS="$ROOT/tools"
STAMP="$BIN/.tools.stamp"
FORCE=0
[[ "${1:-}" == "-f" ]] && FORCE=1

CONTAINERD_MOD=github.com/containerd/containerd/v2
CRITOOLS_MOD=sigs.k8s.io/cri-tools

die() { echo "build-tools: $*" >&2; exit 1; }

# modversion GOMOD MODULE prints MODULE's required version in GOMOD, reading
# the file directly so that a root module being edited concurrently (and not
# currently loadable) does not break the check.
modversion() {
	awk -v m="$2" '
		$1 == "replace" || $1 == "=>" { next }
		{ for (i = 1; i < NF; i++) if ($i == m && $(i+1) ~ /^v[0-9]/) { print $(i+1); exit } }
	' "$1"
}

root_ctrd="$(modversion "$ROOT/go.mod" "$CONTAINERD_MOD")"
tools_ctrd="$(modversion "$TOOLS/go.mod" "$CONTAINERD_MOD")"
critools="$(modversion "$TOOLS/go.mod" "$CRITOOLS_MOD")"
[[ -n "$tools_ctrd" ]] || die "$CONTAINERD_MOD not required in tools/go.mod"
[[ -n "$critools" ]] || die "$CRITOOLS_MOD not required in tools/go.mod"
if [[ -n "$root_ctrd" && "$root_ctrd" != "$tools_ctrd" ]]; then
	die "containerd version mismatch: go.mod has $CONTAINERD_MOD $root_ctrd but tools/go.mod has $tools_ctrd.
  The tests must run the containerd we compile against. Fix with:
    (cd tools && $GO get -tool $CONTAINERD_MOD/cmd/containerd@$root_ctrd $CONTAINERD_MOD/cmd/ctr@$root_ctrd \
       $CONTAINERD_MOD/cmd/containerd-shim-runc-v2@$root_ctrd && $GO mod tidy)"
fi
if grep -qE "^[[:space:]]*(replace[[:space:]]+)?$CONTAINERD_MOD([[:space:]]+v[^ ]+)?[[:space:]]*=>" "$TOOLS/go.mod"; then
	die "tools/go.mod replaces $CONTAINERD_MOD; the pinned tools must be the released version"
fi

want="$(
	echo "containerd $tools_ctrd"
	echo "cri-tools $critools"
	"$GO" version
	cat "$TOOLS/go.mod" "$TOOLS/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
)"
bins=(containerd ctr containerd-shim-runc-v2 crictl critest ginkgo)
uptodate=1
for b in "${bins[@]}"; do [[ -x "$BIN/$b" ]] || uptodate=0; done
if [[ $FORCE == 0 && $uptodate == 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
	echo "build-tools: up to date (containerd $tools_ctrd, cri-tools $critools) in $BIN"
	exit 0
fi

mkdir -p "$BIN"
rm -f "$STAMP"

# containerd's Makefile sets VERSION from `git describe` (v2.4.2); cri-tools
# strips the leading v (1.37.0). Without these, the binaries print
# "2.4.2+unknown" and "unknown". No cgo: btrfs is then compiled out by its
# build constraint; devmapper and zfs snapshotters are not needed either.
ldflags="-s -w"
ldflags+=" -X $CONTAINERD_MOD/version.Version=$tools_ctrd"
ldflags+=" -X $CONTAINERD_MOD/version.Revision=$tools_ctrd"
ldflags+=" -X $CONTAINERD_MOD/version.Package=$CONTAINERD_MOD"
ldflags+=" -X $CRITOOLS_MOD/pkg/version.Version=${critools#v}"
tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs"

export CGO_ENABLED=0
start=$SECONDS
echo "build-tools: building containerd $tools_ctrd, ctr, containerd-shim-runc-v2, crictl $critools, critest, ginkgo into $BIN"
"$GO" -C "$TOOLS" build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$BIN/" \
	"$CONTAINERD_MOD/cmd/containerd" "$CONTAINERD_MOD/cmd/ctr" "$CRITOOLS_MOD/cmd/crictl" \
	github.com/onsi/ginkgo/v2/ginkgo
# The shim is built like containerd's release shim (static, without gRPC).
"$GO" -C "$TOOLS" build -trimpath -tags "$tags no_grpc" -ldflags "$ldflags" -o "$BIN/" \
	"$CONTAINERD_MOD/cmd/containerd-shim-runc-v2"
# critest is a ginkgo test binary (cmd/critest has only a _test.go file).
"$GO" -C "$TOOLS" test -c -trimpath -ldflags "$ldflags" -o "$BIN/critest" "$CRITOOLS_MOD/cmd/critest"

printf '%s\n' "$want" >"$STAMP"
echo "build-tools: done in $((SECONDS - start))s"
"$BIN/containerd" --version
"$BIN/crictl" --version
