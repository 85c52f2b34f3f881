#!/usr/bin/env bash
# tollgate load harness: tollgate vs nginx (vs HAProxy) vs hitting the upstream
# directly, each as a plain proxy and with the same policy (API key, a rate limit
# that never triggers, gateway headers); tollgate also with an HS256 JWT.
#
#   benches/load/run.sh                      # everything (CONNS="32 256", 5 x 10s each)
#   DURATION=2s REPS=1 SKIP_TOLLGATE=1 benches/load/run.sh
#   PARTS="memory keys" benches/load/run.sh  # only some parts
#
# Parts (PARTS, default all four, in this order):
#   throughput  closed loop (wrk), every target at each CONNS: req/s, latency, CPU/request
#   latency     open loop (oha --latency-correction -q) at LAT_LOAD % of each proxy's maximum
#               and the same rate at the upstream directly: the proxy's added p99
#   (TLS=1 adds nginx-prod and tollgate-prod: the API-key route over TLS 1.3 with a combined log;
#    H2=1 adds nginx-h2/tollgate-h2, HTTP/2 over TLS 1.3, and nginx-h2c/tollgate-h2c, HTTP/2
#    with prior knowledge, on the plain route, driven by h2load with 10 streams a connection;
#    GRPC=1 adds nginx-grpc/tollgate-grpc: unary gRPC calls over h2c to an h2c gRPC upstream;
#    CACHE=1 adds nginx-cached/tollgate-cached: warm cache hits, nginx's proxy_cache against a
#    tollgate route with `cache`, the same key; and tollgate-miss, every request a new key
#    stored, against tollgate-nocache, the same requests on a route without a cache)
#   memory      RSS of each proxy holding IDLE_CONNS idle keep-alive client connections
#   keys        tollgate's RSS growth over KEYS distinct rate-limiter keys
#
# Layout of the two cores (why: a proxy benchmark on a small box is only
# meaningful if the proxy under test has a core to itself and everything else —
# load generator and upstream — stays off it):
#   core LOADGEN_CPU (0): wrk + the upstream nginx (fixed 64-byte answer)
#   core PROXY_CPU   (1): the proxy under test: nginx (1 worker) or tollgate (threads: 1)
# Both proxies run the whole time, but only one is driven at a time, and the
# targets alternate within each repetition so drift (thermal, noisy neighbours)
# hits all of them alike. Results are medians over REPS runs.
#
# See benches/load/README.md for the knobs and how to read the table.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# nginx lives in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# ---------------------------------------------------------------- knobs ----
NCPU=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
CONNS=${CONNS:-"32 256"}          # wrk connection counts, one table block each
DURATION=${DURATION:-10s}         # one measured wrk run
WARMUP=${WARMUP:-2s}              # one unmeasured run per target and conns first
REPS=${REPS:-5}                   # measured runs per (target, conns); medians reported
SAVE=${SAVE:-0}                   # 1: also write the table to benches/load/results.md
FORCE=${FORCE:-0}                 # 1: measure even if the machine looks busy
SKIP_TOLLGATE=${SKIP_TOLLGATE:-0} # 1: no build, no tollgate rows (harness development)
SKIP_HAPROXY=${SKIP_HAPROXY:-0}   # 1: no HAProxy rows even if haproxy is installed
SKIP_BARE=${SKIP_BARE:-0}         # 1: no row for bare Pingora (examples/bare_pingora.rs)
SKIP_FLOOR=${SKIP_FLOOR:-0}       # 1: no row for the HTTP/1 floor without Pingora (examples/h1_floor.rs)
TOLLGATE_BIN=${TOLLGATE_BIN:-}    # use this binary instead of building
BARE_BIN=${BARE_BIN:-}            # the same for bare Pingora (default: beside TOLLGATE_BIN, or built)
FLOOR_BIN=${FLOOR_BIN:-}          # the same for the HTTP/1 floor
LOADGEN_CPU=${LOADGEN_CPU:-0}     # core for wrk and the upstream
PROXY_CPU=${PROXY_CPU:-1}         # core for the proxy under test
MAX_LOAD=${MAX_LOAD:-$(awk -v n="$NCPU" 'BEGIN { print n / 2 }')}  # busy if 1-min load above
MIN_IDLE=${MIN_IDLE:-90}          # busy if less idle CPU (%) over a 1 s sample
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-64}  # nginx upstream keepalive pool (idle conns)
READY_TIMEOUT=${READY_TIMEOUT:-30}      # seconds a service gets to answer
KEEP_TMP=${KEEP_TMP:-0}           # 1: keep the temp dir (configs, logs, wrk output)
ACCESS_LOG=${ACCESS_LOG:-off}     # combined: both proxies write a combined access log to a file in the temp dir;
                                  # both: as off, plus nginx-apikey-log and tollgate-apikey-log (second instances that log)
NGINX_LOG_BUFFER=${NGINX_LOG_BUFFER:-}  # e.g. 32k: nginx's log lines written in batches (buffer=, flush=100ms),
                                  # as tollgate writes its own (32 KiB, 100 ms); empty: one write a line
H2=${H2:-0}                       # 1: also the HTTP/2 rows (h2 over TLS, h2c), with h2load -m H2_STREAMS
H2_STREAMS=${H2_STREAMS:-10}      # concurrent streams per HTTP/2 connection
GRPC=${GRPC:-0}                   # 1: also nginx-grpc and tollgate-grpc: unary gRPC calls over h2c (h2load)
CACHE=${CACHE:-0}                 # 1: also nginx-cached and tollgate-cached: warm cache hits
GRPC_UP_BIN=${GRPC_UP_BIN:-}      # examples/grpc_upstream (built when empty)
TLS=${TLS:-0}                     # 1: also nginx-prod and tollgate-prod: the API-key route over TLS 1.3
                                  # (ECDSA P-256) with a combined access log to a file, the production shape
PARTS=${PARTS:-"throughput latency memory keys"}
LAT_DURATION=${LAT_DURATION:-10s} # one open-loop oha run
LAT_REPS=${LAT_REPS:-3}           # open-loop runs per target (each paired with a direct run)
LAT_CONNS=${LAT_CONNS:-32}        # oha connections; the rate comes from wrk's max at this CONNS
LAT_LOAD=${LAT_LOAD:-50}          # percent of the measured maximum offered open-loop
IDLE_CONNS=${IDLE_CONNS:-10000}   # idle keep-alive client connections of the memory part
IDLE_SETTLE=${IDLE_SETTLE:-3}      # seconds they sit idle before the RSS read (tollgate parks them after 1)
KEYS=${KEYS:-1000000}             # distinct limiter keys of the keys part
KEYS_DURATION=${KEYS_DURATION:-150s} # the keys part's wrk run: must reach KEYS requests
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
export CARGO_TARGET_DIR

# The upstream's answer: exactly 64 bytes, so every target moves the same bytes.
BODY="tollgate-bench:0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM"
# The one API key of the policy scenarios (bench-only; also rendered into every config).
API_KEY="tollgate-bench-key-0123456789abcdef"

# shellcheck source=benches/load/parts.sh
source "$HERE/parts.sh"

