#!/usr/bin/env bash
# Webhook delivery on loopback: the sidecar's durable accepts (each 202 only once the message is
# fsynced) next to Redis doing the same durable append (XADD, appendonly yes + appendfsync
# always), deliveries per second to a fast receiver, and a large backlog's memory, disk and
# restart time. Writes bench/results/webhooks.md.
#
#   1. accept   wrk (1 thread) POSTs to the admin API: single messages (204-byte payloads) at
#               each of BENCH_WEBHOOK_CONNECTIONS, then the batch form (BENCH_WEBHOOK_BATCH
#               messages per request) at each of BENCH_WEBHOOK_BATCH_CONNECTIONS; the endpoint's
#               receiver (nginx, `return 204`) is up, so deliveries run during the load, as in
#               production. Then the single form again with the endpoint `disabled: true`
#               (accepted and kept, nothing delivered): the cost of accepting alone. A fresh
#               sidecar and store per row, WARMUP s of load first.
#   2. redis    redis-benchmark XADD of the same payload at the same connection counts, not
#               pipelined for the single rows, pipelined BENCH_WEBHOOK_BATCH deep for the batch
#               rows; a fresh redis-server (AOF fsync always) per row.
#   3. drain    BENCH_WEBHOOK_DRAIN messages accepted while the receiver is down, then nginx
#               starts; timed until the endpoint reports nothing pending or in flight.
#   4. backlog  BENCH_WEBHOOK_BACKLOG messages accepted (batch form, receiver down, at most
#               BENCH_WEBHOOK_BACKLOG_SECONDS of loading: whatever was accepted by then is the
#               backlog measured); RSS, the store's size, then restarts: SIGTERM and start again,
#               SIGKILL and start again, each timed to the "webhook store open" log line and to
#               the admin API reporting the whole backlog pending.
#
# Per row it also records the CPU time of the sidecar by thread (admin API, dispatcher, store
# writer) and the time those threads waited for a CPU (schedstat), the CPU time of nginx and of
# redis-server, the fdatasync calls (perf's syscall tracepoints, when perf can read them), how
# busy the whole machine was, and how much of that was other processes (the "other load": a row
# above 10% is listed as disturbed in the report; on a shared 2-core machine, rerun it).
#
# Usage: BENCH_SKIP_BUILD=1 bash bench/webhooks.sh      (make bench runs it)
# Environment (all optional): BENCH_WEBHOOK_DURATION (seconds per accept row, default 8),
#   BENCH_WARMUP (default 2), BENCH_WEBHOOK_CONNECTIONS (default "16 64"), BENCH_WEBHOOK_BATCH
#   (default 100), BENCH_WEBHOOK_BATCH_CONNECTIONS (default "4 16"), BENCH_REDIS_REQUESTS (XADDs
#   per non-pipelined Redis row, default 200000; pipelined rows send 10×),
#   BENCH_WEBHOOK_MAX_CONCURRENCY (the endpoint's maxConcurrency, default 50),
#   BENCH_WEBHOOK_DRAIN (default 100000), BENCH_WEBHOOK_BACKLOG (default 1000000),
#   BENCH_WEBHOOK_BACKLOG_SECONDS (default 150), BENCH_WEBHOOK_STORE_MB (--webhook-max-store-mb,
#   default 4096), BENCH_WEBHOOK_PHASES (subset of "accept redis drain backlog"),
#   BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1, CARGO_TARGET_DIR.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=bench-webhooks
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

DURATION=${BENCH_WEBHOOK_DURATION:-8}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_WEBHOOK_CONNECTIONS:-16 64}
BATCH=${BENCH_WEBHOOK_BATCH:-100}
BATCH_CONNECTIONS=${BENCH_WEBHOOK_BATCH_CONNECTIONS:-4 16}
REDIS_REQUESTS=${BENCH_REDIS_REQUESTS:-200000}
MAX_CONCURRENCY=${BENCH_WEBHOOK_MAX_CONCURRENCY:-50}
DRAIN=${BENCH_WEBHOOK_DRAIN:-100000}
BACKLOG=${BENCH_WEBHOOK_BACKLOG:-1000000}
BACKLOG_SECONDS=${BENCH_WEBHOOK_BACKLOG_SECONDS:-150}
STORE_MB=${BENCH_WEBHOOK_STORE_MB:-4096}
PHASES=${BENCH_WEBHOOK_PHASES:-accept redis drain backlog}
LOAD_BATCH=1000 # messages per request when loading a backlog (the API's maximum)
LOAD_CONNECTIONS=4
OUT="$BENCH_DIR/results/webhooks.md"
for v in DURATION WARMUP BATCH REDIS_REQUESTS MAX_CONCURRENCY DRAIN BACKLOG BACKLOG_SECONDS STORE_MB; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[ "$BATCH" -ge 1 ] && [ "$BATCH" -le 1000 ] || die "BENCH_WEBHOOK_BATCH must be 1..1000"
has_phase() { [[ " $PHASES " == *" $1 "* ]]; }

require_commands nginx wrk curl python3
for cmd in jq redis-server redis-benchmark redis-cli; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is missing (bash scripts/install-deps.sh installs it)"
done
SIDECAR="${CARGO_TARGET_DIR:-$ROOT/target}/release/bulwark-sidecar"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building the sidecar (release)"
  (cd "$ROOT" && cargo build -q --release -p bulwark-sidecar)
fi
[ -x "$SIDECAR" ] || die "no sidecar binary at $SIDECAR (build it, or unset BENCH_SKIP_BUILD)"
init_tmp bulwark-bench-webhooks
CLK_TCK=$(getconf CLK_TCK)

read -r RECEIVER INBOUND ADMIN OUTBOUND FLAGD REDIS_PORT <<<"$(free_ports 6)"
ADMIN_URL="http://127.0.0.1:$ADMIN"

# --- Measuring ----------------------------------------------------------------------------------

now_ns() { date +%s%N; }

# CPU ticks (user + system) of a process and all its threads, live or exited.
proc_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  sed 's/.*) //' <<<"$stat" | awk '{print $12 + $13}'
}

