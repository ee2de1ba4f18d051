#!/usr/bin/env bash
# Sanity check of a running control plane started by up.sh: version, discovery, RBAC,
# ServiceAccount tokens, and the controller-manager's work. Run `check.sh --help` for details.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

usage() {
  cat <<EOF
Usage: e2e/controlplane/check.sh [--dir DIR]

Checks the control plane that up.sh runs in DIR (default: \$REPO/.bulwark/controlplane), with the
kubectl it was started with (BULWARK_CP_BIN in DIR/env), never the one on PATH:
  1. version        kubectl version: the server's version parses and equals $K8S_VERSION
  2. discovery      kubectl api-resources lists core, RBAC and CRD resources
  3. rbac           auth can-i create pods --as=nobody answers "no" (exit 1); the admin's "yes"
  4. token          create token SA --audience bulwark: a JWT whose aud contains "bulwark"
  5. controllers    a new namespace gets ServiceAccount "default"; the garbage collector deletes
                    an orphaned dependent; deleting the namespace completes
Objects it creates are named bulwark-check-* and removed again. The last line on stdout is the
summary, e.g. "controlplane-check: 5 passed, 0 failed"; exit 1 if any check failed.
EOF
}

dir=$repo/.bulwark/controlplane
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dir) [ $# -ge 2 ] || { echo "check.sh: --dir needs a value" >&2; exit 2; }; dir=$2; shift 2 ;;
    --dir=*) dir=${1#*=}; shift ;;
    *) echo "check.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ -r "$dir/env" ] || { echo "controlplane-check: no control plane in $dir (run up.sh first)" >&2; exit 1; }
# DIR/env is KEY=VALUE lines written by up.sh; read the two we need rather than sourcing it.
env_get() { sed -n "s/^$1=//p" "$dir/env" | tail -n 1; }
kubeconfig=$(env_get KUBECONFIG)
kubectl=$(env_get BULWARK_CP_BIN)/kubectl
[ -x "$kubectl" ] || { echo "controlplane-check: $kubectl is missing" >&2; exit 1; }
kc() { "$kubectl" --kubeconfig "$kubeconfig" --request-timeout=10s "$@"; }

suffix=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
sa=bulwark-check-$suffix
ns=bulwark-check-$suffix
cleanup() {
  kc delete serviceaccount "$sa" --namespace default --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kc delete namespace "$ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Each check runs in a subshell with errexit: the first failing step fails the check, with `fail`
# giving the reason; the remaining checks still run.
fail() { echo "    $*" >&2; exit 1; }
# poll SECONDS COMMAND...: retries COMMAND every 0.5 s until it succeeds or time runs out.
poll() {
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.5
  done
}

check_version() {
  local json server
  json=$(kc version --output json) || fail "kubectl version failed: $json"
  server=$(jq -r '.serverVersion.gitVersion // empty' <<<"$json")
  [ "$server" = "$K8S_VERSION" ] || fail "server version '$server', want '$K8S_VERSION'"
  [[ $(jq -r '.serverVersion.major + "." + .serverVersion.minor' <<<"$json") =~ ^1\.[0-9]+$ ]] \
    || fail "server major/minor do not parse: $(jq -c .serverVersion <<<"$json")"
  [ "$(jq -r '.clientVersion.gitVersion' <<<"$json")" = "$K8S_VERSION" ] \
    || fail "kubectl is $(jq -r '.clientVersion.gitVersion' <<<"$json"), want $K8S_VERSION"
  # Plain `kubectl version` also parses the server version (to warn about skew): must not fail.
  kc version >/dev/null || fail "kubectl version (plain) failed"
}

check_discovery() {
  local out r
  out=$(kc api-resources --no-headers) || fail "kubectl api-resources failed"
  for r in serviceaccounts namespaces clusterroles customresourcedefinitions leases; do
    awk -v r="$r" '$1 == r { found = 1 } END { exit !found }' <<<"$out" || fail "api-resources lacks $r"
  done
}

check_rbac() {
  local out rc=0
  out=$(kc auth can-i create pods --as=nobody 2>&1) || rc=$?
  [ "$out" = no ] || fail "can-i create pods --as=nobody answered '$out', want 'no'"
  [ $rc -ne 0 ] || fail "can-i answered no but exited 0"
  out=$(kc auth can-i create pods) || fail "the admin cannot create pods: '$out'"
  [ "$out" = yes ] || fail "admin can-i answered '$out', want 'yes'"
}

# JWT segments are base64url without padding.
b64url_decode() {
  local s
  s=$(tr '_-' '/+' <<<"$1")
  while [ $(( ${#s} % 4 )) -ne 0 ]; do s+="="; done
  base64 -d <<<"$s"
}

check_token() {
  local token payload
  kc create serviceaccount "$sa" --namespace default >/dev/null || fail "cannot create ServiceAccount $sa"
  token=$(kc create token "$sa" --namespace default --audience bulwark --duration 10m) \
    || fail "kubectl create token failed"
  [[ $token =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] || fail "not a JWT: $token"
  payload=$(b64url_decode "$(cut -d. -f2 <<<"$token")") || fail "JWT payload is not base64url"
  jq -e '.aud | if type == "array" then index("bulwark") != null else . == "bulwark" end' \
    <<<"$payload" >/dev/null || fail "aud does not contain bulwark: $payload"
  jq -e --arg sub "system:serviceaccount:default:$sa" '.sub == $sub' <<<"$payload" >/dev/null \
    || fail "unexpected sub: $payload"
  kc delete serviceaccount "$sa" --namespace default >/dev/null
}

check_controllers() {
  local owner_uid
  kc create namespace "$ns" >/dev/null || fail "cannot create namespace $ns"
  poll 30 kc get serviceaccount default --namespace "$ns" \
    || fail "no ServiceAccount default in $ns after 30 s (serviceaccount controller)"
  # Garbage collector: a ConfigMap owned by another goes away when its owner is deleted.
  kc create configmap owner --namespace "$ns" >/dev/null
  owner_uid=$(kc get configmap owner --namespace "$ns" -o jsonpath='{.metadata.uid}')
  kc apply --namespace "$ns" -f - >/dev/null <<EOF || fail "cannot create the dependent ConfigMap"
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: "$owner_uid"}
EOF
  kc delete configmap owner --namespace "$ns" >/dev/null
  poll 30 bash -c '! "$@"' _ "$kubectl" --kubeconfig "$kubeconfig" get configmap dependent --namespace "$ns" \
    || fail "dependent ConfigMap still there 30 s after its owner was deleted (garbage collector)"
  # Namespace controller: deletion empties the namespace, then removes it.
  kc delete namespace "$ns" --timeout=60s >/dev/null || fail "namespace $ns not deleted within 60 s"
}

passed=0 failed=0
run() {
  local name=$1 fn=$2 t0=$SECONDS
  # Not `if ( … )`: errexit is ignored inside an if condition, even when re-enabled there.
  set +e
  ( set -e; $fn )
  local rc=$?
  set -e
  if [ $rc -eq 0 ]; then
    echo "ok    $name ($((SECONDS - t0)) s)"
    passed=$((passed + 1))
  else
    echo "FAIL  $name" >&2
    failed=$((failed + 1))
  fi
}

run version check_version
run discovery check_discovery
run rbac check_rbac
run token check_token
run controllers check_controllers

echo "controlplane-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
