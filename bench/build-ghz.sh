#!/usr/bin/env bash
# Builds the pinned ghz (a gRPC load generator) from its Go module, cached by version outside
# the clone; prints the binary's path. bench/flags.sh uses it for flagd's evaluation API.
set -euo pipefail
GHZ_VERSION=v0.120.0
cache_root=${BULWARK_CACHE:-$HOME/.cache/bulwark}
dest="$cache_root/ghz-$GHZ_VERSION"
if [ -x "$dest/bin/ghz" ]; then echo "$dest/bin/ghz"; exit 0; fi
command -v go >/dev/null || { echo "[build-ghz] go is required" >&2; exit 1; }
mkdir -p "$cache_root"
exec 9>"$cache_root/ghz.lock"
flock 9
if [ -x "$dest/bin/ghz" ]; then echo "$dest/bin/ghz"; exit 0; fi
work=$(mktemp -d "$cache_root/ghz-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "[build-ghz] go install github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" >&2
GOPATH="$work/gopath" GOCACHE="$work/cache" GOMODCACHE="$work/mod" GOFLAGS=-modcacherw CGO_ENABLED=0 \
  go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
mkdir -p "$work/out/bin"
mv "$work/gopath/bin/ghz" "$work/out/bin/ghz"
rm -rf "$dest"
mv "$work/out" "$dest"
echo "$dest/bin/ghz"