# The sidecar's CPU ticks by thread, then the nanoseconds those threads spent runnable but
# waiting for a CPU (schedstat's run_delay): "total api dispatch store api_wait dispatch_wait
# store_wait". api: the admin listener's thread, which serves the webhook API; dispatch: the
# webhook dispatcher's runtime, where every delivery attempt runs; store: the store's writer
# thread, every redb write transaction and fsync. Threads are named by Pingora's services and by
# the store.
sidecar_ticks() {
  local pid=$1 t name ticks wait api=0 dispatch=0 store=0 api_w=0 dispatch_w=0 store_w=0
  for t in /proc/"$pid"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    ticks=$(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
    wait=$(awk '{print $2}' "$t/schedstat" 2>/dev/null) || wait=0
    case $name in
      "bulwark admin") api=$((api + ticks)) api_w=$((api_w + ${wait:-0})) ;;
      "BG bulwark webh") dispatch=$((dispatch + ticks)) dispatch_w=$((dispatch_w + ${wait:-0})) ;;
      bulwark-webhook*) store=$((store + ticks)) store_w=$((store_w + ${wait:-0})) ;;
    esac
  done
  echo "$(proc_ticks "$pid") $api $dispatch $store $api_w $dispatch_w $store_w"
}
nsecs() { awk -v t="$1" 'BEGIN {printf "%.2f", t / 1e9}'; }

# Busy and total jiffies of the whole machine.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }

cpu_busy_pct() {
  local a b
  a=$(machine_ticks)
  sleep 1
  b=$(machine_ticks)
  busy_between "$a" "$b"
}
# CPU ticks of this shell's finished children (wrk, redis-benchmark, curl, python3, perf):
# sets CLIENT_TICKS. Not in a subshell: `times` there would count the subshell's children.
client_ticks() {
  times >"$TMP/times.txt"
  CLIENT_TICKS=$(awk -v h="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, p, "m"); sub(/s$/, "", p[2]); t += p[1] * 60 + p[2] }
    printf "%.0f", t * h }' "$TMP/times.txt")
}
# The share of both CPUs (%) taken over a row by anything but the processes of the row:
# machine busy ticks minus $3 (the row's own ticks: server, receiver, clients), over all ticks.
other_pct() {
  awk -v a="$1" -v b="$2" -v ours="$3" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[2] - x[2];
    o = (t > 0 ? 100 * (y[1] - x[1] - ours) / t : 0); printf "%.0f", (o < 0 ? 0 : o)}'
}
busy_between() { awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; printf "%.0f", (t > 0 ? 100 * (y[1] - x[1]) / t : 0)}'; }

secs() { awk -v t="$1" -v h="$CLK_TCK" 'BEGIN {printf "%.2f", t / h}'; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", (b - a) / 1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "—"}'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# fdatasync/fsync calls of a process over a period, counted by perf's syscall tracepoints
# (needs root or a permissive perf_event_paranoid, and tracefs). Empty when perf cannot.
PERF_OK=0
if command -v perf >/dev/null 2>&1 &&
  perf stat -x, -e syscalls:sys_enter_fdatasync -- true >/dev/null 2>&1; then
  PERF_OK=1
fi
SYNC_PID=""
SYNCS=""
# Starts counting the fdatasync/fsync calls of $1 (perf's target: "-p PID" or "-t TID"; output
# in $2). perf starts with its
# counters disabled and enables them on command, acknowledged: counting starts before this
# returns, however long perf takes to start on a loaded machine.
sync_count_start() { # target file
  SYNC_PID=""
  [ "$PERF_OK" = 1 ] || return 0
  rm -f "$TMP/perf.ctl" "$TMP/perf.ack"
  mkfifo "$TMP/perf.ctl" "$TMP/perf.ack"
  perf stat -x, -D -1 --control "fifo:$TMP/perf.ctl,$TMP/perf.ack" \
    -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync $1 -o "$2" >/dev/null 2>&1 &
  SYNC_PID=$!
  # Read-write opens of the FIFOs never block, whichever end perf opens first.
  exec {PERF_CTL}<>"$TMP/perf.ctl" {PERF_ACK}<>"$TMP/perf.ack"
  echo enable >&"$PERF_CTL"
  local ack=""
  read -r -t 30 ack <&"$PERF_ACK" || true
  if [ "$ack" != ack ]; then
    log "warning: perf did not start counting; no fdatasync count for this row"
    kill "$SYNC_PID" 2>/dev/null || true
    wait "$SYNC_PID" 2>/dev/null || true
    SYNC_PID=""
  fi
}
# Sets SYNCS to the count since sync_count_start (empty without perf). Not in a subshell: it
# waits for perf, a child of this shell, to write its file.
sync_count_stop() { # file
  SYNCS=""
  [ -n "$SYNC_PID" ] || return 0
  kill -INT "$SYNC_PID" 2>/dev/null || true
  wait "$SYNC_PID" 2>/dev/null || true
  exec {PERF_CTL}>&- {PERF_ACK}<&-
  SYNC_PID=""
  SYNCS=$(awk -F, '/syscalls:sys_enter_f/ {n += $1} END {print n + 0}' "$1")
}

# The endpoint's report: "pending inFlight delivered failedAttempts circuitBreaker".
report_of() {
  curl -s --max-time 5 "$ADMIN_URL/webhooks/v1/endpoints" |
    jq -r '.endpoints[0] | "\(.pending) \(.inFlight) \(.delivered) \(.failedAttempts) \(.circuitBreaker)"' 2>/dev/null ||
    echo "0 0 0 0 unknown"
}
# Deliveries counted by the metric (at once; the report's `delivered` is the store's count,
# up to 500 ms behind).
delivered_metric() {
  curl -s --max-time 5 "$ADMIN_URL/metrics" |
    awk '/^bulwark_webhook_deliveries_total\{.*outcome="delivered"/ {n += $2} END {printf "%d", n}'
}
# The store's writer thread (named bulwark-webhook-store, truncated to 15 characters).
writer_tid() {
  local t
  for t in /proc/"$1"/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in bulwark-webhook*) basename "$t" && return 0 ;; esac
  done
  die "no webhook store writer thread in the sidecar"
}
store_bytes() { stat -c %s "$1/webhooks.redb" 2>/dev/null || echo 0; }
store_alloc_bytes() { du -B1 "$1/webhooks.redb" 2>/dev/null | cut -f1 || echo 0; }

# --- Processes ----------------------------------------------------------------------------------

mkdir -p "$TMP/policies" "$TMP/receiver"
cat >"$TMP/policies/webhooks.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: bench-signing}
stringData:
  key: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
---
apiVersion: bulwark.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: receiver}
spec:
  url: http://127.0.0.1:$RECEIVER/hooks
  signing: {secretRef: {name: bench-signing, key: key}}
  network: {allowInsecureHTTP: true, allowPrivateAddresses: true}
  maxConcurrency: $MAX_CONCURRENCY
