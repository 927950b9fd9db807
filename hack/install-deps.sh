#!/usr/bin/env bash
# Install the Debian packages the tests and demos need. Idempotent and
# non-interactive; a fast no-op when everything is present (`apt-get update`
# runs only if something is missing). Needs root to install.
#
#   runc                         OCI runtime (stock runc handler, magnetar-runc)
#   containernetworking-plugins  CNI bridge/host-local/loopback in /usr/lib/cni
#   busybox-static               static /bin/busybox for the busybox test image
#   iptables iproute2 kmod       networking (ip link for the CNI bridge, modprobe)
#   util-linux mount             unshare/nsenter, mount (private mount namespace)
#   procps                       ps/pgrep in the demos
#   qemu-system-x86              the microVM kind's hypervisor (boot tests)
#   cpio xz-utils                building the microVM guest image (make guest)
#
# The client suites need toolchains that machines often have from elsewhere
# (Node.js from nodesource, Python from pyenv, a Temurin JDK): their Debian
# packages are added only when the command is missing from PATH:
#   npm → nodejs npm · mvn → maven openjdk-17-jdk-headless · python3 with
#   venv → python3 python3-venv
set -euo pipefail

PACKAGES=(
	runc
	containernetworking-plugins
	busybox-static
	iptables
	iproute2
	kmod
	util-linux
	mount
	procps
	qemu-system-x86
	cpio
	xz-utils
)

command -v npm >/dev/null || PACKAGES+=(nodejs npm)
command -v mvn >/dev/null || PACKAGES+=(maven openjdk-17-jdk-headless)
{ command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; } || PACKAGES+=(python3 python3-venv)

missing=()
for p in "${PACKAGES[@]}"; do
	status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
	[[ "$status" == ii* ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
	echo "install-deps: all present (${PACKAGES[*]})"
	exit 0
fi

if [[ $EUID -ne 0 ]]; then
	echo "install-deps: missing ${missing[*]}; run as root: sudo $0" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
