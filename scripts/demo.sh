#!/usr/bin/env bash
# `make demo`: a local control plane; Bulwark installed with Helm; the operator running with the
# chart's ServiceAccount; a namespace labelled for injection; a pod created there (the apiserver
# calls the webhook, the stored pod has the sidecar); that pod's sidecar run here in front of a
# real app; a rate limit and a quota applied: 429s with headers, quota usage growing, status
# Accepted and Programmed 1/1; a percentage rollout gating a route and telling the app its variant
# (no SDK), and the same flag over OFREP; the app's outbound calls failing over from a killed
# primary to a standby Service with no client error, and failing back; the app's events delivered
# to a receiver that fails for a while and recovers, dead letters replayed; a gRPC service's
# per-method limit answered RESOURCE_EXHAUSTED to a grpcio client; then every example, kubectl explain and bad input
# rejected (by the schema, and by the operator's validating webhook). All
# narrated. The plane keeps running for you to explore (the operator and sidecar stop with the
# script); `make down` stops it.
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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
admin_port=$(free_port); webhook_port=$(free_port); stream_port=$(free_port)
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

say "Installing Bulwark with Helm: CRDs, the operator Deployment, least-privilege RBAC, the injection and validation webhooks"
echo "(No kubelet runs here, so the Deployment's pods are stored but never run: the operator runs"
echo " below as a local process with the chart's ServiceAccount token, and webhook.url and"
echo " validation.url point the apiserver's webhook calls at it.)"
run helm upgrade --install bulwark charts/bulwark --namespace bulwark-system --create-namespace \
  --set "webhook.url=https://127.0.0.1:$webhook_port/mutate" \
  --set "validation.url=https://127.0.0.1:$webhook_port/validate"
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null
run kubectl get deployment,service,poddisruptionbudget,mutatingwebhookconfiguration -n bulwark-system

say "The operator, authenticated as the chart's ServiceAccount (so it has exactly the chart's RBAC)"
token=$(kubectl create token bulwark-operator -n bulwark-system --duration 2h)
server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
ca_data=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
cat >"$work/operator.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "$server", certificate-authority-data: "$ca_data"}}]
users: [{name: bulwark-operator, user: {token: "$token"}}]
contexts: [{name: demo, context: {cluster: demo, user: bulwark-operator}}]
current-context: demo
KUBECONFIG
./target/debug/bulwark-operator --kubeconfig "$work/operator.kubeconfig" --namespace bulwark-system \
  --pod-name demo-operator --admin-listen "127.0.0.1:$admin_port" \
  --webhook-listen "127.0.0.1:$webhook_port" --distribution-listen "127.0.0.1:$stream_port" \
  --tls-extra-sans 127.0.0.1 --api-check-interval-seconds 1 >"$cp_dir/logs/demo-operator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
