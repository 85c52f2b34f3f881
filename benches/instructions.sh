#!/usr/bin/env bash
# Instructions per request: a regression number that machine noise does not move.
#
#   benches/instructions.sh              # measure, compare with benches/instructions.txt
#   RECORD=1 benches/instructions.sh     # measure and rewrite benches/instructions.txt
#   SCENARIOS=apikey N=500 benches/instructions.sh   # one scenario, quicker
#
# The release build (threads: 1, the load harness's own config) runs under
# `valgrind --tool=callgrind`, which counts every instruction the process
# executes, in every thread. One client sends N requests, one after another on
# one keep-alive connection, then the same again with 2N in a fresh process:
#
#   instructions/request = (I(2N) - I(N)) / N
#
# so start-up, readiness polling, the first connections and shutdown cancel out.
# Scenarios (the routes of benches/load/tollgate.yaml):
#   plain   GET /bench        routing + forwarding and gateway headers
#   apikey  GET /api/bench    + API key + local rate limit (never triggers) + a response header
#   jwt     GET /jwt/bench    the same policy with an HS256 JWT
#   bare    GET /bench        not tollgate: examples/bare_pingora.rs, Pingora's proxy with
#                             no-op hooks, tuned as tollgate is (the floor under "plain")
#   hybrid  GET /bench        bare_pingora --own-upstream: Pingora serves the client, the
#                             upstream leg is tollgate-style code of its own (no Pingora pool)
#   floor   GET /bench        not tollgate: examples/h1_floor.rs, the same job on tokio with
#                             no Pingora (what an HTTP/1 engine of our own would start from)
#   nginx   GET /bench        nginx as a plain proxy (benches/load/proxy.nginx.conf, one
#                             process), the reference of the load harness
#   nginx-apikey  GET /api/bench  nginx with tollgate's API-key policy (map, limit_req, headers)
#   jwks-file    GET /jwks-file/bench    "jwt" with an RS256 key from a JWKS file
#   jwks-es256   GET /jwks-es256/bench   "jwt" with an ES256 (P-256) key from a JWKS file
#   jwks-remote  GET /jwks-remote/bench  the same key from an identity provider (jwks: {url}):
#                             a python3 HTTPS server of this script, self-signed, which
#                             counts its requests: asked at start, never while serving
#   (both: benches/load/tollgate-jwks.yaml, one config for the two, so they differ only in
#   the route; key, JWKS and token made with openssl and python3 at run time)
# Production shape (issue 25): apikey's request, on benches/load/tollgate.yaml changed so
#   logged  GET /api/bench    + a combined access log to a file
#   tls     GET /api/bench    over TLS 1.3 (an ECDSA P-256 certificate made at run time),
#                             HTTP/1.1 keep-alive; the handshake cancels out with start-up
#   prod    GET /api/bench    both: TLS and the access log
#   nginx-tls  GET /api/bench  nginx-apikey over TLS 1.3 with the same certificate (tls's reference)
#   transform GET /xf/bench   plain's, on a route with a rewrite and three request header edits
#   h2c        GET /api/bench  apikey over HTTP/2 with prior knowledge (h2load -c 1 -m 10)
#   nginx-h2c  GET /api/bench  nginx-apikey over h2c (h2c's reference)
# Tracing (issue 29): apikey's request with `tracing:` exporting to a collector of this script
# (python3, answers 200 to every POST and discards it; its own cost is not counted)
#   traced     GET /api/bench  sample: 0.01 (traceparent forwarded on every request)
#   traced-all GET /api/bench  sample: 1.0 (every request's spans encoded and exported)
# Caching (issue 26): plain's config with `caches` (a store of 512 KiB, full after a few
# hundred entries) and a route /cached with `cache: {ttl: 1h}`
#   cached       GET /cached/bench      every request a hit (the first, a miss, cancels out)
#   nginx-cached GET /cached/bench      nginx's proxy_cache, same key (host + URI), warm
#   cache-miss   GET /cached/bench?i=N  every request a new key: a miss, stored; the store
#                                        is full well before N, so each request counted
#                                        also evicts one entry (a busy cache's steady state)
#   plain-miss   GET /bench?i=N         the same requests on plain's uncached route
#   cache-neighbour GET /bench          plain's request on the config with the cached route
#                                        (what caching elsewhere costs a route without it)
#
# Exit status: 0, or 1 when a scenario grew by more than THRESHOLD percent
# over the recorded number (a drop is reported, never a failure: re-record it).
# Not part of CI: it needs valgrind and takes a minute or two.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

