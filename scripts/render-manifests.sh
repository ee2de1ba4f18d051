#!/usr/bin/env bash
# Prints manifests/bulwark.yaml: the chart rendered with default values, CRDs included, after the
# Namespace bulwark-system (which `helm install --create-namespace` would create), so that
# `kubectl apply -f manifests/` installs Bulwark on a cluster that has nothing of it.
# `make manifests` writes it; the install e2e test compares it with the committed file.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/e2e/controlplane/versions.env"
bin=$(bash "$repo/e2e/controlplane/build.sh")
namespace=bulwark-system
cat <<YAML
# Bulwark, rendered from charts/bulwark with default values by scripts/render-manifests.sh.
# Do not edit: change the chart and run \`make manifests\`.
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: bulwark
YAML
# helm template has no cluster to ask, so it is told the version the project targets.
exec "$bin/helm" template bulwark "$repo/charts/bulwark" --namespace "$namespace" --include-crds \
  --kube-version "$K8S_VERSION"
