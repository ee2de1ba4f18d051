#!/usr/bin/env bash
# Builds bench/grpc-upstream (grpc-go serving grpc.health.v1.Health and reflection, the upstream
# of bench/grpc.sh) from its pinned go.mod/go.sum, cached outside the clone by grpc-go's version
# and a hash of the sources; prints the binary's path.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/grpc-upstream" && pwd)
GRPC_VERSION=$(awk '{sub(/^require /, "")} $1 == "google.golang.org/grpc" {print $2; exit}' "$src/go.mod")
[ -n "$GRPC_VERSION" ] || { echo "[build-grpc-upstream] no google.golang.org/grpc in $src/go.mod" >&2; exit 1; }
hash=$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-12)
cache_root=${BULWARK_CACHE:-$HOME/.cache/bulwark}
dest="$cache_root/grpc-upstream-$GRPC_VERSION-$hash"
if [ -x "$dest/bin/grpc-upstream" ]; then echo "$dest/bin/grpc-upstream"; exit 0; fi
command -v go >/dev/null || { echo "[build-grpc-upstream] go is required" >&2; exit 1; }
mkdir -p "$cache_root"
exec 9>"$cache_root/grpc-upstream.lock"
flock 9
if [ -x "$dest/bin/grpc-upstream" ]; then echo "$dest/bin/grpc-upstream"; exit 0; fi
work=$(mktemp -d "$cache_root/grpc-upstream-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "[build-grpc-upstream] go build (google.golang.org/grpc $GRPC_VERSION) into $dest" >&2
mkdir -p "$work/out/bin"
(cd "$src" && GOCACHE="$work/cache" GOMODCACHE="$work/mod" GOFLAGS="-modcacherw -mod=readonly" CGO_ENABLED=0 \
  go build -trimpath -o "$work/out/bin/grpc-upstream" .)
rm -rf "$dest"
mv "$work/out" "$dest"
echo "$dest/bin/grpc-upstream"
