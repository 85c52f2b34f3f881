#!/usr/bin/env bash
# Rate-limit accuracy and cost: admitted / expected for a route-keyed policy driven far above
# its rate, on 1 or 3 tollgate instances, per store; and req/s of a never-hit policy per store.
#
#   benches/limits/accuracy.sh                       # the whole table (release build)
#   CASES="local:1:1 redis:3:1" SECS=5 benches/limits/accuracy.sh
#   PARTS=cost benches/limits/accuracy.sh
#   LOAD=open RPS=3333 CASES="redis:3:1" benches/limits/accuracy.sh   # paced, below saturation
#
# A case is STORE:INSTANCES:BURST, STORE one of local, redis, sync (redis + `sync: SYNC`),
# BURST a number or `default` (= RATE). Expected = RATE x SECS + BURST (the first burst is
# admitted at once); a store shared by 3 instances has one budget, a local store one each.
# Starts its own redis-server, an nginx upstream and the instances on free ports.
# LOAD=closed (default): one `wrk -t1 -cCONNS` per instance at full speed (saturates a small
# machine). LOAD=open: `paced.rs` (built here with rustc), CONNS connections per instance
# sending at exponentially distributed intervals, RPS requests per second per instance in all
# (Poisson arrivals, microsecond timing), far above the limit but below saturation.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/root/.cargo/bin"

RATE=${RATE:-2000}
SECS=${SECS:-10}
SYNC=${SYNC:-10ms}
CONNS=${CONNS:-16}          # wrk / h2load connections per instance
LOAD=${LOAD:-closed}        # closed (wrk at full speed) | open (paced at RPS)
RPS=${RPS:-2000}            # LOAD=open: requests per second per instance
PARTS=${PARTS:-"accuracy cost"}
CASES=${CASES:-"local:1:1 local:1:10 local:1:default redis:1:1 redis:1:10 redis:1:default redis:3:1 redis:3:10 redis:3:default sync:1:1 sync:1:10 sync:1:default sync:3:1 sync:3:10 sync:3:default"}
COST_SECS=${COST_SECS:-5}
BIN=${TOLLGATE_BIN:-$REPO/target/release/tollgate}
[ -x "$BIN" ] || (cd "$REPO" && cargo build --release --bin tollgate)

TMP=$(mktemp -d /tmp/tollgate-limits.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

echo "# $(date -u +%FT%TZ) $(git -C "$REPO" rev-parse --short HEAD) load: $(cut -d' ' -f1-3 /proc/loadavg) cores: $(nproc)"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save "" --appendonly no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
REDIS_PID=$!
UP_PORT=$(free_port)
mkdir -p "$TMP/up"
cat >"$TMP/up.conf" <<NG
daemon off; worker_processes 1; pid $TMP/up.pid; error_log $TMP/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  client_body_temp_path $TMP/up; proxy_temp_path $TMP/up; fastcgi_temp_path $TMP/up;
  uwsgi_temp_path $TMP/up; scgi_temp_path $TMP/up;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } } }
NG
nginx -c "$TMP/up.conf" -p "$TMP" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$REDIS_PORT"; wait_port "$UP_PORT"

cat >"$TMP/count.lua" <<'LUA'
local threads = {}
function setup(t) table.insert(threads, t) end
function init() ok = 0; limited = 0 end
function response(status) if status == 200 then ok = ok + 1 elseif status == 429 then limited = limited + 1 end end
function done()
  local o, l = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); l = l + t:get("limited") end
  io.write(string.format("COUNT %d %d\n", o, l))
end
LUA
[ "$LOAD" = open ] && rustc --edition 2021 -O -o "$TMP/paced" "$HERE/paced.rs"

# start_instances N STORE BURST -> fills PORTS, INST_PIDS
start_instances() {
  local n=$1 store=$2 burst=$3 extra="" b=""
  [ "$burst" = default ] || b=", burst: $burst"
  case $store in
    local) extra="store: local" ;;
    redis) extra="store: redis" ;;
    sync) extra="store: redis, sync: $SYNC" ;;
  esac
  PORTS=(); INST_PIDS=()
  for i in $(seq "$n"); do
    local port admin; port=$(free_port); admin=$(free_port)
    cat >"$TMP/gw$i.yaml" <<YAML
