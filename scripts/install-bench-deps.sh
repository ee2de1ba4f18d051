#!/usr/bin/env bash
# Installs what `make bench` (bench/run.sh) needs on a Debian machine: nginx and haproxy (the
# reverse proxies compared with bulwark-sidecar, and nginx also as the upstream), wrk (the load
# generator, with its built-in LuaJIT for the percentile report), curl (readiness and sanity
# checks), python3 (picks free loopback ports), valgrind (bench/instructions.sh counts
# instructions per request with its cachegrind tool) and nghttp2-client (h2load, the HTTP/2 load
# generator of bench/grpc.sh). Idempotent: installs only what is missing.
#
# The benchmark starts its own nginx/haproxy instances with generated config files in a temp
# dir, in the foreground, on loopback ports. Debian's packages may start system services on
# install; those are stopped (and disabled where systemd runs) so they neither hold ports nor
# take CPU during a run.
set -euo pipefail

log() { echo "[bench-deps] $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi

# Debian package -> the command that proves it is installed.
declare -A packages=(
  [nginx]=nginx
  [haproxy]=haproxy
  [wrk]=wrk
  [curl]=curl
  [python3]=python3
  [procps]=pgrep
  [valgrind]=valgrind
  [nghttp2-client]=h2load
)
# nginx and haproxy live in /usr/sbin, which is not on every user's PATH.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
for pkg in "${!packages[@]}"; do
  have "${packages[$pkg]}" || missing+=("$pkg")
done

installed_services=()
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for svc in nginx haproxy; do
    case " ${missing[*]} " in *" $svc "*) installed_services+=("$svc") ;; esac
  done
fi

# Stop the system services the packages may have started. Only when this script just installed
# the package (an nginx/haproxy that was already there and running is someone else's business).
for svc in "${installed_services[@]}"; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    # systemd is the init system: stop the unit and keep it from starting at boot.
    $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $sudo service "$svc" stop >/dev/null 2>&1 || true
  fi
  # Whatever the init system, make sure the daemon the package started is gone: it writes its
  # pid to /run/<name>.pid. Only that pid is signalled.
  for pidfile in "/run/$svc.pid" "/var/run/$svc.pid"; do
    if [ -s "$pidfile" ]; then
      pid=$(tr -dc '0-9' <"$pidfile")
      if [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -qs "$svc" "/proc/$pid/comm"; then
        log "stopping the $svc daemon the package started (pid $pid)"
        $sudo kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
      fi
    fi
  done
done

for pkg in "${!packages[@]}"; do
  have "${packages[$pkg]}" || { log "$pkg is still missing after apt-get install"; exit 1; }
done