N=${N:-2000}                         # requests of the short run (the long one is 2N)
THRESHOLD=${THRESHOLD:-5}            # percent growth that fails
RECORD=${RECORD:-0}                  # 1: write the numbers to RESULTS
RESULTS=${RESULTS:-$HERE/instructions.txt}
ALL="plain apikey jwt bare hybrid floor nginx nginx-apikey jwks-file jwks-remote jwks-es256 logged tls prod nginx-tls h2c nginx-h2c transform traced traced-all cached nginx-cached cache-miss plain-miss cache-neighbour"
SCENARIOS=${SCENARIOS:-$ALL}
TOLLGATE_BIN=${TOLLGATE_BIN:-}       # use this binary instead of building
BARE_BIN=${BARE_BIN:-}               # bare Pingora (default: beside TOLLGATE_BIN, or built)
FLOOR_BIN=${FLOOR_BIN:-}             # the same for examples/h1_floor
READY_TIMEOUT=${READY_TIMEOUT:-120}  # seconds tollgate (under valgrind) gets to start
KEEP_TMP=${KEEP_TMP:-0}              # 1: keep configs, logs and callgrind outputs
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
export CARGO_TARGET_DIR

BODY="tollgate-bench:0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLM"
API_KEY="tollgate-bench-key-0123456789abcdef"

log() { printf '[instructions] %s\n' "$*" >&2; }
die() { printf '[instructions] ERROR: %s\n' "$*" >&2; exit 2; }

if ! [[ $N =~ ^[1-9][0-9]*$ ]]; then die "N must be a positive integer (got '$N')"; fi
[[ $THRESHOLD =~ ^[0-9]+([.][0-9]+)?$ ]] || die "THRESHOLD must be a number (got '$THRESHOLD')"
for t in valgrind nginx curl python3 openssl; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (scripts/install-deps.sh --bench installs valgrind and nginx)"
done

