#!/usr/bin/env bash
# Failover under real faults: the sidecar, haproxy and nginx configured to the same policy
# (a primary group of two backends, a backup group of one; health checks every second where
# the proxy has them; passive detection; retries to another server; a 500 ms per-try timeout),
# each driven by the same closed-loop load (wrk, 1 thread, BENCH_CONNECTIONS connections) while
# the primary dies, one fault per row:
#   kill  both primary backends SIGKILLed (hard death: connections refused);
#   slow  both primary backends start answering in 2 s (slow death; /healthz too).
# The backends are e2e/src/fault_upstream.py processes (their body names them). Reported per
# row: requests, client-visible errors (non-2xx answers and socket errors, as wrk counts them),
# the time from the fault to the backup's first served request (polled every 20 ms), p99 and
# the maximum latency. Writes bench/results/failover.md.
#
# Usage: bash bench/failover.sh       (make bench runs it)
# Environment: BENCH_FAULT_DURATION (seconds of load per row, default 12; the fault comes at 3 s),
#              BENCH_CONNECTIONS (default 8), BENCH_FAULTS (subset of "kill slow"),
#              BENCH_FAULT_TARGETS (subset of "bulwark haproxy nginx"),
#              BENCH_SKIP_BUILD=1 to use the release binary as is, BENCH_KEEP_TMP=1.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=bench-failover
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

DURATION=${BENCH_FAULT_DURATION:-12}
CONNECTIONS=${BENCH_CONNECTIONS:-8}
FAULT_AT=3
FAULTS=${BENCH_FAULTS:-kill slow}
TARGETS=${BENCH_FAULT_TARGETS:-bulwark haproxy nginx}
OUT="$BENCH_DIR/results/failover.md"
[[ $DURATION =~ ^[0-9]+$ ]] && [ "$DURATION" -gt $((FAULT_AT + 2)) ] && [ "$DURATION" -le 120 ] ||
  die "BENCH_FAULT_DURATION must be 6..120 seconds"

require_commands nginx haproxy wrk curl python3
SIDECAR="${CARGO_TARGET_DIR:-$ROOT/target}/release/bulwark-sidecar"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building the sidecar (release)"
  (cd "$ROOT" && cargo build -q --release -p bulwark-sidecar)
fi
init_tmp bulwark-bench-failover
BACKEND="$ROOT/e2e/src/fault_upstream.py"

# Starts backends p1, p2 (primary) and s1 (backup) in $1; sets P1 P2 S1 (ports), P1_PID, P2_PID.
start_backends() {
  local dir=$1 name port
  read -r P1 P2 S1 <<<"$(free_ports 3)"
  for name in p1 p2 s1; do
    case $name in p1) port=$P1 ;; p2) port=$P2 ;; s1) port=$S1 ;; esac
    LOG_FILE="$dir/$name.log"
    start_bg python3 "$BACKEND" "$port" "$name"
    case $name in p1) P1_PID=$STARTED_PID ;; p2) P2_PID=$STARTED_PID ;; esac
    wait_ready "$STARTED_PID" "http://127.0.0.1:$port/__count" || die "backend $name did not start"
  done
}

count_of() { curl -s --max-time 1 "http://127.0.0.1:$1/__count" || echo -1; }

# Starts target $1 in $2 in front of the backends; sets URL, HOST and TARGET_PID.
start_proxy() {
  local target=$1 dir=$2 port admin outbound
  HOST=""
  case $target in
    bulwark)
      read -r port admin outbound <<<"$(free_ports 3)"
      mkdir -p "$dir/policies"
      cat >"$dir/policies/failover.yaml" <<EOF
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: payments}
spec:
  upstreams:
  - name: payments
    match: {hosts: [payments]}
    groups:
    - name: primary
      backends: [{address: "127.0.0.1:$P1"}, {address: "127.0.0.1:$P2"}]
    - name: backup
      backends: [{address: "127.0.0.1:$S1"}]
    healthCheck: {http: {path: /healthz}, interval: 1s, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 2}
    outlierDetection: {consecutiveGatewayErrors: 3, maxEjectionPercent: 100}
    retry: {attempts: 2, retryOn: [ConnectFailure, Reset, Timeout, GatewayError]}
    timeouts: {request: 5s, perTry: 500ms}
EOF
      LOG_FILE="$dir/sidecar.log"
      start_bg "$SIDECAR" --inbound-listen "127.0.0.1:$port" --app 127.0.0.1:9 \
        --admin-listen "127.0.0.1:$admin" --outbound-listen "127.0.0.1:$outbound" \
        --state-dir "$dir/state" --threads 1 --config-dir "$dir/policies"
      URL="http://127.0.0.1:$outbound/"
      HOST=payments
      ;;
    haproxy)
      read -r port <<<"$(free_ports 1)"
      cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode http
    timeout connect 500ms
    timeout client 60s
    timeout server 500ms
    timeout check 500ms
    option http-keep-alive
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504
frontend bench
    bind 127.0.0.1:$port
    default_backend payments
backend payments
    option httpchk GET /healthz
    default-server inter 1s fall 2 rise 2 observe layer7 error-limit 3 on-error mark-down
    server p1 127.0.0.1:$P1 check
    server p2 127.0.0.1:$P2 check
    server s1 127.0.0.1:$S1 check backup
