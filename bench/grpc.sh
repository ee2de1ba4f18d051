#!/usr/bin/env bash
# HTTP/2 and gRPC: unary gRPC calls over h2c (HTTP/2 with prior knowledge, what gRPC sends on a
# plaintext port) to the same upstream through no proxy, nginx (grpc_pass), haproxy (proto h2)
# and bulwark-sidecar, plain and with a per-method RateLimitPolicy that never triggers
# (bench/policies/grpc-never-triggers.yaml). The upstream is grpc-go serving
# grpc.health.v1.Health/Check (bench/grpc-upstream, built by bench/build-grpc-upstream.sh).
#
# Load: h2load, 1 connection with 16 concurrent streams, each call an empty Check request (a
# 5-byte gRPC frame); req/s from h2load, p50/p99 from its per-request log, CPU µs per call and
# RSS of the proxy's processes from /proc. h2load counts HTTP statuses only, and a gRPC error is
# an HTTP 200, so each target then gets a correctness pass with ghz (bench/build-ghz.sh), which
# counts gRPC statuses. Prints Markdown tables and writes them to bench/results/grpc.md.
#
# Usage: bash bench/grpc.sh           (make bench runs it)
# Environment (all optional):
#   BENCH_GRPC_REQUESTS  calls per measured h2load run (default 100000)
#   BENCH_GRPC_WARMUP    calls of the warm-up run before it, not measured (default 20000)
#   BENCH_GRPC_STREAMS   concurrent streams on h2load's one connection (default 16)
#   BENCH_GRPC_ROUNDS    measured runs per target, each on a fresh process, targets interleaved;
#                        the table shows the median (default 3)
#   BENCH_GRPC_CHECK_CALLS  calls of the ghz correctness pass per target (default 20000)
#   BENCH_GRPC_TARGETS   subset of "direct nginx haproxy bulwark bulwark-limit" (default: all)
#   BENCH_SKIP_BUILD     1: do not run cargo build, use the sidecar binary as it is
#   BENCH_KEEP_TMP       1: keep the temp dir with the generated configs, logs and h2load logs
#   CARGO_TARGET_DIR     where cargo builds (default: target/); the sidecar is read from its release/
#
# Everything listens on 127.0.0.1 only, on free ports picked at start. Every process started
# here is stopped on exit, also on failure or Ctrl-C.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=bench-grpc
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

REQUESTS=${BENCH_GRPC_REQUESTS:-100000}
WARMUP=${BENCH_GRPC_WARMUP:-20000}
STREAMS=${BENCH_GRPC_STREAMS:-16}
ROUNDS=${BENCH_GRPC_ROUNDS:-3}
CHECK_CALLS=${BENCH_GRPC_CHECK_CALLS:-20000}
TARGETS=${BENCH_GRPC_TARGETS:-direct nginx haproxy bulwark bulwark-limit}
OUT="$BENCH_DIR/results/grpc.md"
METHOD=grpc.health.v1.Health/Check

for v in REQUESTS WARMUP STREAMS ROUNDS CHECK_CALLS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then die "BENCH_GRPC_$v must be a positive integer, got '${!v}'"; fi
done
[ "$ROUNDS" -le 20 ] || die "BENCH_GRPC_ROUNDS is capped at 20"
for t in $TARGETS; do
  case $t in direct | nginx | haproxy | bulwark | bulwark-limit) ;; *) die "unknown target '$t' in BENCH_GRPC_TARGETS" ;; esac
done

