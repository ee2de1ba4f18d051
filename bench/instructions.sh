#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's cachegrind: a deterministic cost
# measure for paired before/after comparisons of bulwark-sidecar, next to nginx as a reverse
# proxy. Wall-clock rows (bench/run.sh) vary ±20 % run to run on a shared VM; instruction
# counts barely move. Prints a Markdown table and writes it to bench/results/instructions.md.
# bench/README.md ("Instructions per request") explains the method and what it misses.
#
# Usage: bash bench/instructions.sh [SIDECAR_BINARY ...]
#   default binary: ${CARGO_TARGET_DIR:-target}/release/bulwark-sidecar (not built here);
#   two binaries: a paired comparison, before then after.
# Environment (all optional):
#   INSTR_SCENARIOS  subset of "a b f g h" (default "a b h"), run.sh's letters: a = no policy,
#                    b = a per-IP limit that never triggers (bench/policies/never-triggers.yaml;
#                    nginx: limit_req), f = the app's call through the outbound listener, g = the
#                    same through a FailoverPolicy upstream (bench/policies/failover.yaml.in),
#                    h = a feature-flag gate every request passes, its variant injected as a
#                    header (bench/policies/gate-passes.yaml). nginx has rows in a and b only.
#                    With a and h the report gives h - a, what the gate adds per request; with
#                    f and g, g - f, what failover adds when nothing fails.
#   INSTR_REQUESTS   measured requests per target and scenario (default 4000)
#   INSTR_WARMUP     requests sent before them, not measured (default 500)
#   BENCH_KEEP_TMP   1: keep the temp dir with the configs, logs and cachegrind files
#
# Method, per target and scenario: the target runs under `valgrind --tool=cachegrind
# --cache-sim=no` twice, from a fresh start each time; one keep-alive connection sends
# WARMUP+REQUESTS requests the first time (the long run) and WARMUP the second, which then idles
# as long as the long run's last REQUESTS took; the target is stopped and cachegrind's total
# (the `summary:` line) read. (I_long - I_short) / REQUESTS cancels start-up, warm-up, timers
# and shutdown. The upstream (nginx, as in run.sh) does not run under valgrind.
# Everything listens on 127.0.0.1 only, on free ports; every process is stopped on exit.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=instructions
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh" # log, die, init_tmp, start_bg, stop_proc, free_ports, render, wait_ready, require_commands, start_upstream

SCENARIOS=${INSTR_SCENARIOS:-a b h}
REQUESTS=${INSTR_REQUESTS:-4000}
WARMUP=${INSTR_WARMUP:-500}
OUT="$BENCH_DIR/results/instructions.md"
# valgrind translates the binary before main(): a Rust sidecar takes seconds to answer, and its
# shutdown is slow too. Killing it would lose the cachegrind file, so both waits are generous.
READY_SECS=60
STOP_SECS=60

for v in REQUESTS WARMUP; do
  if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
    die "INSTR_$v must be a positive integer, got '${!v}'"
  fi
done
for s in $SCENARIOS; do
  case $s in a | b | f | g | h) ;; *) die "unknown scenario '$s' in INSTR_SCENARIOS (a, b, f, g, h)" ;; esac
done

BINARIES=()
[ $# -gt 0 ] || set -- "${CARGO_TARGET_DIR:-$ROOT/target}/release/bulwark-sidecar"
for b in "$@"; do
  b=$(readlink -f -- "$b") # absolute, as the report names it
  [ -x "$b" ] || die "no sidecar binary at $b (build it first: cargo build --release -p bulwark-sidecar)"
  BINARIES+=("$b")
done

require_commands valgrind nginx curl python3 pgrep

init_tmp bulwark-instructions # $TMP, and the traps that stop every start_bg process (lib.sh)
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- The upstream: run.sh's, not under valgrind ---------------------------------------------

start_upstream

# --- One run: start under cachegrind, send N requests, stop, read the total -----------------

# Sends $2 GETs to 127.0.0.1:$1 on one keep-alive connection, x-api-key alternating as in
# bench/wrk/bench.lua, with Host $4 if given (the outbound scenarios' destination); fails unless
# every answer is 200 and the connection was never reopened. Prints the seconds the requests
# after the first $3 took.
send_requests() {
  python3 - "$@" <<'EOF'
import http.client, sys, time
port, n, skip = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
host = sys.argv[4] if len(sys.argv) > 4 else None
class Conn(http.client.HTTPConnection):
    connects = 0
    def connect(self):
        Conn.connects += 1
        super().connect()
c = Conn("127.0.0.1", port, timeout=60)
start = time.monotonic()
for i in range(n):
    if i == skip:
        start = time.monotonic()
    # Host and x-api-key only, like wrk's request (http.client would add Accept-Encoding).
    c.putrequest("GET", "/", skip_host=host is not None, skip_accept_encoding=True)
    if host is not None:
        c.putheader("Host", host)
    c.putheader("x-api-key", ("paid", "free")[i % 2])
    c.endheaders()
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"request {i + 1} of {n}: status {r.status}")
c.close()
if Conn.connects != 1:
    sys.exit(f"{Conn.connects} connections instead of 1 keep-alive connection")
print(f"{time.monotonic() - start:.3f}")
EOF
}

