#!/usr/bin/env bash
# Bulwark proxy benchmark: the same upstream and the same load, through no proxy, nginx,
# haproxy and bulwark-sidecar, with no policy, a rate limit that never triggers, a rate limit
# that rejects about half of the requests, and (bulwark only: the peers have no shared store)
# a global limit through Redis in exact and in fast mode that never triggers, and (bulwark only:
# the peers have no pooled forward-proxy mode) the app's outbound call through the sidecar's
# outbound listener, plain (f) and through a FailoverPolicy upstream that never fails (g).
# Prints a Markdown table and writes it to
# bench/results/latest.md. bench/README.md explains the method.
#
# Usage: bash bench/run.sh            (or: make bench)
# Environment (all optional):
#   BENCH_DURATION    seconds of measured load per row (default 10)
#   BENCH_WARMUP      seconds of warm-up load per row, not measured (default 2)
#   BENCH_CONNECTIONS wrk connections (default 32; wrk always runs 1 thread)
#   BENCH_TARGETS     subset of "direct nginx haproxy pingora bulwark" (default: all, in that order;
#                     pingora is Pingora alone, no Bulwark code: scenario a only)
#   BENCH_SCENARIOS   subset of "a b c d e f g h" (default: all)
#   BENCH_SKIP_BUILD  1: do not run cargo build, use the sidecar binary as it is
#   BENCH_KEEP_TMP    1: keep the temp dir with the generated configs and logs
#   CARGO_TARGET_DIR  where cargo builds (default: target/); the sidecar is read from its release/
#
# Everything listens on 127.0.0.1 only, on free ports picked at start. Every process started
# here is stopped on exit, also on failure or Ctrl-C.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=bench
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh" # log, die, init_tmp, start_bg, stop_proc, free_ports, render, wait_ready, require_commands, start_upstream

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
TARGETS=${BENCH_TARGETS:-direct nginx haproxy pingora bulwark}
SCENARIOS=${BENCH_SCENARIOS:-a b c d e f g h}
OUT="$BENCH_DIR/results/latest.md"

for v in DURATION WARMUP CONNECTIONS; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
    die "BENCH_$v must be a positive integer, got '${!v}'"
  fi
done
[ "$DURATION" -le 600 ] || die "BENCH_DURATION is capped at 600 seconds per row"
[ "$WARMUP" -le 60 ] || die "BENCH_WARMUP is capped at 60 seconds per row"
for t in $TARGETS; do
  case $t in direct | nginx | haproxy | pingora | bulwark) ;; *) die "unknown target '$t' in BENCH_TARGETS" ;; esac
done
for s in $SCENARIOS; do
  case $s in a | b | c | d | e | f | g | h) ;; *) die "unknown scenario '$s' in BENCH_SCENARIOS" ;; esac
done

# --- Dependencies and the sidecar binary ----------------------------------------------------

require_commands nginx haproxy wrk curl python3 pgrep redis-server