EOF
# The same endpoint disabled: messages are accepted and kept, nothing is delivered.
mkdir -p "$TMP/policies-paused"
sed 's/^  maxConcurrency: .*/&\n  disabled: true/' "$TMP/policies/webhooks.yaml" >"$TMP/policies-paused/webhooks.yaml"

# The receiver: nginx, 1 worker, 204 for everything, no logs.
cat >"$TMP/receiver/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $TMP/receiver/nginx.pid;
error_log $TMP/receiver/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_temp_paths "$TMP/receiver")
    keepalive_requests 10000000;
    client_body_buffer_size 16k;
    server {
        listen 127.0.0.1:$RECEIVER;
        location / { return 204; }
    }
}
EOF
nginx -t -q -p "$TMP/receiver" -c "$TMP/receiver/nginx.conf" -e "$TMP/receiver/error.log" >"$TMP/receiver/check.log" 2>&1 ||
  die "receiver nginx config: $(cat "$TMP/receiver/check.log")"

RECEIVER_PID=""
start_receiver() {
  LOG_FILE="$TMP/receiver/stderr.log"
  start_bg nginx -p "$TMP/receiver" -c "$TMP/receiver/nginx.conf" -e "$TMP/receiver/error.log"
  RECEIVER_PID=$STARTED_PID
  for _ in $(seq 50); do
    [ "$(http_status -X POST "http://127.0.0.1:$RECEIVER/hooks")" = 204 ] && return 0
    sleep 0.1
  done
  die "the receiver nginx did not start: $(tail -3 "$TMP/receiver/error.log" 2>/dev/null)"
}
stop_receiver() {
  [ -n "$RECEIVER_PID" ] || return 0
  stop_proc "$RECEIVER_PID"
  RECEIVER_PID=""
}
receiver_ticks() {
  local p sum=0
  [ -n "$RECEIVER_PID" ] || { echo 0; return; }
  for p in $(proc_tree "$RECEIVER_PID"); do sum=$((sum + $(proc_ticks "$p"))); done
  echo "$sum"
}

SIDECAR_PID=""
SIDECAR_STARTED_NS=0
# Starts the sidecar on state dir $1, logging to $2 (appended), policies from $3 (default
# $TMP/policies).
start_sidecar() {
  mkdir -p "$1"
  LOG_FILE=$TMP/sidecar-start.log
  SIDECAR_STARTED_NS=$(now_ns)
  "$SIDECAR" --inbound-listen "127.0.0.1:$INBOUND" --app 127.0.0.1:9 \
    --admin-listen "127.0.0.1:$ADMIN" --outbound-listen "127.0.0.1:$OUTBOUND" \
    --flagd-listen "127.0.0.1:$FLAGD" --state-dir "$1" --config-dir "${3:-$TMP/policies}" \
    --webhook-max-store-mb "$STORE_MB" >>"$2" 2>&1 &
  SIDECAR_PID=$!
  PIDS+=("$SIDECAR_PID")
}
# Waits until the store is open ($2 = log file) and the policy's endpoint is installed.
wait_sidecar() {
  local log=$1 secs=${2:-60}
  for _ in $(seq $((secs * 20))); do
    [ -d "/proc/$SIDECAR_PID" ] || die "the sidecar exited: $(tail -5 "$log")"
    if grep -q "webhook store open" "$log" &&
      [ "$(curl -s --max-time 2 "$ADMIN_URL/webhooks/v1/endpoints" | jq -r '.endpoints | length' 2>/dev/null)" = 1 ]; then
      return 0
    fi
    sleep 0.05
  done
  die "the sidecar's webhook store did not open within ${secs}s: $(tail -5 "$log")"
}
stop_sidecar() { # signal
  [ -n "$SIDECAR_PID" ] || return 0
  # (stderr: bash's "Killed" notice after SIGKILL)
  { stop_proc "$SIDECAR_PID" "${1:-TERM}" 30; } 2>/dev/null
  SIDECAR_PID=""
}

# Posts $1 messages in batches of $2 over $3 keep-alive connections, at most $4 seconds; every
# answer must be 202. Prints "LOAD accepted=… seconds=… requests=… refused=…".
load_messages() {
  python3 - "$ADMIN" "$1" "$2" "$3" "$4" <<'EOF'
import http.client, json, sys, threading, time
port, total, batch, conns, budget = (int(a) for a in sys.argv[1:6])
def message(i):
    return {"eventType": "order.created", "payload": {
        "orderId": "ord_%08d" % i, "customer": "cus_%06d" % (i * 7 % 1000000), "currency": "EUR",
        "amount": 1000 + i % 9000, "items": [{"sku": "SKU-%04d" % (i % 10000), "qty": 1 + i % 5, "price": 1999},
        {"sku": "SKU-%04d" % (i * 13 % 10000), "qty": 1, "price": 499}], "note": "x" * 24}}
bodies = [json.dumps({"messages": [message(b * batch + j) for j in range(batch)]},
                     separators=(",", ":")).encode() for b in range(8)]
lock = threading.Lock()
state = {"left": total, "accepted": 0, "requests": 0, "refused": 0, "error": None}
deadline = time.monotonic() + budget
def worker(k):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    n = k
    while True:
        with lock:
            if state["left"] <= 0 or state["error"] or time.monotonic() >= deadline:
                return
            take = min(batch, state["left"])
            state["left"] -= take
        body = bodies[n % len(bodies)] if take == batch else json.dumps(
            {"messages": [message(j) for j in range(take)]}, separators=(",", ":")).encode()
        n += 1
        try:
            conn.request("POST", "/webhooks/v1/messages/batch", body, {"Content-Type": "application/json"})
            r = conn.getresponse(); data = r.read()
        except Exception as e:
            with lock: state["error"] = repr(e)
            return
        with lock:
            state["requests"] += 1
            if r.status == 202:
                state["accepted"] += take
            else:
                state["refused"] += take
                state["error"] = "HTTP %d: %s" % (r.status, data[:200])
started = time.monotonic()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
print("LOAD accepted=%d seconds=%.2f requests=%d refused=%d error=%s" % (
    state["accepted"], time.monotonic() - started, state["requests"], state["refused"],
    (state["error"] or "none").replace(" ", "_")[:200]))
EOF
}

# --- Phase 1: durable accepts --------------------------------------------------------------------

declare -A R
ROWS=()

# One accept row: $1 label, $2 connections, $3 messages per request (0: the single form), $4
# the policy dir (default: the endpoint enabled).
accept_row() {
  local key=$1 conns=$2 batch=$3 policies=${4:-$TMP/policies} dir="$TMP/accept-$1" per
  per=$((batch > 0 ? batch : 1))
  mkdir -p "$dir"
  start_receiver
  start_sidecar "$dir/state" "$dir/sidecar.log" "$policies"
  wait_sidecar "$dir/sidecar.log"
  WEBHOOK_BATCH=$batch wrk -t1 -c"$conns" -d"${WARMUP}s" --timeout 5s \
    -s "$BENCH_DIR/wrk/webhook.lua" "$ADMIN_URL" >"$dir/warmup.out" 2>&1 || true
  local s0 n0 m0 d0 line s1 n1 m1 d1 syncs a b c0
  d0=$(delivered_metric)
  s0=$(sidecar_ticks "$SIDECAR_PID")
  n0=$(receiver_ticks)
  client_ticks
  c0=$CLIENT_TICKS
  m0=$(machine_ticks)
  # Only the store's writer thread syncs; counting that one thread is exact, where `-p` over
  # all the sidecar's threads sometimes lost most of the count.
  sync_count_start "-t $(writer_tid "$SIDECAR_PID")" "$dir/perf.txt"
  WEBHOOK_BATCH=$batch wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s --latency \
    -s "$BENCH_DIR/wrk/webhook.lua" "$ADMIN_URL" >"$dir/wrk.out" 2>&1 || true
  sync_count_stop "$dir/perf.txt"
  syncs=$SYNCS
  m1=$(machine_ticks)
  client_ticks
  s1=$(sidecar_ticks "$SIDECAR_PID")
  n1=$(receiver_ticks)
  d1=$(delivered_metric)
  line=$(grep '^BENCH ' "$dir/wrk.out") || die "accept $key: no BENCH line: $(tail -5 "$dir/wrk.out")"
  local req secs
  req=$(field requests "$line")
  secs=$(awk -v u="$(field duration_us "$line")" 'BEGIN {print u / 1e6}')
  R[$key,line]=$line
  R[$key,conns]=$conns
  R[$key,per]=$per
  R[$key,msgs]=$(awk -v r="$req" -v p="$per" -v s="$secs" 'BEGIN {printf "%.0f", r * p / s}')
  R[$key,delivered_rate]=$(awk -v a="$d0" -v b="$d1" -v s="$secs" 'BEGIN {printf "%.0f", (b - a) / s}')
  R[$key,report]=$(report_of)
  R[$key,busy]=$(busy_between "$m0" "$m1")
  read -r -a a <<<"$s0"
  read -r -a b <<<"$s1"
  R[$key,other]=$(other_pct "$m0" "$m1" $((b[0] - a[0] + n1 - n0 + CLIENT_TICKS - c0)))
  R[$key,cpu]=$(secs $((b[0] - a[0])))
  R[$key,cpu_api]=$(secs $((b[1] - a[1])))
  R[$key,cpu_dispatch]=$(secs $((b[2] - a[2])))
  R[$key,cpu_store]=$(secs $((b[3] - a[3])))
  R[$key,cpu_nginx]=$(secs $((n1 - n0)))
  R[$key,wait_api]=$(nsecs $((b[4] - a[4])))
  R[$key,wait_dispatch]=$(nsecs $((b[5] - a[5])))
  R[$key,wait_store]=$(nsecs $((b[6] - a[6])))
  R[$key,secs]=$secs
  R[$key,us_per_msg]=$(awk -v t=$((b[0] - a[0])) -v h="$CLK_TCK" -v n="$((req * per))" 'BEGIN {printf "%.1f", n ? t / h * 1e6 / n : 0}')
  # A request waits for its own commit, so one fsync covers at most one request per connection:
  # fewer fsyncs than requests ÷ connections means perf lost counts.
  if [ -n "$syncs" ] && [ $((syncs * conns)) -lt "$req" ]; then
    log "warning: $key: $syncs fdatasyncs for $req requests on $conns connections: perf undercounted; not reported"
    syncs=""
  fi
  R[$key,syncs]=$syncs
  R[$key,per_sync]=$([ -z "$syncs" ] || awk -v n="$((req * per))" -v s="$syncs" 'BEGIN {printf "%.1f", s ? n / s : 0}')
  R[$key,store_mb]=$(mib $(($(store_bytes "$dir/state") / 1024)))
  R[$key,rss]=$(mib "$(rss_kib "$SIDECAR_PID")")
  ROWS+=("$key")
  stop_sidecar TERM
  stop_receiver
  log "accept $key: $line messages/s=${R[$key,msgs]} deliveries/s=${R[$key,delivered_rate]} cpu=${R[$key,cpu]}s fsyncs=${syncs:-n/a}"
}

# --- Phase 2: Redis --------------------------------------------------------------------------------

PAYLOAD=$(python3 -c 'import json; print(json.dumps({"orderId": "ord_00000001", "customer": "cus_000007", "currency": "EUR", "amount": 1001, "items": [{"sku": "SKU-0001", "qty": 2, "price": 1999}, {"sku": "SKU-0013", "qty": 1, "price": 499}], "note": "x" * 24}, separators=(",", ":")))')

# One Redis row: $1 key (the sidecar row it pairs with), $2 connections, $3 pipeline depth.
redis_row() {
  local key=$1 conns=$2 pipeline=$3 dir="$TMP/redis-$1" n pid
  n=$((pipeline > 1 ? REDIS_REQUESTS * 10 : REDIS_REQUESTS))
  mkdir -p "$dir"
  LOG_FILE="$dir/redis.log"
  start_bg redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync always --auto-aof-rewrite-percentage 0
  pid=$STARTED_PID
  for _ in $(seq 50); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || die "redis-server did not start: $(tail -3 "$dir/redis.log")"
  redis-benchmark -p "$REDIS_PORT" -n $((n / 10)) -c "$conns" -P "$pipeline" -q XADD warm '*' payload "$PAYLOAD" >/dev/null 2>&1 || true
  local c0 c1 m0 m1 t0 t1 syncs csv k0
  c0=$(proc_ticks "$pid")
  client_ticks
  k0=$CLIENT_TICKS
  m0=$(machine_ticks)
  sync_count_start "-p $pid" "$dir/perf.txt"
  t0=$(now_ns)
  redis-benchmark -p "$REDIS_PORT" -n "$n" -c "$conns" -P "$pipeline" --csv \
    XADD bench '*' payload "$PAYLOAD" >"$dir/bench.csv" 2>"$dir/bench.err" || die "redis-benchmark failed: $(tail -3 "$dir/bench.err")"
  t1=$(now_ns)
  sync_count_stop "$dir/perf.txt"
  syncs=$SYNCS
  m1=$(machine_ticks)
  client_ticks
  c1=$(proc_ticks "$pid")
  csv=$(tail -1 "$dir/bench.csv")
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  # (the test name holds the JSON payload, so fields are counted from the end)
  R[redis-$key,rps]=$(awk -F'","' '{gsub(/"/, "", $NF); printf "%.0f", $(NF - 6)}' <<<"$csv")
  R[redis-$key,p50]=$(awk -F'","' '{printf "%s", $(NF - 3)}' <<<"$csv")
  R[redis-$key,p99]=$(awk -F'","' '{printf "%s", $(NF - 1)}' <<<"$csv")
  R[redis-$key,len]=$(redis-cli -p "$REDIS_PORT" XLEN bench)
  R[redis-$key,n]=$n
  R[redis-$key,conns]=$conns
  R[redis-$key,pipeline]=$pipeline
  R[redis-$key,cpu]=$(secs $((c1 - c0)))
  R[redis-$key,us_per_msg]=$(awk -v t=$((c1 - c0)) -v h="$CLK_TCK" -v n="$n" 'BEGIN {printf "%.1f", t / h * 1e6 / n}')
  R[redis-$key,busy]=$(busy_between "$m0" "$m1")
  R[redis-$key,other]=$(other_pct "$m0" "$m1" $((c1 - c0 + CLIENT_TICKS - k0)))
  R[redis-$key,syncs]=$syncs
  R[redis-$key,per_sync]=$([ -z "$syncs" ] || awk -v n="$n" -v s="$syncs" 'BEGIN {printf "%.1f", s ? n / s : 0}')
  R[redis-$key,aof_mb]=$(mib $(($(du -sk "$dir/appendonlydir" | cut -f1))))
  R[redis-$key,seconds]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", (b - a) / 1e9}')
  [ "${R[redis-$key,len]}" = "$n" ] || die "redis: XLEN ${R[redis-$key,len]} after $n XADDs"
  stop_proc "$pid"
  log "redis $key: c=$conns P=$pipeline XADD/s=${R[redis-$key,rps]} p50=${R[redis-$key,p50]} p99=${R[redis-$key,p99]} ms fsyncs=${syncs:-n/a}"
}

# --- Phase 3: drain ------------------------------------------------------------------------------

drain_phase() {
  local dir="$TMP/drain" line rep t0 t_first="" t_end="" p0 pending inflight deadline now
  mkdir -p "$dir"
  start_sidecar "$dir/state" "$dir/sidecar.log"
  wait_sidecar "$dir/sidecar.log"
  line=$(load_messages "$DRAIN" "$LOAD_BATCH" "$LOAD_CONNECTIONS" 300)
  [ "$(field accepted "$line")" = "$DRAIN" ] || die "drain: the backlog was not accepted: $line"
  sleep 1
  rep=$(report_of)
  read -r pending inflight _ _ _ <<<"$rep"
  R[drain,load]=$line
  R[drain,before]=$rep
  p0=$((pending + inflight))
  local s0 n0 m0 s1 n1 m1 a b c0
  s0=$(sidecar_ticks "$SIDECAR_PID")
  client_ticks
  c0=$CLIENT_TICKS
  m0=$(machine_ticks)
  t0=$(now_ns)
  start_receiver
  n0=$(receiver_ticks)
  deadline=$((t0 + 300 * 1000000000))
  while now=$(now_ns) && [ "$now" -lt "$deadline" ]; do
    read -r pending inflight _ _ _ <<<"$(report_of)"
    if [ -z "$t_first" ] && [ $((pending + inflight)) -lt "$p0" ]; then t_first=$now; fi
    if [ "$pending" = 0 ] && [ "$inflight" = 0 ]; then
      t_end=$now
      break
    fi
    sleep 0.05
  done
  m1=$(machine_ticks)
  client_ticks
  s1=$(sidecar_ticks "$SIDECAR_PID")
  n1=$(receiver_ticks)
  [ -n "$t_end" ] || die "drain: $pending still pending after 300 s"
  R[drain,p0]=$p0
  R[drain,first_ms]=$(ms_between "$t0" "$t_first")
  R[drain,total_ms]=$(ms_between "$t0" "$t_end")
  R[drain,drain_ms]=$(ms_between "$t_first" "$t_end")
  R[drain,rate]=$(awk -v n="$p0" -v a="$t_first" -v b="$t_end" 'BEGIN {printf "%.0f", n / ((b - a) / 1e9)}')
  read -r -a a <<<"$s0"
  read -r -a b <<<"$s1"
  R[drain,cpu]=$(secs $((b[0] - a[0])))
  R[drain,cpu_api]=$(secs $((b[1] - a[1])))
  R[drain,cpu_dispatch]=$(secs $((b[2] - a[2])))
  R[drain,cpu_store]=$(secs $((b[3] - a[3])))
  R[drain,cpu_nginx]=$(secs $((n1 - n0)))
  R[drain,wait_api]=$(nsecs $((b[4] - a[4])))
  R[drain,wait_dispatch]=$(nsecs $((b[5] - a[5])))
  R[drain,wait_store]=$(nsecs $((b[6] - a[6])))
  R[drain,us_per_msg]=$(awk -v t=$((b[0] - a[0])) -v h="$CLK_TCK" -v n="$p0" 'BEGIN {printf "%.1f", t / h * 1e6 / n}')
  R[drain,busy]=$(busy_between "$m0" "$m1")
  R[drain,other]=$(other_pct "$m0" "$m1" $((b[0] - a[0] + n1 - n0 + CLIENT_TICKS - c0)))
  sleep 1 # the store's delivered count is up to 500 ms behind
  R[drain,after]=$(report_of)
  R[drain,store_mb]=$(mib $(($(store_bytes "$dir/state") / 1024)))
  stop_sidecar TERM
  stop_receiver
  log "drain: $p0 pending when the receiver started; first delivery after ${R[drain,first_ms]} ms, all in ${R[drain,total_ms]} ms (${R[drain,rate]}/s)"
}

# --- Phase 4: backlog ----------------------------------------------------------------------------

# Starts the sidecar on $1 (log $2) and times it to "webhook store open" and to the API
# reporting $3 pending (+ in flight); sets OPEN_MS, READY_MS.
timed_start() {
  local state=$1 log=$2 want=$3 t0 now deadline pending inflight
  OPEN_MS=""
  READY_MS=""
  : >"$log"
  start_sidecar "$state" "$log"
  t0=$SIDECAR_STARTED_NS
  deadline=$((t0 + 600 * 1000000000))
  while now=$(now_ns) && [ "$now" -lt "$deadline" ]; do
    [ -d "/proc/$SIDECAR_PID" ] || die "the sidecar exited on restart: $(tail -5 "$log")"
    if [ -z "$OPEN_MS" ] && grep -q "webhook store open" "$log"; then OPEN_MS=$(ms_between "$t0" "$now"); fi
    if [ -n "$OPEN_MS" ]; then
      read -r pending inflight _ _ _ <<<"$(report_of)"
      if [ $((pending + inflight)) -ge "$want" ]; then
        READY_MS=$(ms_between "$t0" "$(now_ns)")
        return 0
      fi
    fi
    sleep 0.02
  done
  die "the sidecar did not report $want pending within 600 s after a restart"
}

backlog_phase() {
  local dir="$TMP/backlog" line n rep pending inflight t0 t1
  mkdir -p "$dir"
  start_sidecar "$dir/state" "$dir/sidecar.log"
  wait_sidecar "$dir/sidecar.log"
  R[backlog,rss_idle]=$(mib "$(rss_kib "$SIDECAR_PID")")
  local s0 s1 m0 m1 a b c0
  s0=$(sidecar_ticks "$SIDECAR_PID")
  client_ticks
  c0=$CLIENT_TICKS
  m0=$(machine_ticks)
  line=$(load_messages "$BACKLOG" "$LOAD_BATCH" "$LOAD_CONNECTIONS" "$BACKLOG_SECONDS")
  m1=$(machine_ticks)
  client_ticks
  s1=$(sidecar_ticks "$SIDECAR_PID")
  n=$(field accepted "$line")
  [ "$(field error "$line")" = none ] || log "warning: loading the backlog stopped: $line"
  [ "$n" -gt 0 ] || die "backlog: nothing accepted: $line"
  R[backlog,load]=$line
  R[backlog,n]=$n
  R[backlog,load_rate]=$(awk -v n="$n" -v s="$(field seconds "$line")" 'BEGIN {printf "%.0f", n / s}')
  read -r -a a <<<"$s0"
  read -r -a b <<<"$s1"
  R[backlog,load_cpu]=$(secs $((b[0] - a[0])))
  R[backlog,load_cpu_store]=$(secs $((b[3] - a[3])))
  R[backlog,load_busy]=$(busy_between "$m0" "$m1")
  R[backlog,load_other]=$(other_pct "$m0" "$m1" $((b[0] - a[0] + CLIENT_TICKS - c0)))
  sleep 2
  rep=$(report_of)
  read -r pending inflight _ _ _ <<<"$rep"
  R[backlog,report]=$rep
  [ $((pending + inflight)) -eq "$n" ] || die "backlog: $n accepted but $((pending + inflight)) pending: $rep"
  R[backlog,rss]=$(mib "$(rss_kib "$SIDECAR_PID")")
  R[backlog,hwm]=$(mib "$(hwm_kib "$SIDECAR_PID")")
  R[backlog,disk]=$(mib $(($(store_bytes "$dir/state") / 1024)))
  R[backlog,disk_alloc]=$(mib $(($(store_alloc_bytes "$dir/state") / 1024)))
  log "backlog: $n messages accepted in $(field seconds "$line") s; RSS ${R[backlog,rss]} MiB; store ${R[backlog,disk]} MiB"

  # Clean stop, then start again.
  t0=$(now_ns)
  stop_sidecar TERM
  t1=$(now_ns)
  R[backlog,stop_ms]=$(ms_between "$t0" "$t1")
  timed_start "$dir/state" "$dir/restart-term.log" "$n"
  R[backlog,term_open]=$OPEN_MS
  R[backlog,term_ready]=$READY_MS
  R[backlog,term_rss]=$(mib "$(rss_kib "$SIDECAR_PID")")
  R[backlog,term_hwm]=$(mib "$(hwm_kib "$SIDECAR_PID")")
  log "backlog: restart after SIGTERM: store open in $OPEN_MS ms, $n pending reported in $READY_MS ms"

  # Crash (SIGKILL), then start again: redb repairs the file it did not close.
  stop_sidecar KILL
  timed_start "$dir/state" "$dir/restart-kill.log" "$n"
  R[backlog,kill_open]=$OPEN_MS
  R[backlog,kill_ready]=$READY_MS
  R[backlog,kill_rss]=$(mib "$(rss_kib "$SIDECAR_PID")")
  R[backlog,kill_hwm]=$(mib "$(hwm_kib "$SIDECAR_PID")")
  R[backlog,kill_report]=$(report_of)
  log "backlog: restart after SIGKILL: store open in $OPEN_MS ms, $n pending reported in $READY_MS ms"
  stop_sidecar TERM
}

# --- Run -----------------------------------------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$(cpu_busy_pct)
[ "$BUSY_START" -le 10 ] || log "warning: the machine is not idle (${BUSY_START}% CPU busy before the run): results will be noisy"
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T_START=$(now_ns)

ACCEPT_KEYS=()
for c in $CONNECTIONS; do ACCEPT_KEYS+=("single-c$c"); done
for c in $BATCH_CONNECTIONS; do ACCEPT_KEYS+=("batch-c$c"); done
for c in $CONNECTIONS; do ACCEPT_KEYS+=("paused-c$c"); done
if has_phase accept; then
  for c in $CONNECTIONS; do accept_row "single-c$c" "$c" 0; done
  for c in $BATCH_CONNECTIONS; do accept_row "batch-c$c" "$c" "$BATCH"; done
  for c in $CONNECTIONS; do accept_row "paused-c$c" "$c" 0 "$TMP/policies-paused"; done
fi
if has_phase redis; then
  for c in $CONNECTIONS; do redis_row "single-c$c" "$c" 1; done
  for c in $BATCH_CONNECTIONS; do redis_row "batch-c$c" "$c" "$BATCH"; done
fi
has_phase drain && drain_phase
has_phase backlog && backlog_phase
ELAPSED=$(awk -v a="$T_START" -v b="$(now_ns)" 'BEGIN {printf "%.0f", (b - a) / 1e9}')
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report --------------------------------------------------------------------------------------

ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }
label_of() { # key
  case $1 in
    single-c*) echo "single, ${1#single-c} conns" ;;
    batch-c*) echo "batch of $BATCH, ${1#batch-c} conns" ;;
    paused-c*) echo "single, ${1#paused-c} conns, deliveries paused" ;;
  esac
}
# The Redis row a sidecar row compares with.
redis_key_of() { case $1 in paused-c*) echo "single-c${1#paused-c}" ;; *) echo "$1" ;; esac; }