# Prometheus sample value of the first line of the saved /metrics page $1 matching the regex
# $2 (empty if none).
metric() {
  grep -E "$2" "$1" | head -1 | awk '{print $NF}' || true
}

# Sum of the samples of metric $2 on the saved /metrics page $1 whose labels include each of
# $3... (label="value"); 0 if none.
metric_sum() {
  local file=$1 name=$2
  shift 2
  awk -v name="$name" -v want="$*" '
    index($0, name "{") == 1 {
      n = split(want, w, " ")
      for (i = 1; i <= n; i++) if (index($0, w[i]) == 0) next
      s += $NF
    }
    END {printf "%.0f", s}' "$file" || true
}

# Runs target $1 (nginx, or the sidecar binary at that path) in scenario $2 under cachegrind,
# sends $3 requests, idles $5 seconds, stops it. Sets TOTAL to cachegrind's instruction count
# and SECS to the seconds the requests after the first $WARMUP took. $4 names the run's dir.
# Not called in $(...): start_bg must record the pid in this shell, for the exit trap.
run_once() {
  local target=$1 scenario=$2 n=$3 dir="$TMP/$4" idle=$5 port admin outbound pid sig host=""
  mkdir -p "$dir"
  LOG_FILE="$dir/stderr.log"
  local vg=(valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$dir/cachegrind.out")
  if [ "$target" = nginx ]; then
    read -r port <<<"$(free_ports 1)"
    render "$BENCH_DIR/config/nginx-proxy.conf.in" "$dir/nginx.conf.tmp" \
      "PREFIX=$dir" "LISTEN_PORT=$port" "UPSTREAM_PORT=$UPSTREAM_PORT"
    # One process that does the work: cachegrind follows no fork (a worker would go uncounted).
    sed 's/^master_process on;$/master_process off;/' "$dir/nginx.conf.tmp" >"$dir/nginx.conf"
    grep -q '^master_process off;$' "$dir/nginx.conf" ||
      die "config/nginx-proxy.conf.in has no 'master_process on;' line to turn off"
    cp "$BENCH_DIR/config/nginx-policy-$scenario.conf" "$dir/policy.conf"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/check.log" 2>&1 ||
      die "invalid nginx config for scenario $scenario: $(cat "$dir/check.log")"
    start_bg "${vg[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    sig=TERM # nginx's fast shutdown
  else
    read -r port admin outbound <<<"$(free_ports 3)"
    # As run.sh starts the sidecar in the same scenario.
    local args=(--inbound-listen "127.0.0.1:$port" --app "127.0.0.1:$UPSTREAM_PORT"
      --admin-listen "127.0.0.1:$admin" --outbound-listen "127.0.0.1:$outbound"
      --state-dir "$dir/state" --threads 1)
    mkdir -p "$dir/policies"
    case $scenario in
      b) cp "$BENCH_DIR/policies/never-triggers.yaml" "$dir/policies/" ;;
      g) render "$BENCH_DIR/policies/failover.yaml.in" "$dir/policies/failover.yaml" \
        "UPSTREAM_PORT=$UPSTREAM_PORT" ;;
      h) cp "$BENCH_DIR/policies/gate-passes.yaml" "$dir/policies/" ;;
    esac
    if has_policy "$scenario"; then args+=(--config-dir "$dir/policies"); fi
    start_bg "${vg[@]}" "$target" "${args[@]}"
    sig=INT # Pingora's fast shutdown
  fi
  pid=$STARTED_PID
  wait_ready "$pid" "http://127.0.0.1:$port/" "$READY_SECS" ||
    die "$target did not answer 200 within $READY_SECS s under valgrind (scenario $scenario): $(tail -n 5 "$dir/stderr.log")"
  # The sidecar must have loaded the policy before the requests, else b or h would count plain
  # proxying: with --config-dir and a fresh --state-dir, /readyz answers 200 only once a load
  # succeeded. It is polled, not /metrics: a /metrics page costs the sidecar far more than a
  # request, and the two runs of a pair poll a different number of times (±1 % in h).
  if [ "$target" != nginx ] && has_policy "$scenario"; then
    local ready=""
    for _ in $(seq $((READY_SECS * 5))); do
      if [ "$(http_status "http://127.0.0.1:$admin/readyz")" = 200 ]; then
        ready=1
        break
      fi
      sleep 0.2
    done
    [ -n "$ready" ] || die "$target is not ready (no policy loaded) on /readyz after $READY_SECS s: $(tail -n 3 "$dir/stderr.log")"
  fi
  # f and g: the app's calls through the outbound listener, to the upstream by address (f) or
  # to a FailoverPolicy upstream by name (g), as run.sh sends them.
  case $scenario in
    f) host="127.0.0.1:$UPSTREAM_PORT" port=$outbound ;;
    g) host=payments port=$outbound ;;
  esac
  send_requests "$port" "$n" "$WARMUP" ${host:+"$host"} >"$dir/client.log" 2>&1 ||
    die "$target, scenario $scenario: $(tail -n 3 "$dir/client.log")"
  SECS=$(tail -n 1 "$dir/client.log")
  # After the requests, /metrics once in each run of b and h (so its cost cancels): the
  # policy came from --config-dir, and in h the gate decided, and the flag was evaluated, for
  # every request sent, else h would count plain proxying.
  if [ "$target" != nginx ] && has_policy "$scenario"; then
    local m="$dir/metrics.txt" reloads version
    curl -s --max-time 10 -o "$m" "http://127.0.0.1:$admin/metrics" || true
    reloads=$(metric "$m" '^bulwark_config_reloads_total\{.*result="success"')
    version=$(metric "$m" '^bulwark_snapshot_version ')
    [ "${reloads%.*}" -gt 0 ] 2>/dev/null || [ "${version%.*}" -gt 0 ] 2>/dev/null ||
      die "$target shows no loaded policy on its /metrics (scenario $scenario; does it support --config-dir?)"
  fi
  if [ "$target" != nginx ] && [ "$scenario" = h ]; then
    local allowed evals others
    allowed=$(metric_sum "$m" bulwark_flag_gate_decisions_total 'gate="bench-gate"' 'decision="allowed"')
    others=$(metric_sum "$m" bulwark_flag_gate_decisions_total 'gate="bench-gate"')
    others=$((${others:-0} - ${allowed:-0}))
    evals=$(metric_sum "$m" bulwark_flag_evaluations_total 'flag="bench-rollout"')
    if [ "${allowed:-0}" -lt "$n" ] || [ "${evals:-0}" -lt "$n" ] || [ "$others" -ne 0 ]; then
      die "$target, scenario h: $n requests sent, but /metrics counts ${allowed:-0} allowed by the gate, $others denied or routed, ${evals:-0} flag evaluations"
    fi
    log "scenario h, $target: $allowed requests allowed by the gate, $evals flag evaluations ($n sent)"
  fi
  if [ "$target" != nginx ] && [ "$scenario" = g ]; then
    local tries
    tries=$(metric_sum "$m" bulwark_failover_tries_total 'upstream="payments"')
    [ "${tries:-0}" -ge "$n" ] ||
      die "$target, scenario g: $n requests sent, but /metrics counts ${tries:-0} tries of the payments upstream"
  fi
  sleep "$idle"
  stop_proc "$pid" "$sig" "$STOP_SECS"
  # cachegrind writes its file when the program exits, not when it is killed.
  TOTAL=$(awk '/^summary:/ {print $2}' "$dir/cachegrind.out" 2>/dev/null || true)
  [[ $TOTAL =~ ^[0-9]+$ ]] ||
    die "$target (scenario $scenario) left no cachegrind summary: did it exit on SIG$sig within $STOP_SECS s? $(tail -n 3 "$dir/stderr.log")"
}

