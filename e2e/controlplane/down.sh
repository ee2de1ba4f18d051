#!/usr/bin/env bash
# Stops the control plane that up.sh started in DIR, then removes DIR. Idempotent.
# Run `down.sh --help` for the interface.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

usage() {
  cat <<'EOF'
Usage: e2e/controlplane/down.sh [options]

Stops the watchdog, kube-controller-manager, kube-apiserver and etcd that up.sh started in DIR
(SIGTERM, up to 15 s each, then SIGKILL), then removes DIR. Exits 0 when nothing runs or DIR does
not exist. Only processes whose command line refers to DIR are signalled, so a reused PID is never
hit. Refuses to delete a non-empty directory that up.sh did not create.

Options:
  --dir DIR     data directory (default: $REPO/.bulwark/controlplane)
  --keep-dir    stop the processes but keep DIR (logs, certificates) for inspection
  -h, --help    this text
EOF
}

log() { echo "[controlplane/down] $*" >&2; }
die() { log "error: $*"; exit 1; }

dir=$repo/.bulwark/controlplane
keep=false
grace=15

while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir=$2; shift 2 ;;
    --dir=*) dir=${1#*=}; shift ;;
    --keep-dir) keep=true; shift ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

if [ ! -d "$dir" ]; then
  log "nothing to do: $dir does not exist"
  exit 0
fi
dir=$(cd "$dir" && pwd -P)   # canonical: processes are matched by this path
[ "$dir" != / ] || die "--dir / is not a data directory"
marker=.bulwark-controlplane   # written by up.sh
if [ ! -e "$dir/$marker" ] && [ -n "$(ls -A "$dir")" ]; then
  die "$dir was not made by up.sh (no $marker); refusing to touch it"
fi

# True if PID is alive and was started for this DIR (same test as in up.sh). A zombie has an empty
# command line, so it counts as gone.
owned() {
  local pid=$1 arg
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  while IFS= read -r -d '' arg; do
    case $arg in "$dir"|"$dir"/*|*="$dir"/*) return 0 ;; esac
  done <"/proc/$pid/cmdline" 2>/dev/null
  return 1
}

# stop NAME PID: SIGTERM, wait up to $grace s, then SIGKILL.
stop() {
  local name=$1 pid=$2 waited=0
  # The watchdog runs this script as its own last step: don't signal ourselves.
  [ "$pid" != $$ ] || return 0
  owned "$pid" || return 0
  log "stopping $name (PID $pid)"
  # up.sh starts each process with setsid, so it leads its own process group; signalling the group
  # also ends the watchdog's `tail`. Falls back to the single PID if it is not a group leader.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while owned "$pid"; do
    if [ $waited -ge $((grace * 10)) ]; then
      log "$name (PID $pid) still running after ${grace} s: SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

# Reverse start order; the watchdog first, so it cannot fire later against a new plane in DIR.
for name in watchdog kube-controller-manager kube-apiserver etcd; do
  stop "$name" "$(cat "$dir/pids/$name.pid" 2>/dev/null || true)"
done
# Strays whose PID file is missing (say up.sh was killed between start and writing it): our
# binaries with DIR on their command line.
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null || true)
  case ${exe##*/} in
    etcd|kube-apiserver|kube-controller-manager) stop "stray ${exe##*/}" "${p#/proc/}" ;;
  esac
done

if $keep; then
  log "stopped; kept $dir"
else
  rm -rf "$dir"
  log "stopped; removed $dir"
fi
