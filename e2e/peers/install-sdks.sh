#!/usr/bin/env bash
# Installs the pinned OpenFeature SDKs that the flag tests use as real clients, and the Standard
# Webhooks libraries the webhook receivers verify with, cached outside the clone under a name that
# changes with the pinned versions, so a second run is free:
#   - a Python venv with openfeature-sdk, the OFREP provider, the flagd (RPC) provider,
#     standardwebhooks, grpcio (the gRPC tests' server and client) and websockets;
#   - an npm prefix with @openfeature/server-sdk, the OFREP provider and standardwebhooks.
#
#   e2e/peers/install-sdks.sh   # prints two lines on stdout: the venv directory (its bin/python
#                               # imports the packages), then the npm prefix (its node_modules)
#
# Each directory is complete only once its marker file exists (written last, after the imports
# were checked); a directory without it is removed and made again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${BULWARK_CACHE:-$HOME/.cache/bulwark}
python=${PYTHON:-python3}
marker=.bulwark-installed
log() { echo "[peers/install-sdks] $*" >&2; }
die() { log "$*"; exit 1; }
command -v "$python" >/dev/null || die "python3 is required (make deps)"
command -v npm >/dev/null && command -v node >/dev/null || die "node and npm are required"

py_pins=(
  "openfeature-sdk==$PY_OPENFEATURE_SDK"
  "openfeature-provider-ofrep==$PY_OPENFEATURE_PROVIDER_OFREP"
  "openfeature-provider-flagd==$PY_OPENFEATURE_PROVIDER_FLAGD"
  "grpcio==$PY_GRPCIO"
  "protobuf==$PY_PROTOBUF"
  "standardwebhooks==$PY_STANDARDWEBHOOKS"
  "websockets==$PY_WEBSOCKETS"
)
js_pins=(
  "@openfeature/server-sdk@$JS_OPENFEATURE_SERVER_SDK"
  "@openfeature/core@$JS_OPENFEATURE_CORE"
  "@openfeature/ofrep-provider@$JS_OPENFEATURE_OFREP_PROVIDER"
  "@openfeature/ofrep-core@$JS_OPENFEATURE_OFREP_CORE"
  "standardwebhooks@$JS_STANDARDWEBHOOKS"
)
short_hash() { sha256sum | cut -c1-12; }
# A venv belongs to one interpreter: its minor version is part of the name too.
py_minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py_dir="$cache_root/py-sdks-$(printf '%s\n' "python$py_minor" "${py_pins[@]}" | short_hash)"
js_dir="$cache_root/js-sdks-$(printf '%s\n' "${js_pins[@]}" | short_hash)"

py_check() {
  "$py_dir/bin/python" -c '
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.contrib.provider.flagd import FlagdProvider
from standardwebhooks import Webhook
import grpc
from websockets.sync.server import serve
'
}
js_check() {
  (cd "$js_dir" && node -e '
require("@openfeature/server-sdk");
require("@openfeature/ofrep-provider");
const { Webhook } = require("standardwebhooks");
if (typeof Webhook !== "function") throw new Error("standardwebhooks exports no Webhook");
')
}

if [ -f "$py_dir/$marker" ] && [ -f "$js_dir/$marker" ]; then
  echo "$py_dir"; echo "$js_dir"; exit 0
fi

mkdir -p "$cache_root"
# Two runs at once: the second waits, then finds both markers.
exec 9>"$cache_root/sdks.lock"
flock 9

if [ ! -f "$py_dir/$marker" ]; then
  start=$(date +%s)
  log "Python venv: ${py_pins[*]}"
  rm -rf "$py_dir"
  "$python" -m venv "$py_dir" >&2 \
    || die "'$python -m venv' failed (Debian's python3 needs python3-venv: make deps)"
  "$py_dir/bin/pip" install -q --no-input --disable-pip-version-check "${py_pins[@]}" >&2
  py_check || die "the Python packages do not import from $py_dir"
  printf '%s\n' "${py_pins[@]}" > "$py_dir/$marker"
  log "Python venv ready in $(( $(date +%s) - start ))s: $py_dir"
fi

if [ ! -f "$js_dir/$marker" ]; then
  start=$(date +%s)
  log "npm prefix: ${js_pins[*]}"
  rm -rf "$js_dir"
  mkdir -p "$js_dir"
  npm install --prefix "$js_dir" --no-audit --no-fund --save-exact --loglevel=error "${js_pins[@]}" >&2
  js_check || die "the npm packages do not load from $js_dir"
  printf '%s\n' "${js_pins[@]}" > "$js_dir/$marker"
  log "npm prefix ready in $(( $(date +%s) - start ))s: $js_dir"
fi

echo "$py_dir"
echo "$js_dir"
