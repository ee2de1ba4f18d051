#!/usr/bin/env bash
# Runs each fuzz target of sidecar/fuzz/ (cargo fuzz, libFuzzer, nightly) for a bounded time:
# FUZZ_SECONDS each (default 60), FUZZ_TARGETS to pick some. Each starts from the checked-in
# seeds (sidecar/fuzz/seeds/<target>/) and grows a local corpus (sidecar/fuzz/corpus/, not
# checked in); a crash stops the run with the input saved under sidecar/fuzz/artifacts/<target>/
# (make it a regression test, then fix it).
#
#   scripts/fuzz.sh           # make fuzz: optimised build, 60 s per target
#   scripts/fuzz.sh --smoke   # make test: debug build (4.5 min cold instead of 11), 10 s per
#                             # target; without a nightly toolchain it says so and skips
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=false
[ "${1:-}" = --smoke ] && SMOKE=true
if $SMOKE; then
  SECONDS_EACH=${FUZZ_SECONDS:-10}
  PROFILE=(--dev)
else
  SECONDS_EACH=${FUZZ_SECONDS:-60}
  PROFILE=()
fi
TARGETS=${FUZZ_TARGETS:-config_load snapshot_decode path_normalize key_extract}
CARGO_FUZZ_VERSION=0.13.2

if ! rustup toolchain list | grep -q '^nightly'; then
  if $SMOKE; then
    echo "[fuzz] SKIPPED the fuzz smoke: no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 0
  fi
  echo "[fuzz] a nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "[fuzz] installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >&2
fi
cd "$ROOT/sidecar"
for target in $TARGETS; do
  echo "[fuzz] $target for ${SECONDS_EACH}s" >&2
  mkdir -p "fuzz/corpus/$target"
  cargo +nightly fuzz run "${PROFILE[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -print_final_stats=1
done
