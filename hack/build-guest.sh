#!/usr/bin/env bash
# Build the microVM guest: the Debian kernel as an uncompressed PVH vmlinux
# and an initramfs whose /init is magnetar-agent. See docs/guest.md.
#
#   hack/build-guest.sh [OUT]        (default OUT: .tmp/guest)
#
# Outputs (OUT/):
#   vmlinux             uncompressed ELF with the Xen PVH note (QEMU -kernel)
#   initramfs.cpio.gz   newc cpio, sorted, mtime 0, uid/gid 0, gzip -n
#   kernel-version      e.g. 6.1.0-56-amd64
#   stamp               hash of every input; a matching stamp skips the build
#
# Inputs: the kernel package linux-image-amd64 depends on, Debian's runc and
# the libraries it links, the agent's Go sources, go.sum, the Go version and
# this script. Downloads are cached in OUT/cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/.tmp/guest}" && cd "${1:-$ROOT/.tmp/guest}" && pwd)"
GO="${GO:-go}"
CACHE="$OUT/cache"
mkdir -p "$CACHE"

log() { echo "build-guest: $*" >&2; }

# Modules the agent loads. Their dependencies are added and ordered by
# modprobe --show-depends on the extracted tree.
MODULES=(
	virtio_mmio virtio_pci virtio_console virtio_net virtio_blk
	9p 9pnet_virtio overlay vmw_vsock_virtio_transport fuse virtiofs
	virtio_balloon
)
# Modules loaded only when the guest kernel asks for one (request_module:
# the agent serves /sbin/modprobe from modules/on-demand/list), for what a
# container with CAP_NET_ADMIN may make: a bridge (brctl addbr, ip link add
# type bridge).
ON_DEMAND=(bridge)

# --- build dependencies (idempotent) -----------------------------------------
need=()
for p in cpio xz-utils kmod runc; do
	status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
	[[ "$status" == ii* ]] || need+=("$p")
done
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- kernel package ------------------------------------------------------------
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
if [[ -z "$kpkg" ]]; then
	log "empty package list; apt-get update"
	apt-get update -qq
	kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
[[ -n "$kpkg" ]] || { log "cannot resolve the kernel package of linux-image-amd64"; exit 1; }
kver="${kpkg#linux-image-}"
kpkgver="$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')"
runcver="$(dpkg-query -W -f='${Version}' runc)"

# --- input key -------------------------------------------------------------------
agent_dirs="$(cd "$ROOT" && "$GO" list -deps -f '{{if not .Standard}}{{.Dir}}{{end}}' ./taskagent/cmd/magnetar-agent | grep "^$ROOT/" | sort)"
key="$(
	{
		echo "kernel $kpkg $kpkgver"
		echo "runc $runcver"
		echo "modules ${MODULES[*]} on-demand ${ON_DEMAND[*]}"
		"$GO" version
		sha256sum "$ROOT/hack/build-guest.sh" "$ROOT/go.mod" "$ROOT/go.sum" | awk '{print $1}'
		for d in $agent_dirs; do
			find "$d" -maxdepth 1 -name '*.go' ! -name '*_test.go' -print0 | sort -z | xargs -0 -r sha256sum | sed "s|$ROOT/||"
		done
		sha256sum /usr/sbin/runc | awk '{print $1}'
	} | sha256sum | awk '{print $1}'
)"
if [[ -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$key" && -f "$OUT/vmlinux" && -f "$OUT/initramfs.cpio.gz" ]]; then
	log "up to date ($kpkg, key ${key:0:12})"
	exit 0
fi
rm -f "$OUT/stamp"

# --- kernel: download, extract, vmlinux, depmod ---------------------------------------
deb="$(ls "$CACHE"/"${kpkg}"_*.deb 2>/dev/null | head -1 || true)"
if [[ -z "$deb" ]]; then
	log "downloading $kpkg $kpkgver"
	(cd "$CACHE" && apt-get download -qq "$kpkg")
	deb="$(ls "$CACHE"/"${kpkg}"_*.deb | head -1)"
fi
kroot="$CACHE/kroot-$kver"
if [[ ! -f "$kroot/.done" ]]; then
	rm -rf "$kroot"
	mkdir -p "$kroot"
	dpkg-deb -x "$deb" "$kroot"
	depmod -b "$kroot" "$kver" # the .deb ships no modules.dep (made in postinst)
	touch "$kroot/.done"
fi
vmlinuz="$kroot/boot/vmlinuz-$kver"
off="$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)"
[[ -n "$off" ]] || { log "no xz payload in $vmlinuz"; exit 1; }
tail -c +"$((off + 1))" "$vmlinuz" | xz -dcq >"$OUT/vmlinux.tmp" 2>/dev/null || true # trailing data after the stream
[[ "$(head -c 4 "$OUT/vmlinux.tmp" | od -An -c | tr -d ' ')" == "177ELF" ]] || { log "extracted vmlinux is not an ELF"; exit 1; }
mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
echo "$kver" >"$OUT/kernel-version"

# --- staging tree ---------------------------------------------------------------------------
stage="$OUT/stage"
rm -rf "$stage"
mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc,modules,usr/sbin,sbin,bin,var/lib,root}
chmod 1777 "$stage/tmp"
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3

log "building magnetar-agent"
version="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo dev)"
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags="-s -w -X github.com/magnetar-io/magnetar/taskagent/agent.Version=$version" \
	-o "$stage/init" ./taskagent/cmd/magnetar-agent)
