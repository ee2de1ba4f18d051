#!/usr/bin/env bash
# Builds the pinned control plane (etcd, kube-apiserver, kube-controller-manager, kubectl, helm)
# from Go modules and caches the binaries outside the clone, by version, so a second run is free.
#
#   e2e/controlplane/build.sh          # prints the bin directory on stdout
#
# Kubernetes cannot be `go install`ed: its go.mod replaces the staging modules with ./staging/...
# So a throwaway wrapper module requires k8s.io/kubernetes and replaces each staging module with
# its published version, read from the downloaded go.mod (never typed by hand).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${BULWARK_CACHE:-$HOME/.cache/bulwark}
bin="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
want=(etcd kube-apiserver kube-controller-manager kubectl helm)

have_all() { for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if have_all; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "build.sh: go is required (Go toolchain on PATH)" >&2; exit 1; }
mkdir -p "$bin"
work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Go's build and module caches live in the throwaway work directory: a cold build fills them with
# 3.7 GB that nothing reads again once the binaries are cached, and that disk is the Rust build's.
export GOCACHE="$work/go-build" GOMODCACHE="$work/go-mod" GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"
log() { echo "[controlplane/build] $*" >&2; }

k8s_minor=$(echo "$K8S_VERSION" | cut -d. -f2)
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# Without these the servers report v0.0.0-master+$Format:%H$, which kubectl and helm cannot parse.
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kube-controller-manager" ] || [ ! -x "$bin/kubectl" ]; then
  log "kubernetes $K8S_VERSION: wrapper module"
  mkdir -p "$work/k8s" && cd "$work/k8s"
  go mod init bulwark.dev/controlplane-k8s >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  # Every `k8s.io/x => ./staging/src/k8s.io/x` line becomes `k8s.io/x => k8s.io/x <staging version>`.
  grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}' | while read -r m; do
    go mod edit -replace "$m=$m@$K8S_STAGING_VERSION"
  done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy >&2
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    log "go build $cmd"
    CGO_ENABLED=0 go build -ldflags "-s -w $version_ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$bin/$cmd.tmp" "$bin/$cmd"
  done
fi

if [ ! -x "$bin/etcd" ]; then
  log "etcd $ETCD_VERSION: wrapper module"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  go mod init bulwark.dev/controlplane-etcd >/dev/null 2>&1
  go mod edit -require "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go mod tidy >&2
  CGO_ENABLED=0 go build -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$bin/etcd.tmp" "$bin/etcd"
fi

if [ ! -x "$bin/helm" ]; then
  log "helm $HELM_VERSION"
  GOBIN="$work/helm-bin" CGO_ENABLED=0 go install \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$work/helm-bin/helm" "$bin/helm"
fi

have_all || { log "missing binaries in $bin"; exit 1; }
echo "$bin"
