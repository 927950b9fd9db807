#!/bin/sh
# tidy-cgroups.sh COMMAND [ARG...] runs COMMAND, then removes Magnetar's
# default cgroup parent (/magnetar in every mounted cgroup hierarchy)
# where COMMAND made it and left it empty, so that a test suite leaves
# nothing on the host (a parent that existed before, perhaps configured
# by an operator, is never touched). Exits with COMMAND's status.
set -u
fresh=""
for root in $(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts); do
	[ -e "$root/magnetar" ] || fresh="$fresh $root/magnetar"
done
"$@"
rc=$?
for dir in $fresh; do
	rmdir "$dir" 2>/dev/null || true # not empty: kept
done
exit $rc
