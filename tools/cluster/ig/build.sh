#!/usr/bin/env bash
# Builds Inspektor Gadget's Kubernetes side at exactly the version tools/ig
# pins: kubectl-gadget, and the programs of the gadget pods' image
# (gadgettracermanager, cleanup). Prints the directory that holds them.
#
# The module comes from the Go module proxy, like tools/ig/build-ig.sh's ig,
# with the same stand-in for the OpenTelemetry-profiler symbolizer (its fork
# of ebpf-profiler is not served by the proxy), and with patch_for_hidden_pid1
# (the build machines hide PID 1's namespaces). The CRI-O and NRI hook
# programs of IG's image are not built: this cluster runs containerd without
# NRI, where the gadget pods use no hooks.
#
# Idempotent and cached under $IGDEADLOCK_CACHE/cluster by the content of this
# folder; compilers run at the lowest CPU priority.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools=$(cd "$here/../.." && pwd)
module=github.com/inspektor-gadget/inspektor-gadget
cache=${IGDEADLOCK_CACHE:-/var/cache/igdeadlock}/cluster
stub=$tools/ig/overlay/otel_symbolizer_stub.go.in

version_in() { awk -v m="$module" '$1 == m { print $2; exit }' "$1"; }
version=$(version_in "$here/go.mod")
pinned=$(version_in "$tools/ig/go.mod")
if [ -z "$version" ] || [ "$version" != "$pinned" ]; then
	echo "cluster ig build: $here/go.mod requires IG ${version:-(none)}, tools/ig/go.mod pins $pinned: they must be equal" >&2
	exit 1
fi
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here"/overlay/* "$stub" | sha256sum | cut -c1-12)
out=$cache/ig-k8s-$version-$stamp
programs=(kubectl-gadget gadgettracermanager cleanup)

complete() {
	local p
	for p in "${programs[@]}"; do [ -x "$out/$p" ] || return 1; done
}

if complete; then
	echo "$out"
	exit 0
fi

command -v go >/dev/null || { echo "cluster ig build: Go is needed" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.build-ig.lock"
flock 9
if complete; then
	echo "$out"
	exit 0
fi

# edit SRC FILE OLD NEW: replaces the one occurrence of OLD in SRC/FILE by NEW;
# stops the build if OLD does not occur exactly once (an IG upgrade moved it).
edit() {
	local n
	n=$(grep -cF -- "$3" "$1/$2" || true)
	if [ "$n" != 1 ]; then
		echo "cluster ig build: $2: expected one line with '$3', found ${n:-0}" >&2
		exit 1
	fi
	FROM=$3 TO=$4 perl -pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/' "$1/$2"
}

# The build machines' VM hides PID 1's namespace links even from root, and IG
# takes PID 1 as "the host" in a few places (the gadget pod exits at start
# with "Detecting pid namespace: stat /host/proc/1/ns/pid: permission
# denied"). overlay/host_namespace_pid.go.in says which PID stands for the
# host; these edits make those places ask it.
patch_for_hidden_pid1() {
	local src=$1
	cp "$here/overlay/host_namespace_pid.go.in" "$src/pkg/utils/host/igdeadlock_host_namespace_pid.go"
	edit "$src" pkg/utils/host/namespaces.go \
		'os.Stat(fmt.Sprintf("%s/1/ns/%s", HostProcFs, nsKind))' \
		'os.Stat(fmt.Sprintf("%s/%d/ns/%s", HostProcFs, HostNamespacePID(), nsKind))'
	edit "$src" pkg/container-collection/options.go \
		'netnsHost, err := containerutils.GetNetNs(1)' \
		'netnsHost, err := containerutils.GetNetNs(host.HostNamespacePID())'
	edit "$src" pkg/symbolizer/symtab/symtab.go \
		'os.Stat(fmt.Sprintf("%s/1/ns/pid", host.HostProcFs))' \
		'os.Stat(fmt.Sprintf("%s/%d/ns/pid", host.HostProcFs, host.HostNamespacePID()))'
	edit "$src" pkg/operators/localmanager/localmanager.go \
		'pidOne := uint32(1)' \
		'pidOne := uint32(host.HostNamespacePID())'
}

tmp=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "cluster ig build: building kubectl-gadget and the gadget pods' programs, IG $version (first time only)" >&2

export GONOSUMDB=github.com/inspektor-gadget/notation-go,go.opentelemetry.io/ebpf-profiler
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export CGO_ENABLED=0

dir=$(cd "$here" && go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$dir" ] || { echo "cluster ig build: could not download $module@$version" >&2; exit 1; }
cp -r "$dir" "$tmp/src"
chmod -R u+w "$tmp/src"
rm -f "$tmp/src/pkg/symbolizer/otel/"*.go
cp "$stub" "$tmp/src/pkg/symbolizer/otel/otel.go"

patch_for_hidden_pid1 "$tmp/src"

mkdir "$tmp/mod" "$tmp/out"
cp "$here/go.mod" "$here/go.sum" "$tmp/mod/"
printf '\nreplace %s => %s\n' "$module" "$tmp/src" >>"$tmp/mod/go.mod"
ldflags="-s -w -X $module/internal/version.version=$version"
(
	cd "$tmp/mod"
	nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/out/kubectl-gadget" "$module/cmd/kubectl-gadget"
	nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/out/gadgettracermanager" "$module/gadget-container/gadgettracermanager"
	nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/out/cleanup" "$module/gadget-container/cleanup"
)
rm -rf "$out"
mv "$tmp/out" "$out"
echo "cluster ig build: done" >&2
echo "$out"
