#!/usr/bin/env bash
# `make demo`: a local control plane, Bulwark installed with Helm, the examples applied, and what
# the API does with good and bad input, narrated. The plane keeps running for you to explore;
# `make down` stops it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cp_dir=${1:-$repo/.bulwark/controlplane}
cd "$repo"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "Starting a real control plane on loopback (etcd + kube-apiserver + controller-manager)"
kubeconfig=$(bash e2e/controlplane/up.sh --dir "$cp_dir")
bin=$(sed -n 's/^BULWARK_CP_BIN=//p' "$cp_dir/env")
export KUBECONFIG=$kubeconfig
kubectl() { "$bin/kubectl" "$@"; }
helm() { "$bin/helm" "$@"; }
run kubectl version

say "Installing Bulwark with Helm (the chart carries the five CRDs)"
if helm status bulwark -n bulwark-system >/dev/null 2>&1; then
  echo "(already installed)"
else
  run helm install bulwark charts/bulwark --namespace bulwark-system --create-namespace --wait
fi
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null
run kubectl api-resources --api-group=bulwark.dev

say "The operator connects and reports ready once the API is served"
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/debug/bulwark-operator --kubeconfig "$kubeconfig" --admin-listen "127.0.0.1:$admin_port" \
  --api-check-interval-seconds 1 >"$cp_dir/logs/demo-operator.log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs "127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
run curl -s "127.0.0.1:$admin_port/readyz"
run curl -s "127.0.0.1:$admin_port/metrics"

say "Applying every example into namespace 'demo'"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
run kubectl apply -n demo -f examples/
say "Everything Bulwark, in one list (the 'bulwark' category)"
run kubectl get bulwark -n demo
say "Printer columns say what a policy does at a glance"
run kubectl get ratelimitpolicies -n demo

say "Every field is documented where users look: kubectl explain"
run kubectl explain ratelimitpolicy.spec.rules.rates

say "Bad input is rejected by the apiserver itself, naming the field"
for bad in e2e/fixtures/invalid/ratelimitpolicy/02-window-too-long.yaml \
           e2e/fixtures/invalid/webhookendpoint/03-url-plain-http.yaml \
           e2e/fixtures/invalid/featureflag/06-gate-unknown-flag.yaml; do
  [ -f "$bad" ] || continue
  grep '^# Rejected because:' "$bad" || true
  printf '$ kubectl apply -n demo -f %s\n' "$bad"
  kubectl apply -n demo -f "$bad" 2>&1 | sed 's/^/    /' || true
done

say "The sidecar enforces a policy: examples/ratelimitpolicy-per-client-ip.yaml (20/s, burst 40)"
echo "(standalone mode: the same YAML read from a directory, as the operator will stream it)"
work=$(mktemp -d)
mkdir -p "$work/www/api" "$work/policies"
echo '{"items":[]}' >"$work/www/api/items"
cp examples/ratelimitpolicy-per-client-ip.yaml "$work/policies/"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app_port=$(free_port); in_port=$(free_port); sc_admin=$(free_port)
python3 -m http.server "$app_port" --bind 127.0.0.1 --directory "$work/www" >"$work/app.log" 2>&1 &
app=$!
for _ in $(seq 50); do curl -fs "127.0.0.1:$app_port/api/items" >/dev/null 2>&1 && break; sleep 0.2; done
./target/debug/bulwark-sidecar --config-dir "$work/policies" --app "127.0.0.1:$app_port" \
  --inbound-listen "127.0.0.1:$in_port" --admin-listen "127.0.0.1:$sc_admin" --state-dir "$work/state" \
  >"$work/sidecar.log" 2>&1 &
sidecar=$!
trap 'kill $operator $app $sidecar 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do curl -fs "127.0.0.1:$sc_admin/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
echo "\$ 100 requests to /api/items, 10 at a time:"
seq 100 | xargs -P 10 -I{} curl -s -o /dev/null -w '%{http_code}\n' "127.0.0.1:$in_port/api/items" | sort | uniq -c | sed 's/^/    /'
echo "\$ curl -i 127.0.0.1:$in_port/api/items   # while limited"
seq 60 | xargs -P 10 -I{} curl -s -o /dev/null "127.0.0.1:$in_port/api/items"
curl -si "127.0.0.1:$in_port/api/items" | sed 's/^/    /'
echo
run curl -s "127.0.0.1:$sc_admin/metrics" -o "$work/metrics"
grep '^bulwark_ratelimit_requests_total' "$work/metrics" | sed 's/^/    /'

say "Done. The control plane keeps running:"
echo "    export KUBECONFIG=$kubeconfig"
echo "    $bin/kubectl get bulwark -A"
echo "    make down     # stop it and remove its data"