# Scenarios whose sidecar loads a policy from --config-dir.
has_policy() { [ "$1" != a ] && [ "$1" != f ]; }

declare -A R # R[scenario,target-index]: instructions per request; R[...,short|long|secs]: raw

# Target 0 is nginx, targets 1.. are the sidecar binaries.
TARGETS=(nginx "${BINARIES[@]}")

for scenario in $SCENARIOS; do
  for i in "${!TARGETS[@]}"; do
    t=${TARGETS[$i]}
    # nginx has no flag gates (h), and proxies only to configured upstreams (f, g).
    [ "$i" -gt 0 ] || [ "$scenario" = a ] || [ "$scenario" = b ] || continue
    log "scenario $scenario, $t: $((WARMUP + REQUESTS)) requests, then $WARMUP, under cachegrind"
    # The long run first; the short one then idles as long as the long one spent on the
    # measured requests. The sidecar's timers (Pingora's 1 ms clock thread, tokio's timer wheel,
    # the limiter's syncer) run ~0.65 M instructions per second of wall time whatever the load;
    # at valgrind's ~0.6 ms per request, unmatched, that idle cost would add ~400 instructions
    # (~0.5 %) per request, more on a slower or busier machine.
    run_once "$t" "$scenario" "$((WARMUP + REQUESTS))" "t$i-$scenario-long" 0
    long=$TOTAL secs=$SECS
    run_once "$t" "$scenario" "$WARMUP" "t$i-$scenario-short" "$secs"
    short=$TOTAL
    R[$scenario,$i,short]=$short
    R[$scenario,$i,long]=$long
    R[$scenario,$i]=$(awk -v s="$short" -v l="$long" -v n="$REQUESTS" 'BEGIN {printf "%.0f", (l - s) / n}')
    [ "${R[$scenario,$i]}" -gt 0 ] || die "$t, scenario $scenario: the longer run counted no more instructions ($short, $long)"
    R[$scenario,$i,secs]=$secs
    log "scenario $scenario, $t: ${R[$scenario,$i]} instructions/request ($REQUESTS requests in $secs s under valgrind)"
  done