render() { # render TEMPLATE OUT KEY=VALUE...
    local text kv
    text=$(<"$1")
    for kv in "${@:3}"; do text=${text//"@${kv%%=*}@"/"${kv#*=}"}; done
    [[ ! $text =~ @[A-Z_]+@ ]] || die "template $1: no value for ${BASH_REMATCH[0]}"
    printf '%s\n' "$text" >"$2"
}

# ---------------------------------------------------------------- build ----
if [[ -n $TOLLGATE_BIN ]]; then
    TG_BIN=$(cd "$(dirname "$TOLLGATE_BIN")" && pwd)/$(basename "$TOLLGATE_BIN")
else
    log "building tollgate (release)"
    (cd "$REPO" && cargo build --release --bin tollgate) >&2 || die "cargo build --release failed"
    dir=$CARGO_TARGET_DIR
    [[ $dir == /* ]] || dir=$REPO/$dir
    TG_BIN=$dir/release/tollgate
fi
[[ -x $TG_BIN ]] || die "$TG_BIN is not an executable"
# The examples (bare Pingora, the h1 floor): the ones beside a prebuilt TOLLGATE_BIN, as the
# load harness takes them; built (a no-op when current) whenever this script builds tollgate,
# so they are never stale.
example() { # example SCENARIO NAME GIVEN_BIN -> prints the binary to run
    local bin=$3
    [[ " $SCENARIOS " == *" $1 "* ]] || return 0
    if [[ -z $bin ]]; then
        bin=$(dirname "$TG_BIN")/examples/$2
        if [[ -z $TOLLGATE_BIN || ! -x $bin ]]; then
            log "building examples/$2 (release)"
            (cd "$REPO" && cargo build --release --example "$2") >&2 ||
                die "cargo build --release --example $2 failed"
        fi
    fi
    [[ -x $bin ]] || die "$bin is not an executable"
    printf '%s\n' "$bin"
}
BARE_BIN=$(example bare bare_pingora "$BARE_BIN")
[[ -n $BARE_BIN ]] || BARE_BIN=$(example hybrid bare_pingora "")
FLOOR_BIN=$(example floor h1_floor "$FLOOR_BIN")

# -------------------------------------------------------------- services ----
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-instr.XXXXXX")
chmod 0755 "$TMP" # nginx workers run unprivileged when started as root
PIDS=()
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    set +e
    for p in "${PIDS[@]}"; do kill -s TERM "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [[ $rc != 0 && $rc != 1 ]] || [[ $KEEP_TMP == 1 ]]; then
        log "logs and callgrind outputs kept in $TMP"
    else
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r UPSTREAM_PORT TOLLGATE_PORT ADMIN_PORT IDP_PORT OTLP_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')

mkdir -p "$TMP/upstream_tmp"
render "$HERE/load/upstream.nginx.conf" "$TMP/upstream.conf" TMP="$TMP" UPSTREAM_PORT="$UPSTREAM_PORT" \
    BODY="$BODY" WORKER_CONNECTIONS=1024
nginx -p "$TMP" -e "$TMP/upstream.error.log" -c "$TMP/upstream.conf" >"$TMP/upstream.out" 2>&1 &
PIDS+=($!)
render "$HERE/load/tollgate.yaml" "$TMP/tollgate.yaml" TMP="$TMP" UPSTREAM_PORT="$UPSTREAM_PORT" \
    TOLLGATE_PORT="$TOLLGATE_PORT" TOLLGATE_ADMIN_PORT="$ADMIN_PORT" API_KEY="$API_KEY"
JWT=$("$TG_BIN" token -c "$TMP/tollgate.yaml" --auth tokens --sub bench --ttl 24h) || die "tollgate token failed"

wait_200() { # wait_200 URL PID [CURL_ARG...] — poll every 0.5 s (few polls: they are counted too)
    local deadline=$((SECONDS + READY_TIMEOUT))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${@:3}" "$1" || true) == 200 ]]; do
        kill -0 "$2" 2>/dev/null || die "process $2 exited while starting"
        ((SECONDS < deadline)) || die "$1 not ready after ${READY_TIMEOUT}s"
        sleep 0.5
    done
}
wait_200 "http://127.0.0.1:$UPSTREAM_PORT/" "${PIDS[0]}"

# The jwks-* scenarios: an RS256 key, its JWKS (for the file and for the identity provider)
# and one token, made with openssl and python3 (not tollgate's code); the identity provider,
# a python3 HTTPS server with a self-signed certificate, writes how many requests it has
# answered to $TMP/idp.count.
if [[ " $SCENARIOS " == *" jwks-"* ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/jwt.key" 2>/dev/null ||
        die "openssl: cannot make the RS256 key"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TMP/jwt-es.key" 2>/dev/null ||
        die "openssl: cannot make the ES256 key"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$TMP/idp.key" -out "$TMP/idp.pem" -subj "/CN=tollgate bench idp" \
        -addext "subjectAltName=DNS:localhost" 2>/dev/null ||
        die "openssl: cannot make the identity provider's certificate"
    JWKS_JWTS=$(python3 - "$TMP/jwt.key" "$TMP/jwks.json" "$TMP/jwt-es.key" "$TMP/jwks-es.json" <<'EOF'
import base64, json, subprocess, sys, time
key, out, es_key, es_out = sys.argv[1:5]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout
n = int(openssl("rsa", "-in", key, "-noout", "-modulus").decode().strip().split("=", 1)[1], 16)
text = openssl("rsa", "-in", key, "-noout", "-text").decode()
e = int(next(l for l in text.splitlines() if l.startswith("publicExponent:")).split()[1])
big = lambda i: i.to_bytes((i.bit_length() + 7) // 8, "big")
jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "bench", "n": b64(big(n)), "e": b64(big(e))}
with open(out, "w") as f:
    json.dump({"keys": [jwk]}, f)
compact = lambda o: b64(json.dumps(o, separators=(",", ":")).encode())
signing_input = compact({"alg": "RS256", "typ": "JWT", "kid": "bench"}) + "." + \
    compact({"sub": "bench", "exp": int(time.time()) + 24 * 3600})
sig = openssl("dgst", "-sha256", "-sign", key, "-binary", data=signing_input.encode())
print(signing_input + "." + b64(sig))
# ES256: the public point from the key's DER (its last 65 bytes: 04 || x || y); the token's
# signature is r || s, each 32 bytes, out of openssl's DER ECDSA-Sig-Value.
point = openssl("ec", "-in", es_key, "-pubout", "-outform", "DER")[-65:]
with open(es_out, "w") as f:
    json.dump({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "bench-es",
                         "x": b64(point[1:33]), "y": b64(point[33:])}]}, f)
signing_input = compact({"alg": "ES256", "typ": "JWT", "kid": "bench-es"}) + "." + \
    compact({"sub": "bench", "exp": int(time.time()) + 24 * 3600})
der = openssl("dgst", "-sha256", "-sign", es_key, "-binary", data=signing_input.encode())
def ints(d):  # SEQUENCE { INTEGER r, INTEGER s }, short lengths (a P-256 signature is < 128 bytes)
    assert d[0] == 0x30
    i, out = 2, []
    while i < len(d):
        assert d[i] == 0x02
        n = d[i + 1]
        out.append(int.from_bytes(d[i + 2:i + 2 + n], "big"))
        i += 2 + n
    return out
r, s_ = ints(der)
print(signing_input + "." + b64(r.to_bytes(32, "big") + s_.to_bytes(32, "big")))
EOF
    ) || die "cannot make the JWKS and the RS256 and ES256 tokens"
    JWKS_JWT=$(sed -n 1p <<<"$JWKS_JWTS") ES_JWT=$(sed -n 2p <<<"$JWKS_JWTS")
    python3 - "$IDP_PORT" "$TMP/idp.pem" "$TMP/idp.key" "$TMP/jwks.json" "$TMP/idp.count" \
        >"$TMP/idp.log" 2>&1 <<'EOF' &
import http.server, os, ssl, sys
port, cert, key, doc, count_file = int(sys.argv[1]), *sys.argv[2:6]
doc = open(doc, "rb").read()
count = 0
def record():  # written whole (rename) before the answer is sent
    with open(count_file + ".tmp", "w") as f:
        f.write(f"{count}\n")
    os.replace(count_file + ".tmp", count_file)
class Idp(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global count
        count += 1
        record()
        if self.path != "/jwks.json":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(doc)))
        self.end_headers()
        self.wfile.write(doc)
    def log_message(self, fmt, *args):
        sys.stderr.write("idp: " + fmt % args + "\n")
        sys.stderr.flush()
record()
server = http.server.HTTPServer(("127.0.0.1", port), Idp)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
EOF
    PIDS+=($!)
    wait_200 "https://localhost:$IDP_PORT/jwks.json" "${PIDS[-1]}" --cacert "$TMP/idp.pem"
    render "$HERE/load/tollgate-jwks.yaml" "$TMP/tollgate-jwks.yaml" TMP="$TMP" \
        UPSTREAM_PORT="$UPSTREAM_PORT" TOLLGATE_PORT="$TOLLGATE_PORT" \
        TOLLGATE_ADMIN_PORT="$ADMIN_PORT" IDP_PORT="$IDP_PORT"
    "$TG_BIN" -t -c "$TMP/tollgate-jwks.yaml" >"$TMP/tollgate-jwks.check" 2>&1 ||
        die "$TMP/tollgate-jwks.yaml is refused: $(cat "$TMP/tollgate-jwks.check")"
fi
idp_count() { cat "$TMP/idp.count"; }

# The production-shape scenarios' configs: tollgate.yaml with the access log on, or a TLS
# listener, or both.
if [[ " $SCENARIOS " == *" tls "* || " $SCENARIOS " == *" prod "* || " $SCENARIOS " == *" nginx-tls "* ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$TMP/tls.key" -out "$TMP/tls.pem" >/dev/null 2>&1 || die "openssl req failed"
fi
shape() { # shape SCENARIO: write $TMP/tollgate-SCENARIO.yaml
    local out="$TMP/tollgate-$1.yaml" tls log
    tls="listen: [{address: \"127.0.0.1:$TOLLGATE_PORT\", tls: {cert: \"$TMP/tls.pem\", key: \"$TMP/tls.key\", min_version: \"1.3\"}}]"
    log="access_log: {format: combined, path: \"$TMP/access.$1.log\"}"
    cp "$TMP/tollgate.yaml" "$out"
    if [[ $1 != tls ]]; then sed -i "s|^access_log: {enabled: false}|$log|" "$out"; fi
    if [[ $1 != logged ]]; then sed -i "s|^listen: \[\"127.0.0.1:$TOLLGATE_PORT\"\]|$tls|" "$out"; fi
    "$TG_BIN" -t -c "$out" >"$out.check" 2>&1 || die "$out is refused: $(cat "$out.check")"
    [[ $1 == tls ]] || grep -q "access\.$1\.log" "$out" || die "$out: the access log was not turned on"
    [[ $1 == logged ]] || grep -q "tls.pem" "$out" || die "$out: no TLS listener"
}
for sc in logged tls prod; do
    [[ " $SCENARIOS " != *" $sc "* ]] || shape "$sc"
done
# traced, traced-all: apikey's config with a `tracing` section, exporting to a collector that
# accepts every OTLP/HTTP POST and discards it.
if [[ " $SCENARIOS " == *" traced"* ]]; then
    python3 - "$OTLP_PORT" <<'EOF' >"$TMP/otlp.out" 2>&1 &
import http.server, sys
class Collector(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Collector).serve_forever()
EOF
    PIDS+=($!)
    wait_200 "http://127.0.0.1:$OTLP_PORT/" "${PIDS[-1]}"
    for sc in traced traced-all; do
        sample=0.01
        [[ $sc == traced ]] || sample=1.0
        out="$TMP/tollgate-$sc.yaml"
        cp "$TMP/tollgate.yaml" "$out"
        printf 'tracing: {otlp: {endpoint: "http://127.0.0.1:%s"}, sample: %s, service_name: tollgate-bench}\n' \
            "$OTLP_PORT" "$sample" >>"$out"
        "$TG_BIN" -t -c "$out" >"$out.check" 2>&1 || die "$out is refused: $(cat "$out.check")"
    done
fi
if [[ " $SCENARIOS " == *" cache"* || " $SCENARIOS " == *" cached "* ]]; then
    out="$TMP/tollgate-cached.yaml"
    sed 's|^routes:$|routes:\n  - {name: cached, path_prefix: /cached, strip_prefix: false, upstream: up, cache: {ttl: 1h}}|' \
        "$TMP/tollgate.yaml" >"$out"
    printf 'caches: {bench: {max_size: 512KiB}}\n' >>"$out"
    grep -q "name: cached" "$out" || die "tollgate.yaml: no 'routes:' line to put the cached route under"
    "$TG_BIN" -t -c "$out" >"$out.check" 2>&1 || die "$out is refused: $(cat "$out.check")"
fi
if [[ " $SCENARIOS " == *" h2c "* ]]; then
    # h2c: apikey's request from HTTP/2 clients with prior knowledge (Pingora's h2 path).
    sed "s|^listen: \[\"127.0.0.1:$TOLLGATE_PORT\"\]|listen: [{address: \"127.0.0.1:$TOLLGATE_PORT\", h2c: true}]|" \
        "$TMP/tollgate.yaml" >"$TMP/tollgate-h2c.yaml"
    grep -q "h2c: true" "$TMP/tollgate-h2c.yaml" || die "tollgate.yaml: no listen line to put h2c on"
fi
if [[ " $SCENARIOS " == *" h2c"* ]]; then
    command -v h2load >/dev/null 2>&1 || die "h2load not found (scripts/install-deps.sh --bench installs nghttp2-client)"
fi

# The client: COUNT sequential GETs on one keep-alive connection; every answer must
# be a 200 with the upstream's body, so a fast error path is never measured.
client() { # client PATH COUNT HEADER [CA]: with CA, over TLS (host name localhost)
    python3 - "$TOLLGATE_PORT" "$1" "$2" "$3" "$BODY" "${4:-}" <<'EOF'
import http.client, ssl, sys
port, path, count, header, body, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
headers = {}
if header:
    k, v = header.split(": ", 1)
    headers[k] = v
if ca:
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection("localhost", int(port), timeout=60, context=ctx)
else:
    c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
for i in range(count):
    c.request("GET", path.replace("{i}", str(i)), headers=headers)
    r = c.getresponse()
    got = r.read().decode()
    if r.status != 200 or got != body:
        sys.exit(f"request {i}: {r.status} {got[:200]}")
c.close()
EOF
}

# The HTTP/2 client: COUNT GETs on one h2c connection, ten streams at a time (h2load); every
# answer must be a 2xx.
h2client() { # h2client PATH COUNT HEADER
    local out
    out=$(h2load -n "$2" -c 1 -m 10 -H "$3" "http://127.0.0.1:$TOLLGATE_PORT$1" 2>&1) || {
        echo "$out" >&2
        return 1
    }
    grep -q "status codes: $2 2xx" <<<"$out" || { echo "$out" >&2; return 1; }
}

# measure SCENARIO COUNT — sets TOTAL: the instructions of one tollgate process that
# served COUNT requests (not in a subshell, so cleanup knows every pid).
measure() {
    local sc=$1 count=$2 path header out="$TMP/callgrind.$1.$2.out" pid idp0 idp1 idp2 ca=""
    local cmd=("$TG_BIN" -c "$TMP/tollgate.yaml") ready="http://127.0.0.1:$ADMIN_PORT/health"
    case $sc in
        plain) path=/bench header="" ;;
        transform) path=/xf/bench header="" ;;
        plain-miss) path="/bench?i={i}" header="" ;;
        cached | cache-miss | cache-neighbour)
            path=/cached/bench header=""
            [[ $sc != cache-miss ]] || path="/cached/bench?i={i}"
            [[ $sc != cache-neighbour ]] || path=/bench
            cmd=("$TG_BIN" -c "$TMP/tollgate-cached.yaml")
            ;;
        apikey) path=/api/bench header="X-Api-Key: $API_KEY" ;;
        jwt) path=/jwt/bench header="Authorization: Bearer $JWT" ;;
        h2c)
            path=/api/bench header="X-Api-Key: $API_KEY"
            cmd=("$TG_BIN" -c "$TMP/tollgate-h2c.yaml")
            ;;
        traced | traced-all)
            path=/api/bench header="X-Api-Key: $API_KEY"
            cmd=("$TG_BIN" -c "$TMP/tollgate-$sc.yaml")
            ;;
        logged | tls | prod)
            path=/api/bench header="X-Api-Key: $API_KEY"
            cmd=("$TG_BIN" -c "$TMP/tollgate-$sc.yaml")
            [[ $sc == logged ]] || ca=$TMP/tls.pem
            ;;
        jwks-file | jwks-remote)
            path=/$sc/bench header="Authorization: Bearer $JWKS_JWT"
            cmd=("$TG_BIN" -c "$TMP/tollgate-jwks.yaml")
            ;;
        jwks-es256)
            path=/$sc/bench header="Authorization: Bearer $ES_JWT"
            cmd=("$TG_BIN" -c "$TMP/tollgate-jwks.yaml")
            ;;
        bare | hybrid | floor)
            path=/bench header=""
            cmd=("$BARE_BIN" "127.0.0.1:$TOLLGATE_PORT" "127.0.0.1:$UPSTREAM_PORT")
            [[ $sc != hybrid ]] || cmd+=(--own-upstream)
            [[ $sc != floor ]] || cmd[0]=$FLOOR_BIN
            ready="http://127.0.0.1:$TOLLGATE_PORT/bench" # no admin port: its polls are counted
            ;;
        nginx | nginx-apikey | nginx-tls | nginx-h2c | nginx-cached)
            path=/bench header=""
            [[ $sc == nginx || $sc == nginx-cached ]] || path=/api/bench header="X-Api-Key: $API_KEY"
            [[ $sc != nginx-cached ]] || path=/cached/bench
            # One process (no master), so callgrind counts the one that serves.
            render "$HERE/load/proxy.nginx.conf" "$TMP/nginx.conf" TMP="$TMP" \
                UPSTREAM_PORT="$UPSTREAM_PORT" NGINX_PORT="$TOLLGATE_PORT" NGINX_KEEPALIVE=64 \
                WORKER_CONNECTIONS=1024 API_KEY="$API_KEY"
            sed -i 's/^master_process on;/master_process off;/' "$TMP/nginx.conf"
            if [[ $sc == nginx-tls ]]; then
                # tls's counterpart: the policy over TLS 1.3 with the same certificate.
                sed -i "s|^        listen 127.0.0.1:$TOLLGATE_PORT backlog=4096;|        listen 127.0.0.1:$TOLLGATE_PORT ssl backlog=4096; ssl_certificate $TMP/tls.pem; ssl_certificate_key $TMP/tls.key; ssl_protocols TLSv1.3;|" "$TMP/nginx.conf"
                grep -q "ssl_certificate" "$TMP/nginx.conf" || die "proxy.nginx.conf: no listen line to put TLS on"
                ca=$TMP/tls.pem
            fi
            if [[ $sc == nginx-h2c ]]; then
                # h2c's counterpart: the policy, HTTP/2 with prior knowledge.
                sed -i "s|^        listen 127.0.0.1:$TOLLGATE_PORT backlog=4096;|        listen 127.0.0.1:$TOLLGATE_PORT http2 backlog=4096;|" "$TMP/nginx.conf"
                grep -q " http2 backlog" "$TMP/nginx.conf" || die "proxy.nginx.conf: no listen line to put http2 on"
            fi
            mkdir -p "$TMP/nginx_tmp"
            cmd=(nginx -p "$TMP" -e "$TMP/nginx.error.log" -c "$TMP/nginx.conf")
            ready="http://127.0.0.1:$TOLLGATE_PORT/bench"
            [[ $sc != nginx-tls ]] || ready="https://localhost:$TOLLGATE_PORT/api/bench"
            ;;
        *) die "unknown scenario $sc ($ALL)" ;;
    esac
    RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$out" \
        "${cmd[@]}" >"$TMP/tollgate.$sc.$count.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    [[ $sc != jwks-* ]] || idp0=$(idp_count)
    local ready_args=()
    [[ $ready != https:* ]] || ready_args=(--cacert "$ca" -H "X-Api-Key: $API_KEY")
    [[ $sc != nginx-h2c ]] || ready_args=(--http2-prior-knowledge)
    wait_200 "$ready" "$pid" "${ready_args[@]}"
    [[ $sc != jwks-* ]] || idp1=$(idp_count)
    if [[ $sc == *h2c ]]; then
        h2client "$path" "$count" "$header" || die "$sc: h2load failed (see above)"
    else
        client "$path" "$count" "$header" "$ca" || die "$sc: the client failed (see above)"
    fi
    if [[ $sc == jwks-* ]]; then
        # The keys are fetched before anything is served, and never on the request path.
        idp2=$(idp_count)
        log "$sc: the identity provider was asked $((idp1 - idp0)) time(s) at start," \
            "$((idp2 - idp1)) time(s) during the $count requests"
        ((idp1 > idp0)) || die "$sc: the identity provider was not asked at start"
        ((idp2 == idp1)) || die "$sc: the identity provider was asked while serving requests"
    fi
    kill -s INT "$pid" # Pingora's fast shutdown; callgrind writes its totals at exit
    wait "$pid" || true
    TOTAL=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
    [[ -n $TOTAL ]] || die "no total in $out (see $TMP/tollgate.$sc.$count.log)"
}

declare -A PER
for sc in $SCENARIOS; do
    measure "$sc" "$N"
    i1=$TOTAL
    measure "$sc" $((2 * N))
    i2=$TOTAL
    PER[$sc]=$(((i2 - i1) / N))
    log "$(printf '%-7s I(%d) = %d, I(%d) = %d  ->  %d instructions/request' \
        "$sc" "$N" "$i1" $((2 * N)) "$i2" "${PER[$sc]}")"
done

# --------------------------------------------------------------- report ----
declare -A OLD
if [[ -f $RESULTS ]]; then
    while read -r name value _; do
        [[ -z $name || $name == \#* ]] || OLD[$name]=$value
    done <"$RESULTS"
fi

status=0
printf '%-13s %14s %14s %8s\n' scenario instr/req recorded change
for sc in $SCENARIOS; do
    old=${OLD[$sc]:-} change="-"
    if [[ -n $old ]]; then
        change=$(awk -v a="${PER[$sc]}" -v b="$old" 'BEGIN { printf "%+.1f%%", (a - b) * 100 / b }')
        if awk -v a="${PER[$sc]}" -v b="$old" -v t="$THRESHOLD" 'BEGIN { exit !(a > b * (1 + t / 100)) }'; then
            change+="  REGRESSION (> +$THRESHOLD%)"
            status=1
        fi
    fi
    printf '%-13s %14d %14s %8s\n' "$sc" "${PER[$sc]}" "${old:--}" "$change"
done

if [[ $RECORD == 1 ]]; then
    # The numbers being replaced become the newest line of the history, under the
    # "# measured:" line that said where they came from.
    old_when="" history=""
    if [[ -f $RESULTS ]]; then
        old_when=$(sed -n 's/^# measured: //p' "$RESULTS")
        history=$(grep '^# was: ' "$RESULTS" || true)
    fi
    {
        echo "# Instructions per request, measured by benches/instructions.sh (callgrind, release"
        echo "# build, threads: 1, benches/load/tollgate.yaml; (I(2N) - I(N)) / N with N=$N)."
        echo "# bare: examples/bare_pingora.rs, Pingora with no-op hooks (the floor under tollgate)."
        echo "# hybrid: bare_pingora --own-upstream, Pingora's client side with an upstream leg of its own."
        echo "# floor: examples/h1_floor.rs, the same job on tokio without Pingora."
        echo "# nginx, nginx-apikey: benches/load/proxy.nginx.conf in one process, plain and with the policy."
        echo "# jwks-file, jwks-remote: benches/load/tollgate-jwks.yaml, jwt's policy with an RS256 JWKS from a file / an HTTPS IdP; jwks-es256: an ES256 JWKS from a file."
        echo "# logged, tls, prod: apikey's request with a combined access log to a file, over TLS 1.3 (ECDSA P-256), both."
        echo "# transform: plain's request on a route with a rewrite and three request header edits."
        echo "# traced, traced-all: apikey's request with tracing (OTLP to a discarding collector), sample 0.01 / 1.0."
        echo "# h2c, nginx-h2c: apikey's request over HTTP/2 with prior knowledge, h2load, 10 streams at a time."
        echo "# cached, cache-miss, plain-miss: hits; a new key each request, stored in a full 512 KiB store (each evicts one); those requests uncached."
        echo "# cache-neighbour: plain's request on the config with the cached route."
        echo "# measured: $(date -u '+%Y-%m-%d') $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $(valgrind --version)"
        if ((${#OLD[@]})); then
            printf '# was: %s:' "${old_when:-earlier}"
            for sc in $ALL; do [[ -z ${OLD[$sc]:-} ]] || printf ' %s %s' "$sc" "${OLD[$sc]}"; done
            printf '\n'
        fi
        [[ -z $history ]] || printf '%s\n' "$history"
        echo "# scenario  instructions/request"
        for sc in $ALL; do
            v=${PER[$sc]:-${OLD[$sc]:-}}
            [[ -z $v ]] || printf '%-13s %d\n' "$sc" "$v"
        done
    } >"$RESULTS"
    log "recorded in $RESULTS"
    status=0
fi
exit "$status"
