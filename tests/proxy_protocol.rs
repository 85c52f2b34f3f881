//! PROXY protocol on listeners (`listen[i].proxy_protocol: true`): the client address a
//! balancer writes before the connection's first byte (v1 text, v2 binary) is the client for
//! the upstream's forwarding headers, the access log, rate limits, `ip_deny` and the per-IP
//! connection cap; connections from untrusted peers, or without a well-formed header, are
//! closed without an answer and counted.

mod support;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 10.0.0.1 40000 8080\r\n").into_bytes()
}

/// A v2 header: `cmd` 1 PROXY or 0 LOCAL, `fam` 0x11 TCP over IPv4, 0x21 over IPv6.
fn v2(cmd: u8, fam: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.extend([0x20 | cmd, fam]);
    h.extend(((addrs.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend(addrs);
    h.extend(tlvs);
    h
}

/// A v2 PROXY header for a TCP client at `src` (to 10.0.0.1:8080 or [2001:db8::1]:8080).
fn v2_from(src: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    match src {
        SocketAddr::V4(s) => {
            a.extend(s.ip().octets());
            a.extend([10, 0, 0, 1]);
            a.extend(s.port().to_be_bytes());
            a.extend(8080u16.to_be_bytes());
            v2(1, 0x11, &a, tlvs)
        }
        SocketAddr::V6(s) => {
            a.extend(s.ip().octets());
            a.extend(
                "2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            a.extend(s.port().to_be_bytes());
            a.extend(8080u16.to_be_bytes());
            v2(1, 0x21, &a, tlvs)
        }
    }
}

/// An echo upstream behind `/api` (and `/limited`, 2 requests a minute per client IP;
/// `/denied`, not for 203.0.113.66), a JSON access log, and a `proxy_protocol` listener with
/// `entry_extra` in its mapping; `extra` adds top-level keys.
struct Pp {
    gw: Gateway,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn gateway(trusted: &str, entry_extra: &str, extra: &str) -> Pp {
    let up = echo("up");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (gw, addr) = Gateway::with_listener(
        |a| format!("{{address: \"{a}\", proxy_protocol: true{entry_extra}}}"),
        &format!(
            "trusted_proxies: [{trusted}]\n\
             access_log: {{format: json, path: \"{}\"}}\n\
             upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
             rate_limits: {{two: {{requests: 2, per: 1m}}}}\n\
             routes:\n\
             \x20 - {{name: limited, path_prefix: /limited, upstream: up, rate_limit: two}}\n\
             \x20 - {{name: denied, path_prefix: /denied, upstream: up, ip_deny: [\"203.0.113.66\"]}}\n\
             \x20 - {{name: api, path_prefix: /api, upstream: up}}\n\
             {extra}",
            log.display()
        ),
    );
    Pp {
        gw,
        addr,
        log,
        _dir: dir,
    }
}

fn trusted_gateway() -> Pp {
    gateway("\"127.0.0.1\"", "", "")
}

impl Pp {
    /// A connection that sent `header` first.
    fn conn(&self, header: &[u8]) -> Client {
        let mut c = Client::connect(self.addr);
        c.send(header);
        c
    }

    /// `GET path` on a fresh connection after `header`.
    fn get(&self, header: &[u8], path: &str) -> Resp {
        self.conn(header).get(path, "")
    }

    /// The access-log entry of the request with id `id`.
    fn logged(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["request_id"] == id);
            if let Some(e) = found {
                return e;
            }
            assert!(Instant::now() < deadline, "{id} not logged: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn refused(&self, reason: &str) -> u64 {
        let m = self.gw.admin_get("/metrics").body;
        let series = format!("tollgate_proxy_protocol_refused_total{{reason=\"{reason}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in\n{m}"))
            .parse()
            .unwrap()
    }
}

/// The client address the upstream was told of, by both headers.
fn told(r: &Resp) -> (Option<String>, Option<String>) {
    assert_eq!(r.status, 200, "{r:?}");
    (
        r.upstream_header("x-real-ip"),
        r.upstream_header("x-forwarded-for"),
    )
}

fn both(ip: &str) -> (Option<String>, Option<String>) {
    (Some(ip.to_owned()), Some(ip.to_owned()))
}

#[test]
fn a_v1_header_names_the_client_for_the_upstream_and_the_access_log() {
    let pp = trusted_gateway();
    let mut c = pp.conn(&v1("203.0.113.7"));
    let r = c.get("/api/x", "X-Request-Id: pp-v1\r\n");
    assert_eq!(told(&r), both("203.0.113.7"));
    assert_eq!(pp.logged("pp-v1")["client_ip"], "203.0.113.7");
    // Keep-alive: the next request of the connection is the same client's.
    let r = c.get("/api/y", "X-Request-Id: pp-v1-2\r\n");
    assert_eq!(told(&r), both("203.0.113.7"));
    assert_eq!(pp.logged("pp-v1-2")["client_ip"], "203.0.113.7");
    // A request in the same write as the header.
    let mut c = Client::connect(pp.addr);
    let mut bytes = v1("203.0.113.9");
    bytes.extend(head("GET", "/api/z", "1.1", ""));
    c.send(&bytes);
    assert_eq!(told(&c.response(false)), both("203.0.113.9"));
    // TCP6, and UNKNOWN (the balancer's own check): the socket's peer.
    let tcp6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8080\r\n";
    assert_eq!(told(&pp.get(tcp6, "/api/6")), both("2001:db8::7"));
    assert_eq!(
        told(&pp.get(b"PROXY UNKNOWN\r\n", "/api/u")),
        both("127.0.0.1")
    );
}

#[test]
fn v2_headers_ipv4_with_tlvs_ipv6_and_local() {
    let pp = trusted_gateway();
    // An AWS NLB's VPC endpoint id (PP2_TYPE_AWS) and a NOOP TLV, skipped.
    let mut tlvs = vec![0xEA, 0x00, 0x0A, 0x01];
    tlvs.extend(b"vpce-0123");
    tlvs.extend([0x04, 0x00, 0x02, 0, 0]);
    let h = v2_from("198.51.100.4:5555".parse().unwrap(), &tlvs);
    assert_eq!(told(&pp.get(&h, "/api/v4")), both("198.51.100.4"));
    let h = v2_from("[2001:db8::42]:5555".parse().unwrap(), &[]);
    assert_eq!(told(&pp.get(&h, "/api/v6")), both("2001:db8::42"));
    // LOCAL: the balancer speaking for itself (health checks), whatever the address block.
    let local = v2(0, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2], &[]);
    assert_eq!(told(&pp.get(&local, "/api/local")), both("127.0.0.1"));
    // v2 and a request in one write, the request behind a TLV.
    let mut c = Client::connect(pp.addr);
    let mut bytes = v2_from("198.51.100.5:1".parse().unwrap(), &[0x04, 0x00, 0x01, 0]);
    bytes.extend(head("GET", "/api/one-write", "1.1", ""));
    c.send(&bytes);
    assert_eq!(told(&c.response(false)), both("198.51.100.5"));
}

#[test]
fn rate_limits_and_ip_deny_see_the_proxied_client() {
    let pp = trusted_gateway();
    let statuses = |ip: &str, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| pp.get(&v1(ip), "/limited/x").status)
            .collect()
    };
    assert_eq!(statuses("203.0.113.7", 3), [200, 200, 429]);
    assert_eq!(statuses("203.0.113.8", 3), [200, 200, 429]);
    let r = pp.get(&v1("203.0.113.66"), "/denied/x");
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "forbidden");
    assert_eq!(pp.get(&v1("203.0.113.67"), "/denied/x").status, 200);
}

#[test]
fn the_per_ip_connection_cap_counts_the_proxied_client() {
    let pp = gateway("\"127.0.0.1\"", "", "limits: {max_connections_per_ip: 1}\n");
    // One connection per client: counted by the address in the header, not the balancer's.
    let mut held = pp.conn(&v1("203.0.113.20"));
    assert_eq!(held.get("/api/a", "").status, 200);
    let r = pp.get(&v1("203.0.113.20"), "/api/b");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(pp.get(&v1("203.0.113.21"), "/api/c").status, 200);
    assert_eq!(held.get("/api/d", "").status, 200, "same connection");
}

#[test]
fn a_proxied_client_that_is_itself_a_trusted_proxy_is_believed_for_x_forwarded_for() {
    let pp = gateway("\"127.0.0.1\", \"10.1.0.0/16\"", "", "");
    let mut c = pp.conn(&v1("10.1.2.3"));
    let r = c.get("/api/x", "X-Forwarded-For: 203.0.113.50\r\n");
    assert_eq!(
        told(&r),
        (
            Some("203.0.113.50".to_owned()),
            Some("203.0.113.50, 10.1.2.3".to_owned())
        )
    );
    // From an untrusted client, the same header is not believed.
    let mut c = pp.conn(&v1("203.0.113.7"));
    let r = c.get("/api/x", "X-Forwarded-For: 6.6.6.6\r\n");
    assert_eq!(
        r.upstream_header("x-real-ip").as_deref(),
        Some("203.0.113.7")
    );
}

#[test]
fn connections_without_a_good_header_are_closed_without_an_answer_and_counted() {
    let pp = gateway("\"127.0.0.1\"", "", "limits: {head_timeout: 1s}\n");
    // HTTP straight away: the header is missing.
    let mut c = Client::connect(pp.addr);
    assert!(c
        .exchange(&head("GET", "/api/x", "1.1", ""), false)
        .is_none());
    for garbage in [
        &b"PROXY TCP4 203.0.113.7 nonsense\r\n"[..],
        b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 8080\n",
        &[V2_SIG, &[0x31, 0x11, 0, 12]].concat(),
        &[b'x'; 200],
    ] {
        let mut c = pp.conn(garbage);
        let sent = head("GET", "/api/x", "1.1", "");
        assert!(c.exchange(&sent, false).is_none(), "{garbage:?}");
    }
    assert_eq!(pp.refused("invalid"), 5);
    // A header that never comes whole: closed at limits.head_timeout.
    let started = Instant::now();
    let mut c = pp.conn(b"PROXY TCP4 203.0.");
    c.assert_closed();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(pp.refused("timeout"), 1);
    // The plain listener beside it takes no header.
    assert_eq!(pp.gw.get("/api/x").status, 200);
}

#[test]
fn a_header_from_a_peer_not_in_trusted_proxies_is_refused() {
    let pp = gateway("\"10.9.9.9\"", "", "");
    let mut c = pp.conn(&v1("203.0.113.7"));
    assert!(c
        .exchange(&head("GET", "/api/x", "1.1", ""), false)
        .is_none());
    assert!(
        eventually(Duration::from_secs(5), || pp.refused("untrusted") >= 1),
        "{}",
        pp.gw.logs()
    );
}

#[test]
fn a_tls_listener_reads_the_header_before_the_handshake() {
    let certs = tempfile::tempdir().unwrap();
    let (c, k) = tls_client::cert(certs.path(), "a", &["a.test"]);
    let tls = format!(
        ", tls: {{cert: \"{}\", key: \"{}\"}}",
        c.display(),
        k.display()
    );
    let pp = gateway("\"127.0.0.1\"", &tls, "");
    // The header, then a TLS handshake offering `alpn`.
    let connect = |header: Vec<u8>, alpn: &'static [u8]| async move {
        let mut tcp = tokio::net::TcpStream::connect(pp.addr).await.unwrap();
        tcp.write_all(&header).await.unwrap();
        let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
        b.set_verify(openssl::ssl::SslVerifyMode::NONE);
        b.set_alpn_protos(alpn).unwrap();
        let ssl = b.build().configure().unwrap().into_ssl("a.test").unwrap();
        let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        std::pin::Pin::new(&mut s)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(s)
    };
    let ask = |header: Vec<u8>| {
        runtime().block_on(async {
            let mut s = connect(header, b"\x08http/1.1").await?;
            let req = "GET /api/tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            Ok::<_, String>(parse_response(&buf).unwrap())
        })
    };
    let r = ask(v1("203.0.113.7")).unwrap();
    assert_eq!(told(&r), both("203.0.113.7"));
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    let r = ask(v2_from("[2001:db8::9]:1".parse().unwrap(), &[])).unwrap();
    assert_eq!(told(&r), both("2001:db8::9"));
    // HTTP/2 by ALPN: Pingora's HTTP/2 session sees the same client.
    let r = runtime()
        .block_on(async {
            let s = connect(v1("203.0.113.10"), b"\x02h2").await.unwrap();
            assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
            h2client::get(s, "https://a.test/api/h2").await
        })
        .unwrap_or_else(|e| panic!("h2 request failed: {e}\n{}", pp.gw.logs()));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-real-ip"], "203.0.113.10");
    // A TLS client without a header: no handshake.
    assert!(ask(Vec::new()).is_err());
    assert_eq!(pp.refused("invalid"), 1);
}

#[test]
fn an_h2c_listener_reads_the_header_for_http2_and_http1() {
    let pp = gateway("\"127.0.0.1\"", ", h2c: true", "");
    let r = runtime()
        .block_on(async {
            let mut tcp = tokio::net::TcpStream::connect(pp.addr).await.unwrap();
            tcp.write_all(&v1("203.0.113.7")).await.unwrap();
            h2client::get(tcp, "http://gw/api/h2").await
        })
        .unwrap_or_else(|e| panic!("h2c request failed: {e}\n{}", pp.gw.logs()));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-real-ip"], "203.0.113.7");
    assert_eq!(
        told(&pp.get(&v1("203.0.113.8"), "/api/h1")),
        both("203.0.113.8")
    );
}

#[test]
fn config_errors_name_the_listener() {
    let (code, out) = check_config(
        "listen: [{address: \"127.0.0.1:1\", proxy_protocol: true}]\n\
         upstreams: {u: {targets: [\"127.0.0.1:2\"]}}\n\
         routes: [{name: r, path_prefix: /, upstream: u}]\n",
    );
    assert_ne!(code, 0);
    assert!(
        out.contains(
            "listen[0].proxy_protocol: proxy_protocol needs trusted_proxies: the addresses \
             of the balancers allowed to send it"
        ),
        "{out}"
    );
    let (code, out) = check_config(
        "listen: [{address: \"127.0.0.1:1\", proxy_protocol: yes please}]\n\
         upstreams: {u: {targets: [\"127.0.0.1:2\"]}}\n\
         routes: [{name: r, path_prefix: /, upstream: u}]\n",
    );
    assert_ne!(code, 0);
    assert!(out.contains("listen[0]"), "{out}");
}
