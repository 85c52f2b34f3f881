# shellcheck shell=bash
# Sourced by run.sh: the scenarios beyond closed-loop throughput.
#
#   latency  open-loop load with oha (--latency-correction, -q RATE) at LAT_LOAD % of each
#            proxy's measured maximum; the same rate straight at the upstream just before,
#            so "added p99" is the proxy's own share of the tail.
#   memory   RSS of each proxy holding IDLE_CONNS idle keep-alive client connections (each
#            has served one request), read while they are all open.
#   keys     tollgate's RSS growth over KEYS distinct rate-limiter keys (X-Client cycling
#            through KEYS values for KEYS_DURATION, a policy whose buckets live an hour).
#
# Uses run.sh's helpers (log, die, rss_kib, median, ratio, taskset pinning, SC_* tables).

# ------------------------------------------------------------- latency ----
ensure_oha() {
    command -v oha >/dev/null 2>&1 && return
    [[ -x $HOME/.cargo/bin/oha ]] && export PATH="$PATH:$HOME/.cargo/bin" && return
    command -v cargo >/dev/null 2>&1 || die "oha not found and no cargo to install it (cargo install oha)"
    log "installing oha (cargo install oha --locked; once, a few minutes)"
    cargo install oha --locked >&2 || die "cargo install oha failed"
    export PATH="$PATH:$HOME/.cargo/bin"
}

# run_oha NAME RATE OUT — one open-loop run at RATE req/s, pinned to the load core.
run_oha() {
    local name=$1 rate=$2 out=$3 fmt=(--output-format json)
    oha --help 2>/dev/null | grep -q -- '--output-format' || fmt=(--json)
    scenario_args "$name"
    taskset -c "$LOADGEN_CPU" oha --no-tui "${fmt[@]}" --latency-correction -q "$rate" \
        -z "$LAT_DURATION" -c "$LAT_CONNS" "${ARGS[@]}" \
        "${SC_SCHEME[$name]}://127.0.0.1:${SC_PORT[$name]}${SC_PATH[$name]}" >"$out" 2>"$out.err" ||
        { cat "$out.err" >&2; die "oha failed against $name"; }
}

# parse_oha FILE — prints: p50_us p99_us requests non_200 (dies on a failed run)
parse_oha() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d.get("latencyPercentiles") or {}
codes = d.get("statusCodeDistribution") or {}
ok = int(codes.get("200", 0))
bad = sum(int(v) for k, v in codes.items() if k != "200")
# Requests cut off by the end of the run (-z) are not failures of the target.
errs = sum(int(v) for k, v in (d.get("errorDistribution") or {}).items()
           if k != "aborted due to deadline")
if ok == 0 or lat.get("p99") is None:
    sys.exit("no successful requests")
print("%.1f %.1f %d %d" % (lat["p50"] * 1e6, lat["p99"] * 1e6, ok, bad + errs))
EOF
}

declare -A L_RATE L_P99 L_P99_DIRECT L_ADDED L_P50