run curl -s "127.0.0.1:$admin_port/readyz"
for _ in $(seq 50); do
  [ -n "$(kubectl get mutatingwebhookconfiguration bulwark-sidecar-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ] && break
  sleep 0.2
done
echo "The operator made its own CA (Secret bulwark-operator-tls) and set the webhook's caBundle:"
kubectl get mutatingwebhookconfiguration bulwark-sidecar-injector \
  -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | head -c 60; echo "..."
run kubectl get lease -n bulwark-system bulwark-operator -o jsonpath='{.spec.holderIdentity}{"\n"}'

say "Labelling namespace 'shop' for injection and creating a pod in it"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f - >/dev/null
run kubectl label namespace shop bulwark.dev/inject=enabled --overwrite
for _ in $(seq 50); do kubectl get serviceaccount default -n shop >/dev/null 2>&1 && break; sleep 0.2; done
kubectl delete pod -n shop storefront-api-0 --ignore-not-found --wait=false >/dev/null
for _ in $(seq 50); do kubectl get pod -n shop storefront-api-0 >/dev/null 2>&1 || break; sleep 0.2; done
cat >"$work/pod.yaml" <<'POD'
apiVersion: v1
kind: Pod
metadata:
  name: storefront-api-0
  namespace: shop
  labels: {app: storefront-api}
spec:
  containers:
    - name: app
      image: registry.example/storefront-api:1.4
      ports: [{name: http, containerPort: 8080}]
POD
run kubectl apply -f "$work/pod.yaml"
echo "The apiserver called the webhook; the stored pod has the sidecar (a native sidecar container):"
run kubectl get pod -n shop storefront-api-0 -o jsonpath='{range .spec.initContainers[*]}{.name}  restartPolicy={.restartPolicy}  ports={.ports[*].name}{"\n"}{end}'
run kubectl get pod -n shop storefront-api-0 --show-labels

say "Running that pod's sidecar here, as the kubelet would: its token is bound to the pod"
kubectl create token default -n shop --audience bulwark --bound-object-kind Pod \
  --bound-object-name storefront-api-0 --duration 1h >"$work/token"
kubectl get pod -n shop storefront-api-0 \
  -o jsonpath='{.spec.initContainers[?(@.name=="bulwark-sidecar")].env[?(@.name=="BULWARK_OPERATOR_CA")].value}' >"$work/ca.pem"
app_port=$(free_port); in_port=$(free_port); out_port=$(free_port); sc_admin=$(free_port); sc_flagd=$(free_port)
# The app: answers every GET with the path and the flag header it received (it has no SDK).
cat >"$work/app.py" <<'APP'
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class App(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "X-Flag-New-Checkout": self.headers.get("X-Flag-New-Checkout")}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
APP
python3 "$work/app.py" "$app_port" >"$work/app.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs "127.0.0.1:$app_port/api/items" >/dev/null 2>&1 && break; sleep 0.2; done
./target/debug/bulwark-sidecar --operator-url "https://127.0.0.1:$stream_port" \
  --operator-ca-file "$work/ca.pem" --token-file "$work/token" --app "127.0.0.1:$app_port" \
  --inbound-listen "127.0.0.1:$in_port" --outbound-listen "127.0.0.1:$out_port" --admin-listen "127.0.0.1:$sc_admin" --flagd-listen "127.0.0.1:$sc_flagd" --state-dir "$work/state" \
  >"$cp_dir/logs/demo-sidecar.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "127.0.0.1:$sc_admin/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
run curl -s "127.0.0.1:$sc_admin/readyz"
curl -s "127.0.0.1:$sc_admin/metrics" | grep '^bulwark_operator_stream_connected' | sed 's/^/    /'

say "Applying a rate limit (20/s per client IP, burst 40) and a quota (100 requests per client per day)"
run kubectl apply -n shop -f examples/ratelimitpolicy-per-client-ip.yaml -f examples/quotapolicy-daily-requests-per-client.yaml
for _ in $(seq 50); do
  [ "$(kubectl get rlp -n shop api-per-client-ip -o jsonpath='{.status.programmedPods}')" = 1 ] && break
  sleep 0.2
done
run kubectl get ratelimitpolicies,quotapolicies -n shop

say "Traffic through the sidecar: 100 requests to /api/items, 10 at a time"
seq 100 | xargs -P 10 -I{} curl -s -o /dev/null -w '%{http_code}\n' "127.0.0.1:$in_port/api/items" | sort | uniq -c | sed 's/^/    /'
echo "\$ curl -i 127.0.0.1:$in_port/api/items   # while limited (after another burst)"
seq 40 | xargs -P 10 -I{} curl -s -o /dev/null "127.0.0.1:$in_port/api/items"
curl -si "127.0.0.1:$in_port/api/items" | sed 's/^/    /'
echo

say "The quota fills up: usage of client 127.0.0.1, then slower requests until it is used up"
quota_url="127.0.0.1:$sc_admin/quota?policy=shop/api-daily-free-tier&quota=daily-requests&key=127.0.0.1"
run curl -s "$quota_url"
echo
sleep 2   # the token bucket refills; the quota does not
for i in $(seq 80); do
  headers=$(curl -s -o /dev/null -D - "127.0.0.1:$in_port/api/items")
  code=$(head -1 <<<"$headers" | awk '{print $2}')
  warning=$(grep -i '^bulwark-quota-warning' <<<"$headers" | tr -d '\r' || true)
  if [ "$code" != 200 ]; then
    echo "    request $i: $code"
    curl -si "127.0.0.1:$in_port/api/items" | tr -d '\r' | grep -iE '^(HTTP|retry-after|bulwark-quota|\{)' | sed 's/^/      /'
    break
  fi
  [ -n "$warning" ] && [ $((i % 5)) = 0 ] && echo "    request $i: 200  $warning"
  sleep 0.06
done
run curl -s "$quota_url"
echo

say "Status and events, as kubectl shows them"
run kubectl describe ratelimitpolicy -n shop api-per-client-ip
run kubectl get events.events.k8s.io -n shop

say "A percentage rollout: 20% of users get the new checkout; its routes are gated; the app sees the variant"
echo "(The limits are removed first, so the rollout's traffic is not counted against them. The"
echo " example selects app=shop; here it is pointed at this pod's label.)"
run kubectl delete -n shop ratelimitpolicy,quotapolicy --all
sed 's/app: shop$/app: storefront-api/' examples/featureflag-percentage-rollout.yaml | kubectl apply -n shop -f -
for _ in $(seq 50); do
  [ "$(kubectl get ff -n shop checkout-rollout -o jsonpath='{.status.programmedPods}')" = 1 ] && break
  sleep 0.2
done
run kubectl get featureflags -n shop
echo "Five users, each asking twice for the new checkout's route (X-User-Id is the targeting key):"
for u in alice bob mallory rupert trent; do
  a=$(curl -s -o /dev/null -w '%{http_code}' -H "X-User-Id: $u" "127.0.0.1:$in_port/checkout/v2/cart")
  b=$(curl -s -o /dev/null -w '%{http_code}' -H "X-User-Id: $u" "127.0.0.1:$in_port/checkout/v2/cart")
  echo "    $u: $a $b"
done
echo "Any route: the app is told each user's variant, whatever header the client sent:"
for u in alice bob; do
  printf '$ curl -H "X-User-Id: %s" -H "X-Flag-New-Checkout: on" 127.0.0.1:%s/catalog\n' "$u" "$in_port"
  curl -s -H "X-User-Id: $u" -H "X-Flag-New-Checkout: on" "127.0.0.1:$in_port/catalog" | sed 's/^/    /'
done
on=0
for i in $(seq 500); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-User-Id: user-$i" "127.0.0.1:$in_port/checkout/v2/cart")" = 200 ] && on=$((on + 1))
done
echo "500 users: $on let through ($((on * 100 / 500))%; the flag's weights say 20%)"
echo "An app with an SDK asks the same flag over OFREP (or flagd's gRPC API on 127.0.0.1:$sc_flagd):"
run curl -s -X POST -H 'Content-Type: application/json' -d '{"context":{"targetingKey":"mallory"}}' \
  "127.0.0.1:$sc_admin/ofrep/v1/evaluate/flags/new-checkout"
