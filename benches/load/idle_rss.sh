#!/usr/bin/env bash
# RSS per idle keep-alive client connection of one tollgate process, on its own: the memory
# part of run.sh without the rest of the harness (no nginx/HAProxy rows, no pinning), for
# working on the number.
#
#   benches/load/idle_rss.sh [N] [BINARY]     # N idle connections (default 10000)
#   WRAP="heaptrack -o /tmp/h" benches/load/idle_rss.sh 2000   # under a heap profiler
#
# Starts an nginx upstream (fixed 64-byte answer) and tollgate (threads: 1, the bench config,
# every port ephemeral), has idle_conns.py open N connections that each served one GET, and
# prints VmRSS before and after, and the difference per connection.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
N=${1:-10000}
BIN=${2:-${CARGO_TARGET_DIR:-$REPO/target}/release/tollgate}
WRAP=${WRAP:-}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d /tmp/idle_rss.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP:-} ]] || rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    local i
    for ((i = 0; i < 300; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    exit 1
}
render() {
    local text kv
    text=$(<"$1")
    shift
    for kv in "$@"; do text=${text//"@${kv%%=*}@"/"${kv#*=}"}; done
    printf '%s\n' "$text"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

UP=$(free_port)
TG=$(free_port)
ADMIN=$(free_port)
mkdir -p "$TMP/upstream_tmp"
render "$HERE/upstream.nginx.conf" TMP="$TMP" UPSTREAM_PORT="$UP" WORKER_CONNECTIONS=1024 \
    BODY="tollgate-bench:0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM" >"$TMP/upstream.conf"
render "$HERE/tollgate.yaml" TMP="$TMP" TOLLGATE_PORT="$TG" TOLLGATE_ADMIN_PORT="$ADMIN" \
    UPSTREAM_PORT="$UP" API_KEY="tollgate-bench-key-0123456789abcdef" >"$TMP/tollgate.yaml"
nginx -c "$TMP/upstream.conf" -p "$TMP" 2>"$TMP/nginx.err" &
PIDS+=($!)
# shellcheck disable=SC2086 # WRAP is a command line
$WRAP "$BIN" --conf "$TMP/tollgate.yaml" >"$TMP/tollgate.out" 2>&1 &
PIDS+=($!)
wait_port "$UP"
wait_port "$TG"
pid=$(pgrep -n -f -- "--conf $TMP/tollgate.yaml" || true)
[[ -n $pid ]] || { cat "$TMP/tollgate.out" >&2; exit 1; }

before=$(rss_kib "$pid")
coproc IDLE { python3 "$HERE/idle_conns.py" "$TG" / "$N"; }
read -r -t 300 line <&"${IDLE[0]}"
[[ $line == "ready $N" ]] || { echo "idle_conns: ${line:-no answer}" >&2; exit 1; }
first=$(rss_kib "$pid")
# As run.sh: idle for IDLE_SETTLE seconds (tollgate parks a connection after one).
sleep "${IDLE_SETTLE:-3}"
after=$(rss_kib "$pid")
if [[ -n ${KILL_HELD:-} ]]; then
    # For a heap profiler's "leaked" list: what is live with N idle connections open. Some
    # requests on fresh connections first, so the profiler's buffered events reach its file.
    python3 - "$TG" <<'PY'
import socket, sys
for _ in range(2000):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
PY
    kill -KILL "$pid"
    wait "${PIDS[1]}" 2>/dev/null || true
fi
exec {IDLE[1]}>&-
read -r -t 60 alive <&"${IDLE[0]}" || alive="?"
echo "tollgate pid $pid: VmRSS $before KiB -> $first KiB with $N connections just answered, $after KiB ${IDLE_SETTLE:-3}s later ($alive)"
awk -v b="$before" -v a="$after" -v n="$N" \
    'BEGIN { printf "per connection: %.0f bytes (%.2f KiB)\n", (a - b) * 1024 / n, (a - b) / n }'
