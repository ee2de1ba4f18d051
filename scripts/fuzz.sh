#!/usr/bin/env bash
# Runs each fuzz target of sidecar/fuzz/ (cargo fuzz, libFuzzer, nightly) for a bounded time:
# FUZZ_SECONDS each (default 60), FUZZ_TARGETS to pick some. Each starts from the checked-in
# seeds (sidecar/fuzz/seeds/<target>/) and grows a local corpus (sidecar/fuzz/corpus/, not
# checked in); a crash stops the run with the input saved under sidecar/fuzz/artifacts/<target>/
# (make it a regression test, then fix it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-config_load snapshot_decode path_normalize key_extract}
CARGO_FUZZ_VERSION=0.13.2

rustup toolchain list | grep -q '^nightly' || {
  echo "[fuzz] a nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
}
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "[fuzz] installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" >&2
fi
cd "$ROOT/sidecar"
for target in $TARGETS; do
  echo "[fuzz] $target for ${SECONDS_EACH}s" >&2
  mkdir -p "fuzz/corpus/$target"
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -max_len=65536 -print_final_stats=1
done
