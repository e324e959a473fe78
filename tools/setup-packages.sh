#!/usr/bin/env bash
# Installs the Debian packages igdeadlock needs, each only where the command it
# provides is missing. A command that is already there (from any source: npm
# from a vendor Node.js, docker from a static build) is never "completed" with
# a Debian package, which could conflict with it.
#
#   tools/setup-packages.sh [GROUP...]          install what is missing
#   tools/setup-packages.sh --check [GROUP...]  simulate (apt-get install -s) every
#                                               package a fresh machine of this
#                                               kind would need, and fail on conflicts
#
# Groups: build (gadget and companion), test (end-to-end tests), bench, kernels (the kernel matrix),
# cluster (the single-node Kubernetes cluster of tools/cluster/).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
table=$here/packages.txt

check=
if [ "${1:-}" = "--check" ]; then
	check=1
	shift
fi
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(build)

in_groups() {
	local g
	for g in "${groups[@]}"; do [ "$g" = "$1" ] && return 0; done
	return 1
}

# A command is present if it is on PATH, in an sbin directory, or a file path that exists.
present() {
	case "$1" in
	/*) [ -e "$1" ] ;;
	*) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;;
	esac
}

# Whether the Debian package owns the command's file (as named, or where its
# symlinks lead).
owned_by() {
	local path=$1 package=$2 candidate
	case "$path" in /*) ;; *) path=$(command -v "$1" 2>/dev/null || echo "/usr/sbin/$1") ;; esac
	for candidate in "$path" "$(readlink -f "$path")"; do
		dpkg -S "$candidate" 2>/dev/null | cut -d: -f1 | tr ', ' '\n\n' | grep -qx "$package" && return 0
	done
	return 1
}

missing=()
simulate=()
while read -r group cmd package; do
	case "$group" in "" | "#"*) continue ;; esac
	in_groups "$group" || continue
	if [ -n "$check" ]; then
		# What a fresh machine installs: every package, except where this kind of
		# machine ships the command from elsewhere (installing ours would conflict).
		if present "$cmd"; then
			owned_by "$cmd" "$package" || continue
		fi
		simulate+=("$package")
	elif ! present "$cmd"; then
		missing+=("$package")
	fi
done <"$table"

apt_install() {
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

if [ -n "$check" ]; then
	[ ${#simulate[@]} -gt 0 ] || { echo "setup-packages: nothing to check"; exit 0; }
	mapfile -t simulate < <(printf '%s\n' "${simulate[@]}" | sort -u)
	echo "setup-packages: simulating the install of: ${simulate[*]}"
	apt-get install -s -q "${simulate[@]}" >/dev/null
	echo "setup-packages: no conflict"
	exit 0
fi

[ ${#missing[@]} -gt 0 ] || exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "setup-packages: installing Debian packages: ${missing[*]}"
apt_install "${missing[@]}" || { apt-get update -q && apt_install "${missing[@]}"; }