echo
run curl -s -H 'Content-Type: application/json' -d '{"flagKey":"new-checkout","context":{"targetingKey":"mallory"}}' \
  "127.0.0.1:$sc_flagd/flagd.evaluation.v2.Service/ResolveBoolean"
echo

say "Failover: the app's calls to 'payments' through the sidecar's outbound listener, primary and standby"
echo "(Two Services: 'payments' with two backends, 'payments-dr' with one; their EndpointSlices point at"
echo " real processes here. The example policy, pointed at this pod and the standby Service here, with"
echo " a 1s health-check interval and a 10s failback so the demo is short.)"
declare -A backend_pid backend_port
for b in payments-a payments-b payments-dr; do
  backend_port[$b]=$(free_port)
  python3 e2e/src/fault_upstream.py "${backend_port[$b]}" "$b" >"$work/$b.log" 2>&1 &
  backend_pid[$b]=$!
  pids+=($!)
done
for b in payments-a payments-b payments-dr; do
  for _ in $(seq 50); do curl -fs "127.0.0.1:${backend_port[$b]}/__count" >/dev/null 2>&1 && break; sleep 0.1; done
done
slice() { # slice NAME SERVICE BACKEND: one ready endpoint (loopback is only accepted as an FQDN address)
  printf 'apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: %s, namespace: shop, labels: {kubernetes.io/service-name: %s}}\naddressType: FQDN\nports: [{name: http, port: %s, protocol: TCP}]\nendpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]\n' \
    "$1" "$2" "${backend_port[$3]}"
}
{
  for s in payments payments-dr; do
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: shop}\nspec: {ports: [{name: http, port: 8080}]}\n' "$s"
  done
  printf -- '---\n'; slice payments-a payments payments-a
  printf -- '---\n'; slice payments-b payments payments-b
  printf -- '---\n'; slice payments-dr payments-dr payments-dr
} | kubectl apply -f - >/dev/null
sed -e 's/app: checkout$/app: storefront-api/' -e '/namespace: payments-dr/d' \
  -e 's/failbackAfter: 1m/failbackAfter: 10s/' \
  -e 's/interval: 5s/interval: 1s/' -e 's/timeout: 1s/timeout: 500ms/' \
  examples/failoverpolicy-active-passive.yaml |
  awk '/- name: secondary/ {sec=1} sec && /name: payments$/ {sub(/name: payments$/, "name: payments-dr"); sec=0} {print}' |
  kubectl apply -n shop -f -
