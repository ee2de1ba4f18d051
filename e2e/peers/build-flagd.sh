#!/usr/bin/env bash
# Builds the pinned flagd from Go modules and caches the binary outside the clone, by version,
# so a second run is free.
#
#   e2e/peers/build-flagd.sh          # prints the path of the flagd binary on stdout
#
# `go install github.com/open-feature/flagd/flagd@v0.16.0` cannot work with the module proxy
# alone: flagd's go.mod pins flagd/core v0.15.6 and core pins open-feature-operator/api v0.2.47,
# both refused. So a throwaway wrapper module requires flagd and core v0.16.0, and replaces the
# operator's api module with a small local package (below) that has what core's Kubernetes sync
# compiles against. Flag evaluation is untouched; only flagd's Kubernetes (CRD) sync is lost,
# which the tests do not use (they give flagd `--uri file:...`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${BULWARK_CACHE:-$HOME/.cache/bulwark}
dest="$cache_root/flagd-$FLAGD_VERSION"
bin="$dest/bin/flagd"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

log() { echo "[peers/build-flagd] $*" >&2; }
command -v go >/dev/null || { log "go is required (Go toolchain on PATH)"; exit 1; }
mkdir -p "$cache_root"
# Two runs at once (two test binaries, make -j): the second waits, then finds the binary.
exec 9>"$cache_root/flagd.lock"
flock 9
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

# Built in a temporary directory beside the cache and renamed into place at the end, so an
# interrupted build never leaves a half-made cache entry.
# Holding the lock, any earlier work directory is a killed build's leftover.
rm -rf "$cache_root"/flagd-build.*
work=$(mktemp -d "$cache_root/flagd-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
# Go's build and module caches live in the throwaway work directory: nothing reads them again
# once the binary is cached, and the disk is the Rust build's.
export GOCACHE="$work/go-build" GOMODCACHE="$work/go-mod" GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"
export CGO_ENABLED=0
start=$(date +%s)

log "flagd $FLAGD_VERSION (core $FLAGD_CORE_VERSION): wrapper module"
# The stand-in for github.com/open-feature/open-feature-operator/api/core/v1beta1: the three names
# flagd core's pkg/sync/kubernetes uses, with the FeatureFlag's JSON shape (spec.flagSpec).
mkdir -p "$work/operator-api/core/v1beta1"
cat > "$work/operator-api/go.mod" <<GOMOD
module github.com/open-feature/open-feature-operator/api

go 1.24

require k8s.io/apimachinery $FLAGD_APIMACHINERY_VERSION
GOMOD
cat > "$work/operator-api/core/v1beta1/v1beta1.go" <<'GO'
// Package v1beta1 stands in for the OpenFeature operator's API types, which the module proxy does
// not serve. AddToScheme registers nothing: flagd's Kubernetes sync is not used.
package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var GroupVersion = schema.GroupVersion{Group: "core.openfeature.dev", Version: "v1beta1"}

func AddToScheme(*runtime.Scheme) error { return nil }

type FeatureFlag struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              FeatureFlagSpec `json:"spec,omitempty"`
}

type FeatureFlagSpec struct {
	FlagSpec map[string]any `json:"flagSpec,omitempty"`
}
GO

mkdir -p "$work/flagd" && cd "$work/flagd"
go mod init bulwark.dev/peers-flagd >/dev/null 2>&1
go mod edit \
  -require "github.com/open-feature/flagd/flagd@$FLAGD_VERSION" \
  -require "github.com/open-feature/flagd/core@$FLAGD_CORE_VERSION" \
  -replace "github.com/open-feature/open-feature-operator/api=../operator-api"
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/open-feature/flagd/flagd"
GO
go mod tidy >&2
log "go build flagd"
mkdir -p "$work/out/bin"
go build -trimpath \
  -ldflags "-s -w -X main.version=$FLAGD_VERSION -X main.commit=bulwark-wrapper -X main.date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -o "$work/out/bin/flagd" github.com/open-feature/flagd/flagd
"$work/out/bin/flagd" version >/dev/null 2>&1 || { log "the built flagd does not run"; exit 1; }

rm -rf "$dest"  # a leftover without bin/flagd (made by hand): the rename needs the name free
mv "$work/out" "$dest"
log "flagd $FLAGD_VERSION built in $(( $(date +%s) - start ))s: $bin"
echo "$bin"
