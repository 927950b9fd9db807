#!/usr/bin/env bash
# Copies the .proto files of github.com/containerd/containerd/api, at the
# version go.mod requires, into third_party/containerd-api/ so that Buf can
# resolve imports such as "types/mount.proto" without the Buf Schema Registry.
#
# The result is committed: `buf breaking --against .git#...` rebuilds older
# commits and needs the imports to be present in the tree.
#
# Usage: hack/vendor-protos.sh   (run from anywhere; `make generate` calls it)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

module=github.com/containerd/containerd/api
dest=third_party/containerd-api

# -mod=mod is not needed: the module is a direct requirement in go.mod, so
# `go mod download` fetches exactly that version into the module cache.
version="$(go list -m -f '{{.Version}}' "${module}")"
go mod download "${module}@${version}"
src="$(go list -m -f '{{.Dir}}' "${module}")"
if [[ -z "${src}" || ! -d "${src}" ]]; then
	echo "vendor-protos: module directory for ${module}@${version} not found" >&2
	exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT

# Stage the copy first so a failure never leaves a half-written directory.
# Sorted file list and fixed permissions keep the result deterministic.
(cd "${src}" && find . -type f -name '*.proto' -print | LC_ALL=C sort) >"${tmp}/files"
while IFS= read -r f; do
	install -D -m 0644 "${src}/${f}" "${tmp}/out/${f}"
done <"${tmp}/files"
install -m 0644 "${src}/LICENSE" "${tmp}/out/LICENSE"
cat >"${tmp}/out/README.md" <<README
# containerd API protos (vendored)

Copied verbatim from the Go module \`${module}@${version}\` by
\`hack/vendor-protos.sh\`. Do not edit; bump the version in go.mod and run
\`make generate\` instead. Licensed under the Apache License 2.0 (see LICENSE).

Go code for these files is not generated here: Magnetar's generated code
imports the containerd module's own packages (e.g.
\`github.com/containerd/containerd/api/types\`).
README

rm -rf "${dest}"
mkdir -p "$(dirname "${dest}")"
mv "${tmp}/out" "${dest}"
echo "vendor-protos: ${module}@${version} -> ${dest} ($(wc -l <"${tmp}/files") files)"