SIDECAR="${CARGO_TARGET_DIR:-$ROOT/target}/release/bulwark-sidecar"
case $SIDECAR in /*) ;; *) SIDECAR="$ROOT/$SIDECAR" ;; esac
BARE_PINGORA="$(dirname "$SIDECAR")/examples/bare_pingora"
SIDECAR_NA=""
case " $TARGETS " in
  *" bulwark "* | *" pingora "*)
    if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
      log "building the sidecar: cargo build --release -p bulwark-sidecar --bins --example bare_pingora"
      if ! (cd "$ROOT" && cargo build --release -p bulwark-sidecar --bins --example bare_pingora); then
        log "warning: the sidecar does not build; its rows are skipped"
        SIDECAR_NA="n/a (sidecar build failed)"
      fi
    fi
    [ -n "$SIDECAR_NA" ] || [ -x "$SIDECAR" ] || SIDECAR_NA="n/a (no binary at $SIDECAR)"
    ;;
esac

# --- Processes: started in the background, all stopped on exit ------------------------------

init_tmp bulwark-bench # $TMP, and the traps that stop every start_bg process (lib.sh)

CLK_TCK=$(getconf CLK_TCK)

# CPU ticks used so far by the given pids, all threads: "user system".
cpu_ticks() {
  local user=0 sys=0 p u s
  for p in "$@"; do
    # Field 2 (comm) may hold spaces: cut up to its closing parenthesis; utime, stime follow.
    u=0 s=0
    read -r u s < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || true
    user=$((user + ${u:-0}))
    sys=$((sys + ${s:-0}))
  done
  echo "$user $sys"
}

# Resident memory in KiB of the given pids, added up.
rss_kib() {
  local total=0 p r
  for p in "$@"; do
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || r=0
    total=$((total + ${r:-0}))
  done
  echo "$total"
}

# --- The upstream: one nginx, 1 worker, "ok\n" from memory ---------------------------------

start_upstream

# --- Redis for the global scenarios ---------------------------------------------------------

REDIS_URL=""
if [[ " $SCENARIOS " == *" d "* || " $SCENARIOS " == *" e "* ]]; then
  read -r REDIS_PORT <<<"$(free_ports 1)"
  mkdir -p "$TMP/redis"
  LOG_FILE="$TMP/redis/stderr.log"
  start_bg redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG || die "redis-server did not start: $(tail -n 5 "$LOG_FILE")"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
  log "redis on 127.0.0.1:$REDIS_PORT ($(redis-server --version | cut -d' ' -f3))"
fi

# --- Targets --------------------------------------------------------------------------------

SIDECAR_HELP=""
[ -n "$SIDECAR_NA" ] || SIDECAR_HELP=$("$SIDECAR" --help 2>&1 || true)

# Prometheus sample value of the first line of /metrics matching the regex $2 (empty if none).
metric() {
  curl -s --max-time 2 "$1" | grep -E "$2" | head -1 | awk '{print $NF}' || true
}

# Starts the target $1 for scenario $2. Sets TARGET_URL and TARGET_PID (empty for direct), or
# returns 1 with NA set to the reason the row cannot run.
start_target() {
  local target=$1 scenario=$2 dir="$TMP/$1-$2" port admin
  mkdir -p "$dir"
  NA="" TARGET_PID="" TARGET_URL="" HOST_HEADER=""
  [ "$scenario" != f ] || HOST_HEADER="127.0.0.1:$UPSTREAM_PORT"
  [ "$scenario" != g ] || HOST_HEADER="payments"
  LOG_FILE="$dir/stderr.log"
  case $target in
    direct)
      TARGET_URL="http://127.0.0.1:$UPSTREAM_PORT/"
      return 0
      ;;
    nginx | haproxy)
      if [ "$scenario" = d ] || [ "$scenario" = e ]; then
        NA="n/a (no shared counter store; compare with its local limit in b)"
        return 1
      fi
      if [ "$scenario" = f ] || [ "$scenario" = g ]; then
        NA="n/a (no forward-proxy mode with pooled upstream connections; compare with its row in a)"
        return 1
      fi
      ;;
  esac
  case $target in
    nginx)
      read -r port <<<"$(free_ports 1)"
      render "$BENCH_DIR/config/nginx-proxy.conf.in" "$dir/nginx.conf" \
        "PREFIX=$dir" "LISTEN_PORT=$port" "UPSTREAM_PORT=$UPSTREAM_PORT"
      cp "$BENCH_DIR/config/nginx-policy-$scenario.conf" "$dir/policy.conf"
      nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/check.log" 2>&1 ||
        die "invalid nginx config for scenario $scenario: $(cat "$dir/check.log")"
      start_bg nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
      ;;
    haproxy)
      read -r port <<<"$(free_ports 1)"
      render "$BENCH_DIR/config/haproxy.cfg.in" "$dir/haproxy.cfg.tmp" \
        "LISTEN_PORT=$port" "UPSTREAM_PORT=$UPSTREAM_PORT"
      sed -e "/@@POLICY@@/{r $BENCH_DIR/config/haproxy-policy-$scenario.cfg" -e 'd}' \
        "$dir/haproxy.cfg.tmp" >"$dir/haproxy.cfg"
      haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 ||
        die "invalid haproxy config for scenario $scenario: $(cat "$dir/check.log")"
      start_bg haproxy -db -f "$dir/haproxy.cfg"
      ;;
    pingora)
      if [ -n "$SIDECAR_NA" ] || ! [ -x "$BARE_PINGORA" ]; then
        NA="n/a (no binary at $BARE_PINGORA)"
        return 1
      fi
      read -r port <<<"$(free_ports 1)"
      start_bg "$BARE_PINGORA" "127.0.0.1:$port" "127.0.0.1:$UPSTREAM_PORT"
      ;;
    bulwark)
      if [ -n "$SIDECAR_NA" ]; then
        NA=$SIDECAR_NA
        return 1
      fi
      local outbound
      read -r port admin outbound <<<"$(free_ports 3)"
      local args=(--inbound-listen "127.0.0.1:$port" --app "127.0.0.1:$UPSTREAM_PORT"
        --admin-listen "127.0.0.1:$admin" --outbound-listen "127.0.0.1:$outbound"
        --state-dir "$dir/state" --threads 1)
      if has_policy "$scenario"; then
        if ! grep -q -- '--config-dir' <<<"$SIDECAR_HELP"; then
          NA="n/a (no policy support yet)"
          return 1
        fi
        mkdir -p "$dir/policies"
        case $scenario in
          b) cp "$BENCH_DIR/policies/never-triggers.yaml" "$dir/policies/" ;;
          c) cp "$BENCH_DIR/policies/half.yaml" "$dir/policies/" ;;
          d) cp "$BENCH_DIR/policies/global-exact.yaml" "$dir/policies/" ;;
          e) cp "$BENCH_DIR/policies/global-fast.yaml" "$dir/policies/" ;;
          g) render "$BENCH_DIR/policies/failover.yaml.in" "$dir/policies/failover.yaml" \
            "UPSTREAM_PORT=$UPSTREAM_PORT" ;;
          h) cp "$BENCH_DIR/policies/gate-passes.yaml" "$dir/policies/" ;;
        esac
        args+=(--config-dir "$dir/policies")
        [ -z "$REDIS_URL" ] || args+=(--redis-url "$REDIS_URL")
      fi
      start_bg "$SIDECAR" "${args[@]}"
      if [ "$scenario" = f ] || [ "$scenario" = g ]; then port=$outbound; fi
      ;;
  esac
  TARGET_PID=$STARTED_PID
  TARGET_URL="http://127.0.0.1:$port/"
  if ! wait_ready "$TARGET_PID" "$TARGET_URL"; then
    if [ "$target" = bulwark ] && has_policy "$scenario"; then
      NA="n/a (no policy support yet: sidecar did not serve with --config-dir: $(tail -1 "$dir/stderr.log" | cut -c1-120))"
      stop_proc "$TARGET_PID" INT
      return 1
    fi
    die "$target did not start for scenario $scenario: $(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null | tail -n 5)"
  fi
  # The sidecar must show that it loaded the policy, else the row would measure plain proxying.
  if [ "$target" = bulwark ] && has_policy "$scenario"; then
    local loaded="" metrics="http://127.0.0.1:$admin/metrics"
    for _ in $(seq 50); do
      if [ "$scenario" = c ]; then
        # Functional: the second "free" request of the hour is refused.
        http_status -H 'x-api-key: free' "$TARGET_URL" >/dev/null
        [ "$(http_status -H 'x-api-key: free' "$TARGET_URL")" = 429 ] && loaded=1
      fi
      local reloads version
      reloads=$(metric "$metrics" '^bulwark_config_reloads_total\{.*result="success"')
      version=$(metric "$metrics" '^bulwark_snapshot_version ')
      if [ "${reloads%.*}" -gt 0 ] 2>/dev/null || [ "${version%.*}" -gt 0 ] 2>/dev/null; then loaded=1; fi
      [ -n "$loaded" ] && break
      sleep 0.2
    done
    if [ -z "$loaded" ]; then
      NA="n/a (no policy support yet)"
      stop_proc "$TARGET_PID" INT
      return 1
    fi
  fi
  return 0
}

stop_target() {
  [ -n "$TARGET_PID" ] || return 0
  case $1 in
    bulwark | pingora) stop_proc "$TARGET_PID" INT ;; # Pingora: SIGINT is the fast shutdown
    nginx) stop_proc "$TARGET_PID" TERM ;;  # nginx: SIGTERM is the fast shutdown
    *) stop_proc "$TARGET_PID" TERM ;;
  esac
}

# --- Load -----------------------------------------------------------------------------------

# Runs wrk for $1 seconds against $2, writes its output to $3; returns the BENCH line.
run_wrk() {
  local secs=$1 url=$2 out=$3
  BENCH_HOST=$HOST_HEADER wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --timeout 5s -s "$BENCH_DIR/wrk/bench.lua" "$url" >"$out" 2>&1 ||
    die "wrk failed against $url: $(tail -n 3 "$out")"
  grep '^BENCH ' "$out" || die "wrk printed no BENCH line: $(tail -n 3 "$out")"
}

# field NAME "BENCH k=v ..." -> v
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }

declare -A R # R[scenario,target,metric]

# Expected 429 share in % for scenario $1, target $2: only the proxies enforce a policy.
expected_share() { if [ "$1" = c ] && [ "$2" != direct ]; then echo 50; else echo 0; fi; }

run_row() {
  local target=$1 scenario=$2 dir="$TMP/$1-$2" pids=() idle_rss="" end_rss="" u0 s0 u1 s1 line sanity=""
  log "scenario $scenario, $target: starting"
  if ! start_target "$target" "$scenario"; then
    R[$scenario,$target,na]=$NA
    log "scenario $scenario, $target: $NA"
    return 0
  fi
  # Sanity: the limit does what the scenario says before the load starts.
  local s_paid s_free1 s_free2
  s_paid=$(http_status -H 'x-api-key: paid' "$TARGET_URL")
  s_free1=$(http_status -H 'x-api-key: free' "$TARGET_URL")
  s_free2=$(http_status -H 'x-api-key: free' "$TARGET_URL")
  if [ "$(expected_share "$scenario" "$target")" -gt 0 ]; then
    [ "$s_paid" = 200 ] && [ "$s_free2" = 429 ] || sanity="paid→$s_paid, free→$s_free1,$s_free2"
  else
    [ "$s_paid" = 200 ] && [ "$s_free1" = 200 ] && [ "$s_free2" = 200 ] || sanity="paid→$s_paid, free→$s_free1,$s_free2"
  fi
  if [ -n "$TARGET_PID" ]; then
    mapfile -t pids < <(proc_tree "$TARGET_PID")
    idle_rss=$(rss_kib "${pids[@]}")
  fi
  run_wrk "$WARMUP" "$TARGET_URL" "$dir/wrk-warmup.txt" >/dev/null
  [ -z "$TARGET_PID" ] || read -r u0 s0 <<<"$(cpu_ticks "${pids[@]}")"
  line=$(run_wrk "$DURATION" "$TARGET_URL" "$dir/wrk.txt")
  if [ -n "$TARGET_PID" ]; then
    read -r u1 s1 <<<"$(cpu_ticks "${pids[@]}")"
    end_rss=$(rss_kib "${pids[@]}")
    R[$scenario,$target,cpu]=$(awk -v d=$((u1 + s1 - u0 - s0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", d / hz}')
    R[$scenario,$target,user_cpu]=$(awk -v d=$((u1 - u0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", d / hz}')
    R[$scenario,$target,idle_rss]=$idle_rss
    R[$scenario,$target,end_rss]=$end_rss
  fi
  stop_target "$target"
  local k
  for k in requests rps p50_us p99_us p999_us non2xx connect_errors read_errors write_errors timeouts; do
    R[$scenario,$target,$k]=$(field "$k" "$line")
  done
  R[$scenario,$target,sanity]=$sanity
  log "scenario $scenario, $target: $(printf '%.0f' "${R[$scenario,$target,rps]}") req/s, p99 ${R[$scenario,$target,p99_us]} us, non-2xx ${R[$scenario,$target,non2xx]}/${R[$scenario,$target,requests]}"
}

# How busy the machine is (all CPUs, %) over one second, before any load of ours. The load
# average would also count the cargo build that just ran.
cpu_busy_pct() {
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); busy = y[1] - x[1];
    idle = y[2] - x[2]; pct = (busy + idle > 0) ? 100 * busy / (busy + idle) : 0; printf "%.0f", pct}'
}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$(cpu_busy_pct)
if [ "$BUSY_START" -gt 10 ]; then
  log "warning: the machine is not idle (${BUSY_START}% CPU busy before the run): results will be noisy"
fi
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Pingora alone has no policy: it has a row in scenario a only.
# nginx and haproxy have no feature-flag gates: scenario h is the sidecar's (and direct's) only.
has_row() {
  case $2 in
    h) [ "$1" = bulwark ] || [ "$1" = direct ] ;;
    a) true ;;
    *) [ "$1" != pingora ] ;;
  esac
}
# Scenarios whose sidecar rows load a policy.
has_policy() { [ "$1" != a ] && [ "$1" != f ]; }

for scenario in $SCENARIOS; do
  for target in $TARGETS; do
    if has_row "$target" "$scenario"; then run_row "$target" "$scenario"; fi
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Report ---------------------------------------------------------------------------------

scenario_name() {
  case $1 in
    a) echo "a: no policy" ;;
    b) echo "b: limit never triggers" ;;
    c) echo "c: ~50% rejected" ;;
    d) echo "d: global exact (Redis), never triggers" ;;
    e) echo "e: global fast (Redis), never triggers" ;;
    f) echo "f: outbound (the app's call through the sidecar), no policy" ;;
    g) echo "g: outbound through a FailoverPolicy upstream, nothing fails" ;;
    h) echo "h: a flag gate every request passes, variant header injected" ;;
  esac
}
target_name() {
  case $1 in
    direct) echo "direct (no proxy, no policy)" ;;
    bulwark) echo "bulwark-sidecar" ;;
    pingora) echo "pingora alone (no Bulwark code)" ;;
    *) echo "$1" ;;
  esac
}
ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }
mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}' || echo "—"; }

row() {
  local s=$1 t=$2 k="$1,$2"
  if [ -n "${R[$k,na]:-}" ]; then
    echo "| $(scenario_name "$s") | $(target_name "$t") | ${R[$k,na]} | | | | | | | | | | | | |"
    return
  fi
  local req=${R[$k,requests]} rps=${R[$k,rps]} share checks=() exp
  share=$(awk -v n="${R[$k,non2xx]}" -v r="$req" 'BEGIN {printf "%.1f", r ? 100 * n / r : 0}')
  exp=$(expected_share "$s" "$t")
  if awk -v a="$share" -v e="$exp" 'BEGIN {d = a - e; exit !(d > 10 || d < -10)}'; then
    checks+=("⚠ 429 share ${share}% (expected ~${exp}%)")
  fi
  [ -z "${R[$k,sanity]}" ] || checks+=("⚠ sanity check: ${R[$k,sanity]}")
  local errs=$((${R[$k,connect_errors]} + ${R[$k,read_errors]} + ${R[$k,write_errors]} + ${R[$k,timeouts]}))
  [ "$errs" -eq 0 ] || checks+=("⚠ socket errors: connect ${R[$k,connect_errors]}, read ${R[$k,read_errors]}, write ${R[$k,write_errors]}, timeout ${R[$k,timeouts]}")
  local cpu="—" cpu_per="—" user_per="—" rps_ratio="—" lat_ratio="—"
  if [ -n "${R[$k,cpu]:-}" ]; then
    cpu=${R[$k,cpu]}
    cpu_per=$(awk -v c="$cpu" -v r="$req" 'BEGIN {printf "%.1f", r ? c * 1e6 / r : 0}')
    user_per=$(awk -v c="${R[$k,user_cpu]}" -v r="$req" 'BEGIN {printf "%.1f", r ? c * 1e6 / r : 0}')
  fi
  # Global rows compare with nginx's local limit (b): nginx has no shared store.
  local ref=$s
  case $s in d | e) ref=b ;; f | g | h) ref=a ;; esac
  if [ "$t" != direct ] && [ -n "${R[$ref,nginx,rps]:-}" ]; then
    rps_ratio=$(awk -v a="$rps" -v b="${R[$ref,nginx,rps]}" 'BEGIN {printf "%.2f", a / b}')
    if [ -n "${R[$ref,direct,p99_us]:-}" ]; then
      lat_ratio=$(awk -v p="${R[$k,p99_us]}" -v n="${R[$ref,nginx,p99_us]}" -v d="${R[$ref,direct,p99_us]}" \
        'BEGIN {if (n - d > 0) printf "%.2f", (p - d) / (n - d); else print "n/a"}')
    fi
  fi
  local check="ok"
  [ ${#checks[@]} -eq 0 ] || check=$(
    IFS=";"
    echo "${checks[*]}"
  )
  printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
    "$(scenario_name "$s")" "$(target_name "$t")" "$rps" \
    "$(ms "${R[$k,p50_us]}")" "$(ms "${R[$k,p99_us]}")" "$(ms "${R[$k,p999_us]}")" \
    "$share" "$cpu" "$cpu_per" "$user_per" "$(mib "${R[$k,idle_rss]:-}")" "$(mib "${R[$k,end_rss]:-}")" \
    "$rps_ratio" "$lat_ratio" "$check"
}

version_of() { "$@" 2>&1 | head -1 || true; }
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[ -n "$cpu_model" ] || cpu_model=$(lscpu 2>/dev/null | awk -F': +' '/Model name/ {print $2; exit}')

repro="make bench"
env_prefix=""
for v in BENCH_DURATION BENCH_WARMUP BENCH_CONNECTIONS BENCH_TARGETS BENCH_SCENARIOS; do
  case ${!v:-} in
    "") ;;
    *[!A-Za-z0-9_.-]*) env_prefix+="$v='${!v}' " ;;
    *) env_prefix+="$v=${!v} " ;;
  esac
done

report() {
  echo "# Bulwark proxy benchmark"
  echo
  # shellcheck disable=SC2028 # the \n is meant literally (nginx's config syntax)
  echo "Run $STARTED_AT: the same upstream (nginx, 1 worker, \`return 200 \"ok\\n\"\`) and the same"
  echo "load (wrk, 1 thread, $CONNECTIONS keep-alive connections, header \`x-api-key\` alternating"
  echo "\`free\`/\`paid\`) for every row; each proxy runs 1 worker/thread with keep-alive to the"
  echo "upstream. ${WARMUP} s warm-up, then ${DURATION} s measured per row (BENCH_DURATION=$DURATION)."
  echo
  echo "| scenario | target | req/s | p50 ms | p99 ms | p99.9 ms | 429 % | proxy CPU s | CPU µs/req | user µs/req | RSS idle MiB | RSS end MiB | req/s vs nginx | p99 added vs nginx | check |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
  local s t
  for s in $SCENARIOS; do
    for t in $TARGETS; do if has_row "$t" "$s"; then row "$s" "$t"; fi; done
  done
  echo
  echo "- 429 %: responses that were not 2xx/3xx (wrk's count), i.e. the rate limits' 429s;"
  echo "  expected ~0% in a and b, ~50% in c. \`check\` flags a share off by more than 10 points, a"
  echo "  failed pre-run check (\`paid\` → 200, second \`free\` → 429 in c), and socket errors."
  echo "- Latency: wrk's per-request latency over all responses, 429s included (percentiles from"
  echo "  wrk's Lua \`latency:percentile()\`); closed-loop load, so no coordinated-omission correction."
  echo "- proxy CPU s: user+system CPU of the proxy's processes (nginx: master and worker) during the"
  echo "  measured run; user µs/req: the user-mode part of it (the proxy's own code, no syscalls);"
  echo "  RSS: VmRSS of those processes added up, after start-up (idle) and after the run."
  echo "- req/s vs nginx: throughput ÷ nginx's in the same scenario. p99 added vs nginx:"
  echo "  (p99 − direct p99) ÷ (nginx p99 − direct p99), same scenario (1.00 = adds as much as nginx;"
  echo "  below 0 = p99 under direct's, e.g. when fast local 429s dominate or the baseline was noisy)."
  echo "- pingora alone: a Pingora proxy with no Bulwark code (sidecar/examples/bare_pingora.rs), the"
  echo "  sidecar's Pingora version, allocator and thread count: bulwark-sidecar minus this row is"
  echo "  what Bulwark itself costs per request."
  echo "- nginx's \`limit_req\` cannot express 1 request per hour: scenario c uses 1r/m for \`free\`."
  echo "- f: wrk sends \`Host: <upstream>\` to the sidecar's outbound listener, which forwards to the"
  echo "  service the Host names (as an app's client would call it); its ratios compare with nginx's"
  echo "  reverse-proxy row in a (nginx and haproxy pool upstream connections only for configured"
  echo "  upstreams, not as forward proxies)."
  echo "- g: as f, with \`Host: payments\` matching a FailoverPolicy upstream (bench/policies/failover.yaml.in:"
  echo "  the upstream nginx as its one static backend, health checks every second, outlier detection,"
  echo "  a circuit breaker, retries with a budget, timeouts): failover's cost when nothing fails is"
  echo "  its CPU µs/req against f's."
  echo "- h: as a, with a FeatureFlag gate on every path that every variant passes and the variant"
  echo "  injected as a request header (bench/policies/gate-passes.yaml, targeting key x-api-key):"
  echo "  a gate's cost is its CPU µs/req against a's (ratios are to nginx's a row)."
  echo
  echo "## Machine"
  echo
  echo "- CPUs: $(nproc) × ${cpu_model:-unknown}"
  echo "- Kernel: $(uname -srm)"
  echo "- Other load: ${BUSY_START}% CPU busy in the second before the run; load average (1/5/15 min)"
  echo "  $LOAD_START at start, $LOAD_END at end"
  echo "- $(version_of nginx -v)"
  echo "- $(version_of haproxy -v)"
  echo "- $(version_of wrk -v)"
  if [ -z "$SIDECAR_NA" ] && [ -x "$SIDECAR" ]; then
    echo "- $(version_of "$SIDECAR" --version) (release build, git $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
  fi
  echo
  echo "## Reproduce"
  echo
  echo '```sh'
  echo "${env_prefix}${repro}    # or: ${env_prefix}bash bench/run.sh"
  echo '```'
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
log "written to ${OUT#"$ROOT"/}"