for _ in $(seq 100); do
  [ "$(kubectl get fop -n shop payments-failover -o jsonpath='{.status.programmedPods}')" = 1 ] && break
  sleep 0.2
done
run kubectl get fop -n shop
call() { curl -s -o /dev/null -w '%{http_code}' --max-time 12 -H 'Host: payments:8080' "127.0.0.1:$out_port/v1/pay"; }
load() { # load SECONDS: the app's calls, 4 at a time; one status per line in $work/load.txt
  : >"$work/load.txt"
  local end=$((SECONDS + $1))
  for w in 1 2 3 4; do
    (while [ $SECONDS -lt $end ]; do printf '%s\n' "$(call)" >>"$work/load.txt"; done) &
  done
  wait
}
served() {
  for b in payments-a payments-b payments-dr; do
    printf '%s=%s ' "$b" "$(curl -s "127.0.0.1:${backend_port[$b]}/__count" || echo down)"
  done
  echo
}
echo "Calls served so far: $(served)"
echo "Now 6 seconds of calls, 4 at a time; after 2 seconds both primary backends are killed (kill -9):"
load 6 &
loader=$!
sleep 2
kill -9 "${backend_pid[payments-a]}" "${backend_pid[payments-b]}"
wait "$loader"
echo "    client-visible answers (count, status): $(sort "$work/load.txt" | grep . | uniq -c | tr -s ' \n' ' ')"
echo "    served: $(served)(the standby took over; retries moved the calls that hit a dead backend)"
echo "The sidecar's view (GET /failover on its admin listener):"
curl -s "127.0.0.1:$sc_admin/failover" | python3 -c '
import json, sys
for u in json.load(sys.stdin)["upstreams"]:
    print("    upstream %s: active group %s, circuit breaker %s" % (u["name"], u["activeGroup"], u["circuitBreaker"]))
    for g in u["groups"]:
        for e in g["endpoints"]:
            print("      %-9s %-21s %s%s" % (g["name"], e["address"], e["health"], ", ejected" if e["ejectedForSeconds"] else ""))
