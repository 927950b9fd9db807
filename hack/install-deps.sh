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
#   wabt                         wat2wasm, for examples/hello-wat (make examples, benchmarks)
#   runsc                        gVisor, the gvisor kind: from bookworm-backports
#                                (20240729, has the systrap platform) when the
#                                distribution is bookworm — the backports source
#                                is added if missing —, else the distribution's
#                                own (bookworm's 20221219 has ptrace only)
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
	wabt
)

command -v npm >/dev/null || PACKAGES+=(nodejs npm)
command -v mvn >/dev/null || PACKAGES+=(maven openjdk-17-jdk-headless)
{ command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; } || PACKAGES+=(python3 python3-venv)

# runsc: prefer bookworm-backports, fall back to the distribution's package.
# A runsc without the systrap platform (bookworm's) is upgraded when
# backports can be reached.
install_runsc() {
	local codename backports="" have=""
	codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
	have="$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' runsc 2>/dev/null || true)"
	if [[ "$have" == ii* ]]; then
		# 20240729 and newer know systrap; older ones are upgraded below.
		local v="${have##* }"; v="${v#0.0~}"; v="${v%%.*}"
		if [[ "$v" =~ ^[0-9]{8}$ ]] && ((v >= 20230000)); then
			return 0
		fi
		[[ "$codename" == bookworm ]] || return 0
	fi
	if [[ $EUID -ne 0 ]]; then
		echo "install-deps: runsc missing or too old; run as root: sudo $0" >&2
		return 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if [[ "$codename" == bookworm ]]; then
		if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
			echo "install-deps: adding the bookworm-backports source (/etc/apt/sources.list.d/magnetar-backports.sources)"
			cat >/etc/apt/sources.list.d/magnetar-backports.sources <<-'SRC'
				Types: deb
				URIs: http://deb.debian.org/debian
				Suites: bookworm-backports
				Components: main
				Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
			SRC
		fi
		backports=1
	fi
	apt-get update -qq
	if [[ -n "$backports" ]] && apt-get install -y -qq --no-install-recommends -t bookworm-backports runsc; then
		echo "install-deps: runsc from bookworm-backports: $(runsc --version 2>/dev/null | head -1)"
		return 0
	fi
	echo "install-deps: runsc from bookworm-backports failed; installing the distribution's runsc (ptrace platform only)" >&2
	apt-get install -y -qq --no-install-recommends runsc
	echo "install-deps: runsc: $(runsc --version 2>/dev/null | head -1)"
}
install_runsc

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
