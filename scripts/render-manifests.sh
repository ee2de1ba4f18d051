#!/usr/bin/env bash
# Prints manifests/bulwark.yaml: the chart rendered with default values, CRDs included.
# `make manifests` writes it; the install e2e test compares it with the committed file.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/e2e/controlplane/versions.env"
bin=$(bash "$repo/e2e/controlplane/build.sh")
# helm template has no cluster to ask, so it is told the version the project targets.
exec "$bin/helm" template bulwark "$repo/charts/bulwark" --namespace bulwark-system --include-crds \
  --kube-version "$K8S_VERSION"