done
ELAPSED=$SECONDS

# --- Report ---------------------------------------------------------------------------------

# A binary's label: its path, and `git describe` of the tree it was built from when cargo's
# dep-info file (<binary>.d) names a git work tree whose sources are unchanged since the build.
label_of() {
  local bin=$1 src="" desc="" deps
  if [ -f "$bin.d" ]; then
    deps=$(cut -d: -f2- "$bin.d" | tr ' ' '\n' | grep . || true)
    src=$(grep -m1 '/sidecar/src/main\.rs$' <<<"$deps" || true)
    src=${src%/sidecar/src/main.rs}
    if [ -n "$src" ] && git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
      local f stale=""
      while read -r f; do
        if [ ! -e "$f" ] || [ "$f" -nt "$bin" ]; then
          stale=1
          break
        fi
      done <<<"$deps"
      [ -n "$stale" ] || desc=$(git -C "$src" describe --always --dirty 2>/dev/null || true)
    fi
  fi
  echo "\`${bin#"$ROOT"/}\`${desc:+ (git $desc)}"
}

scenario_name() {
  case $1 in
    a) echo "a: no policy" ;;
    b) echo "b: limit never triggers" ;;
    f) echo "f: outbound, no policy" ;;
    g) echo "g: outbound through a FailoverPolicy upstream" ;;
    h) echo "h: flag gate passes" ;;
  esac
}
thousands() {
  if [ -z "$1" ]; then echo n/a; else sed -E ':a; s/^(-?[0-9]+)([0-9]{3})/\1,\2/; ta' <<<"$1"; fi
}
ratio() {
  if [ -z "$1" ] || [ -z "$2" ]; then echo n/a; else awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; fi
}
change() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f (%+.1f %%)", a / b, 100 * (a / b - 1)}'; }