'
echo "The primary comes back; traffic returns only after it has been healthy for failbackAfter (10s):"
for b in payments-a payments-b; do
  python3 e2e/src/fault_upstream.py "${backend_port[$b]}" "$b" >"$work/$b.log" 2>&1 &
  pids+=($!)
done
for b in payments-a payments-b; do
  for _ in $(seq 50); do curl -fs "127.0.0.1:${backend_port[$b]}/__count" >/dev/null 2>&1 && break; sleep 0.1; done
done
start=$SECONDS
# Each answer's body names the backend that served it (the health probes are counted by the
# backends too, so their counts cannot tell).
failed=0
while [ $((SECONDS - start)) -lt 40 ]; do
  who=$(curl -s --max-time 12 -H 'Host: payments:8080' "127.0.0.1:$out_port/v1/pay" || true)
  case $who in payments-a | payments-b) break ;; payments-dr) ;; *) failed=$((failed + 1)) ;; esac
  sleep 0.2
done
echo "    served by $who again after $((SECONDS - start))s (calls failed meanwhile: $failed)"
curl -s "127.0.0.1:$sc_admin/metrics" | grep -E '^bulwark_failover_(active_group|retries_total|tries_total\{.*result="connect_failure"[^}]*\} [1-9])' | sed 's/^/    /'

say "Webhooks: the app's events delivered to a subscriber, signed, retried, dead-lettered and replayed"
echo "(A receiver that verifies every signature with the official Standard Webhooks library from PyPI;"
echo " the endpoint points at it on loopback, so the SSRF guard is told to allow that.)"
sdk_python=$(bash e2e/peers/install-sdks.sh | head -1)/bin/python
hook_port=$(free_port)
hook_secret=whsec_$(head -c 32 /dev/urandom | base64)
"$sdk_python" e2e/src/webhook_receiver.py "$hook_port" "$work/hooks.jsonl" "$hook_secret" >"$work/receiver.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs "127.0.0.1:$hook_port/_control" >/dev/null 2>&1 && break; sleep 0.1; done
kubectl create secret generic -n shop billing-hooks --from-literal=signing-secret="$hook_secret" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
cat >"$work/whe.yaml" <<WHE
apiVersion: bulwark.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: billing-events, namespace: shop}
spec:
  selector: {matchLabels: {app: storefront-api}}
  url: http://127.0.0.1:$hook_port/hooks
  signing: {secretRef: {name: billing-hooks, key: signing-secret}}
  eventTypes: ["invoice.*"]
  retry: {schedule: [0s, 2s, 4s, 8s], jitterPercent: 0}
  network: {allowInsecureHTTP: true, allowPrivateAddresses: true}
WHE
run kubectl apply -f "$work/whe.yaml"
for _ in $(seq 100); do
  [ "$(kubectl get whe -n shop billing-events -o jsonpath='{.status.programmedPods}')" = 1 ] && break
  sleep 0.2
done
submit() { curl -s "127.0.0.1:$sc_admin/webhooks/v1/messages" -d "$1" | tr -d '\n '; }
received() { # received [TEXT]: one line per delivery the receiver saw (whose body holds TEXT)
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if sys.argv[2] in r["body"]:
        print("    %s  %s  verified=%s  %s" % (r["id"], r["status"], r["verified"], r["body"]))
' "$work/hooks.jsonl" "${1:-}"
}
echo "The receiver is failing (503) for a while. The app submits three events to its sidecar:"
curl -s -X POST "127.0.0.1:$hook_port/_control" -d '{"mode": "fail", "status": 503}' >/dev/null
printf '$ curl 127.0.0.1:%s/webhooks/v1/messages -d %s\n' "$sc_admin" "'{\"eventType\": \"invoice.paid\", \"payload\": {\"invoice\": \"in_1\"}}'"
for n in 1 2 3; do
  echo "    $(submit "{\"eventType\": \"invoice.paid\", \"payload\": {\"invoice\": \"in_$n\", \"amount\": ${n}00}}")"