version: 1
threads: 1
pid_file: $TMP/gw$i.pid
upgrade_sock: $TMP/gw$i.sock
listen: ["127.0.0.1:$port"]
admin: "127.0.0.1:$admin"
upstreams: {up: {targets: ["127.0.0.1:$UP_PORT"]}}
redis: {url: "redis://127.0.0.1:$REDIS_PORT", on_error: allow, timeout: 50ms}
rate_limits:
  p: {requests: $RATE, per: 1s, key: route, $extra$b}
  never: {requests: 100000000, per: 1s, key: route, $extra}
routes:
  - {name: p, path_prefix: /p, upstream: up, rate_limit: p}
  - {name: never, path_prefix: /never, upstream: up, rate_limit: never}
  - {name: plain, path_prefix: /, upstream: up}
access_log: {enabled: false}
YAML
    "$BIN" -c "$TMP/gw$i.yaml" >"$TMP/gw$i.log" 2>&1 &
    INST_PIDS+=($!); PORTS+=("$port")
  done
  for p in "${PORTS[@]}"; do wait_port "$p"; done
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
}
# Nanoseconds the instances' busiest threads spent runnable but not running (schedstat field 2):
# time in which a request may wait for the CPU, not for the limiter.
runq_wait() {
  local sum=0 p
  for p in "${INST_PIDS[@]}"; do
    sum=$(( sum + $(for t in /proc/"$p"/task/*/schedstat; do cut -d' ' -f2 "$t"; done | sort -n | tail -1) ))
  done
  echo "$sum"
}
# The same for redis-server's main thread.
redis_wait() { cut -d' ' -f2 /proc/"$REDIS_PID"/task/"$REDIS_PID"/schedstat; }
stop_instances() { for p in "${INST_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

if [[ " $PARTS " == *" accuracy "* ]]; then
  echo "# load generator: $LOAD, $CONNS connections per instance$([ "$LOAD" = open ] && echo ", $RPS req/s per instance")"
  printf "| store | instances | burst | admitted | expected | ratio | gateway runnable, not running | redis runnable, not running | answered/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
  for c in $CASES; do
    IFS=: read -r store n burst <<<"$c"
    start_instances "$n" "$store" "$burst"
    w0=$(runq_wait); r0=$(redis_wait)
    for i in "${!PORTS[@]}"; do
      if [ "$LOAD" = open ]; then
        "$TMP/paced" "127.0.0.1:${PORTS[$i]}" /p "$RPS" "$CONNS" "$SECS" "$i$RANDOM" >"$TMP/wrk$i.out" 2>&1 &
      else
        wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$TMP/count.lua" "http://127.0.0.1:${PORTS[$i]}/p" >"$TMP/wrk$i.out" 2>&1 &
      fi
    done
    wait $(jobs -p | tail -n "${#PORTS[@]}") 2>/dev/null || true
    w1=$(runq_wait); r1=$(redis_wait)
    admitted=$(cat "$TMP"/wrk*.out | awk '/^COUNT/ { s += $2 } END { print s + 0 }')
    answered=$(cat "$TMP"/wrk*.out | awk '/^COUNT/ { s += $2 + $3 } END { print s + 0 }')
    rm -f "$TMP"/wrk*.out
    b=$burst; [ "$b" = default ] && b=$RATE
    copies=1; [ "$store" = local ] && copies=$n
    expected=$(( (RATE * SECS + b) * copies ))
    printf "| %s | %d | %s | %d | %d | %.3f | %.1f%% | %.1f%% | %d |\n" "$store" "$n" "$burst" "$admitted" "$expected" \
      "$(echo "$admitted / $expected" | bc -l)" "$(echo "($w1 - $w0) / ($SECS * 10000000 * $n)" | bc -l)" \
      "$(echo "($r1 - $r0) / ($SECS * 10000000)" | bc -l)" $(( answered / SECS ))
    stop_instances
  done
fi

if [[ " $PARTS " == *" cost "* ]]; then
  printf "\n| never-hit policy, 1 instance | req/s |\n|---|---:|\n"
  for store in none local redis sync; do
    s=$store; [ "$s" = none ] && s=local
    start_instances 1 "$s" default
    path=/never; [ "$store" = none ] && path=/plain
    wrk -t1 -c32 -d1s "http://127.0.0.1:${PORTS[0]}$path" >/dev/null 2>&1
    rps=$(wrk -t1 -c32 -d"${COST_SECS}s" "http://127.0.0.1:${PORTS[0]}$path" | awk '/Requests\/sec/ { print $2 }')
    printf "| %s | %s |\n" "$store" "$rps"
    stop_instances
  done
fi