require_commands nginx haproxy h2load curl python3 pgrep
UPSTREAM_BIN=$(bash "$BENCH_DIR/build-grpc-upstream.sh")
GHZ=$(bash "$BENCH_DIR/build-ghz.sh")
SIDECAR="${CARGO_TARGET_DIR:-$ROOT/target}/release/bulwark-sidecar"
case $SIDECAR in /*) ;; *) SIDECAR="$ROOT/$SIDECAR" ;; esac
if [[ " $TARGETS " == *" bulwark"* ]]; then
  if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    log "building the sidecar (release)"
    (cd "$ROOT" && cargo build -q --release -p bulwark-sidecar)
  fi
  [ -x "$SIDECAR" ] || die "no sidecar binary at $SIDECAR (build it, or unset BENCH_SKIP_BUILD)"
fi

init_tmp bulwark-bench-grpc
CLK_TCK=$(getconf CLK_TCK)
FRAME="$TMP/frame.bin" # one empty gRPC message: not compressed, length 0
printf '\0\0\0\0\0' >"$FRAME"

# user+system CPU ticks and VmRSS KiB of the given pids (all threads), added up.
proc_sum() { # proc_sum ticks|rss PID...
  local what=$1 p v total=0
  shift
  for p in "$@"; do
    if [ "$what" = ticks ]; then
      # Field 2 (comm) may hold spaces: cut up to its closing parenthesis; utime, stime follow.
      v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
    else
      v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || v=0
    fi
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# One unary Check call with curl; succeeds when the answer carries grpc-status 0.
grpc_ok() {
  curl -s --http2-prior-knowledge --max-time 2 -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary "@$FRAME" -o /dev/null -D - "http://127.0.0.1:$1/$METHOD" 2>/dev/null |
    tr -d '\r' | grep -qx 'grpc-status: 0'
}

# Waits until a Check call through port $2 answers OK while pid $1 runs (10 s at most).
wait_grpc() {
  for _ in $(seq 100); do
    [ -d "/proc/$1" ] || return 1
    grpc_ok "$2" && return 0
    sleep 0.1
  done
  return 1
}

# Prometheus sample value of the first line of the sidecar's /metrics matching the regex $1.
metric() {
  curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E "$1" | head -1 | awk '{print $NF}' || true
}
ALLOWED_RE='^bulwark_ratelimit_requests_total\{.*decision="allowed".*rule="health-check"'

# --- The upstream: grpc-go, one OS thread for Go code, for the whole run --------------------

read -r UPSTREAM_PORT <<<"$(free_ports 1)"
mkdir -p "$TMP/upstream"
LOG_FILE="$TMP/upstream/log"
start_bg env GOMAXPROCS=1 "$UPSTREAM_BIN" "127.0.0.1:$UPSTREAM_PORT"
wait_grpc "$STARTED_PID" "$UPSTREAM_PORT" || die "the grpc-go upstream did not start: $(tail -n 5 "$LOG_FILE")"
log "grpc-go upstream on 127.0.0.1:$UPSTREAM_PORT"

# --- Targets --------------------------------------------------------------------------------

# Starts target $1 for run $2 (a directory name); sets PORT, TARGET_PID (empty for direct) and
# ADMIN_PORT (the sidecar's).
start_target() {
  local target=$1 dir="$TMP/$2" admin outbound flagd
  mkdir -p "$dir"
  LOG_FILE="$dir/stderr.log"
  TARGET_PID="" ADMIN_PORT=""
  case $target in
    direct)
      PORT=$UPSTREAM_PORT
      return 0
      ;;
    nginx)
      read -r PORT <<<"$(free_ports 1)"
      # nginx 1.22: a plaintext `listen … http2` speaks h2c prior knowledge only. Defaults that
      # break this load: keepalive_requests 1000 sends GOAWAY after 1000 streams (h2load then
      # counts the rest as errored), client_max_body_size 1m refuses larger messages with 413.
      cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_temp_paths "$dir")
    upstream grpc_app {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$PORT http2 backlog=4096;
        http2_max_concurrent_streams 128;
        client_max_body_size 0;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
        location / { grpc_pass grpc://grpc_app; }
    }
}
EOF
      nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/check.log" 2>&1 ||
        die "invalid nginx config: $(cat "$dir/check.log")"
      start_bg nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
      ;;
    haproxy)
      read -r PORT <<<"$(free_ports 1)"
      # A plain bind in mode http takes HTTP/1.1 and h2c prior knowledge on one port; `proto h2`
      # on the server line makes the upstream hop h2c.
      cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:$PORT
    default_backend grpc_app
backend grpc_app
    http-reuse safe
    server app 127.0.0.1:$UPSTREAM_PORT proto h2
EOF
      haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 || die "invalid haproxy config: $(cat "$dir/check.log")"
      start_bg haproxy -db -f "$dir/haproxy.cfg"
      ;;
    bulwark | bulwark-limit)
      read -r PORT admin outbound flagd <<<"$(free_ports 4)"
      ADMIN_PORT=$admin
      local args=(--inbound-listen "127.0.0.1:$PORT" --app "127.0.0.1:$UPSTREAM_PORT"
        --admin-listen "127.0.0.1:$admin" --outbound-listen "127.0.0.1:$outbound"
        --flagd-listen "127.0.0.1:$flagd" --state-dir "$dir/state" --threads 1)
      if [ "$target" = bulwark-limit ]; then
        mkdir -p "$dir/policies"
        cp "$BENCH_DIR/policies/grpc-never-triggers.yaml" "$dir/policies/"
        args+=(--config-dir "$dir/policies")
      fi
      start_bg env RUST_LOG=warn "$SIDECAR" "${args[@]}"
      ;;
  esac
  TARGET_PID=$STARTED_PID
  wait_grpc "$TARGET_PID" "$PORT" ||
    die "$target did not answer a gRPC call: $(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null | tail -n 5)"
  # The sidecar must show that it enforces the policy, else the row would measure plain proxying:
  # the policy's rule counted the readiness call as allowed.
  if [ "$target" = bulwark-limit ]; then
    local n=""
    for _ in $(seq 50); do
      n=$(metric "$ALLOWED_RE")
      [ "${n%.*}" -gt 0 ] 2>/dev/null && return 0
      grpc_ok "$PORT" || true
      sleep 0.2
    done
    die "bulwark-limit: the policy's rule counted no call (bulwark_ratelimit_requests_total: '${n}'): $(tail -n 5 "$dir/stderr.log")"
  fi
}

stop_target() {
  [ -n "$TARGET_PID" ] || return 0
  case $1 in
    bulwark*) stop_proc "$TARGET_PID" INT ;; # Pingora: SIGINT is the fast shutdown
    *) stop_proc "$TARGET_PID" TERM ;;      # nginx, haproxy: SIGTERM is the fast shutdown
  esac
}

# --- Load -----------------------------------------------------------------------------------

# h2load: $1 calls to PORT, output in $2; extra options after.
h2load_run() {
  local n=$1 out=$2
  shift 2
  h2load -n "$n" -c 1 -m "$STREAMS" -d "$FRAME" -H 'content-type: application/grpc' -H 'te: trailers' \
    "$@" "http://127.0.0.1:$PORT/$METHOD" >"$out" 2>&1 || die "h2load failed against port $PORT: $(tail -n 3 "$out")"
}

# "rps calls 2xx failed errored timeout p50_us p99_us" from h2load's output $1 and log file $2.
h2load_stats() {
  python3 - "$1" "$2" <<'PY'
import math, re, sys
out = open(sys.argv[1]).read()
rps = re.search(r"finished in \S+, ([0-9.]+) req/s", out).group(1)
req = re.search(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
ok2xx = re.search(r"status codes: (\d+) 2xx", out).group(1)
# Log columns: start (µs since epoch), HTTP status (-1: failed stream), duration (µs).
lat = sorted(int(c[2]) for c in (l.split("\t") for l in open(sys.argv[2])) if len(c) >= 3 and c[1] != "-1")
pct = lambda p: lat[max(0, math.ceil(p * len(lat)) - 1)] if lat else 0
print(rps, req.group(1), ok2xx, req.group(2), req.group(3), req.group(4), pct(0.50), pct(0.99))
PY
}

# ghz against PORT, its JSON in $1: "OK-count not-OK-count other-codes" (ghz finds the method
# by reflection, through the proxy).
ghz_check() {
  "$GHZ" --insecure --call "$METHOD" -n "$CHECK_CALLS" -c 16 --connections 1 --format json \
    "127.0.0.1:$PORT" >"$1" 2>"$1.err" || true
  python3 - "$1" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print(0, "ghz-failed", ""); sys.exit()
codes = d.get("statusCodeDistribution") or {}
ok = codes.get("OK", 0)
other = ",".join(f"{k}:{v}" for k, v in sorted(codes.items()) if k != "OK")
print(ok, sum(codes.values()) - ok, other)
PY
}

declare -A R # R[target,round,metric]; R[target,ghz_*], R[target,log_*]
log_lines() { grep -cE "$1" "$2" 2>/dev/null || true; }

run_one() {
  local target=$1 round=$2 run="$1-r$2" dir pids=() c0 c1 a0="" a1=""
  dir="$TMP/$run"
  start_target "$target" "$run"
  if [ -n "$TARGET_PID" ]; then
    mapfile -t pids < <(proc_tree "$TARGET_PID")
    R[$target,$round,rss_idle]=$(proc_sum rss "${pids[@]}")
  fi
  h2load_run "$WARMUP" "$dir/h2load-warmup.txt"
  [ "$target" != bulwark-limit ] || a0=$(metric "$ALLOWED_RE")
  [ -z "$TARGET_PID" ] || c0=$(proc_sum ticks "${pids[@]}")
  h2load_run "$REQUESTS" "$dir/h2load.txt" --log-file="$dir/h2load.log"
  if [ -n "$TARGET_PID" ]; then
    c1=$(proc_sum ticks "${pids[@]}")
    R[$target,$round,rss_end]=$(proc_sum rss "${pids[@]}")
    R[$target,$round,cpu_us]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$REQUESTS" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
  fi
  if [ "$target" = bulwark-limit ]; then
    a1=$(metric "$ALLOWED_RE")
    R[$target,$round,counted]=$(awk -v a="$a0" -v b="$a1" 'BEGIN {printf "%.0f", b - a}')
  fi
  local k v stats
  stats=$(h2load_stats "$dir/h2load.txt" "$dir/h2load.log")
  read -r "${R_KEYS[@]/#/v_}" <<<"$stats"
  for k in "${R_KEYS[@]}"; do
    v="v_$k"
    R[$target,$round,$k]=${!v}
  done
  if [[ $target == bulwark* ]]; then
    R[$target,$round,log_load]=$(log_lines ' (ERROR|WARN) ' "$dir/stderr.log")
  fi
  # The correctness pass, once per target, after the measured run of the first round.
  if [ "$round" = 1 ]; then
    read -r "R_ghz_ok" "R_ghz_bad" "R_ghz_codes" <<<"$(ghz_check "$dir/ghz.json")"
    R[$target,ghz_ok]=$R_ghz_ok R[$target,ghz_bad]=$R_ghz_bad R[$target,ghz_codes]=${R_ghz_codes:-}
    [ ! -s "$dir/ghz.json.err" ] || R[$target,ghz_codes]+=" $(head -c 200 "$dir/ghz.json.err" | tr '\n' ' ')"
    if [[ $target == bulwark* ]]; then
      R[$target,log_ghz]=$(($(log_lines ' (ERROR|WARN) ' "$dir/stderr.log") - ${R[$target,1,log_load]}))
      R[$target,log_sample]=$(grep -m1 -E ' (ERROR|WARN) ' "$dir/stderr.log" | tr '\t' ' ' | cut -c1-300 || true)
    fi
  fi
  stop_target "$target"
  log "round $round, $target: $(printf '%.0f' "${R[$target,$round,rps]}") req/s, p99 ${R[$target,$round,p99_us]} us, CPU ${R[$target,$round,cpu_us]:-—} us/call"
}
R_KEYS=(rps calls ok2xx failed errored timeout p50_us p99_us)

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat; sleep 1; awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
BUSY_START=$(awk '{b[NR] = $1; i[NR] = $2} END {t = b[2] - b[1] + i[2] - i[1]; printf "%.0f", (t > 0 ? 100 * (b[2] - b[1]) / t : 0)}' <<<"$BUSY_START")
[ "$BUSY_START" -le 10 ] || log "warning: the machine is not idle (${BUSY_START}% CPU busy before the run): results will be noisy"
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$SECONDS

for round in $(seq "$ROUNDS"); do
  for target in $TARGETS; do run_one "$target" "$round"; done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report ---------------------------------------------------------------------------------

# Every run as a TSV line for the report: target round metric=value...
{
  for target in $TARGETS; do
    for round in $(seq "$ROUNDS"); do
      line="$target	$round"
      for k in "${R_KEYS[@]}" cpu_us rss_idle rss_end counted log_load; do line+="	$k=${R[$target,$round,$k]:-}"; done
      echo "$line"
    done
    echo "$target	ghz	ok=${R[$target,ghz_ok]}	bad=${R[$target,ghz_bad]}	codes=${R[$target,ghz_codes]}	log_ghz=${R[$target,log_ghz]:-}	log_sample=${R[$target,log_sample]:-}"
  done
} >"$TMP/runs.tsv"

version_of() { "$@" 2>&1 | head -1 || true; }
env_prefix=""
for v in BENCH_GRPC_REQUESTS BENCH_GRPC_WARMUP BENCH_GRPC_STREAMS BENCH_GRPC_ROUNDS BENCH_GRPC_CHECK_CALLS BENCH_GRPC_TARGETS; do
  case ${!v:-} in
    "") ;;
    *[!A-Za-z0-9_.-]*) env_prefix+="$v='${!v}' " ;;
    *) env_prefix+="$v=${!v} " ;;
  esac
done

report() {
  echo "# gRPC over h2c: bulwark-sidecar vs nginx and haproxy"
  echo
  echo "Run $STARTED_AT: unary \`$METHOD\` calls (an empty request) to a grpc-go upstream"
  echo "(\`GOMAXPROCS=1\`), with h2load: 1 connection, $STREAMS concurrent streams, $WARMUP calls of"
  echo "warm-up, then $REQUESTS measured calls; $ROUNDS round(s), each on a fresh proxy process, targets"
  echo "interleaved. Each proxy runs 1 worker/thread. Median of the rounds:"
  echo
  python3 - "$TMP/runs.tsv" "$REQUESTS" "$CHECK_CALLS" <<'PY'
import statistics, sys
runs, ghz, order = {}, {}, []
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    kv = dict(x.split("=", 1) for x in f[2:])
    if f[0] not in order:
        order.append(f[0])
    if f[1] == "ghz":
        ghz[f[0]] = kv
    else:
        runs.setdefault(f[0], []).append(kv)
requests, check_calls = int(sys.argv[2]), int(sys.argv[3])
num = lambda s: float(s) if s not in ("", None) else None
def med(t, k):
    v = [num(r[k]) for r in runs[t] if num(r.get(k)) is not None]
    return statistics.median(v) if v else None
names = {"direct": "direct (no proxy)", "bulwark": "bulwark-sidecar",
         "bulwark-limit": "bulwark-sidecar + per-method limit (never triggers)"}
fmt = lambda v, f="{:.0f}": "—" if v is None else f.format(v)
ms = lambda v: fmt(v / 1000 if v is not None else None, "{:.2f}")
mib = lambda v: fmt(v / 1024 if v is not None else None, "{:.1f}")
nginx = {k: med("nginx", k) for k in ("rps", "cpu_us", "p99_us")} if "nginx" in runs else {}
direct_p99 = med("direct", "p99_us") if "direct" in runs else None
print("| target | calls/s | calls/s min–max | p50 ms | p99 ms | CPU µs/call | RSS idle MiB | RSS end MiB "
      "| calls/s vs nginx | CPU/call vs nginx | p99 added vs nginx | ghz OK | check |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
for t in order:
    rs = runs[t]
    rps, cpu, p99 = med(t, "rps"), med(t, "cpu_us"), med(t, "p99_us")
    vs_rps = vs_cpu = vs_p99 = "—"
    if t != "nginx" and t != "direct" and nginx:
        vs_rps = f"{rps / nginx['rps']:.2f}×"
        if cpu is not None and nginx["cpu_us"]:
            vs_cpu = f"{cpu / nginx['cpu_us']:.2f}×"
        if direct_p99 is not None:
            added = nginx["p99_us"] - direct_p99
            vs_p99 = f"{(p99 - direct_p99) / added:.2f}×" if added > 0 else "n/a"
    checks = []
    for i, r in enumerate(rs, 1):
        bad = {k: r[k] for k in ("failed", "errored", "timeout") if r[k] != "0"}
        if bad or int(r["ok2xx"]) != requests or int(r["calls"]) != requests:
            checks.append(f"FAILED round {i}: h2load {r['ok2xx']}/{requests} 2xx"
                          + "".join(f", {v} {k}" for k, v in bad.items()))
        if t == "bulwark-limit" and r.get("counted") != str(requests):
            checks.append(f"FAILED round {i}: the rule counted {r.get('counted')} of {requests} calls as allowed")
    g = ghz.get(t, {})
    if g.get("bad") != "0" or g.get("ok") != str(check_calls):
        checks.append(f"FAILED ghz: {g.get('ok')} OK, {g.get('bad')} not OK {g.get('codes', '')}".strip())
    logs = sum(int(r.get("log_load") or 0) for r in rs)
    if logs:
        checks.append(f"⚠ {logs} WARN/ERROR log lines under h2load")
    if g.get("log_ghz") not in (None, "", "0"):
        checks.append(f"⚠ {g['log_ghz']} WARN/ERROR log lines under ghz")
    rps_all = [float(r["rps"]) for r in rs]
    print(f"| {names.get(t, t)} | {rps:.0f} | {min(rps_all):.0f}–{max(rps_all):.0f} | {ms(med(t, 'p50_us'))} "
          f"| {ms(p99)} | {fmt(cpu, '{:.1f}')} | {mib(med(t, 'rss_idle'))} | {mib(max((num(r.get('rss_end')) or 0) for r in rs) or None)} "
          f"| {vs_rps} | {vs_cpu} | {vs_p99} | {g.get('ok', '—')}/{check_calls} | {'; '.join(checks) or 'ok'} |")
print()
print("Every run:")
print()
print("| target | round | calls/s | p50 ms | p99 ms | CPU µs/call | h2load 2xx/failed/errored/timeout |")
print("|---|--:|--:|--:|--:|--:|---|")
for t in order:
    for i, r in enumerate(runs[t], 1):
        print(f"| {names.get(t, t)} | {i} | {float(r['rps']):.0f} | {ms(num(r['p50_us']))} | {ms(num(r['p99_us']))} "
              f"| {r['cpu_us'] or '—'} | {r['ok2xx']}/{r['failed']}/{r['errored']}/{r['timeout']} |")
samples = [(t, g["log_sample"]) for t, g in ghz.items() if g.get("log_sample")]
if samples:
    print()
    print("First WARN/ERROR line of each sidecar target's log (round 1):")
    print()
    for t, s in samples:
        print(f"- {names.get(t, t)}: `{s.replace('`', chr(39))}`")
PY
  echo
  echo "- calls/s, p50, p99: h2load's rate, and the percentiles of its per-request log (\`--log-file\`,"
  echo "  time to the end of each response) over the measured calls. Closed loop: each stream sends its"
  echo "  next call when the previous answer arrives."
  echo "- CPU µs/call: user+system CPU of the proxy's processes (nginx: master and worker; all threads)"
  echo "  over the measured run, from \`/proc/<pid>/stat\`, ÷ calls. RSS: VmRSS after start-up (median)"
  echo "  and after the run (largest)."
  echo "- vs nginx: the ratio to nginx's median (CPU: lower is better); p99 added: (p99 − direct p99)"
  echo "  ÷ (nginx p99 − direct p99) (1.00 = adds as much latency as nginx)."
  echo "- ghz OK: gRPC statuses of a separate pass with ghz v0.120.0 (\`-n $CHECK_CALLS -c 16\`, one"
  echo "  connection, the method found by reflection through the target), after round 1's measured run."
  echo "  h2load counts HTTP statuses only, and gRPC errors are HTTP 200. \`check\` fails a row on any"
  echo "  non-OK status, any h2load call that was not a 2xx (failed, errored, timed out), and, for the"
  echo "  limit row, a rule that did not count every measured call as allowed"
  echo "  (\`bulwark_ratelimit_requests_total\`); it warns on WARN/ERROR lines in the sidecar's log."
  echo "- nginx: \`listen … http2\` (h2c prior knowledge only), \`grpc_pass\`, upstream \`keepalive 64\`,"
  echo "  \`keepalive_requests 1000000\` on both sides (the default 1000 sends GOAWAY after 1000 streams),"
  echo "  \`client_max_body_size 0\`; it opens one upstream connection per concurrent stream. haproxy:"
  echo "  \`nbthread 1\`, a plain \`bind\`, \`server … proto h2\`, \`http-reuse safe\`. bulwark-sidecar:"
  echo "  \`--threads 1\`, \`RUST_LOG=warn\`, \`--app-protocol\` left at \`auto\` (h2c for gRPC calls); the"
  echo "  limit row adds [\`policies/grpc-never-triggers.yaml\`](../policies/grpc-never-triggers.yaml)"
  echo "  (\`Exact /$METHOD\`, per client IP, 10⁹/s) with \`--config-dir\`."
  echo
  echo "## Machine"
  echo
  echo "- CPUs: $(nproc) × $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "- Kernel: $(uname -srm)"
  echo "- Other load: ${BUSY_START}% CPU busy in the second before the run; load average (1/5/15 min)"
  echo "  $LOAD_START at start, $LOAD_END at end; $((SECONDS - T0)) s for the runs"
  echo "- $(version_of nginx -v); $(version_of haproxy -v)"
  echo "- $(version_of h2load --version); $(basename "$(dirname "$(dirname "$GHZ")")"); upstream google.golang.org/grpc $(awk '{sub(/^require /, "")} $1 == "google.golang.org/grpc" {print $2; exit}' "$BENCH_DIR/grpc-upstream/go.mod"), $(version_of go version | cut -d' ' -f3)"
  if [[ " $TARGETS " == *" bulwark"* ]]; then
    echo "- $(version_of "$SIDECAR" --version) (release build, git $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
  fi
  echo
  echo "## Reproduce"
  echo
  echo '```sh'
  echo "${env_prefix}BENCH_SKIP_BUILD=1 bash bench/grpc.sh    # make bench runs it with the defaults"
  echo '```'
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
log "written to ${OUT#"$ROOT"/}"
