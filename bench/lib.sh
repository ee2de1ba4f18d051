# Shell helpers shared by the benchmark scripts (bench/run.sh, bench/instructions.sh,
# bench/propagation.sh). Sourced, not run: it only defines functions and variables; a script
# that starts processes calls init_tmp first, which makes the temp dir and sets the traps that
# stop every process started with start_bg on exit, failure or Ctrl-C.
#
# The sourcing script sets LOG_TAG (the prefix of its log lines) before sourcing.
# BENCH_KEEP_TMP=1 keeps the temp dir (it is kept anyway when the script fails).

PATH="$PATH:/usr/sbin:/sbin" # nginx and haproxy live in /usr/sbin, not on every user's PATH

log() { echo "[${LOG_TAG:-bench}] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- Processes: started in the background, all stopped on exit ------------------------------

PIDS=()

# Makes the temp dir $TMP (named after $1) and sets the traps that clean up on exit.
init_tmp() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  chmod 755 "$TMP" # nginx workers run as nobody when started by root
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# The pids of a started process and its direct children (nginx: master and worker).
proc_tree() {
  local pid=$1
  [ -d "/proc/$pid" ] || return 0
  echo "$pid"
  pgrep -P "$pid" 2>/dev/null || true
}

# Stops one started process (and its children): SIGTERM (or $2), then SIGKILL after 5 s (or $3
# seconds: a process under valgrind takes longer to exit).
stop_proc() {
  local pid=$1 sig=${2:-TERM} grace=${3:-5} p tree
  tree=$(proc_tree "$pid")
  [ -n "$tree" ] || return 0
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq $((grace * 10))); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  for p in $tree; do
    if [ -d "/proc/$p" ]; then kill -s KILL "$p" 2>/dev/null || true; fi
  done
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do stop_proc "$pid"; done
  if [ "${BENCH_KEEP_TMP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    log "generated configs and logs kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}

# Starts "$@" in the background with its output in $LOG_FILE; sets STARTED_PID.
start_bg() {
  "$@" >"$LOG_FILE" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# Free loopback ports: bound by the kernel on port 0, all held until every one is picked.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

render() { # render TEMPLATE OUTPUT KEY=VALUE...
  local tpl=$1 out=$2 kv args=()
  shift 2
  for kv in "$@"; do args+=(-e "s|@@${kv%%=*}@@|${kv#*=}|g"); done
  sed "${args[@]}" "$tpl" >"$out"
}

# HTTP status of one GET (000 when nothing answers).
# The Host header of every request of the current row, when it is not the target's own address
# (run.sh's scenario f: the outbound listener forwards to the service the Host names).
HOST_HEADER=""

http_status() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 ${HOST_HEADER:+-H "Host: $HOST_HEADER"} "$@" || true
}

# Waits until URL answers 200 and PID still runs (10 s at most, or $3 seconds).
wait_ready() {
  local pid=$1 url=$2 secs=${3:-10}
  for _ in $(seq $((secs * 10))); do
    [ -d "/proc/$pid" ] || return 1
    [ "$(http_status "$url")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# Runs scripts/install-bench-deps.sh once if any of the given commands is missing.
# The temp-file paths of an nginx http block, under DIR (nginx's defaults are not writable).
nginx_temp_paths() { # nginx_temp_paths DIR
  local kind
  for kind in client_body proxy fastcgi uwsgi scgi; do
    printf '    %s_temp_path %s/%s;\n' "$kind" "$1" "$kind"
  done
}

require_commands() {
  local cmd
  for cmd in "$@"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
      log "$cmd is missing: running scripts/install-bench-deps.sh"
      bash "$ROOT/scripts/install-bench-deps.sh"
      return
    fi
  done
}

# The upstream every target talks to: one nginx, 1 worker, "ok\n" from memory, never under a
# profiler. Sets UPSTREAM_PORT and UPSTREAM_PID.
start_upstream() {
  read -r UPSTREAM_PORT <<<"$(free_ports 1)"
  mkdir -p "$TMP/upstream"
  render "$BENCH_DIR/config/upstream-nginx.conf.in" "$TMP/upstream/nginx.conf" \
    "PREFIX=$TMP/upstream" "LISTEN_PORT=$UPSTREAM_PORT"
  LOG_FILE="$TMP/upstream/stderr.log"
  start_bg nginx -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log"
  UPSTREAM_PID=$STARTED_PID
  wait_ready "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT/" ||
    die "the upstream nginx did not start: $(cat "$TMP/upstream/stderr.log" "$TMP/upstream/error.log" 2>/dev/null | tail -n 5)"
  log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT"
}
