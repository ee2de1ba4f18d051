#!/usr/bin/env bash
# Installs what Bulwark's build, tests and demo need on a Debian machine, and checks the
# toolchains that cannot come from Debian at the versions needed (Go for the control plane,
# Rust with rustfmt and clippy). Idempotent and quiet when everything is there.
set -euo pipefail

# Debian packages, each with the command that proves it is installed.
declare -A packages=(
  [openssl]=openssl        # control-plane certificates
  [curl]=curl              # demo and scripts
  [jq]=jq                  # token checks in check.sh
  [python3]=python3        # the upstream HTTP server in e2e tests
  [redis-server]=redis-server  # Global rate limits and quotas in e2e tests (and redis-cli)
  [prometheus]=promtool    # `promtool check metrics` on the sidecar's and operator's /metrics
  [gcc]=gcc                # C parts of Rust dependencies (zstd, ring)
  [protobuf-compiler]=protoc  # the flagd evaluation API's protobuf, compiled by tonic-prost-build
  [make]=make
  [git]=git
)
missing=()
for pkg in "${!packages[@]}"; do
  command -v "${packages[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
# python3-venv: without it Debian's python3 has no ensurepip and cannot make the venv that
# e2e/peers/install-sdks.sh installs the OpenFeature SDKs into.
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# libprotobuf-dev: the well-known types (google/protobuf/struct.proto) the flagd evaluation API
# imports; protoc alone does not ship them.
[ -f /usr/include/google/protobuf/struct.proto ] || missing+=(libprotobuf-dev)
# ca-certificates: the system roots the sidecar verifies `https` failover upstreams with when no
# CA bundle is given (Pingora's rustls connector loads them at start).
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[deps] installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

fail() { echo "[deps] $*" >&2; exit 1; }

# Go builds the control plane; Kubernetes 1.34 needs Go >= 1.24 (Debian's golang-go is older).
command -v go >/dev/null || fail "Go >= 1.24 is required on PATH to build the control plane (https://go.dev/dl/)"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "$go_minor" -ge 24 ] || fail "Go >= 1.24 is required, found $(go env GOVERSION)"

command -v cargo >/dev/null || fail "Rust (cargo) is required on PATH (https://rustup.rs)"
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "[deps] adding the Rust component $component" >&2
    rustup component add "$component" >&2 || fail "cannot add the Rust component $component"
  fi
done
