#!/usr/bin/env bash
# Feature flags: the sidecar against flagd (the pinned build of e2e/peers), the same flag file
# (e2e/tests/flagd/differential.flagd.json, 35 flags) and the same OFREP requests (64 contexts,
# bench/wrk/ofrep.lua), one after the other on loopback: a single evaluation of `split-in-rule`
# (a `$ref` and a fractional split) and the bulk evaluation of every flag; then flagd's
# evaluation API over gRPC (ResolveBoolean of the same flag, v2) with ghz (bench/build-ghz.sh).
# Prints Markdown tables (throughput, p50/p99, CPU per request, RSS, ratios) and writes them to
# bench/results/flags.md.
#
# Usage: bash bench/flags.sh          (make bench runs it)
# Environment: BENCH_DURATION (default 10), BENCH_WARMUP (2), BENCH_CONNECTIONS (32),
#              BENCH_SKIP_BUILD=1 to use target/release/bulwark-sidecar as it is.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOG_TAG=bench-flags
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
OUT="$BENCH_DIR/results/flags.md"
FLAG_FILE="$ROOT/e2e/tests/flagd/differential.flagd.json"

require_commands wrk curl python3
FLAGD=$(bash "$ROOT/e2e/peers/build-flagd.sh")
GHZ=$(bash "$BENCH_DIR/build-ghz.sh")
SIDECAR="${CARGO_TARGET_DIR:-$ROOT/target}/release/bulwark-sidecar"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building the sidecar (release)"
  (cd "$ROOT" && cargo build -q --release -p bulwark-sidecar)
fi
init_tmp bulwark-bench-flags
CLK_TCK=$(getconf CLK_TCK)

# The flag file as a FeatureFlag for the sidecar's --config-dir.
mkdir -p "$TMP/policies"
python3 - "$FLAG_FILE" "$TMP/policies/flags.yaml" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec.pop("$schema", None)
json.dump({"apiVersion": "bulwark.dev/v1alpha1", "kind": "FeatureFlag",
           "metadata": {"name": "bench"}, "spec": spec}, open(sys.argv[2], "w"))
PY

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }

declare -A R
start() {
  local target=$1 dir="$TMP/$1"
  mkdir -p "$dir"
  LOG_FILE="$dir/log"
  case $target in
    flagd)
      read -r p1 p2 p3 p4 <<<"$(free_ports 4)"
      # flagd binds every interface and has no option to bind loopback only.
      start_bg "$FLAGD" start --uri "file:$FLAG_FILE" --port "$p1" --ofrep-port "$p2" \
        --management-port "$p3" --sync-port "$p4"
      PORT=$p2 GRPC_PORT=$p1 READY="http://127.0.0.1:$p3/readyz"
      ;;
    bulwark)
      read -r inbound outbound admin grpc <<<"$(free_ports 4)"
      start_bg "$SIDECAR" --inbound-listen "127.0.0.1:$inbound" --outbound-listen "127.0.0.1:$outbound" \
        --admin-listen "127.0.0.1:$admin" --flagd-listen "127.0.0.1:$grpc" --state-dir "$dir/state" \
        --config-dir "$TMP/policies" --app "127.0.0.1:9"
      PORT=$admin GRPC_PORT=$grpc READY="http://127.0.0.1:$admin/readyz"
      ;;
  esac
  PID=$STARTED_PID
  wait_ready "$PID" "$READY" 20 || die "$target did not start: $(tail -n 5 "$dir/log")"
}

run_row() {
  local target=$1 endpoint=$2 path line c0 c1
  case $endpoint in
    single) path=/ofrep/v1/evaluate/flags/split-in-rule ;;
    bulk) path=/ofrep/v1/evaluate/flags ;;
  esac
  start "$target"
  OFREP_PATH=$path wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -s "$BENCH_DIR/wrk/ofrep.lua" "http://127.0.0.1:$PORT" >/dev/null
  c0=$(cpu_ticks "$PID")
  line=$(OFREP_PATH=$path wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/wrk/ofrep.lua" "http://127.0.0.1:$PORT" | grep '^BENCH ')
  c1=$(cpu_ticks "$PID")
  R[$target,$endpoint,rss]=$(rss_kib "$PID")
  stop_proc "$PID" TERM
  local k
  for k in requests rps p50_us p99_us non2xx; do R[$target,$endpoint,$k]=$(field "$k" "$line"); done
  R[$target,$endpoint,cpu_us]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${R[$target,$endpoint,requests]}" \
    'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
  log "$endpoint, $target: $(printf '%.0f' "${R[$target,$endpoint,rps]}") req/s, p99 ${R[$target,$endpoint,p99_us]} us, non-2xx ${R[$target,$endpoint,non2xx]}"
}