EOF
      haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 || die "haproxy config: $(cat "$dir/check.log")"
      LOG_FILE="$dir/haproxy.log"
      start_bg haproxy -db -f "$dir/haproxy.cfg"
      URL="http://127.0.0.1:$port/"
      ;;
    nginx)
      read -r port <<<"$(free_ports 1)"
      cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
$(nginx_temp_paths "$dir")
    upstream payments {
        server 127.0.0.1:$P1 max_fails=1 fail_timeout=30s;
        server 127.0.0.1:$P2 max_fails=1 fail_timeout=30s;
        server 127.0.0.1:$S1 backup;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://payments;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 500ms;
            proxy_read_timeout 500ms;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
        }
    }
}
EOF
      nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/check.log" 2>&1 ||
        die "nginx config: $(cat "$dir/check.log")"
      LOG_FILE="$dir/stderr.log"
      start_bg nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
      URL="http://127.0.0.1:$port/"
      ;;
  esac
  TARGET_PID=$STARTED_PID
  HOST_HEADER=$HOST
  wait_ready "$TARGET_PID" "$URL" 15 || die "$target did not serve: $(tail -3 "$dir"/*.log)"
}

declare -A R

run_row() {
  local target=$1 fault=$2 dir="$TMP/$1-$2" line moved=""
  mkdir -p "$dir"
  start_backends "$dir"
  start_proxy "$target" "$dir"
  local before
  before=$(count_of "$S1")
  BENCH_HOST=$HOST wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency \
    -s "$BENCH_DIR/wrk/host.lua" "$URL" >"$dir/wrk.out" 2>&1 &
  local wrk_pid=$!
  sleep "$FAULT_AT"
  local t0
  t0=$(date +%s%N)
  case $fault in
    kill)
      kill -KILL "$P1_PID" "$P2_PID"
      ;;
    slow)
      curl -s -o /dev/null -d slow:2000 "http://127.0.0.1:$P1/__mode"
      curl -s -o /dev/null -d slow:2000 "http://127.0.0.1:$P2/__mode"
      ;;
  esac
  # The backup's first request after the fault: when traffic moved.
  local deadline=$((t0 + (DURATION - FAULT_AT) * 1000000000)) now
  while now=$(date +%s%N) && [ "$now" -lt "$deadline" ]; do
    if [ "$(count_of "$S1")" -gt "$before" ]; then
      moved=$(((now - t0) / 1000000))
      break
    fi
    sleep 0.02
  done
  wait "$wrk_pid" || true
  line=$(grep '^BENCH ' "$dir/wrk.out" || die "$target/$fault: no BENCH line: $(tail -5 "$dir/wrk.out")")
  R[$target,$fault,line]=$line
  R[$target,$fault,moved]=${moved:-never}
  R[$target,$fault,max]=$(awk '$1 == "Latency" {print $4; exit}' "$dir/wrk.out")
  stop_proc "$TARGET_PID" INT
  for p in "${PIDS[@]}"; do stop_proc "$p" KILL 1; done
  PIDS=()
  log "$target/$fault: $line moved=${moved:-never}ms"
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for fault in $FAULTS; do
  for target in $TARGETS; do run_row "$target" "$fault"; done
done

errors_of() {
  local l=${R[$1,$2,line]}
  echo $(($(field non2xx "$l") + $(field connect_errors "$l") + $(field read_errors "$l") + $(field write_errors "$l") + $(field timeouts "$l")))
}

report() {
  echo "# Failover under faults"
  echo
  echo "Run $STARTED_AT (\`bash bench/failover.sh\`): wrk, 1 thread, $CONNECTIONS keep-alive connections,"
  echo "${DURATION} s per row; at ${FAULT_AT} s both primary backends fail. Same policy in every proxy:"
  echo "primary group of two, one backup; health checks every 1 s, 2 failures to mark down"
  echo "(nginx OSS has none: passive only); passive detection; 2 retries on another server; 500 ms"
  echo "per try. Backends: \`e2e/src/fault_upstream.py\` (Python, so throughput here is the backends')."
  echo
  echo "| fault | proxy | requests | client errors | error % | traffic on backup after | p99 ms | max latency |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|"
  local fault target l errs
  for fault in $FAULTS; do
    for target in $TARGETS; do
      l=${R[$target,$fault,line]}
      errs=$(errors_of "$target" "$fault")
      printf '| %s | %s | %s | %s | %s | %s ms | %s | %s |\n' "$fault" "$target" \
        "$(field requests "$l")" "$errs" \
        "$(awk -v e="$errs" -v r="$(field requests "$l")" 'BEGIN {printf "%.2f", r ? 100 * e / r : 0}')" \
        "${R[$target,$fault,moved]}" \
        "$(awk -v u="$(field p99_us "$l")" 'BEGIN {printf "%.1f", u / 1000}')" \
        "${R[$target,$fault,max]}"
    done
  done
  echo
  echo "- client errors: responses that were not 2xx/3xx plus socket errors and wrk timeouts (5 s)."
  echo "- traffic on backup after: from the fault to the backup backend's first served request."
  echo "- Configs: generated by this script (sidecar FailoverPolicy, haproxy \`backup\` +"
  echo "  \`httpchk\` + \`observe layer7\` + \`redispatch\` + \`retry-on\`, nginx \`backup\` +"
  echo "  \`max_fails\` + \`proxy_next_upstream\`); kept with BENCH_KEEP_TMP=1."
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
