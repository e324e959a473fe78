#!/usr/bin/env bash
# Builds Inspektor Gadget's `ig` at the version pinned in go.mod (this folder),
# installs it as $PREFIX/bin/ig and installs IG's gadget headers from the same
# module version into /usr/include/gadget (where `ig image build --local`
# looks). Everything comes from the Go module proxy; nothing built is kept in
# the repository. Our additions (overlay/) make ig's container collection work
# on kernels without kprobes and where PID 1's namespaces are hidden; see
# patch_for_sandboxed_kernels.
#
# Idempotent and cached: the build lands in $IGDEADLOCK_CACHE under a name
# derived from this folder's files, so a re-run (even from a fresh clone)
# only compares files and returns in well under a second.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
module=github.com/inspektor-gadget/inspektor-gadget
cache=${IGDEADLOCK_CACHE:-/var/cache/igdeadlock}
prefix=${PREFIX:-/usr/local}
headers_dir=${GADGET_HEADERS_DIR:-/usr/include/gadget}

version=$(awk -v m="$module" '$1 == m { print $2; exit }' "$here/go.mod")
[ -n "$version" ] || { echo "build-ig: no $module requirement in $here/go.mod" >&2; exit 1; }
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here"/overlay/* "$here/build-ig.sh" | sha256sum | cut -c1-12)
out=$cache/ig-$version-$stamp

# The otel symbolizer's fork of ebpf-profiler is not served by the proxy; the
# upstream release named in go.mod builds everything else. Neither module is in
# the public checksum database, so their hashes come from go.sum alone.
export GONOSUMDB=github.com/inspektor-gadget/notation-go,go.opentelemetry.io/ebpf-profiler
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED=0

# replace_once SRC FILE OLD NEW: replaces the text OLD, which must occur exactly
# once in SRC/FILE, by NEW. Any other count fails the build, so that an IG
# upgrade that moves the code cannot silently drop a patch.
replace_once() {
	local file=$1/$2
	local count
	count=$(OLD=$3 perl -0ne '$n = () = /\Q$ENV{OLD}\E/g; print $n' "$file")
	if [ "$count" != 1 ]; then
		echo "build-ig: patch no longer applies: expected 1 occurrence of '$3' in $2, found ${count:-none}" >&2
		exit 1
	fi
	OLD=$3 NEW=$4 perl -0pi -e 's/\Q$ENV{OLD}\E/$ENV{NEW}/' "$file"
}

# Kernels like the build machines' (no kprobes, PID 1's namespaces hidden from
# root) break ig's container collection. Our code lives in overlay/*.go.in;
# these edits point IG's code at it, one call each.
patch_for_sandboxed_kernels() {
	local src=$1
	cp "$here/overlay/host_namespace_pid.go.in" "$src/pkg/utils/host/igdeadlock_host_namespace_pid.go"
	cp "$here/overlay/container_polling.go.in" "$src/pkg/container-collection/igdeadlock_container_polling.go"

	# 1. "The host" is PID 1, whose namespace links may be unreadable: use
	#    host.HostNamespacePID() (PID 1, or ig's own PID where PID 1's are hidden).
	#    a) LocalManager's fake "host" container (mount namespace, attachers with --host).
	replace_once "$src" pkg/operators/localmanager/localmanager.go \
		'pidOne := uint32(1)' \
		'pidOne := uint32(host.HostNamespacePID()) // igdeadlock: PID 1 or, if hidden, ig itself'
	#    b) The container collection's host network namespace (HostNetwork of containers).
	replace_once "$src" pkg/container-collection/options.go \
		'netnsHost, err := containerutils.GetNetNs(1)' \
		'netnsHost, err := containerutils.GetNetNs(host.HostNamespacePID()) // igdeadlock: PID 1 or, if hidden, ig itself'
	#    c) host.IsHost{Pid,Net,Cgroup}Ns, which compare /proc/self/ns/* with
	#       PID 1's (cgroup paths of every container, docker's cgroup lookup).
	replace_once "$src" pkg/utils/host/namespaces.go \
		'os.Stat(fmt.Sprintf("%s/1/ns/%s", HostProcFs, nsKind))' \
		'os.Stat(fmt.Sprintf("%s/%d/ns/%s", HostProcFs, HostNamespacePID(), nsKind)) // igdeadlock: PID 1 or, if hidden, ig itself'

	# 2. The container hook needs kprobes; without it the whole container
	#    collection failed. Where the hook cannot start, poll the runtimes instead.
	replace_once "$src" pkg/operators/localmanager/localmanager.go \
		'containercollection.WithContainerFanotifyEbpf(),' \
		'containercollection.WithContainerFanotifyEbpfOrPolling(rc), // igdeadlock: polls the runtimes where the hook cannot start'
}

tmp=
build() {
	command -v go >/dev/null || { echo "build-ig: Go is needed to build ig (https://go.dev/doc/install)" >&2; exit 1; }
	tmp=$(mktemp -d "$cache/.build-XXXXXX")
	trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT

	# A writable copy of the pinned module, with the otel symbolizer replaced
	# by our empty stand-in (see overlay/otel_symbolizer_stub.go.in).
	local dir
	dir=$(cd "$here" && go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -d "$dir" ] || { echo "build-ig: could not download $module@$version" >&2; exit 1; }
	cp -r "$dir" "$tmp/src"
	chmod -R u+w "$tmp/src"
	rm -f "$tmp/src/pkg/symbolizer/otel/"*.go
	cp "$here/overlay/otel_symbolizer_stub.go.in" "$tmp/src/pkg/symbolizer/otel/otel.go"
	patch_for_sandboxed_kernels "$tmp/src"

	mkdir "$tmp/mod"
	cp "$here/go.mod" "$here/go.sum" "$tmp/mod/"
	printf '\nreplace %s => %s\n' "$module" "$tmp/src" >>"$tmp/mod/go.mod"
	(cd "$tmp/mod" && go build -tags netgo \
		-ldflags "-X $module/internal/version.version=$version -extldflags '-static'" \
		-o "$tmp/ig" "$module/cmd/ig")

	mkdir -p "$tmp/out"
	mv "$tmp/ig" "$tmp/out/ig"
	cp -r "$tmp/src/include/gadget" "$tmp/out/include"
	rm -rf "$out"
	mv "$tmp/out" "$out"
}

mkdir -p "$cache"
if [ ! -x "$out/ig" ]; then
	echo "build-ig: building ig $version (first time only; takes a few minutes)"
	build
fi

mkdir -p "$prefix/bin"
if ! cmp -s "$out/ig" "$prefix/bin/ig"; then
	install -m 0755 "$out/ig" "$prefix/bin/ig"
	echo "build-ig: installed ig $version as $prefix/bin/ig"
fi
if ! diff -rq "$out/include" "$headers_dir" >/dev/null 2>&1; then
	rm -rf "$headers_dir"
	mkdir -p "$(dirname "$headers_dir")"
	cp -r "$out/include" "$headers_dir"
	echo "build-ig: installed IG $version gadget headers in $headers_dir"
fi