NB=${#BINARIES[@]}
name_of() { # column name of binary $1 (1-based)
  if [ "$NB" -eq 1 ]; then echo "bulwark-sidecar"; elif [ "$NB" -eq 2 ]; then
    if [ "$1" -eq 1 ]; then echo before; else echo after; fi
  else echo "#$1"; fi
}

# What scenario $1 adds to scenario $2 per request, for each binary, when both ran: a title ($3),
# a line per binary, and what nginx lacks ($4).
difference() {
  local with=$1 base=$2 i
  [[ " $SCENARIOS " == *" $with "* && " $SCENARIOS " == *" $base "* ]] || return 0
  echo
  echo "$3"
  for i in $(seq "$NB"); do
    echo "$(name_of "$i") $(thousands "$((${R[$with,$i]} - ${R[$base,$i]}))") instructions per request ($with ÷ $base: $(change "${R[$with,$i]}" "${R[$base,$i]}"))."
  done
  echo "$4"
}

report() {
  local s i head="| scenario | nginx" sep="|---|--:" line
  for i in $(seq "$NB"); do
    head+=" | $(name_of "$i"): $(label_of "${BINARIES[$((i - 1))]}")"
    sep+="|--:"
  done
  for i in $(seq "$NB"); do
    head+=" | $(name_of "$i") / nginx"
    sep+="|--:"
  done
  for i in $(seq 2 "$NB"); do
    head+=" | $(name_of "$i") / $(name_of 1)"
    sep+="|--:"
  done
  echo "# Instructions per proxied request"
  echo
  echo "Run $STARTED_AT, \`valgrind --tool=cachegrind --cache-sim=no\`: instructions the proxy"
  echo "executes per request (all its threads, user space), from two fresh starts:"
  echo "(I($((WARMUP + REQUESTS)) requests) − I($WARMUP requests, then idle as long as the other run's last $REQUESTS took)) ÷ $REQUESTS."
  echo "One keep-alive connection, header \`x-api-key\` alternating \`free\`/\`paid\`; the upstream"
  # shellcheck disable=SC2028 # the \n is meant literally (nginx's config syntax)
  echo "(nginx, \`return 200 \"ok\\n\"\`) not counted. nginx: 1 process (\`master_process off\`);"
  echo "bulwark-sidecar: \`--threads 1\`, as in bench/run.sh. Repeated runs agree within ~0.3 %."
  if [[ " $SCENARIOS " == *" h "* ]]; then
    echo "h: bench/policies/gate-passes.yaml, a gate on every path whose flag (an \`if\` and a"
    echo "3-way \`fractional\` on \`x-api-key\` as the targeting key) is evaluated per request and"
    echo "allows every variant, and the variant injected as a request header; checked on /metrics."
  fi
  echo
  echo "$head |"
  echo "$sep|"
  for s in $SCENARIOS; do
    line="| $(scenario_name "$s") | $(thousands "${R[$s,0]:-}")"
    for i in $(seq "$NB"); do line+=" | $(thousands "${R[$s,$i]}")"; done
    for i in $(seq "$NB"); do line+=" | $(ratio "${R[$s,$i]}" "${R[$s,0]:-}")"; done
    for i in $(seq 2 "$NB"); do line+=" | $(change "${R[$s,$i]}" "${R[$s,1]}")"; done
    echo "$line |"
  done
  difference h a "The flag gate (h − a, the gate, one evaluation of its flag and the injected header):" \
    "nginx has no flag gates: its h is n/a."
  difference g f "Failover when nothing fails (g − f, the FailoverPolicy upstream against the plain outbound call):" \
    "nginx proxies only to configured upstreams, not as a forward proxy: its f and g are n/a."
  echo
  echo "Totals from start to exit, short run / long run, and the seconds the long run's last"
  echo "$REQUESTS requests took under valgrind:"
  echo
  for s in $SCENARIOS; do
    for i in "${!TARGETS[@]}"; do
      [ -n "${R[$s,$i]:-}" ] || continue
      echo "- $s, $(if [ "$i" -eq 0 ]; then echo nginx; else name_of "$i"; fi): $(thousands "${R[$s,$i,short]}") / $(thousands "${R[$s,$i,long]}") instructions, ${R[$s,$i,secs]} s"
    done
  done
  echo
  echo "Machine: $(nproc) CPUs, $(uname -srm); $(valgrind --version); $(nginx -v 2>&1 | head -1)."
  echo "The run took ${ELAPSED} s."
  echo
  echo '```sh'
  local env_prefix=""
  [ -z "${INSTR_SCENARIOS:-}" ] || env_prefix+="INSTR_SCENARIOS='$INSTR_SCENARIOS' "
  [ -z "${INSTR_REQUESTS:-}" ] || env_prefix+="INSTR_REQUESTS=$INSTR_REQUESTS "
  [ -z "${INSTR_WARMUP:-}" ] || env_prefix+="INSTR_WARMUP=$INSTR_WARMUP "
  echo "${env_prefix}bash bench/instructions.sh$(printf ' %s' "${BINARIES[@]#"$ROOT"/}")"
  echo '```'
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
log "written to ${OUT#"$ROOT"/} in ${ELAPSED} s"
