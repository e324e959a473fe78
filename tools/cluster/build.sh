#!/usr/bin/env bash
# Builds the single-node cluster's binaries from Go modules (the module proxy
# is the only source that can be reached from the build machines):
#
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl        from k8s.io/kubernetes at the version in go.mod (this folder)
#   etcd           from go.etcd.io/etcd/server/v3 at the version Kubernetes
#                  itself requires (go.sum pins it)
#
# Prints the directory that holds them. Idempotent and cached: the binaries
# land in $IGDEADLOCK_CACHE/cluster under a name derived from go.mod, go.sum
# and this script, so a re-run (even from a fresh clone) returns at once.
# Compilers run at the lowest CPU priority: a cold build takes a while on two
# cores and should not disturb whatever else the machine is doing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${IGDEADLOCK_CACHE:-/var/cache/igdeadlock}/cluster

version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$here/go.mod")
[ -n "$version" ] || { echo "cluster build: no k8s.io/kubernetes requirement in $here/go.mod" >&2; exit 1; }
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)
out=$cache/k8s-$version-$stamp
programs=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd)

complete() {
	local p
	for p in "${programs[@]}"; do [ -x "$out/$p" ] || return 1; done
}

if complete; then
	echo "$out"
	exit 0
fi

command -v go >/dev/null || { echo "cluster build: Go is needed (https://go.dev/doc/install)" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9
if complete; then
	echo "$out"
	exit 0
fi

tmp=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "cluster build: building Kubernetes $version and etcd (first time only; takes a while)" >&2
# Kubernetes' own release builds are static (CGO off), and its version comes
# from these variables; without them every component says v0.0.0-master.
minor=${version#v*.}
minor=${minor%%.*}
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$version"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
(
	cd "$here"
	for p in "${programs[@]}"; do
		case "$p" in
		etcd) path=go.etcd.io/etcd/server/v3 ;;
		*) path=k8s.io/kubernetes/cmd/$p ;;
		esac
		nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/$p" "$path"
	done
)
rm -rf "$out"
mkdir -p "$tmp/out"
for p in "${programs[@]}"; do mv "$tmp/$p" "$tmp/out/$p"; done
mv "$tmp/out" "$out"
echo "cluster build: done" >&2
echo "$out"