ln -s ../init "$stage/sbin/init"

# Modules in load order: modprobe --show-depends prints "insmod <path>" for
# every dependency first. Built-in modules print "builtin <name>".
: >"$stage/modules/order"
declare -A seen=()
for m in "${MODULES[@]}"; do
	while read -r verb path _; do
		[[ "$verb" == insmod ]] || continue
		name="$(basename "$path" .ko)"
		[[ -z "${seen[$name]:-}" ]] || continue
		seen[$name]=1
		cp "$path" "$stage/modules/$name.ko"
		echo "$name.ko" >>"$stage/modules/order"
	done < <(modprobe -d "$kroot" -S "$kver" --show-depends "$m")
done

# On-demand modules: "module <name> <files in load order>" and the
# module's aliases, for the agent's modprobe (taskagent/agent/modprobe.go).
mkdir -p "$stage/modules/on-demand"
list="$stage/modules/on-demand/list"
: >"$list"
for m in "${ON_DEMAND[@]}"; do
	files=()
	while read -r verb path _; do
		[[ "$verb" == insmod ]] || continue
		name="$(basename "$path" .ko)"
		[[ -z "${seen[$name]:-}" ]] || continue # loaded at boot already
		files+=("$name.ko")
		cp "$path" "$stage/modules/on-demand/$name.ko"
	done < <(modprobe -d "$kroot" -S "$kver" --show-depends "$m")
	echo "module $m ${files[*]}" >>"$list"
	modinfo -b "$kroot" -k "$kver" -F alias "$m" | sed "s/^/alias /; s/\$/ $m/" >>"$list"
done
ln -s ../init "$stage/sbin/modprobe"

# runc with the shared libraries ldd reports, at their paths.
cp /usr/sbin/runc "$stage/usr/sbin/runc"
ln -s ../usr/sbin/runc "$stage/sbin/runc"
while read -r lib; do
	[[ -n "$lib" ]] || continue
	real="$(readlink -f "$lib")"
	mkdir -p "$stage$(dirname "$lib")"
	cp "$real" "$stage$lib"
done < <(ldd /usr/sbin/runc | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u)
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
printf 'root:x:0:\n' >"$stage/etc/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$stage/etc/hosts"
: >"$stage/etc/resolv.conf"

# --- cpio ------------------------------------------------------------------------------------
find "$stage" -exec touch -h -d @0 {} +
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
	cpio --null --quiet -o -H newc --reproducible -R 0:0) | gzip -9 -n >"$OUT/initramfs.cpio.gz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
rm -rf "$stage"
echo "$key" >"$OUT/stamp"
log "done: $OUT/vmlinux ($(stat -c %s "$OUT/vmlinux") B), $OUT/initramfs.cpio.gz ($(stat -c %s "$OUT/initramfs.cpio.gz") B), kernel $kver"