latency_part() {
    ensure_oha
    local name rate rep out p50 p99 reqs bad dp99
    for name in "${SCENARIOS[@]}"; do
        [[ $name == direct ]] && continue
        if [[ -z ${R_RPS[$name|$LAT_CONNS]:-} ]]; then
            log "latency: no closed-loop maximum for $name at c=$LAT_CONNS yet; measuring it"
            run_wrk "$name" "$LAT_CONNS" "$DURATION" "$TMP/wrk.$name.c$LAT_CONNS.max.txt"
            check_run "$name" "$LAT_CONNS" "$TMP/wrk.$name.c$LAT_CONNS.max.txt"
            R_RPS["$name|$LAT_CONNS"]=${PARSED%% *}
        fi
        # shellcheck disable=SC2086
        rate=$(awk -v m="$(median ${R_RPS[$name|$LAT_CONNS]})" -v p="$LAT_LOAD" \
            'BEGIN { printf "%d", m * p / 100 }')
        L_RATE[$name]=$rate
        for ((rep = 1; rep <= LAT_REPS; rep++)); do
            out="$TMP/oha.direct-for-$name.r$rep.json"
            run_oha direct "$rate" "$out"
            read -r _ dp99 _ bad <<<"$(parse_oha "$out")" || die "oha run against direct failed"
            ((bad == 0)) || die "direct: $bad failed requests at $rate req/s"
            out="$TMP/oha.$name.r$rep.json"
            run_oha "$name" "$rate" "$out"
            read -r p50 p99 reqs bad <<<"$(parse_oha "$out")" || die "oha run against $name failed"
            ((bad == 0)) || die "$name: $bad non-200 answers or errors at $rate req/s (open loop)"
            L_P50[$name]+="$p50 "
            L_P99[$name]+="$p99 "
            L_P99_DIRECT[$name]+="$dp99 "
            L_ADDED[$name]+="$(awk -v a="$p99" -v b="$dp99" 'BEGIN { printf "%.1f", a - b }') "
            log "$(printf 'latency rep %d/%d %-16s %6s req/s  p50 %8s us  p99 %8s us  direct p99 %8s us' \
                "$rep" "$LAT_REPS" "$name" "$rate" "$p50" "$p99" "$dp99")"
        done
    done
}

print_latency_table() {
    echo "| scenario | rate req/s (${LAT_LOAD}% of max at c=$LAT_CONNS) | p50 µs | p99 µs | direct p99 µs, same rate | added p99 µs |"
    echo "|---|---:|---:|---:|---:|---:|"
    local name
    for name in "${SCENARIOS[@]}"; do
        [[ -n ${L_RATE[$name]:-} ]] || continue
        # shellcheck disable=SC2086
        printf '| %s | %s | %.0f | %.0f | %.0f | %.0f |\n' "$name" "${L_RATE[$name]}" \
            "$(median ${L_P50[$name]})" "$(median ${L_P99[$name]})" \
            "$(median ${L_P99_DIRECT[$name]})" "$(median ${L_ADDED[$name]})"
    done
}

# -------------------------------------------------------------- memory ----
declare -A M_BEFORE M_AFTER