# flagd's evaluation API: ghz, unary ResolveBoolean (v2) with 64 targeting keys in turn.
run_grpc_row() {
  local target=$1 c0 c1 out="$TMP/$1/ghz.json"
  start "$target"
  local ghz=("$GHZ" --insecure --proto "$ROOT/sidecar/proto/flagd/evaluation/v2/evaluation.proto"
    -i "$ROOT/sidecar/proto,/usr/include" --call flagd.evaluation.v2.Service.ResolveBoolean
    -d '{"flagKey":"split-in-rule","context":{"targetingKey":"user-{{mod .RequestNumber 64}}","email":"u@example.com"}}'
    -c "$CONNECTIONS" --connections 4)
  "${ghz[@]}" -z "${WARMUP}s" "127.0.0.1:$GRPC_PORT" >/dev/null
  c0=$(cpu_ticks "$PID")
  "${ghz[@]}" -z "${DURATION}s" --format json "127.0.0.1:$GRPC_PORT" >"$out"
  c1=$(cpu_ticks "$PID")
  R[$target,grpc,rss]=$(rss_kib "$PID")
  stop_proc "$PID" TERM
  read -r rps ok p50 p99 other <<<"$(python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lat = {x["percentage"]: x["latency"] // 1000 for x in d.get("latencyDistribution") or []}
codes = d.get("statusCodeDistribution") or {}
ok = codes.get("OK", 0)
print(d["rps"], ok, lat.get(50, 0), lat.get(99, 0), sum(codes.values()) - ok)
PY
)"
  R[$target,grpc,rps]=$rps R[$target,grpc,requests]=$ok R[$target,grpc,p50_us]=$p50
  R[$target,grpc,p99_us]=$p99 R[$target,grpc,non2xx]=$other
  R[$target,grpc,cpu_us]=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
  log "grpc, $target: $(printf '%.0f' "$rps") req/s, p99 $p99 us, not OK $other"
}

for endpoint in single bulk; do
  for target in flagd bulwark; do run_row "$target" "$endpoint"; done
done
for target in flagd bulwark; do run_grpc_row "$target"; done

{
  echo "| API | target | req/s | p50 µs | p99 µs | CPU µs/req | RSS MiB | non-2xx |"
  echo "|---|---|---|---|---|---|---|---|"
  for endpoint in single bulk grpc; do
    for target in flagd bulwark; do
      printf '| %s | %s | %.0f | %s | %s | %s | %.1f | %s |\n' "$endpoint" "$target" \
        "${R[$target,$endpoint,rps]}" "${R[$target,$endpoint,p50_us]}" "${R[$target,$endpoint,p99_us]}" \
        "${R[$target,$endpoint,cpu_us]}" "$(awk -v k="${R[$target,$endpoint,rss]}" 'BEGIN {print k / 1024}')" \
        "${R[$target,$endpoint,non2xx]}"
    done
  done
  echo
  echo "| API | throughput sidecar/flagd | p99 flagd/sidecar | CPU per request flagd/sidecar |"
  echo "|---|---|---|---|"
  for endpoint in single bulk grpc; do
    awk -v a="${R[bulwark,$endpoint,rps]}" -v b="${R[flagd,$endpoint,rps]}" \
      -v pa="${R[bulwark,$endpoint,p99_us]}" -v pb="${R[flagd,$endpoint,p99_us]}" \
      -v ca="${R[bulwark,$endpoint,cpu_us]}" -v cb="${R[flagd,$endpoint,cpu_us]}" -v e="$endpoint" \
      'BEGIN {printf "| %s | %.2f× | %.2f× | %.2f× |\n", e, a / b, pb / pa, cb / ca}'
  done
  echo
  echo "single, bulk: OFREP with wrk -t1 -c$CONNECTIONS; grpc: ResolveBoolean (v2) with ghz -c $CONNECTIONS over 4 connections (ghz is the"
  echo "slower client: its rate is a floor for both servers, compare their CPU per request). ${DURATION} s per row after"
  echo "${WARMUP} s of warm-up; $(nproc) CPUs; flagd $(basename "$(dirname "$(dirname "$FLAGD")")"); 'non-2xx' counts non-OK gRPC statuses."
} | tee "$OUT"
