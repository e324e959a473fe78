#!/usr/bin/env bash
# Builds the two container images the tests run programs in, without any
# registry (the build machines cannot reach one):
#
#   igdeadlock-test/glibc:latest  Debian bookworm (debootstrap --variant=minbase
#                                 from Debian's mirror), glibc with /etc/ld.so.cache
#   igdeadlock-test/musl:latest   musl's loader and libc only, laid out as in
#                                 Alpine (/lib/ld-musl-<arch>.so.1), no ld.so.cache
#
# Test programs are bind-mounted read-only at run time, e.g.
#   docker run --rm -v "$PWD/tests/.bin/abba:/abba:ro" igdeadlock-test/glibc /abba
# so the images hold no test binary.
#
# Idempotent and cached: the Debian root filesystem is kept as a tarball under
# $IGDEADLOCK_CACHE/containers, and an image is imported again only when the
# label igdeadlock.content (a hash of its root filesystem and of this recipe)
# differs. Needs a running Docker engine (tools/containers/docker.sh start).
set -euo pipefail
umask 022

cache=${IGDEADLOCK_CACHE:-/var/cache/igdeadlock}/containers
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# Bump when the way the images are made changes (it is part of the label).
recipe=1
label=igdeadlock.content

arch=$(dpkg --print-architecture)
glibc_tarball=$cache/debian-$suite-minbase-$arch.tar.gz

docker info >/dev/null 2>&1 || { echo "build-images: Docker does not answer: run tools/containers/docker.sh start" >&2; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.build-images.lock"
flock 9

tmp=
cleanup() {
	[ -n "$tmp" ] || return 0
	# debootstrap mounts /proc and /sys in the target while it works; an
	# interrupted run can leave them there.
	local m
	for m in $(findmnt -n -l -o TARGET | grep -F "$tmp/" | sort -r || true); do
		umount -l "$m" || true
	done
	rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
tmp=$(mktemp -d "$cache/.build-XXXXXX")

# import_image NAME TARBALL CHANGE...: imports TARBALL as NAME unless NAME
# already carries the same content label; replaces the previous image.
import_image() {
	local name=$1 tarball=$2
	shift 2
	local content current old
	content=$(sha256sum "$tarball" | cut -c1-16)-r$recipe
	current=$(docker image inspect -f "{{ index .Config.Labels \"$label\" }}" "$name" 2>/dev/null || true)
	if [ "$current" = "$content" ]; then
		echo "build-images: $name is up to date"
		return 0
	fi
	old=$(docker image inspect -f '{{ .Id }}' "$name" 2>/dev/null || true)
	local changes=(--change "LABEL $label=$content"
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
	local c
	for c in "$@"; do changes+=(--change "$c"); done
	docker import "${changes[@]}" --message "igdeadlock test image ($content)" "$tarball" "$name" >/dev/null
	echo "build-images: imported $name ($content)"
	# The image it replaces, unless a container still uses it.
	if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{ .Id }}' "$name")" ]; then
		docker image rm "$old" >/dev/null 2>&1 || true
	fi
}

# --- glibc: Debian minbase ----------------------------------------------------
if [ ! -s "$glibc_tarball" ]; then
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || {
		echo "build-images: debootstrap is missing: run tools/setup-packages.sh test" >&2
		exit 1
	}
	echo "build-images: making a Debian $suite root filesystem with debootstrap from $mirror (first time only)"
	rootfs=$tmp/glibc
	if ! debootstrap --variant=minbase --arch="$arch" "$suite" "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
		tail -n 20 "$tmp/debootstrap.log" >&2
		echo "build-images: debootstrap failed (is $mirror reachable? set DEBIAN_MIRROR to another mirror)" >&2
		exit 1
	fi
	# Package lists and downloaded packages are of no use in a test image.
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
	tar -C "$rootfs" --numeric-owner -czf "$tmp/glibc.tar.gz" .
	mv "$tmp/glibc.tar.gz" "$glibc_tarball"
	rm -rf --one-file-system "$rootfs"
fi
import_image igdeadlock-test/glibc:latest "$glibc_tarball" 'CMD ["/bin/bash"]'

# --- musl: the host's musl loader/libc, Alpine's layout -----------------------
loader=$(ls /lib/ld-musl-*.so.1 2>/dev/null | head -n1 || true)
[ -n "$loader" ] || { echo "build-images: musl is missing (/lib/ld-musl-*.so.1): run tools/setup-packages.sh test" >&2; exit 1; }
loader_name=$(basename "$loader")            # ld-musl-x86_64.so.1
musl_arch=${loader_name#ld-musl-}
musl_arch=${musl_arch%.so.1}                  # x86_64
rootfs=$tmp/musl
mkdir -p "$rootfs"/{lib,etc,tmp,proc,sys,dev,root,usr/bin,usr/lib,bin}
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root"
# In Alpine the loader is the libc itself, and libc.musl-<arch>.so.1 points to it.
install -m 0755 "$(readlink -f "$loader")" "$rootfs/lib/$loader_name"
ln -s "$loader_name" "$rootfs/lib/libc.musl-$musl_arch.so.1"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
# The same files make the same tarball, hence the same label.
tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$tmp/musl.tar" .
import_image igdeadlock-test/musl:latest "$tmp/musl.tar"