done
sleep 3
echo "3 seconds later (202 came back only once each message was on disk; attempts go on):"
curl -s "127.0.0.1:$sc_admin/webhooks/v1/endpoints" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["endpoints"]:
    print("    %s: pending %s, delivered %s, failed attempts %s, last failure %s" % (e["endpoint"], e["pending"], e["delivered"], e["failedAttempts"], (e.get("lastFailure") or {}).get("reason")))
'
echo "The receiver recovers; the next attempts on the schedule (2s, 4s, 8s) deliver:"
curl -s -X POST "127.0.0.1:$hook_port/_control" -d '{"mode": "ok"}' >/dev/null
for _ in $(seq 100); do
  [ "$(grep -c '"status": 204' "$work/hooks.jsonl" 2>/dev/null)" -ge 3 ] && break
  sleep 0.2
done
received
echo "Now the receiver rejects the next two deliveries with 422 (final: no retry) — they become dead letters:"
curl -s -X POST "127.0.0.1:$hook_port/_control" -d '{"mode": "fail", "status": 422, "times": 2}' >/dev/null
for n in 4 5; do
  echo "    $(submit "{\"eventType\": \"invoice.voided\", \"payload\": {\"invoice\": \"in_$n\"}}")"
done
for _ in $(seq 50); do
  [ "$(curl -s "127.0.0.1:$sc_admin/webhooks/v1/endpoints/shop/billing-events/dead-letters" | grep -c '"id"')" -ge 2 ] && break
  sleep 0.2
done
run curl -s "127.0.0.1:$sc_admin/webhooks/v1/endpoints/shop/billing-events/dead-letters"
echo
echo "The receiver is fixed; replay every dead letter since an hour ago:"
run curl -s "127.0.0.1:$sc_admin/webhooks/v1/endpoints/shop/billing-events/dead-letters/replay" \
  -d "{\"since\": \"$(date -u -d '1 hour ago' +%Y-%m-%dT%H:%M:%SZ)\"}"
echo
for _ in $(seq 50); do
  [ "$(grep -c '"status": 204' "$work/hooks.jsonl")" -ge 5 ] && break
  sleep 0.2
done
received in_4
received in_5
sleep 1
run kubectl get whe -n shop

say "gRPC: a per-method rate limit on a gRPC service, answered RESOURCE_EXHAUSTED"
echo "(A second pod, orders-grpc-0 (app: orders-grpc), injected like the first; its sidecar runs"
echo " here in front of a real gRPC server (PyPI grpcio) serving shop.v1.Orders, and the client is"
echo " grpcio too, speaking HTTP/2 with prior knowledge to the sidecar's inbound port.)"
cat >"$work/grpc-pod.yaml" <<'POD'
apiVersion: v1
kind: Pod
metadata:
  name: orders-grpc-0
  namespace: shop
  labels: {app: orders-grpc}
spec:
  containers:
    - name: app
      image: registry.example/orders-grpc:2.0
      ports: [{name: grpc, containerPort: 50051}]
POD
kubectl delete pod -n shop orders-grpc-0 --ignore-not-found --wait=false >/dev/null
for _ in $(seq 50); do kubectl get pod -n shop orders-grpc-0 >/dev/null 2>&1 || break; sleep 0.2; done
run kubectl apply -f "$work/grpc-pod.yaml"
kubectl create token default -n shop --audience bulwark --bound-object-kind Pod \
  --bound-object-name orders-grpc-0 --duration 1h >"$work/grpc-token"