# idle_rss NAME — RSS of NAME's process(es) with IDLE_CONNS idle client connections open.
idle_rss() {
    local name=$1 pids=${SC_PIDS[$1]} line alive
    local -a hdrs=()
    scenario_args "$name"
    local i
    for ((i = 0; i < ${#ARGS[@]}; i++)); do
        [[ ${ARGS[i]} == -H ]] && hdrs+=("${ARGS[i + 1]}")
    done
    # shellcheck disable=SC2086
    M_BEFORE[$name]=$(rss_kib $pids)
    coproc IDLE { taskset -c "$LOADGEN_CPU" python3 "$HERE/idle_conns.py" "${SC_PORT[$name]}" \
        "${SC_PATH[$name]}" "$IDLE_CONNS" "${hdrs[@]}"; }
    # shellcheck disable=SC2153 # IDLE_PID is set by coproc
    local idle_pid=$IDLE_PID out_fd=${IDLE[0]} in_fd=${IDLE[1]}
    if ! read -r -t 120 line <&"$out_fd" || [[ $line != "ready $IDLE_CONNS" ]]; then
        die "$name: could not open $IDLE_CONNS idle connections (${line:-no answer})"
    fi
    # Idle means idle for a while: tollgate moves a connection out of its task after a
    # second without a request (src/conn/park.rs), so every target's RSS is read
    # IDLE_SETTLE seconds after its last connection was answered; the first read is logged.
    local first
    # shellcheck disable=SC2086
    first=$(rss_kib $pids)
    sleep "$IDLE_SETTLE"
    # shellcheck disable=SC2086
    M_AFTER[$name]=$(rss_kib $pids)
    exec {in_fd}>&-
    read -r -t 60 alive <&"$out_fd" || alive="?"
    wait "$idle_pid" || die "$name: the idle-connection client failed"
    [[ $alive == "alive $IDLE_CONNS" ]] ||
        die "$name: only '$alive' of $IDLE_CONNS idle connections were still open at the RSS read"
    log "memory $name: RSS ${M_BEFORE[$name]} KiB -> $first KiB with $IDLE_CONNS connections just answered, ${M_AFTER[$name]} KiB ${IDLE_SETTLE}s later"
}

memory_part() {
    local name
    for name in "${SCENARIOS[@]}"; do
        [[ -z ${SC_PIDS[$name]} || ${SC_BASE[$name]} != "" ]] && continue # one row per process
        if [[ $name == haproxy ]] && ((HAPROXY_MAXCONN < IDLE_CONNS + 64)); then
            log "memory: skipping haproxy: its maxconn $HAPROXY_MAXCONN (open-files limit $(ulimit -n)) cannot hold $IDLE_CONNS connections"
            continue
        fi
        idle_rss "$name"
    done
}

print_memory_table() {
    echo "| proxy | RSS before MiB | RSS with $IDLE_CONNS idle conns MiB | per connection KiB | vs nginx |"
    echo "|---|---:|---:|---:|---:|"
    local name
    for name in "${SCENARIOS[@]}"; do
        [[ -n ${M_AFTER[$name]:-} ]] || continue
        # A proxy that gave back memory kept from the parts before (tollgate trims its heap
        # once connections go idle) ends below its start: benches/load/idle_rss.sh measures a
        # fresh one.
        printf '| %s | %.1f | %.1f | %s | %s |\n' "$name" \
            "$(awk -v k="${M_BEFORE[$name]}" 'BEGIN { print k / 1024 }')" \
            "$(awk -v k="${M_AFTER[$name]}" 'BEGIN { print k / 1024 }')" \
            "$(awk -v a="${M_AFTER[$name]}" -v b="${M_BEFORE[$name]}" -v n="$IDLE_CONNS" \
                'BEGIN { if (a < b) print "below its start"; else printf "%.1f", (a - b) / n }')" \
            "$(ratio "${M_AFTER[$name]}" "${M_AFTER[nginx]:-}")"
    done
}

# ---------------------------------------------------------------- keys ----
keys_part() {
    local pids=$TOLLGATE_PID before after out="$TMP/wrk.keys.txt" reqs
    before=$(rss_kib "$pids")
    log "keys: $KEYS requests, each with a new X-Client key (tollgate /keys/ route)"
    KEYS=$KEYS taskset -c "$LOADGEN_CPU" wrk -t1 -c32 -d"$KEYS_DURATION" --latency -s "$HERE/keys.lua" \
        "http://127.0.0.1:$TOLLGATE_PORT/keys/bench" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed (keys)"; }
    check_run keys 32 "$out"
    read -r _ reqs _ <<<"$PARSED"
    ((reqs >= KEYS)) || die "keys: only $reqs requests in $KEYS_DURATION, fewer than KEYS=$KEYS: raise KEYS_DURATION"
    after=$(rss_kib "$pids")
    K_LINE=$(awk -v b="$before" -v a="$after" -v k="$KEYS" -v n="$reqs" 'BEGIN {
        printf "| %d | %d | %.1f | %.1f | %.1f | %.0f |", k, n, b / 1024, a / 1024, (a - b) / 1024, (a - b) * 1024 / k }')
    log "keys: RSS $before KiB -> $after KiB after $reqs requests over $KEYS distinct keys"
}

print_keys_table() {
    echo "| distinct keys | requests | RSS before MiB | RSS after MiB | growth MiB | bytes per key |"
    echo "|---:|---:|---:|---:|---:|---:|"
    echo "$K_LINE"
}
