#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane on loopback: etcd, kube-apiserver (TLS, RBAC,
# ServiceAccount tokens) and kube-controller-manager (namespace deletion, garbage collection, the
# default ServiceAccount of each namespace). No nodes, no kubelet: pods are stored, never run.
# Run `up.sh --help` for the interface.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

usage() {
  cat <<EOF
Usage: e2e/controlplane/up.sh [options]

Starts etcd, kube-apiserver and kube-controller-manager ($K8S_VERSION) on 127.0.0.1, waits until
/readyz is ok and the namespace "default" has its ServiceAccount "default", then prints ONE line on
stdout: the path of the admin kubeconfig. Progress and errors go to stderr.

Options:
  --dir DIR                      data directory (default: \$REPO/.bulwark/controlplane)
  --apiserver-port N             kube-apiserver https port (default: 16443)
  --etcd-port N                  etcd client port (default: 12379)
  --etcd-peer-port N             etcd peer port (default: 12380)
  --controller-manager-port N    kube-controller-manager https port (default: 17257)
  --watch-pid PID                start a detached watchdog that runs down.sh for DIR once PID exits
                                 (so a test harness leaves nothing running behind it)
  --bin DIR                      directory with etcd, kube-apiserver, kube-controller-manager and
                                 kubectl (default: the output of build.sh, which builds on first use)
  --timeout SECONDS              how long to wait for readiness (default: 90)
  -h, --help                     this text

Files in DIR:
  kubeconfig          admin (CN=bulwark-admin, O=system:masters), certificates embedded
  env                 KEY=VALUE lines: KUBECONFIG, BULWARK_CP_BIN, BULWARK_APISERVER,
                      BULWARK_CP_DIR, BULWARK_K8S_VERSION (values never contain spaces)
  pki/                CA, serving and client certificates, service-account key pair
  logs/<name>.log     etcd, kube-apiserver, kube-controller-manager, watchdog
  pids/<name>.pid     the same processes

Behaviour:
  - DIR already holds a running, ready plane on the same apiserver port: up.sh says so, prints the
    kubeconfig path and exits 0 (idempotent; --watch-pid is then ignored, the plane keeps the
    lifetime it was started with).
  - DIR holds a partly running or unready plane, or one on another port, or another up.sh is
    starting one there, or a port is taken, or DIR is a non-empty directory up.sh did not make:
    up.sh refuses with a message and exits 1. (down.sh --dir DIR clears a plane.)
  - Leftovers of a plane that no longer runs (crash, reboot) are removed; a fresh plane starts.
  - Startup fails (timeout, a component exits): up.sh prints the tail of each log, stops what it
    started, keeps DIR/logs for inspection and exits 1.
  - --watch-pid also covers up.sh itself being killed during startup: once PID is gone and up.sh
    has ended, the watchdog stops everything and removes DIR.
  - No nodes or kubelet: pods are stored, never run; Service "kubernetes" has no endpoints.
Stop with: e2e/controlplane/down.sh --dir DIR
EOF
}

t0=$EPOCHREALTIME
elapsed() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[controlplane/up] $*" >&2; }
die() { log "error: $*"; exit 1; }

dir=$repo/.bulwark/controlplane
apiserver_port=16443
etcd_port=12379
etcd_peer_port=12380
kcm_port=17257
watch_pid=""
bin=""
timeout=90

