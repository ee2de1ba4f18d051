#!/usr/bin/env bash
# Propagation benchmark: from a policy write to the apiserver until every stream client holds
# it, with 1, 50 and 200 clients and 1,000 policies; the operator's RSS and CPU; from an
# EndpointSlice write until the clients whose pods use that Service (one in four, selected by a
# FailoverPolicy) hold the new endpoint, with what the other clients receive meanwhile; the time
# to converge after an operator restart. Starts its own control plane (stopped on exit), builds
# the operator and the client program (e2e/src/bin/propagation.rs) in release mode, prints a
# Markdown table and writes it to bench/results/propagation.md.
#
# Usage: bash bench/propagation.sh      (make bench runs it)
# Environment (optional): PROP_CLIENTS (default 1,50,200), PROP_POLICIES (1000), PROP_EDITS (20)
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
CLIENTS=${PROP_CLIENTS:-1,50,200}
POLICIES=${PROP_POLICIES:-1000}
EDITS=${PROP_EDITS:-20}
OUT=$BENCH_DIR/results/propagation.md
LOG_TAG=propagation
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh" # log, free_ports (no init_tmp: up.sh/down.sh own the temp dir)

cargo build -q --release -p bulwark-operator -p bulwark-e2e --bin bulwark-operator --bin propagation
target=${CARGO_TARGET_DIR:-$ROOT/target}/release

# Four free loopback ports for the plane.
read -r api etcd peer kcm <<<"$(free_ports 4)"
dir=$(mktemp -d /tmp/bulwark-propagation.XXXXXX)
rmdir "$dir"   # up.sh makes it (and only deletes directories it made)
trap 'bash "$ROOT/e2e/controlplane/down.sh" --dir "$dir" >/dev/null 2>&1 || true' EXIT
kubeconfig=$(bash "$ROOT/e2e/controlplane/up.sh" --dir "$dir" --apiserver-port "$api" \
  --etcd-port "$etcd" --etcd-peer-port "$peer" --controller-manager-port "$kcm" --watch-pid $$)
bin=$(bash "$ROOT/e2e/controlplane/build.sh")
"$bin/kubectl" --kubeconfig "$kubeconfig" apply -f "$ROOT/crds" >/dev/null
"$bin/kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Established crd --all --timeout=60s >/dev/null

log "clients $CLIENTS, $POLICIES policies, $EDITS edits per row (logs in $dir/logs)"
mkdir -p "$BENCH_DIR/results"
{
  echo "# Propagation (\`bash bench/propagation.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  "$target/propagation" --kubeconfig "$kubeconfig" --operator "$target/bulwark-operator" \
    --log-dir "$dir/logs" --clients "$CLIENTS" --policies "$POLICIES" --edits "$EDITS"
} | tee "$OUT"