grpc_app=$(free_port); grpc_in=$(free_port); grpc_admin=$(free_port); grpc_out=$(free_port); grpc_flagd=$(free_port)
"$sdk_python" e2e/src/grpc_echo.py serve "$grpc_app" >"$work/grpc-app.log" 2>&1 &
pids+=($!)
./target/debug/bulwark-sidecar --operator-url "https://127.0.0.1:$stream_port" \
  --operator-ca-file "$work/ca.pem" --token-file "$work/grpc-token" --app "127.0.0.1:$grpc_app" \
  --inbound-listen "127.0.0.1:$grpc_in" --outbound-listen "127.0.0.1:$grpc_out" \
  --admin-listen "127.0.0.1:$grpc_admin" --flagd-listen "127.0.0.1:$grpc_flagd" --state-dir "$work/grpc-state" \
  >"$cp_dir/logs/demo-sidecar-grpc.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "127.0.0.1:$grpc_admin/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
run kubectl apply -n shop -f examples/ratelimitpolicy-grpc-per-method.yaml
for _ in $(seq 50); do
  [ "$(kubectl get rlp -n shop orders-grpc-per-method -o jsonpath='{.status.programmedPods}')" = 1 ] && break
  sleep 0.2
done
run kubectl get rlp -n shop orders-grpc-per-method
echo "Eight CreateOrder calls at once from one client (x-client-id: demo; the limit is 5 a second):"
"$sdk_python" e2e/src/grpc_echo.py call "127.0.0.1:$grpc_in" shop.v1.Orders/CreateOrder \
  '{"request": "order", "metadata": {"x-client-id": "demo"}, "repeat": 8}' | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("    codes: " + " ".join(r["codes"]))
print("    the last one, as the grpcio client surfaces it: %s: %s" % (r["code"], r["details"]))
print("    its trailing metadata: " + ", ".join("%s=%s" % kv for kv in sorted(r["trailing"].items()) if kv[0] != "date"))
'
echo "Counted by protocol and gRPC status (8 is RESOURCE_EXHAUSTED; the HTTP status of every gRPC answer is 200):"
curl -s "127.0.0.1:$grpc_admin/metrics" | grep '^bulwark_inbound_requests_total{' | sed 's/^/    /'

say "Applying every example into namespace 'examples' (no injected pods there)"
kubectl create namespace examples --dry-run=client -o yaml | kubectl apply -f - >/dev/null
run kubectl apply -n examples -f examples/
say "Everything Bulwark, in one list (the 'bulwark' category)"
run kubectl get bulwark -n examples

say "Every field is documented where users look: kubectl explain"
run kubectl explain ratelimitpolicy.spec.rules.rates

say "Bad input is rejected by the apiserver itself, naming the field"
for bad in e2e/fixtures/invalid/ratelimitpolicy/02-window-too-long.yaml \
           e2e/fixtures/invalid/webhookendpoint/03-url-plain-http.yaml \
           e2e/fixtures/invalid/featureflag/06-gate-unknown-flag.yaml; do
  [ -f "$bad" ] || continue
  grep '^# Rejected because:' "$bad" || true
  printf '$ kubectl apply -n examples -f %s\n' "$bad"
  kubectl apply -n examples -f "$bad" 2>&1 | sed 's/^/    /' || true
done
say "What the schema cannot see (a flag's variants and targeting), the operator's validating webhook refuses"
for bad in e2e/fixtures/webhook/featureflag/01-default-variant-not-a-variant.yaml \
           e2e/fixtures/webhook/featureflag/05-unknown-operator.yaml; do
  grep '^# Refused because:' "$bad" || true
  printf '$ kubectl apply -n examples -f %s\n' "$bad"
  kubectl apply -n examples -f "$bad" 2>&1 | sed 's/^/    /' || true
done

say "Done. The control plane keeps running:"
echo "    export KUBECONFIG=$kubeconfig"
echo "    $bin/kubectl get bulwark -A"
echo "    make down     # stop it and remove its data"
echo "(The demo's operator has stopped: with webhook.failurePolicy=Fail, new pods in namespace"
echo " 'shop' are refused until an operator answers again. Pods elsewhere are not affected.)"