# Accepts both `--flag value` and `--flag=value`.
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --*=*) flag=${1%%=*}; value=${1#*=}; shift; set -- "$flag" "$value" "$@"; continue ;;
    --dir|--apiserver-port|--etcd-port|--etcd-peer-port|--controller-manager-port|--watch-pid|--bin|--timeout)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      case $1 in
        --dir) dir=$2 ;;
        --apiserver-port) apiserver_port=$2 ;;
        --etcd-port) etcd_port=$2 ;;
        --etcd-peer-port) etcd_peer_port=$2 ;;
        --controller-manager-port) kcm_port=$2 ;;
        --watch-pid) watch_pid=$2 ;;
        --bin) bin=$2 ;;
        --timeout) timeout=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_port() { is_uint "$1" && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
for p in "$apiserver_port" "$etcd_port" "$etcd_peer_port" "$kcm_port"; do
  is_port "$p" || die "not a port number: $p"
done
[ "$(printf '%s\n' "$apiserver_port" "$etcd_port" "$etcd_peer_port" "$kcm_port" | sort -u | wc -l)" -eq 4 ] \
  || die "the four ports must differ"
[[ $timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds"
if [ -n "$watch_pid" ]; then
  is_uint "$watch_pid" || die "--watch-pid must be a process id: $watch_pid"
  # A dead PID would make the watchdog tear the plane down at once: refuse instead.
  kill -0 "$watch_pid" 2>/dev/null || [ -d "/proc/$watch_pid" ] || die "--watch-pid $watch_pid: no such process"
fi
# The env file is KEY=VALUE without quoting, so paths must not contain whitespace.
if [[ $dir =~ [[:space:]] ]]; then die "--dir must not contain whitespace: $dir"; fi
[ "$dir" != / ] || die "--dir / is not a data directory"

# The binaries. build.sh is a no-op once they are cached; the lock keeps parallel up.sh runs
# from building the same thing twice on a cold cache.
if [ -z "$bin" ]; then
  cache_root=${BULWARK_CACHE:-$HOME/.cache/bulwark}
  mkdir -p "$cache_root"
  bin=$(flock "$cache_root/build.lock" "$here/build.sh") || die "build.sh failed"
fi
[ -d "$bin" ] || die "--bin: no such directory: $bin"
bin=$(cd "$bin" && pwd)
if [[ $bin =~ [[:space:]] ]]; then die "the bin directory must not contain whitespace: $bin"; fi
for b in etcd kube-apiserver kube-controller-manager kubectl; do
  [ -x "$bin/$b" ] || die "missing $bin/$b"
done
# Always this kubectl, by path: the one on PATH (if any) is unrelated and older.
kubectl=$bin/kubectl

components=(etcd kube-apiserver kube-controller-manager)
marker=.bulwark-controlplane   # marks DIR as ours: down.sh only deletes a directory carrying it

[ -d "$dir" ] && dir_existed=true || dir_existed=false
mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)   # canonical: processes are matched by this path

# True if PID is alive and was started for this DIR (guards against reused PIDs).
owned() {
  local pid=$1 arg
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  while IFS= read -r -d '' arg; do
    case $arg in "$dir"|"$dir"/*|*="$dir"/*) return 0 ;; esac
  done <"/proc/$pid/cmdline"
  return 1
}
pid_of() { cat "$dir/pids/$1.pid" 2>/dev/null || true; }
# Liveness: the process exists and is not a zombie. Not `owned`: a process in the middle of
# execve (setsid -> the component) can briefly show an empty cmdline, which `owned` would read as
# "someone else's", killing a healthy start under load.
alive() {
  local pid=$1 state
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}
kc() { "$kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout=5s "$@"; }

if [ ! -e "$dir/$marker" ] && [ -n "$(ls -A "$dir")" ]; then
  die "$dir is not empty and was not made by up.sh; refusing to use it"
fi
# Held (fd 9) until up.sh exits, however it exits: keeps a second up.sh out of DIR, and makes the
# watchdog wait until startup is over before it tears down. Children must not inherit it (9>&-).
exec 9>"$dir/up.lock"
flock -n 9 || die "another up.sh is using $dir right now"

# What is already in DIR?
if [ -e "$dir/$marker" ]; then
  live=()
  for c in "${components[@]}"; do owned "$(pid_of "$c")" && live+=("$c"); done
  if [ ${#live[@]} -gt 0 ]; then
    running=$(sed -n 's/^BULWARK_APISERVER=//p' "$dir/env" 2>/dev/null || true)
    [ "$running" = "https://127.0.0.1:$apiserver_port" ] \
      || die "$dir holds a control plane on ${running:-an unknown port}, not port $apiserver_port; run: $here/down.sh --dir $dir"
    [ ${#live[@]} -eq ${#components[@]} ] \
      || die "$dir holds a partly running control plane (only: ${live[*]}); run: $here/down.sh --dir $dir"
    [ "$(kc get --raw /readyz 2>/dev/null)" = ok ] \
      || die "$dir holds a running control plane that is not ready; run: $here/down.sh --dir $dir"
    log "a control plane is already running in $dir ($running)"
    [ -z "$watch_pid" ] || log "note: --watch-pid ignored; the running plane keeps its lifetime"
    echo "$dir/kubeconfig"
    exit 0
  fi
  log "removing leftovers of a stopped control plane in $dir"
  # down.sh also stops a watchdog that may outlive a crashed plane (it would tear down ours later).
  "$here/down.sh" --dir "$dir" --keep-dir >&2
  find "$dir" -mindepth 1 ! -name up.lock -delete
fi
touch "$dir/$marker"

# Fail early and clearly on a busy port, instead of a bind error buried in a log.
for p in "$apiserver_port" "$etcd_port" "$etcd_peer_port" "$kcm_port"; do
  if [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
    $dir_existed || rm -rf "$dir"
    die "port $p on this machine is already in use"
  fi
done

mkdir -p "$dir/pki" "$dir/logs" "$dir/pids" "$dir/etcd"
chmod 700 "$dir/pki" "$dir/etcd"

# --- Certificates --------------------------------------------------------------------------------
# RSA 2048 everywhere: every client accepts it (rustls/ring, Go, openssl). Own openssl config so
# Debian's defaults don't add or duplicate extensions.
pki=$dir/pki
cat >"$pki/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:10.96.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
ossl() { openssl "$@" 2>>"$dir/logs/openssl.log" || die "openssl $1 failed (see $dir/logs/openssl.log)"; }
(
  umask 077
  key() { ossl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/$1.key"; }
  key ca
  ossl req -x509 -new -key "$pki/ca.key" -sha256 -days 3650 -config "$pki/openssl.cnf" \
    -extensions ca -subj "/CN=bulwark-controlplane-ca" -out "$pki/ca.crt"
  # name, subject, extension section
  while read -r name subject ext; do
    key "$name"
    ossl req -new -key "$pki/$name.key" -config "$pki/openssl.cnf" -subj "$subject" -out "$pki/$name.csr"
    ossl x509 -req -sha256 -days 3650 -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -extfile "$pki/openssl.cnf" -extensions "$ext" -out "$pki/$name.crt"
    rm -f "$pki/$name.csr"
  done <<'EOF'
apiserver /CN=kube-apiserver server
admin /O=system:masters/CN=bulwark-admin client
controller-manager /CN=system:kube-controller-manager client
EOF
  # Service-account tokens: the apiserver signs with the private key, verifies with the public.
  key sa
  ossl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
)
rm -f "$dir/logs/openssl.log"   # only useful when something failed

b64() { base64 -w0 <"$1"; }
# kubeconfig NAME CERT: certificates embedded, so the file works wherever it is copied.
kubeconfig() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bulwark
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(b64 "$pki/$2.crt")
    client-key-data: $(b64 "$pki/$2.key")
contexts:
- name: bulwark
  context:
    cluster: bulwark
    user: $1
current-context: bulwark
EOF
}
(umask 077; kubeconfig bulwark-admin admin >"$dir/kubeconfig")
(umask 077; kubeconfig kube-controller-manager controller-manager >"$pki/controller-manager.kubeconfig")
cat >"$dir/env" <<EOF
KUBECONFIG=$dir/kubeconfig
BULWARK_CP_BIN=$bin
BULWARK_APISERVER=https://127.0.0.1:$apiserver_port
BULWARK_CP_DIR=$dir
BULWARK_K8S_VERSION=$K8S_VERSION
EOF
log "certificates and kubeconfig ready ($(elapsed) s)"

# --- Processes -----------------------------------------------------------------------------------
started_ok=false
on_exit() {
  $started_ok && return
  log "failed after $(elapsed) s; last lines of the logs:"
  for f in "$dir"/logs/*.log; do
    [ -s "$f" ] || continue
    echo "----- $f" >&2
    tail -n 25 "$f" >&2
  done
  log "stopping what was started; logs stay in $dir/logs (down.sh --dir $dir removes them)"
  "$here/down.sh" --dir "$dir" --keep-dir >&2 || true
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# setsid: a new session, so the process survives this script and its terminal; stdin/out/err all
# redirected so a caller capturing our stdout does not wait for the plane to exit. Not being a
# process-group leader here, setsid execs in place: $! is the component's own PID.
start() {
  local name=$1; shift
  setsid "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pids/$name.pid"
}
# Fails (with the logs) as soon as a component has died, rather than waiting for the timeout.
deadline=$((SECONDS + timeout))
wait_for() {
  local what=$1; shift
  until "$@" >/dev/null 2>&1; do
    for c in "${components[@]}"; do
      [ -e "$dir/pids/$c.pid" ] || continue
      alive "$(pid_of "$c")" || die "$c exited while waiting for $what"
    done
    [ $SECONDS -lt $deadline ] || die "timed out after ${timeout} s waiting for $what"
    sleep 0.25
  done
}

# The watchdog comes first, so that even an up.sh killed mid-start (SIGKILL) leaves nothing behind:
# once PID has exited it waits for our lock (freed when up.sh ends), then becomes down.sh, which
# skips its own PID. tail --pid polls once a second.
if [ -n "$watch_pid" ]; then
  # shellcheck disable=SC2016
  setsid bash -c 'tail --pid="$1" -f /dev/null; exec 9>"$3/up.lock" && flock 9 && exec "$2" --dir "$3"' \
    bulwark-controlplane-watchdog "$watch_pid" "$here/down.sh" "$dir" \
    >>"$dir/logs/watchdog.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pids/watchdog.pid"
  log "watchdog: down.sh runs when PID $watch_pid exits"
fi

start etcd "$bin/etcd" \
  --name bulwark \
  --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "bulwark=http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster-state new
# listens NAME PORT: the port is bound by the process we started, not by someone else's that took
# it after the port check (then ours exits, and a health check would happily answer for theirs).
listens() { ss -Hltnp "sport = :$2" | grep -q "pid=$(pid_of "$1"),"; }
etcd_ready() {
  listens etcd "$etcd_port" && listens etcd "$etcd_peer_port" \
    && [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$etcd_port/health" | jq -r .health)" = true ]
}
wait_for "etcd /health" etcd_ready
log "etcd ready ($(elapsed) s)"

# --endpoint-reconciler-type none: Endpoints may not hold a loopback address, so the apiserver would
# fail (and log) every 10 s to publish 127.0.0.1 for Service "kubernetes". No pod runs here to use it.
start kube-apiserver "$bin/kube-apiserver" \
  --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 \
  --secure-port "$apiserver_port" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --tls-cert-file "$pki/apiserver.crt" \
  --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode RBAC \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.96.0.0/16 \
  --allow-privileged \
  --endpoint-reconciler-type none \
  --profiling=false

readyz_ok() { listens kube-apiserver "$apiserver_port" && [ "$(kc get --raw /readyz)" = ok ]; }
wait_for "kube-apiserver /readyz" readyz_ok
log "kube-apiserver ready ($(elapsed) s)"

# Only now, when RBAC's bootstrap roles exist: it reads them at start.
# --use-service-account-credentials: each controller acts as its own ServiceAccount
# (kube-system/namespace-controller, generic-garbage-collector, …) with the bootstrap role made for
# it. The certificate's user system:kube-controller-manager alone may create those accounts and
# little else: with =false the garbage collector, namespace deletion and the kube-root-ca.crt
# publisher all fail with "forbidden".
# --kube-api-qps/burst: creating one ServiceAccount and token per controller under the default
# client rate limit (20/s) made startup 4 s slower.
# No --authentication/authorization-kubeconfig: nothing scrapes its port, and without them it does
# not log, every few seconds, that the apiserver has no request-header CA (we run no aggregation).
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$pki/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 \
  --secure-port "$kcm_port" \
  --leader-elect=false \
  --use-service-account-credentials=true \
  --kube-api-qps 100 \
  --kube-api-burst 200 \
  --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" \
  --cluster-signing-key-file "$pki/ca.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --profiling=false
# The controller-manager's ServiceAccount controller creates it: proof that it runs.
default_sa() { listens kube-controller-manager "$kcm_port" && kc get serviceaccount default --namespace default; }
wait_for 'ServiceAccount "default" in namespace "default"' default_sa
log "kube-controller-manager working; control plane $K8S_VERSION ready in $(elapsed) s"

started_ok=true
echo "$dir/kubeconfig"
