#!/usr/bin/env bash
# Install the system packages tollgate's build and tests need, only when missing.
#   cmake        Pingora's zlib-ng build
#   libssl-dev, pkg-config  TLS: Pingora's openssl feature links the system OpenSSL
#                (.cargo/config.toml sets OPENSSL_NO_VENDOR)
#   redis-server the Redis rate-limit tests start their own server
#   systemd-analyze  `systemd-analyze verify` of the unit (tests/systemd.rs, the .deb check)
#   chromium     the admin dashboard's browser test (tests/dashboard.rs)
#   dnsmasq      the DNS SRV discovery tests start their own server (tests/discovery_srv.rs)
#   etcd, etcdctl  the etcd discovery tests start their own etcd (tests/discovery_etcd.rs)
#   nginx, wrk   the load harness in benches/load (only with --bench)
#   haproxy      the load harness's third reference (only with --bench)
#   valgrind     benches/instructions.sh: instructions per request (only with --bench)
#   h2load       benches/instructions.sh h2c scenarios (nghttp2-client; only with --bench)
set -euo pipefail

want=(cmake:cmake redis-server:redis-server systemd-analyze:systemd chromium:chromium
  dnsmasq:dnsmasq-base etcd:etcd-server etcdctl:etcd-client)
if [[ "${1:-}" == "--bench" ]]; then
  want+=(nginx:nginx-light wrk:wrk haproxy:haproxy valgrind:valgrind h2load:nghttp2-client)
fi

missing=()
for pair in "${want[@]}"; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || missing+=("$pkg")
done
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
((${#missing[@]} == 0)) && exit 0

sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