# ---------------------------------------------------------------- utils ----
log() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] ERROR: %s\n' "$*" >&2; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Fill @KEY@ placeholders of a template: render TEMPLATE OUT KEY=VALUE...
render() {
    local name=$1 out=$2 text kv
    shift 2
    text=$(<"$HERE/$name")
    for kv in "$@"; do
        # Quoted replacement: bash 5.2's patsub_replacement would expand '&'.
        text=${text//"@${kv%%=*}@"/"${kv#*=}"}
    done
    if [[ $text =~ @[A-Z_]+@ ]]; then
        die "template $name: no value for ${BASH_REMATCH[0]}"
    fi
    printf '%s\n' "$text" >"$out"
}

# Field N (1-based, as in proc(5)) of /proc/PID/stat. The command name (field 2)
# may hold spaces, so split after its closing parenthesis.
proc_stat_field() {
    local pid=$1 n=$2 line rest
    read -r line 2>/dev/null <"/proc/$pid/stat" || return 1
    rest=${line##*) }
    local -a f
    read -r -a f <<<"$rest"
    printf '%s\n' "${f[n - 3]}"
}

# Children of PID (scans /proc: no dependency on procps).
children_of() {
    local parent=$1 f pid line rest
    local -a fields
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$f" || continue
        rest=${line##*) }
        read -r -a fields <<<"$rest"
        if [[ ${fields[1]} == "$parent" ]]; then
            pid=${f#/proc/}
            printf '%s\n' "${pid%/stat}"
        fi
    done
}

# Sums of utime+stime and of utime alone (clock ticks) over PIDs; include all their threads.
cpu_ticks() {
    local pid total=0 user=0 u s
    for pid in "$@"; do
        u=$(proc_stat_field "$pid" 14) || die "process $pid vanished"
        s=$(proc_stat_field "$pid" 15) || die "process $pid vanished"
        total=$((total + u + s))
        user=$((user + u))
    done
    printf '%s %s\n' "$total" "$user"
}

# Sum of VmRSS (KiB) over PIDs.
rss_kib() {
    local pid total=0 k v
    for pid in "$@"; do
        while read -r k v _; do
            if [[ $k == VmRSS: ]]; then total=$((total + v)); fi
        done <"/proc/$pid/status"
    done
    printf '%s\n' "$total"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '
        { a[NR] = $1 }
        END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ------------------------------------------------------ tools and knobs ----
# shellcheck disable=SC2015 # "A && B || die": die if either fails, on purpose
check_knobs() {
    is_uint "$REPS" && ((REPS > 0)) || die "REPS must be a positive integer (got '$REPS')"
    [[ $ACCESS_LOG =~ ^(off|combined|both)$ ]] || die "ACCESS_LOG must be off, combined or both (got '$ACCESS_LOG')"
    [[ $TLS =~ ^[01]$ && $H2 =~ ^[01]$ && $GRPC =~ ^[01]$ && $CACHE =~ ^[01]$ ]] ||
        die "TLS, H2, GRPC and CACHE must be 0 or 1 (got '$TLS', '$H2', '$GRPC', '$CACHE')"
    is_uint "$H2_STREAMS" && ((H2_STREAMS > 0)) || die "H2_STREAMS must be a positive integer (got '$H2_STREAMS')"
    local c
    for c in $CONNS; do
        is_uint "$c" && ((c > 0)) || die "CONNS must be positive integers (got '$CONNS')"
    done
    [[ -n ${CONNS// /} ]] || die "CONNS is empty"
    [[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 10s (got '$DURATION')"
    [[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s (got '$WARMUP')"
    [[ $LAT_DURATION =~ ^[0-9]+[smh]?$ ]] || die "LAT_DURATION must look like 10s (got '$LAT_DURATION')"
    [[ $KEYS_DURATION =~ ^[0-9]+[smh]?$ ]] || die "KEYS_DURATION must look like 150s (got '$KEYS_DURATION')"
    local v
    for v in LAT_REPS LAT_CONNS LAT_LOAD IDLE_CONNS KEYS; do
        is_uint "${!v}" && ((${!v} > 0)) || die "$v must be a positive integer (got '${!v}')"
    done
    local part
    for part in $PARTS; do
        [[ $part =~ ^(throughput|latency|memory|keys)$ ]] ||
            die "PARTS: unknown part '$part' (throughput, latency, memory, keys)"
    done
    is_uint "$LOADGEN_CPU" && is_uint "$PROXY_CPU" || die "LOADGEN_CPU/PROXY_CPU must be CPU numbers"
    ((LOADGEN_CPU < NCPU && PROXY_CPU < NCPU)) ||
        die "need CPUs $LOADGEN_CPU and $PROXY_CPU, this machine has $NCPU online"
    ((LOADGEN_CPU != PROXY_CPU)) ||
        die "LOADGEN_CPU and PROXY_CPU are the same core: the proxy would compete with wrk"
}

# Install what is missing (Debian), or say what to install.
ensure_tools() {
    local -A pkg_of=([nginx]=nginx-light [wrk]=wrk [curl]=curl [taskset]=util-linux
        [python3]=python3 [awk]=mawk [sort]=coreutils)
    [[ $H2 != 1 && $GRPC != 1 ]] || pkg_of[h2load]=nghttp2-client
    local tool missing=()
    for tool in "${!pkg_of[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_of[$tool]}")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            log "installing missing packages: ${missing[*]}"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
        else
            die "missing packages: ${missing[*]} (install them, e.g. apt-get install -y ${missing[*]})"
        fi
    fi
    for tool in "${!pkg_of[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool still missing after install"
    done
    # HAProxy is optional: rows for it only when installed (scripts/install-deps.sh --bench).
    HAVE_HAPROXY=0
    if [[ $SKIP_HAPROXY != 1 ]]; then
        if command -v haproxy >/dev/null 2>&1; then
            HAVE_HAPROXY=1
        else
            log "haproxy not installed: no HAProxy rows (scripts/install-deps.sh --bench installs it)"
        fi
    fi
    if [[ $SKIP_TOLLGATE != 1 && -z $TOLLGATE_BIN ]]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, or set TOLLGATE_BIN or SKIP_TOLLGATE=1)"
    fi
}

# ------------------------------------------------------------ busy box ----
# Percentage of idle CPU (idle + iowait) over all cores during a 1 s sample.
idle_pct() {
    local -a a b
    read -r -a a </proc/stat
    sleep 1
    read -r -a b </proc/stat
    # cpu user nice system idle iowait irq softirq steal (guest is inside user)
    local i t0=0 t1=0
    for i in 1 2 3 4 5 6 7 8; do
        t0=$((t0 + a[i])) t1=$((t1 + b[i]))
    done
    local idle=$((b[4] + b[5] - a[4] - a[5])) total=$((t1 - t0))
    ((total > 0)) || total=1
    printf '%s\n' $((100 * idle / total))
}

# check_quiet WHEN [load]: refuse to measure if something else is using the CPU.
# The load average lags by a minute, so after our own build only the idle
# sample is checked.
check_quiet() {
    local when=$1 use_load=${2:-} load1 idle
    if [[ $FORCE == 1 ]]; then
        log "FORCE=1: not checking whether the machine is idle ($when)"
        return
    fi
    idle=$(idle_pct)
    read -r load1 _ </proc/loadavg
    local why=""
    if [[ $use_load == load ]] && awk -v l="$load1" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; then
        why="1-minute load average is $load1 (limit MAX_LOAD=$MAX_LOAD)"
    fi
    if ((idle < MIN_IDLE)); then
        why="${why:+$why; }only ${idle}% of the CPU was idle over 1 s (limit MIN_IDLE=$MIN_IDLE)"
    fi
    if [[ -n $why ]]; then
        log "machine is busy $when: $why"
        if command -v ps >/dev/null 2>&1; then
            log "busiest processes:"
            ps -eo pid,pcpu,etime,comm --sort=-pcpu | head -6 >&2 || true
        fi
        die "refusing to measure on a busy machine: numbers would be noise. Wait until it is idle, or set FORCE=1."
    fi
    log "machine is quiet $when (load $load1, ${idle}% idle)"
}

# --------------------------------------------------------------- build ----
# release_build REL CARGO_ARGS... — cargo build --release, then sets BUILT to the artifact
# REL (a path under target/release).
release_build() {
    local rel=$1
    shift
    log "building $rel (release) in $REPO, CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
    (cd "$REPO" && cargo build --release "$@") >&2 || die "cargo build --release $* failed"
    local dir=$CARGO_TARGET_DIR
    [[ $dir == /* ]] || dir=$REPO/$dir # relative to the repo root, as cargo sees it
    BUILT=$dir/release/$rel
    [[ -x $BUILT ]] || die "build succeeded but $BUILT is missing"
}

build_tollgate() {
    if [[ -n $TOLLGATE_BIN ]]; then
        [[ -x $TOLLGATE_BIN ]] || die "TOLLGATE_BIN=$TOLLGATE_BIN is not an executable"
        TG_BIN=$(cd "$(dirname "$TOLLGATE_BIN")" && pwd)/$(basename "$TOLLGATE_BIN")
        log "using prebuilt tollgate: $TG_BIN"
        return
    fi
    release_build tollgate --bin tollgate
    TG_BIN=$BUILT
}

# The two floors, examples beside tollgate: bare Pingora (examples/bare_pingora.rs), Pingora's
# proxy with no-op hooks tuned as tollgate is, so the table shows how much of tollgate's cost
# is Pingora's own HTTP engine; and the HTTP/1 floor (examples/h1_floor.rs), the same job on
# tokio without Pingora. With a prebuilt TOLLGATE_BIN, the example beside it is taken when it
# is there.
build_example() { # build_example NAME VAR — VAR (BARE_BIN, FLOOR_BIN) names the binary
    local -n bin=$2
    local beside
    beside=$(dirname "$TG_BIN")/examples/$1
    if [[ -z $bin && -n $TOLLGATE_BIN && -x $beside ]]; then bin=$beside; fi
    if [[ -n $bin ]]; then
        [[ -x $bin ]] || die "$2=$bin is not an executable"
        log "using prebuilt examples/$1: $bin"
        return
    fi
    release_build "examples/$1" --example "$1"
    bin=$BUILT
}

# ---------------------------------------------------- processes we own ----
TMP=""
STARTED=()           # pids started by this script, in start order
declare -A START_OF  # pid -> start time (proc(5) field 22), guards against pid reuse
declare -A STOP_SIG  # pid -> signal for a quick stop

CHILDREN=()          # pids forked by what we started (nginx workers): killed if
                     # still there once their master is gone

remember() { # remember PID SIGNAL — a process we started and stop with SIGNAL
    local st
    st=$(proc_stat_field "$1" 22) || st=""
    STARTED+=("$1")
    START_OF[$1]=$st
    STOP_SIG[$1]=$2
}

# remember_children PID — note PID's children (not in a subshell: it sets
# globals); they are also left in the array NEW_CHILDREN.
remember_children() {
    local c st
    NEW_CHILDREN=()
    for c in $(children_of "$1"); do
        st=$(proc_stat_field "$c" 22) || continue
        # nginx with a proxy_cache also runs a cache manager and a loader (which exits once
        # it has read the cache): neither serves a request.
        grep -qs "cache manager\|cache loader" "/proc/$c/cmdline" && continue
        CHILDREN+=("$c")
        NEW_CHILDREN+=("$c")
        START_OF[$c]=$st
    done
}

# Still the process we started (same pid *and* same start time)?
ours_alive() {
    local st
    st=$(proc_stat_field "$1" 22 2>/dev/null) || return 1
    [[ $st == "${START_OF[$1]:-}" ]]
}

# start_bg NAME CPU SIGNAL CMD... — run CMD pinned to CPU, output to $TMP/NAME.out.
# taskset execs CMD, so $! is CMD's own pid.
start_bg() {
    local name=$1 cpu=$2 sig=$3
    shift 3
    taskset -c "$cpu" "$@" >"$TMP/$name.out" 2>&1 &
    local pid=$!
    remember "$pid" "$sig"
    LAST_PID=$pid
}

stop_all() {
    local i pid deadline
    # Newest first: proxies before the upstream they talk to.
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        pid=${STARTED[i]}
        ours_alive "$pid" || continue
        kill -s "${STOP_SIG[$pid]}" "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while ours_alive "$pid" && ((SECONDS < deadline)); do
            # Reap it if it is our child, so it does not linger as a zombie.
            [[ $(proc_stat_field "$pid" 3 2>/dev/null) == Z ]] && break
            sleep 0.05
        done
        if ours_alive "$pid" && [[ $(proc_stat_field "$pid" 3 2>/dev/null) != Z ]]; then
            log "pid $pid did not stop on ${STOP_SIG[$pid]}, killing it"
            kill -s KILL "$pid" 2>/dev/null || true
        fi
    done
    # A master stopped cleanly takes its workers along; one that had to be
    # killed leaves them orphaned, so make sure.
    for pid in "${CHILDREN[@]}"; do
        ours_alive "$pid" && kill -s KILL "$pid" 2>/dev/null
    done
    wait 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_all
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $rc != 0 || $KEEP_TMP == 1 ]]; then
            log "configs, logs and wrk output kept in $TMP"
        else
            rm -rf -- "$TMP"
        fi
    fi
    exit "$rc"
}

# Show why a service failed: its output and, for nginx, its error log.
show_logs() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        log "---- last lines of $f"
        tail -n 20 "$f" >&2
    done
}

# wait_http NAME PID URL LOG... — poll URL until it answers 200, with a deadline.
WAIT_CURL=() # extra curl arguments of the next wait_http (an h2c-only listener)
wait_http() {
    local name=$1 pid=$2 url=$3 code=000
    shift 3
    local deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        if ! ours_alive "$pid" || [[ $(proc_stat_field "$pid" 3) == Z ]]; then
            local status=0
            wait "$pid" 2>/dev/null || status=$?
            show_logs "$@"
            die "$name exited while starting (exit status $status; output in $1)"
        fi
        code=$(curl -sk "${WAIT_CURL[@]}" -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null) || true
        [[ $code == 200 ]] && return 0
        if ((SECONDS >= deadline)); then
            show_logs "$@"
            die "$name not ready: $url still answers '$code' after ${READY_TIMEOUT}s"
        fi
        sleep 0.05 # poll interval, not a synchronisation
    done
}

free_ports() { # free_ports N — N distinct ports the kernel considers free now
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)  # keep all open so the ports are distinct
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ------------------------------------------------------------ services ----
declare -A PIDS_ON_PORT # port -> pids whose CPU and RSS stand for that target

start_upstream() {
    mkdir -p "$TMP/upstream_tmp"
    render upstream.nginx.conf "$TMP/upstream.conf" TMP="$TMP" UPSTREAM_PORT="$UPSTREAM_PORT" BODY="$BODY" \
        WORKER_CONNECTIONS="$WORKER_CONNECTIONS"
    nginx -t -q -p "$TMP" -e "$TMP/upstream.error.log" -c "$TMP/upstream.conf" ||
        die "upstream nginx config rejected (see above; $TMP/upstream.conf)"
    start_bg upstream "$LOADGEN_CPU" TERM nginx -p "$TMP" -e "$TMP/upstream.error.log" -c "$TMP/upstream.conf"
    UPSTREAM_PID=$LAST_PID
    wait_http "upstream nginx" "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT/bench" \
        "$TMP/upstream.out" "$TMP/upstream.error.log"
    remember_children "$UPSTREAM_PID"
    log "upstream nginx ready on :$UPSTREAM_PORT (pid $UPSTREAM_PID, cpu $LOADGEN_CPU)"
}

start_nginx_proxy() { # start_nginx_proxy [PORT LOG TAG TLS H2]: LOG on|off, TAG names a second instance, H2 1: http2
    local port=${1:-$NGINX_PORT} logged=${2:-$ACCESS_LOG} tag=${3:-} tls=${4:-0} h2=${5:-0} scheme=http
    local conf="$TMP/nginx$tag.conf" pid
    mkdir -p "$TMP/nginx_tmp"
    render proxy.nginx.conf "$conf" TMP="$TMP" UPSTREAM_PORT="$UPSTREAM_PORT" \
        NGINX_PORT="$port" NGINX_KEEPALIVE="$NGINX_KEEPALIVE" WORKER_CONNECTIONS="$WORKER_CONNECTIONS" \
        API_KEY="$API_KEY"
    if [[ $logged == combined ]]; then
        # As nginx is usually run: one unbuffered line per request (NGINX_LOG_BUFFER: batched).
        local buffered=""
        [[ -z $NGINX_LOG_BUFFER ]] || buffered=" buffer=$NGINX_LOG_BUFFER flush=100ms"
        sed -i "s|^    access_log off;|    access_log $TMP/nginx$tag-access.log combined$buffered;|" "$conf"
        grep -q "nginx$tag-access.log" "$conf" || die "proxy.nginx.conf: no 'access_log off;' to replace"
    fi
    # A second instance: its own pid file.
    [[ -z $tag ]] || sed -i "s|^pid .*;|pid $TMP/nginx$tag.pid;|" "$conf"
    if [[ $tls == 1 ]]; then
        sed -i "s|^        listen 127.0.0.1:$port backlog=4096;|        listen 127.0.0.1:$port ssl backlog=4096; ssl_certificate $TMP/tls.pem; ssl_certificate_key $TMP/tls.key; ssl_protocols TLSv1.3;|" "$conf"
        grep -q "ssl_certificate" "$conf" || die "proxy.nginx.conf: no listen line to put TLS on"
        scheme=https
    fi
    if [[ $h2 == 1 ]]; then
        # HTTP/2: by ALPN over TLS, with prior knowledge (h2c) without.
        sed -i "s|^        listen 127.0.0.1:$port |        listen 127.0.0.1:$port http2 |" "$conf"
        grep -q "listen 127.0.0.1:$port http2 " "$conf" || die "proxy.nginx.conf: no listen line to put http2 on"
    fi
    nginx -t -q -p "$TMP" -e "$TMP/nginx$tag.error.log" -c "$conf" ||
        die "proxy nginx config rejected (see above; $conf)"
    start_bg "nginx$tag" "$PROXY_CPU" TERM nginx -p "$TMP" -e "$TMP/nginx$tag.error.log" -c "$conf"
    pid=$LAST_PID
    # An h2c listener speaks only HTTP/2.
    [[ $h2 == 0 || $tls == 1 ]] || WAIT_CURL=(--http2-prior-knowledge)
    wait_http "nginx proxy$tag" "$pid" "$scheme://127.0.0.1:$port/bench" \
        "$TMP/nginx$tag.out" "$TMP/nginx$tag.error.log"
    WAIT_CURL=()
    # The master only supervises; the worker does the proxying, so its CPU and
    # RSS are what compares with tollgate's single process.
    remember_children "$pid"
    ((${#NEW_CHILDREN[@]})) || die "nginx proxy (pid $pid) has no worker process"
    local workers="${NEW_CHILDREN[*]}"
    PIDS_ON_PORT[$port]=$workers
    log "nginx proxy$tag ready on :$port (master $pid, worker $workers, cpu $PROXY_CPU)"
}

start_tollgate() { # start_tollgate [PORT ADMIN_PORT LOG TAG TLS H2C CACHE]: as start_nginx_proxy (TLS offers h2 by ALPN; CACHE 1: a route /cached with `cache`)
    local port=${1:-$TOLLGATE_PORT} admin=${2:-$TOLLGATE_ADMIN_PORT} logged=${3:-$ACCESS_LOG} tag=${4:-} tls=${5:-0} h2c=${6:-0} cache=${7:-0}
    local conf="$TMP/tollgate$tag.yaml" pid
    render tollgate.yaml "$conf" TMP="$TMP" UPSTREAM_PORT="$UPSTREAM_PORT" \
        TOLLGATE_PORT="$port" TOLLGATE_ADMIN_PORT="$admin" API_KEY="$API_KEY"
    if [[ $logged == combined ]]; then
        sed -i "s|^access_log: {enabled: false}|access_log: {format: combined, path: \"$TMP/tollgate$tag-access.log\"}|" \
            "$conf"
        grep -q "tollgate$tag-access.log" "$conf" || die "tollgate.yaml: no 'access_log: {enabled: false}' to replace"
    fi
    # A second instance: its own pid file and upgrade socket.
    [[ -z $tag ]] || sed -i "s|tollgate.pid|tollgate$tag.pid|; s|tollgate_upgrade.sock|tollgate$tag""_upgrade.sock|" "$conf"
    if [[ $tls == 1 ]]; then
        sed -i "s|^listen: \[\"127.0.0.1:$port\"\]|listen: [{address: \"127.0.0.1:$port\", tls: {cert: \"$TMP/tls.pem\", key: \"$TMP/tls.key\", min_version: \"1.3\"}}]|" "$conf"
        grep -q "tls.pem" "$conf" || die "tollgate.yaml: no listen line to put TLS on"
    fi
    if [[ $h2c == 1 ]]; then
        sed -i "s|^listen: \[\"127.0.0.1:$port\"\]|listen: [{address: \"127.0.0.1:$port\", h2c: true}]|" "$conf"
        grep -q "h2c: true" "$conf" || die "tollgate.yaml: no listen line to put h2c on"
    fi
    if [[ $cache == 1 ]]; then
        # nginx's /cached/ location: the same key (host and URI), 200s kept an hour.
        sed -i 's|^routes:$|routes:\n  - {name: cached, path_prefix: /cached, strip_prefix: false, upstream: up, cache: {ttl: 1h}}|' "$conf"
        printf 'caches: {bench: {max_size: 64MiB}}\n' >>"$conf"
        grep -q "name: cached" "$conf" || die "tollgate.yaml: no 'routes:' line to put the cached route under"
    fi
    # The JWT scenario's token, minted by tollgate itself from the same config.
    JWT=$("$TG_BIN" token -c "$conf" --auth tokens --sub bench --ttl 24h) ||
        die "tollgate token failed"
    # SIGINT is Pingora's fast shutdown; SIGTERM would wait out the grace period.
    start_bg "tollgate$tag" "$PROXY_CPU" INT env RUST_LOG=error "$TG_BIN" -c "$conf"
    pid=$LAST_PID
    [[ -n $tag ]] || TOLLGATE_PID=$pid
    wait_http "tollgate$tag" "$pid" "http://127.0.0.1:$admin/health" "$TMP/tollgate$tag.out"
    PIDS_ON_PORT[$port]=$pid
    log "tollgate$tag ready on :$port, admin :$admin (pid $pid, cpu $PROXY_CPU)"
}

# The gRPC rows: an h2c gRPC upstream on the load generator's core, and each proxy in front
# of it (grpc.nginx.conf, grpc.tollgate.yaml), none with a log.
start_grpc() {
    printf '\0\0\0\0\5hello' >"$TMP/grpc.body" # one 5-byte request message
    # TERM: a script's background job starts with INT ignored, and the example has no handler.
    start_bg grpc-upstream "$LOADGEN_CPU" TERM "$GRPC_UP_BIN" "127.0.0.1:$GRPC_UPSTREAM_PORT"
    local pid=$LAST_PID deadline=$((SECONDS + READY_TIMEOUT))
    until curl -s --http2-prior-knowledge -o /dev/null --max-time 1 "http://127.0.0.1:$GRPC_UPSTREAM_PORT/x"; do
        ours_alive "$pid" || die "the gRPC upstream exited while starting"
        ((SECONDS < deadline)) || die "the gRPC upstream did not start"
        sleep 0.05 # poll interval, not a synchronisation
    done
    log "gRPC upstream ready on :$GRPC_UPSTREAM_PORT (pid $pid, cpu $LOADGEN_CPU)"

    local conf="$TMP/nginx-grpc.conf"
    mkdir -p "$TMP/nginx_tmp"
    render grpc.nginx.conf "$conf" TMP="$TMP" GRPC_UPSTREAM_PORT="$GRPC_UPSTREAM_PORT" \
        NGINX_PORT="$NGINX_GRPC_PORT" NGINX_KEEPALIVE="$NGINX_KEEPALIVE" \
        WORKER_CONNECTIONS="$WORKER_CONNECTIONS"
    nginx -t -q -p "$TMP" -e "$TMP/nginx-grpc.error.log" -c "$conf" || die "grpc.nginx.conf rejected ($conf)"
    start_bg nginx-grpc "$PROXY_CPU" TERM nginx -p "$TMP" -e "$TMP/nginx-grpc.error.log" -c "$conf"
    pid=$LAST_PID
    WAIT_CURL=(--http2-prior-knowledge)
    wait_http nginx-grpc "$pid" "http://127.0.0.1:$NGINX_GRPC_PORT/x" "$TMP/nginx-grpc.out" \
        "$TMP/nginx-grpc.error.log"
    WAIT_CURL=()
    remember_children "$pid"
    ((${#NEW_CHILDREN[@]})) || die "nginx-grpc (pid $pid) has no worker process"
    PIDS_ON_PORT[$NGINX_GRPC_PORT]="${NEW_CHILDREN[*]}"
    log "nginx-grpc on :$NGINX_GRPC_PORT (master $pid, cpu $PROXY_CPU)"

    [[ $SKIP_TOLLGATE != 1 ]] || return 0
    conf="$TMP/tollgate-grpc.yaml"
    render grpc.tollgate.yaml "$conf" TMP="$TMP" GRPC_UPSTREAM_PORT="$GRPC_UPSTREAM_PORT" \
        TOLLGATE_PORT="$TOLLGATE_GRPC_PORT" TOLLGATE_ADMIN_PORT="$TOLLGATE_GRPC_ADMIN_PORT"
    start_bg tollgate-grpc "$PROXY_CPU" INT env RUST_LOG=error "$TG_BIN" -c "$conf"
    pid=$LAST_PID
    wait_http tollgate-grpc "$pid" "http://127.0.0.1:$TOLLGATE_GRPC_ADMIN_PORT/health" "$TMP/tollgate-grpc.out"
    PIDS_ON_PORT[$TOLLGATE_GRPC_PORT]=$pid
    log "tollgate-grpc on :$TOLLGATE_GRPC_PORT (pid $pid, cpu $PROXY_CPU)"
}

start_example() { # start_example NAME BIN PORT — a floor: LISTEN_ADDR UPSTREAM_ADDR, SIGINT stops it
    start_bg "$1" "$PROXY_CPU" INT env RUST_LOG=error "$2" "127.0.0.1:$3" "127.0.0.1:$UPSTREAM_PORT"
    local pid=$LAST_PID
    wait_http "$1" "$pid" "http://127.0.0.1:$3/bench" "$TMP/$1.out"
    PIDS_ON_PORT[$3]=$pid
    log "$1 ready on :$3 (pid $pid, cpu $PROXY_CPU)"
}

start_haproxy() {
    render haproxy.cfg "$TMP/haproxy.cfg" TMP="$TMP" UPSTREAM_PORT="$UPSTREAM_PORT" \
        HAPROXY_PORT="$HAPROXY_PORT" API_KEY="$API_KEY" MAXCONN="$HAPROXY_MAXCONN"
    haproxy -c -q -f "$TMP/haproxy.cfg" >&2 || die "haproxy config rejected (see above; $TMP/haproxy.cfg)"
    # -db: foreground, no master process: the pid is the one process that proxies.
    start_bg haproxy "$PROXY_CPU" TERM haproxy -db -f "$TMP/haproxy.cfg"
    HAPROXY_PID=$LAST_PID
    wait_http "haproxy" "$HAPROXY_PID" "http://127.0.0.1:$HAPROXY_PORT/bench" "$TMP/haproxy.out"
    PIDS_ON_PORT[$HAPROXY_PORT]=$HAPROXY_PID
    log "haproxy ready on :$HAPROXY_PORT (pid $HAPROXY_PID, cpu $PROXY_CPU)"
}

# ----------------------------------------------------------- scenarios ----
# A scenario is one target wrk drives: a name, a port, and extra wrk arguments
# (e.g. -H 'X-Api-Key: k'). Later scenarios — tollgate with API-key auth, JWT or
# a rate limit; nginx with a map-based key check or limit_req — are one more
# `scenario` line each, after starting (or configuring) what serves their port.
#
#   scenario [--vs BASELINE] [--base BASE] [--path PATH] NAME PORT [WRK_ARGS...]
#
# BASELINE (default: nginx) is the scenario its "vs nginx" ratio divides by, so
# e.g. `scenario --vs nginx-limit tollgate-limit ...` compares like with like.
# Every ratio also divides by the scenario "direct" (the upstream alone).
# BASE (default: none) is the same proxy without the scenario's extra work: the
# "vs base" columns show what that work costs (the policy overhead).
# PATH (default: /bench) is what wrk requests.
# --auth: the smoke test also checks that the same request without the -H
# headers (the credential) is refused with 401: the policy is really applied.
SCENARIOS=()
declare -A SC_PORT SC_ARGS SC_VS SC_PIDS SC_BASE SC_PATH SC_AUTH SC_SCHEME SC_H2

scenario() {
    local vs=nginx base="" path=/bench auth=0 scheme=http h2=""
    while [[ ${1:-} == --* ]]; do
        case $1 in
            --h2) h2=h2 && scheme=https && shift && continue ;;
            --h2c) h2=h2c && shift && continue ;;
            --grpc) h2=grpc && shift && continue ;;
            --vs) vs=$2 ;;
            --base) base=$2 ;;
            --path) path=$2 ;;
            --auth) auth=1 && shift && continue ;;
            --tls) scheme=https && shift && continue ;;
            *) die "scenario: unknown option $1" ;;
        esac
        shift 2
    done
    local name=$1 port=$2
    shift 2
    SCENARIOS+=("$name")
    SC_PORT[$name]=$port
    SC_VS[$name]=$vs
    SC_BASE[$name]=$base
    SC_PATH[$name]=$path
    SC_AUTH[$name]=$auth
    SC_SCHEME[$name]=$scheme
    SC_H2[$name]=$h2 # empty: HTTP/1.1 with wrk; h2, h2c or grpc: HTTP/2 with h2load
    SC_PIDS[$name]=${PIDS_ON_PORT[$port]:-} # empty: no proxy to measure (direct)
    SC_ARGS[$name]=""
    if (($#)); then SC_ARGS[$name]=$(printf '%q ' "$@"); fi
}

scenario_args() { # scenario_args NAME — sets the array ARGS
    ARGS=()
    eval "ARGS=(${SC_ARGS[$1]})"
}

# Before measuring anything: one request per scenario must be a 200 with the
# upstream's exact body, so a gateway answering 404s fast is caught here.
smoke() {
    local name=$1 url="${SC_SCHEME[$1]}://127.0.0.1:${SC_PORT[$1]}${SC_PATH[$1]}" curl_args=(-k) i code body
    scenario_args "$name"
    case ${SC_H2[$name]} in
        h2) curl_args+=(--http2) ;;
        h2c) curl_args+=(--http2-prior-knowledge) ;;
        grpc)
            # A unary call: 200, the upstream's 64-byte message, grpc-status 0 in trailers.
            code=$(curl -s --http2-prior-knowledge -o "$TMP/smoke.body" -w '%{http_code} %{size_download}' \
                --max-time 5 -H 'content-type: application/grpc' -H 'te: trailers' \
                --data-binary @"$TMP/grpc.body" "$url" -D "$TMP/smoke.head") || true
            [[ $code == "200 64" ]] || die "$name: the gRPC call to $url answered '$code', not '200 64'"
            return
            ;;
    esac
    for ((i = 0; i < ${#ARGS[@]}; i++)); do # pass wrk's -H headers on to curl
        if [[ ${ARGS[i]} == -H || ${ARGS[i]} == --header ]]; then
            curl_args+=(-H "${ARGS[i + 1]}")
        fi
    done
    code=$(curl -s -o "$TMP/smoke.body" -w '%{http_code}' --max-time 5 "${curl_args[@]}" "$url") || true
    body=$(<"$TMP/smoke.body")
    if [[ $code != 200 || $body != "$BODY" ]]; then
        log "$name: GET $url answered $code with body: ${body:0:300}"
        die "$name does not proxy correctly; not measuring it"
    fi
    if [[ -n ${SC_H2[$name]} ]]; then
        # The smoke request must have been HTTP/2, or the row measures something else.
        code=$(curl -s "${curl_args[@]}" -o /dev/null -w '%{http_version}' --max-time 5 "$url") || true
        [[ $code == 2 ]] || die "$name: GET $url was answered over HTTP/$code, not HTTP/2"
    fi
    if [[ ${SC_AUTH[$name]} == 1 ]]; then
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "$url") || true
        [[ $code == 401 ]] || die "$name: without its credential GET $url answered $code, not 401: the policy is not applied"
    fi
}

# run_wrk NAME CONNS DURATION OUT — one wrk run, pinned to the load generator's core.
run_wrk() {
    local name=$1 conns=$2 dur=$3 out=$4
    scenario_args "$name"
    if [[ -n ${SC_H2[$name]} ]]; then
        run_h2load "$@"
        return
    fi
    if ! taskset -c "$LOADGEN_CPU" wrk -t1 -c"$conns" -d"$dur" --latency "${ARGS[@]}" \
        "${SC_SCHEME[$name]}://127.0.0.1:${SC_PORT[$name]}${SC_PATH[$name]}" >"$out" 2>&1; then
        cat "$out" >&2
        die "wrk failed against $name"
    fi
}

# run_h2load NAME CONNS DURATION OUT — as run_wrk, for an HTTP/2 scenario: h2load, CONNS
# connections of H2_STREAMS concurrent streams each, wrk's -H headers passed on.
run_h2load() {
    local name=$1 conns=$2 dur=$3 out=$4 args=() i
    for ((i = 0; i < ${#ARGS[@]}; i++)); do
        [[ ${ARGS[i]} != -H ]] || args+=(-H "${ARGS[i + 1]}")
    done
    [[ ${SC_H2[$name]} != grpc ]] ||
        args+=(-d "$TMP/grpc.body" -H 'content-type: application/grpc' -H 'te: trailers')
    if ! taskset -c "$LOADGEN_CPU" h2load -t1 -c"$conns" -m"$H2_STREAMS" -D "$dur" "${args[@]}" \
        "${SC_SCHEME[$name]}://127.0.0.1:${SC_PORT[$name]}${SC_PATH[$name]}" >"$out" 2>&1; then
        cat "$out" >&2
        die "h2load failed against $name"
    fi
}

# parse_h2load FILE — as parse_wrk; h2load reports no percentiles: the p50 and p99 columns
# of HTTP/2 rows are its mean and max time per request.
parse_h2load() {
    awk "$AWK_US"'
        /^finished in/        { split($0, f, ", "); rps = f[2] + 0 }
        /^requests:/          { reqs = $8; bad = $10 + $12 + $14 }
        /^status codes:/      { bad += $5 + $7 + $9 }
        /^time for request:/  { max = us($5); mean = us($6) }
        END {
            if (rps == "" || reqs == "" || mean == "" || mean < 0 || max < 0) exit 1
            printf "%s %s %.1f %.1f 0 %d\n", rps, reqs, mean, max, bad
        }' "$1"
}

# us(V): a load generator's duration (`123us`, `4.5ms`, `1.2s`, `2m`, `1h`) in µs; -1 if not one.
AWK_US='
    function us(v,   n, u) {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n
        if (u == "ms") return n * 1000
        if (u == "s")  return n * 1000000
        if (u == "m")  return n * 60000000
        if (u == "h")  return n * 3600000000
        return -1
    }
'

# parse_wrk FILE — prints: req/s requests p50_us p99_us socket_errors non_2xx
parse_wrk() {
    awk "$AWK_US"'
        /^[ \t]+50%/               { p50 = us($2) }
        /^[ \t]+99%/               { p99 = us($2) }
        / requests in /            { reqs = $1 }
        /^Requests\/sec:/          { rps = $2 }
        /Socket errors:/           { s = $0; gsub(/[^0-9]+/, " ", s); n = split(s, a, " ")
                                     for (i = 1; i <= n; i++) serr += a[i] }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        END {
            if (rps == "" || reqs == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
            printf "%s %s %.1f %.1f %d %d\n", rps, reqs, p50, p99, serr, bad
        }' "$1"
}

# check_run NAME CONNS OUT — parse a wrk run into PARSED; die on any error, so
# a broken target is never reported as a fast one.
check_run() {
    local name=$1 conns=$2 out=$3 serr bad reqs
    local parse=parse_wrk
    [[ -z ${SC_H2[$name]:-} ]] || parse=parse_h2load
    PARSED=$($parse "$out") || { cat "$out" >&2; die "could not parse the load output for $name"; }
    read -r _ reqs _ _ serr bad <<<"$PARSED"
    if ((serr > 0 || bad > 0 || reqs == 0)); then
        cat "$out" >&2
        die "$name (c=$conns): $bad non-2xx/3xx responses, $serr socket errors, $reqs requests — a failing target is not a fast one"
    fi
}

declare -A R_RPS R_P50 R_P99 R_CPU R_USR R_RSS # "name|conns" -> space-separated per-run values

# measure NAME CONNS REP — one measured run, with the proxy's CPU and RSS.
measure() {
    local name=$1 conns=$2 rep=$3 key="$1|$2" out="$TMP/wrk.$1.c$2.r$3.txt"
    local pids=${SC_PIDS[$name]} t0=0 t1=0 u0=0 u1=0 pid
    # shellcheck disable=SC2086 # pids is a word list on purpose
    [[ -z $pids ]] || read -r t0 u0 <<<"$(cpu_ticks $pids)"
    run_wrk "$name" "$conns" "$DURATION" "$out"
    # shellcheck disable=SC2086
    [[ -z $pids ]] || read -r t1 u1 <<<"$(cpu_ticks $pids)"

    local rps reqs p50 p99
    check_run "$name" "$conns" "$out"
    read -r rps reqs p50 p99 _ <<<"$PARSED"
    for pid in $pids; do
        ours_alive "$pid" || die "$name: process $pid died during the run"
    done

    R_RPS[$key]+="$rps "
    R_P50[$key]+="$p50 "
    R_P99[$key]+="$p99 "
    local cpu="-" usr="-" rss="-"
    if [[ -n $pids ]]; then
        cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        usr=$(awk -v d=$((u1 - u0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
        # shellcheck disable=SC2086
        rss=$(rss_kib $pids)
        R_CPU[$key]+="$cpu "
        R_USR[$key]+="$usr "
        R_RSS[$key]+="$rss "
    fi
    log "$(printf 'rep %d/%d c=%-4s %-12s %10s req/s  p50 %8s us  p99 %8s us  cpu %6s us/req (user %s)  rss %s KiB' \
        "$rep" "$REPS" "$conns" "$name" "$rps" "$p50" "$p99" "$cpu" "$usr" "$rss")"
}

# --------------------------------------------------------------- table ----
ratio() { # ratio A B — A/B to 2 places, or - when either is missing
    if [[ -z $1 || -z $2 ]]; then
        echo "-"
    else
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
    fi
}

print_table() {
    local conns name key
    local -A med_rps
    # shellcheck disable=SC2086 # the R_* values are word lists
    for key in "${!R_RPS[@]}"; do med_rps[$key]=$(median ${R_RPS[$key]}); done

    local -A med_cpu
    # shellcheck disable=SC2086
    for key in "${!R_CPU[@]}"; do med_cpu[$key]=$(median ${R_CPU[$key]}); done

    echo "| scenario | conns | req/s | p50 µs | p99 µs | req/s vs nginx | req/s vs direct | proxy CPU µs/req | of it user µs/req | proxy RSS MiB | vs base | req/s vs base | CPU/req vs base |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    for conns in $CONNS; do
        for name in "${SCENARIOS[@]}"; do
            key="$name|$conns"
            local p50 p99 cpu="-" usr="-" rss="-"
            # shellcheck disable=SC2086
            p50=$(median ${R_P50[$key]})
            # shellcheck disable=SC2086
            p99=$(median ${R_P99[$key]})
            if [[ -n ${R_CPU[$key]:-} ]]; then
                # shellcheck disable=SC2086
                cpu=$(printf '%.2f' "$(median ${R_CPU[$key]})")
                # shellcheck disable=SC2086
                usr=$(printf '%.2f' "$(median ${R_USR[$key]})")
                # RSS: the largest seen after any run (memory only grows under load).
                # shellcheck disable=SC2086
                rss=$(printf '%s\n' ${R_RSS[$key]} | sort -n | tail -n 1 |
                    awk '{ printf "%.1f", $1 / 1024 }')
            fi
            local base=${SC_BASE[$name]} brps="-" bcpu="-"
            if [[ -n $base ]]; then
                brps=$(ratio "${med_rps[$key]}" "${med_rps[$base|$conns]:-}")
                bcpu=$(ratio "${med_cpu[$key]:-}" "${med_cpu[$base|$conns]:-}")
            fi
            printf '| %s | %s | %.0f | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                "$name" "$conns" "${med_rps[$key]}" "$p50" "$p99" \
                "$(ratio "${med_rps[$key]}" "${med_rps[${SC_VS[$name]}|$conns]:-}")" \
                "$(ratio "${med_rps[$key]}" "${med_rps[direct|$conns]:-}")" \
                "$cpu" "$usr" "$rss" "${base:--}" "$brps" "$bcpu"
        done
    done
}

print_context() {
    local cpu_model nginx_version
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
    echo "tollgate load test, $(date -u '+%Y-%m-%d %H:%M UTC'): $NCPU CPUs (${cpu_model:-unknown}), Linux $(uname -r), $nginx_version, $(wrk -v 2>&1 | head -n 1 | awk '{ print $1, $2 }')."
    echo "wrk -t1 and the upstream on CPU $LOADGEN_CPU; the proxy under test on CPU $PROXY_CPU (nginx: 1 worker, keepalive $NGINX_KEEPALIVE; tollgate: threads 1)."
    if [[ ${HAVE_HAPROXY:-0} == 1 ]]; then
        echo "HAProxy $(haproxy -v 2>&1 | head -n 1 | awk '{ print $3 }') (nbthread 1) on CPU $PROXY_CPU as well."
    fi
    echo "Medians of $REPS x $DURATION runs per row (after a $WARMUP warm-up); 64-byte responses; CPU and RSS are the nginx worker's / tollgate's / haproxy's process."
    echo "Policy rows (-apikey, -jwt): auth + a rate limit that never triggers + forwarding and gateway headers; 'vs base' is the same proxy without it (policy overhead)."
}

# ---------------------------------------------------------------- main ----
main() {
    check_knobs
    ensure_tools
    CLK_TCK=$(getconf CLK_TCK)
    check_quiet "before the build" load

    if [[ $SKIP_TOLLGATE == 1 ]]; then
        log "SKIP_TOLLGATE=1: no build, no tollgate scenario"
    else
        build_tollgate
        [[ $SKIP_BARE == 1 ]] || build_example bare_pingora BARE_BIN
        [[ $SKIP_FLOOR == 1 ]] || build_example h1_floor FLOOR_BIN
    fi
    [[ $GRPC != 1 ]] || build_example grpc_upstream GRPC_UP_BIN

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-load.XXXXXX")
    # nginx workers drop to an unprivileged user when run as root; let them in.
    chmod 0755 "$TMP"
    ulimit -n 65536 2>/dev/null || true # 256 client + 256 upstream sockets per proxy
    ((${#BODY} == 64)) || die "BODY must be 64 bytes (is ${#BODY})"

    # nginx connection table: the most concurrent connections any nginx here
    # sees is wrk's plus two proxies' upstream pools, so 4x the largest CONNS.
    # The memory part adds IDLE_CONNS client connections on top.
    local c max_conns=0
    for c in $CONNS; do if ((c > max_conns)); then max_conns=$c; fi; done
    # An HTTP/2 client connection carries H2_STREAMS requests at once, and nginx proxies each
    # on an upstream connection of its own: 256 x 10 streams ran out of 1024 slots, and
    # h2load counted the refused streams as failures.
    if [[ $H2 == 1 || $GRPC == 1 ]]; then max_conns=$((max_conns * H2_STREAMS)); fi
    WORKER_CONNECTIONS=$((4 * max_conns > 1024 ? 4 * max_conns : 1024))
    # The memory part adds IDLE_CONNS client connections, and while idle_conns.py opens them
    # (500 at a time) the nginx proxy holds as many upstream connections besides: without
    # that slack it ran out of slots and closed idle clients to reuse theirs.
    if has_part memory; then WORKER_CONNECTIONS=$((WORKER_CONNECTIONS + IDLE_CONNS + 2048)); fi
    # HAProxy wants two descriptors per connection of its maxconn, up front.
    local nofile
    nofile=$(ulimit -n)
    HAPROXY_MAXCONN=$(((nofile - 100) / 2 < WORKER_CONNECTIONS ? (nofile - 100) / 2 : WORKER_CONNECTIONS))

    local ports
    ports=$(free_ports 25)
    read -r UPSTREAM_PORT NGINX_PORT TOLLGATE_PORT TOLLGATE_ADMIN_PORT HAPROXY_PORT BARE_PORT \
        FLOOR_PORT NGINX_LOG_PORT TOLLGATE_LOG_PORT TOLLGATE_LOG_ADMIN_PORT NGINX_PROD_PORT \
        TOLLGATE_PROD_PORT TOLLGATE_PROD_ADMIN_PORT NGINX_H2_PORT TOLLGATE_H2_PORT \
        TOLLGATE_H2_ADMIN_PORT NGINX_H2C_PORT TOLLGATE_H2C_PORT TOLLGATE_H2C_ADMIN_PORT \
        GRPC_UPSTREAM_PORT NGINX_GRPC_PORT TOLLGATE_GRPC_PORT TOLLGATE_GRPC_ADMIN_PORT \
        TOLLGATE_CACHE_PORT TOLLGATE_CACHE_ADMIN_PORT <<<"$ports"

    start_upstream
    # ACCESS_LOG=both: the plain instances without a log, and a second of each with one.
    local first_log=$ACCESS_LOG
    [[ $ACCESS_LOG != both ]] || first_log=off
    start_nginx_proxy "$NGINX_PORT" "$first_log"
    [[ $ACCESS_LOG != both ]] || start_nginx_proxy "$NGINX_LOG_PORT" combined -log
    [[ $SKIP_TOLLGATE == 1 ]] || start_tollgate "$TOLLGATE_PORT" "$TOLLGATE_ADMIN_PORT" "$first_log"
    [[ $SKIP_TOLLGATE == 1 || $ACCESS_LOG != both ]] ||
        start_tollgate "$TOLLGATE_LOG_PORT" "$TOLLGATE_LOG_ADMIN_PORT" combined -log
    if [[ $TLS == 1 || $H2 == 1 ]]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj /CN=localhost -addext subjectAltName=DNS:localhost \
            -keyout "$TMP/tls.key" -out "$TMP/tls.pem" >/dev/null 2>&1 || die "openssl req failed"
        chmod 0644 "$TMP/tls.key" # nginx workers run unprivileged when started as root
    fi
    if [[ $TLS == 1 ]]; then
        start_nginx_proxy "$NGINX_PROD_PORT" combined -prod 1
        [[ $SKIP_TOLLGATE == 1 ]] ||
            start_tollgate "$TOLLGATE_PROD_PORT" "$TOLLGATE_PROD_ADMIN_PORT" combined -prod 1
    fi
    if [[ $H2 == 1 ]]; then
        # HTTP/2 from clients, HTTP/1.1 to the upstream, as the first-level rows (no log).
        start_nginx_proxy "$NGINX_H2_PORT" off -h2 1 1
        start_nginx_proxy "$NGINX_H2C_PORT" off -h2c 0 1
        if [[ $SKIP_TOLLGATE != 1 ]]; then
            start_tollgate "$TOLLGATE_H2_PORT" "$TOLLGATE_H2_ADMIN_PORT" off -h2 1
            start_tollgate "$TOLLGATE_H2C_PORT" "$TOLLGATE_H2C_ADMIN_PORT" off -h2c 0 1
        fi
    fi
    [[ $GRPC != 1 ]] || start_grpc
    [[ $CACHE != 1 || $SKIP_TOLLGATE == 1 ]] ||
        start_tollgate "$TOLLGATE_CACHE_PORT" "$TOLLGATE_CACHE_ADMIN_PORT" off -cache 0 0 1
    [[ $SKIP_TOLLGATE == 1 || $SKIP_BARE == 1 ]] || start_example pingora "$BARE_BIN" "$BARE_PORT"
    [[ $SKIP_TOLLGATE == 1 || $SKIP_FLOOR == 1 ]] || start_example h1-floor "$FLOOR_BIN" "$FLOOR_PORT"
    [[ $HAVE_HAPROXY == 0 ]] || start_haproxy

    # The targets, in the order they alternate within each repetition.
    local key_hdr="X-Api-Key: $API_KEY"
    scenario direct "$UPSTREAM_PORT"
    scenario nginx "$NGINX_PORT"
    scenario --base nginx --path /api/bench --auth nginx-apikey "$NGINX_PORT" -H "$key_hdr"
    if [[ $HAVE_HAPROXY == 1 ]]; then
        scenario haproxy "$HAPROXY_PORT"
        scenario --vs nginx-apikey --base haproxy --path /api/bench --auth \
            haproxy-apikey "$HAPROXY_PORT" -H "$key_hdr"
    fi
    if [[ $SKIP_TOLLGATE != 1 && $SKIP_BARE != 1 ]]; then
        scenario pingora "$BARE_PORT"
    fi
    if [[ $SKIP_TOLLGATE != 1 && $SKIP_FLOOR != 1 ]]; then
        scenario h1-floor "$FLOOR_PORT"
    fi
    if [[ $SKIP_TOLLGATE != 1 ]]; then
        scenario tollgate "$TOLLGATE_PORT"
        scenario --vs nginx-apikey --base tollgate --path /api/bench --auth \
            tollgate-apikey "$TOLLGATE_PORT" -H "$key_hdr"
        # No JWT in nginx (open source) to compare with: its base is the API-key route.
        scenario --vs nginx-apikey --base tollgate-apikey --path /jwt/bench --auth \
            tollgate-jwt "$TOLLGATE_PORT" -H "Authorization: Bearer $JWT"
    fi
    if [[ $ACCESS_LOG == both ]]; then
        # Each with a combined access log to a file: "vs base" is what the log costs it.
        scenario --base nginx-apikey --path /api/bench --auth nginx-apikey-log "$NGINX_LOG_PORT" -H "$key_hdr"
        if [[ $SKIP_TOLLGATE != 1 ]]; then
            scenario --vs nginx-apikey-log --base tollgate-apikey --path /api/bench --auth \
                tollgate-apikey-log "$TOLLGATE_LOG_PORT" -H "$key_hdr"
        fi
    fi

    if [[ $TLS == 1 ]]; then
        # The production shape: TLS 1.3, a combined access log, the API key and limit.
        scenario --tls --base nginx-apikey --path /api/bench --auth nginx-prod "$NGINX_PROD_PORT" -H "$key_hdr"
        if [[ $SKIP_TOLLGATE != 1 ]]; then
            scenario --tls --vs nginx-prod --base tollgate-apikey --path /api/bench --auth \
                tollgate-prod "$TOLLGATE_PROD_PORT" -H "$key_hdr"
        fi
    fi

    if [[ $H2 == 1 ]]; then
        scenario --h2 --base nginx nginx-h2 "$NGINX_H2_PORT"
        scenario --h2c --base nginx nginx-h2c "$NGINX_H2C_PORT"
        if [[ $SKIP_TOLLGATE != 1 ]]; then
            scenario --h2 --vs nginx-h2 --base tollgate tollgate-h2 "$TOLLGATE_H2_PORT"
            scenario --h2c --vs nginx-h2c --base tollgate tollgate-h2c "$TOLLGATE_H2C_PORT"
        fi
    fi

    if [[ $GRPC == 1 ]]; then
        scenario --grpc --path /bench.Svc/Call nginx-grpc "$NGINX_GRPC_PORT"
        [[ $SKIP_TOLLGATE == 1 ]] ||
            scenario --grpc --vs nginx-grpc --path /bench.Svc/Call tollgate-grpc "$TOLLGATE_GRPC_PORT"
    fi

    if [[ $CACHE == 1 ]]; then
        # Warm hits: the smoke request below fills each cache; every measured request is a hit.
        scenario --path /cached/bench nginx-cached "$NGINX_PORT"
        [[ $SKIP_TOLLGATE == 1 ]] ||
            scenario --vs nginx-cached --path /cached/bench tollgate-cached "$TOLLGATE_CACHE_PORT"
        if [[ $SKIP_TOLLGATE != 1 ]]; then
            # Misses: every request a new key, stored; the base is the same requests on the
            # same process's route without a cache (what a miss costs over no cache at all).
            scenario --vs nginx tollgate-nocache "$TOLLGATE_CACHE_PORT" -s "$HERE/unique.lua"
            scenario --vs nginx --base tollgate-nocache --path /cached/bench tollgate-miss \
                "$TOLLGATE_CACHE_PORT" -s "$HERE/unique.lua"
        fi
    fi

    local name conns rep
    for name in "${SCENARIOS[@]}"; do smoke "$name"; done
    check_quiet "before measuring"

    # The context first, then each part's table as soon as the part is done, so a later part
    # that fails loses nothing measured before it.
    TABLE="$(print_context)"
    printf '%s\n' "$TABLE"
    if has_part throughput; then
        for conns in $CONNS; do
            for name in "${SCENARIOS[@]}"; do
                log "warm-up c=$conns $name ($WARMUP)"
                run_wrk "$name" "$conns" "$WARMUP" "$TMP/wrk.$name.c$conns.warmup.txt"
                check_run "$name" "$conns" "$TMP/wrk.$name.c$conns.warmup.txt"
            done
            for ((rep = 1; rep <= REPS; rep++)); do
                for name in "${SCENARIOS[@]}"; do
                    measure "$name" "$conns" "$rep"
                done
            done
        done
    fi
    if has_part throughput; then emit "$(print_table)"; fi
    if has_part latency; then
        latency_part
        emit "Open loop (oha --latency-correction, $LAT_CONNS connections, $LAT_REPS x $LAT_DURATION, medians):" \
            "$(print_latency_table)"
    fi
    # Keys before memory: the idle-connection part leaves freed memory that the allocator has
    # not given back yet, which would hide the keys' growth.
    if [[ $SKIP_TOLLGATE != 1 ]] && has_part keys; then
        keys_part
        emit "Rate-limiter memory (tollgate, one new key per request, buckets kept 1 h):" \
            "$(print_keys_table)"
    fi
    if has_part memory; then
        memory_part
        emit "Memory with $IDLE_CONNS idle keep-alive client connections (each served one request):" \
            "$(print_memory_table)"
    fi
    if [[ $SAVE == 1 ]]; then
        printf '# tollgate load test results\n\n%s\n' "$TABLE" >"$HERE/results.md"
        log "table written to $HERE/results.md"
    fi
}

# emit TEXT... — print a finished part's caption and table, and keep them for SAVE.
emit() {
    local part
    part=$(printf '%s\n\n' "$@")
    printf '\n%s\n' "$part"
    TABLE+=$'\n\n'"$part"
}

has_part() { [[ " $PARTS " == *" $1 "* ]]; }

main "$@"
