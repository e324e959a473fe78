#!/usr/bin/env bash
# Builds verifier-stats (this folder) with the cilium/ebpf version ig pins and
# prints the binary's path. Cached in $IGDEADLOCK_CACHE under a name derived
# from this folder's files: a re-run, even from a fresh clone, builds nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${IGDEADLOCK_CACHE:-/var/cache/igdeadlock}
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here"/*.go "$here/build.sh" | sha256sum | cut -c1-12)
out=$cache/verifier-stats-$stamp

if [ ! -x "$out" ]; then
	command -v go >/dev/null || { echo "verifier/build: Go is needed (https://go.dev/doc/install)" >&2; exit 1; }
	mkdir -p "$cache"
	tmp=$(mktemp "$cache/.verifier-stats-XXXXXX")
	trap 'rm -f "$tmp"' EXIT
	(cd "$here" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false" go build -trimpath -o "$tmp" .)
	chmod 0755 "$tmp"
	mv "$tmp" "$out"
	trap - EXIT
fi
echo "$out"