report() {
  local key l
  echo "# Webhook delivery"
  echo
  echo "Run $STARTED_AT (\`BENCH_SKIP_BUILD=1 bash bench/webhooks.sh\`, ${ELAPSED} s in all), git"
  echo "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown), $("$SIDECAR" --version 2>/dev/null | head -1 || echo bulwark-sidecar)."
  echo "Machine: $(nproc) × $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr),"
  echo "store on $(df -T "$TMP" | awk 'NR == 2 {print $2}') ($TMP). ${BUSY_START}% CPU busy in the second before the run; load"
  echo "average $LOAD_START at the start, $LOAD_END at the end. The sidecar runs with its defaults"
  echo "(\`--threads 1\`) and \`--webhook-max-store-mb $STORE_MB\`; one WebhookEndpoint, \`maxConcurrency: $MAX_CONCURRENCY\`,"
  echo "receiver nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (1 worker, \`return 204\`); $(redis-server --version 2>/dev/null | awk '{print $1, $3}' | sed 's/v=//')."
  echo "Payload: 204 bytes of JSON per message (\`bench/wrk/webhook.lua\`), the same bytes in XADD."
  local k disturbed=""
  for k in "${!R[@]}"; do
    case $k in *,other | *,load_other) [ "${R[$k]}" -le 10 ] || disturbed+=" ${k%,*} (${R[$k]}%)" ;; esac
  done
  if [ -n "$disturbed" ]; then
    echo
    echo "**Disturbed rows** (other processes took more than 10% of the CPUs):$disturbed."
  fi
  if has_phase accept; then
    echo
    echo "## Durable accepts (receiver up, deliveries running)"
    echo
    echo "wrk, 1 thread, ${DURATION} s per row after ${WARMUP} s of warm-up, a fresh sidecar and store per row."
    echo "\"deliveries paused\": the same endpoint with \`disabled: true\` (messages accepted and kept,"
    echo "nothing delivered), to separate the cost of accepting from the cost of delivering."
    echo
    echo "| form | messages/s | requests/s | p50 ms | p99 ms | p99.9 ms | non-2xx | deliveries/s meanwhile | pending at end | fdatasyncs | messages per fdatasync |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for key in "${ROWS[@]}"; do
      l=${R[$key,line]}
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$(label_of "$key")" "${R[$key,msgs]}" "$(awk -v r="$(field rps "$l")" 'BEGIN {printf "%.0f", r}')" \
        "$(ms "$(field p50_us "$l")")" "$(ms "$(field p99_us "$l")")" "$(ms "$(field p999_us "$l")")" \
        "$(($(field non2xx "$l") + $(field connect_errors "$l") + $(field read_errors "$l") + $(field write_errors "$l") + $(field timeouts "$l")))" \
        "${R[$key,delivered_rate]}" "$(cut -d' ' -f1 <<<"${R[$key,report]}")" \
        "${R[$key,syncs]:-n/a}" "${R[$key,per_sync]:-n/a}"
    done
    echo
    echo "Where the time went, same rows (seconds over the ${DURATION} s row; 2 CPUs = $((2 * DURATION)) CPU-seconds):"
    echo
    echo "| form | sidecar CPU s | CPU µs/msg | CPU s: API / dispatcher / store writer | waiting for a CPU s: API / dispatcher / store writer | nginx CPU s | machine busy % | other load % | store MiB | RSS MiB |"
    echo "|---|--:|--:|---|---|--:|--:|--:|--:|--:|"
    for key in "${ROWS[@]}"; do
      printf '| %s | %s | %s | %s / %s / %s | %s / %s / %s | %s | %s | %s | %s | %s |\n' \
        "$(label_of "$key")" "${R[$key,cpu]}" "${R[$key,us_per_msg]}" \
        "${R[$key,cpu_api]}" "${R[$key,cpu_dispatch]}" "${R[$key,cpu_store]}" \
        "${R[$key,wait_api]}" "${R[$key,wait_dispatch]}" "${R[$key,wait_store]}" \
        "${R[$key,cpu_nginx]}" "${R[$key,busy]}" "${R[$key,other]}" "${R[$key,store_mb]}" "${R[$key,rss]}"
    done
    echo
    echo "- p50/p99: wrk's, per request (a batch row's request carries $BATCH messages), closed loop."
    echo "  non-2xx also counts socket errors and timeouts."
    echo "- deliveries/s: the delivered metric's growth over the row; pending at end: the endpoint's"
    echo "  queue when the row ended. fdatasyncs: the sidecar's, counted with perf's syscall tracepoints."
    echo "- CPU µs/msg: the sidecar's user + system CPU over the row ÷ messages accepted (with"
    echo "  deliveries running it also delivered meanwhile). API: the admin listener's thread;"
    echo "  dispatcher: the runtime where delivery attempts run; store writer: redb transactions and"
    echo "  fsyncs. Waiting for a CPU: schedstat's run_delay, time runnable but not running."
    echo "- machine busy: both CPUs, everything; other load: what was not the sidecar, nginx or the"
    echo "  load generator (other processes on the machine). Above ~10% the row is disturbed."
  fi
  if has_phase redis; then
    echo
    echo "## The reference: Redis XADD, appendonly yes, appendfsync always"
    echo
    echo "redis-benchmark (1 client thread) against a fresh redis-server per row (\`--save ''"
    echo "--appendonly yes --appendfsync always --auto-aof-rewrite-percentage 0\`), after a warm-up of"
    echo "a tenth of the row's requests; pipelined rows pair with the batch rows."
    echo
    echo "| pairs with | conns | pipeline | XADDs | XADD/s | p50 ms | p99 ms | redis CPU s | CPU µs/XADD | machine busy % | other load % | fdatasyncs | XADDs per fdatasync | AOF MiB |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for key in "${ACCEPT_KEYS[@]}"; do
      [ -n "${R[redis-$key,rps]:-}" ] || continue
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label_of "$key")" \
        "${R[redis-$key,conns]}" "${R[redis-$key,pipeline]}" "${R[redis-$key,n]}" "${R[redis-$key,rps]}" \
        "${R[redis-$key,p50]}" "${R[redis-$key,p99]}" "${R[redis-$key,cpu]}" "${R[redis-$key,us_per_msg]}" \
        "${R[redis-$key,busy]}" "${R[redis-$key,other]}" "${R[redis-$key,syncs]:-n/a}" "${R[redis-$key,per_sync]:-n/a}" "${R[redis-$key,aof_mb]}"
    done
    if has_phase accept; then
      echo
      echo "| sidecar form | vs Redis | sidecar messages/s | Redis XADD/s | throughput sidecar/Redis | sidecar p99 ms | Redis p99 ms | p99 sidecar/Redis | CPU per message sidecar/Redis |"
      echo "|---|---|--:|--:|--:|--:|--:|--:|--:|"
      local rk
      for key in "${ROWS[@]}"; do
        rk=$(redis_key_of "$key")
        [ -n "${R[redis-$rk,rps]:-}" ] || continue
        printf '| %s | c%s, pipeline %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label_of "$key")" \
          "${R[redis-$rk,conns]}" "${R[redis-$rk,pipeline]}" "${R[$key,msgs]}" \
          "${R[redis-$rk,rps]}" "$(ratio "${R[$key,msgs]}" "${R[redis-$rk,rps]}")" \
          "$(ms "$(field p99_us "${R[$key,line]}")")" "${R[redis-$rk,p99]}" \
          "$(ratio "$(ms "$(field p99_us "${R[$key,line]}")")" "${R[redis-$rk,p99]}")" \
          "$(ratio "${R[$key,us_per_msg]}" "${R[redis-$rk,us_per_msg]}")"
      done
      echo
      echo "- The sidecar's p99 is per request, of ${BATCH} messages in the batch rows; Redis's is per"
      echo "  XADD (redis-benchmark reports per command; a pipelined command waits for the others)."
      echo "- With deliveries running the sidecar also signs and delivers every message to nginx on"
      echo "  the same 2 CPUs; Redis only appends. The paused rows are the like-for-like comparison."
    fi
  fi
  if has_phase drain; then
    read -r -a before <<<"${R[drain,before]}"
    read -r -a after <<<"${R[drain,after]}"
    echo
    echo "## Deliveries to a fast receiver (a backlog drained)"
    echo
    echo "$DRAIN messages accepted with the receiver down (batches of $LOAD_BATCH, $LOAD_CONNECTIONS connections:"
    echo "$(field seconds "${R[drain,load]}") s), then nginx started; polled every 50 ms until nothing was pending or in flight."
    echo
    echo "| backlog | failed attempts before | breaker before | first delivery after | all delivered after | drain (first to last) | deliveries/s | delivered (store) | failed attempts after | store MiB after |"
    echo "|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|"
    printf '| %s | %s | %s | %s ms | %s ms | %s ms | %s | %s | %s | %s |\n' \
      "${R[drain,p0]}" "${before[3]}" "${before[4]}" "${R[drain,first_ms]}" "${R[drain,total_ms]}" \
      "${R[drain,drain_ms]}" "${R[drain,rate]}" "${after[2]}" "${after[3]}" "${R[drain,store_mb]}"
    echo
    echo "From nginx's start to the end: sidecar CPU ${R[drain,cpu]} s (API ${R[drain,cpu_api]}, dispatcher"
    echo "${R[drain,cpu_dispatch]}, store writer ${R[drain,cpu_store]}), ${R[drain,us_per_msg]} µs per delivery; waiting for a CPU: dispatcher"
    echo "${R[drain,wait_dispatch]} s, store writer ${R[drain,wait_store]} s; nginx CPU ${R[drain,cpu_nginx]} s; machine ${R[drain,busy]}% busy, other load ${R[drain,other]}%."
    echo
    echo "- first delivery after: from nginx's start; the circuit breaker had opened on the refused"
    echo "  connections and lets one trial through every 10 s."
  fi
  if has_phase backlog; then
    echo
    echo "## A backlog of ${R[backlog,n]} messages (receiver down)"
    echo
    echo "Asked for $BACKLOG, at most ${BACKLOG_SECONDS} s of loading: ${R[backlog,n]} accepted in $(field seconds "${R[backlog,load]}") s"
    echo "(${R[backlog,load_rate]} messages/s, batches of $LOAD_BATCH over $LOAD_CONNECTIONS connections, python3 client;"
    echo "sidecar CPU ${R[backlog,load_cpu]} s, of which store writer ${R[backlog,load_cpu_store]} s; machine ${R[backlog,load_busy]}% busy, other load ${R[backlog,load_other]}%)."
    echo
    echo "| measure | value |"
    echo "|---|--:|"
    echo "| RSS idle, empty store | ${R[backlog,rss_idle]} MiB |"
    echo "| RSS with the backlog (VmRSS; peak VmHWM) | ${R[backlog,rss]} MiB (${R[backlog,hwm]}) |"
    echo "| webhooks.redb size (allocated) | ${R[backlog,disk]} MiB (${R[backlog,disk_alloc]}) |"
    echo "| bytes on disk per message | $(awk -v m="${R[backlog,disk]}" -v n="${R[backlog,n]}" 'BEGIN {printf "%.0f", m * 1048576 / n}') |"
    echo "| SIGTERM to exit | ${R[backlog,stop_ms]} ms |"
    echo "| restart after SIGTERM: to \"webhook store open\" | ${R[backlog,term_open]} ms |"
    echo "| restart after SIGTERM: to the API reporting all pending | ${R[backlog,term_ready]} ms |"
    echo "| RSS after that restart (peak) | ${R[backlog,term_rss]} MiB (${R[backlog,term_hwm]}) |"
    echo "| restart after SIGKILL: to \"webhook store open\" | ${R[backlog,kill_open]} ms |"
    echo "| restart after SIGKILL: to the API reporting all pending | ${R[backlog,kill_ready]} ms |"
    echo "| RSS after that restart (peak) | ${R[backlog,kill_rss]} MiB (${R[backlog,kill_hwm]}) |"
    echo
    echo "- Restart times are from exec to the log line / to \`GET /webhooks/v1/endpoints\` showing"
    echo "  pending + in flight = ${R[backlog,n]} (polled every 20 ms)."
  fi
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
