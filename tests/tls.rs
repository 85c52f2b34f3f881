//! TLS: termination on a listener (SNI, minimum version, ALPN h2, `X-Forwarded-Proto`), its
//! config errors, and TLS to an upstream with verification.

mod support;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use support::tls_client::{cert, dns_names, tls_handshake};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// A gateway with the harness's plain listener, a TLS listener (`tls` is its YAML flow
/// mapping) and an echo upstream behind `/api`.
fn tls_gateway(tls: &str) -> (Gateway, SocketAddr) {
    Gateway::with_api_listener(|a| format!("{{address: \"{a}\", tls: {tls}}}"))
}

/// A TLS gateway with one certificate, for `a.test`; `extra` adds keys to its `tls`.
fn a_test_gateway(extra: &str) -> (tempfile::TempDir, Gateway, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = cert(dir.path(), "a", &["a.test"]);
    let (gw, addr) = tls_gateway(&format!(
        "{{cert: \"{}\", key: \"{}\"{extra}}}",
        c.display(),
        k.display()
    ));
    (dir, gw, addr)
}

const H2_OR_HTTP1: &[u8] = b"\x02h2\x08http/1.1";

/// How a test client connects: SNI, ALPN offer, protocol versions.
#[derive(Clone, Copy, Default)]
struct Client<'a> {
    sni: Option<&'a str>,
    alpn: &'a [u8],
    max_version: Option<SslVersion>,
}

impl Client<'_> {
    /// To `a.test`, offering `alpn`.
    fn a_test(alpn: &[u8]) -> Client<'_> {
        Client {
            sni: Some("a.test"),
            alpn,
            ..Default::default()
        }
    }

    /// Handshake with the gateway (no certificate verification: tests look at what came).
    async fn connect(self, addr: SocketAddr) -> Result<SslStream<TcpStream>, String> {
        tls_handshake(self.ssl(), addr).await
    }

    /// The client's side of the connection, before its handshake.
    fn ssl(self) -> Ssl {
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        if let Some(v) = self.max_version {
            // Let this client offer old versions at all (OpenSSL 3 refuses them by default),
            // so that refusing them is the gateway's doing.
            b.set_security_level(0);
            b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
            b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
            b.set_max_proto_version(Some(v)).unwrap();
        }
        if !self.alpn.is_empty() {
            b.set_alpn_protos(self.alpn).unwrap();
        }
        let mut cfg = b.build().configure().unwrap();
        cfg.set_use_server_name_indication(self.sni.is_some());
        cfg.set_verify_hostname(false);
        cfg.into_ssl(self.sni.unwrap_or("unused")).unwrap()
    }
}

/// One HTTP/1.1 request over a TLS connection; the parsed answer.
async fn https_get(mut s: SslStream<TcpStream>, path: &str) -> Resp {
    let req = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    parse_response(&buf).unwrap()
}

#[test]
fn https_request_reaches_the_upstream_with_forwarded_proto_https() {
    let (_dir, _gw, addr) = a_test_gateway("");
    let r = runtime().block_on(async {
        let s = Client::a_test(b"").connect(addr).await.unwrap();
        https_get(s, "/api/hello").await
    });
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/hello");
    // The client claimed http; the listener decides.
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
}

#[test]
fn sni_selects_the_certificate_and_the_first_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let (ac, ak) = cert(dir.path(), "a", &["a.test"]);
    let (bc, bk) = cert(dir.path(), "b", &["b.test"]);
    let (_gw, addr) = tls_gateway(&format!(
        "{{certificates: [{{cert: \"{}\", key: \"{}\"}}, {{cert: \"{}\", key: \"{}\"}}]}}",
        ac.display(),
        ak.display(),
        bc.display(),
        bk.display()
    ));
    runtime().block_on(async {
        for (sni, want) in [
            (Some("b.test"), "b.test"),
            (Some("a.test"), "a.test"),
            (None, "a.test"),
            (Some("other.test"), "a.test"),
        ] {
            let s = Client {
                sni,
                ..Default::default()
            }
            .connect(addr)
            .await
            .unwrap();
            assert_eq!(dns_names(&s), [want], "SNI {sni:?}");
        }
    });
}

#[test]
fn tls_older_than_1_2_is_refused() {
    let (_dir, _gw, addr) = a_test_gateway("");
    runtime().block_on(async {
        for old in [SslVersion::TLS1_1, SslVersion::TLS1] {
            let e = Client {
                max_version: Some(old),
                ..Client::a_test(b"")
            }
            .connect(addr)
            .await
            .expect_err("an old TLS version was accepted");
            // The server's alert, not a client that refused to offer the version.
            assert!(e.contains("alert protocol version"), "{e}");
        }
        let s = Client {
            max_version: Some(SslVersion::TLS1_2),
            ..Client::a_test(b"")
        }
        .connect(addr)
        .await
        .unwrap();
        assert_eq!(s.ssl().version_str(), "TLSv1.2");
    });
}

#[test]
fn alpn_negotiates_h2_and_h2_requests_are_proxied() {
    let (_dir, gw, addr) = a_test_gateway("");
    let r = runtime().block_on(async {
        let s = Client::a_test(H2_OR_HTTP1).connect(addr).await.unwrap();
        assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        h2client::get(s, "https://a.test/api/over-h2").await
    });
    let r = r.unwrap_or_else(|e| panic!("h2 request failed: {e}\n{}", gw.logs()));
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["path"], "/over-h2");
    assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{j}");
}

#[test]
fn http2_false_offers_only_http1() {
    let (_dir, _gw, addr) = a_test_gateway(", http2: false");
    let r = runtime().block_on(async {
        let s = Client::a_test(H2_OR_HTTP1).connect(addr).await.unwrap();
        assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
        https_get(s, "/api/x").await
    });
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn bad_certificate_files_are_config_errors_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ac, _) = cert(dir.path(), "a", &["a.test"]);
    let (_, bk) = cert(dir.path(), "b", &["b.test"]);
    let missing = dir.path().join("missing.pem");
    let yaml = format!(
        "listen:\n  - \"127.0.0.1:0\"\n  - {{address: \"127.0.0.1:1\", tls: {{cert: \"{m}\", key: \"{bk}\"}}}}\n  \
         - {{address: \"127.0.0.1:2\", tls: {{certificates: [{{cert: \"{ac}\", key: \"{bk}\"}}], min_version: \"1.1\"}}}}\n",
        m = missing.display(),
        ac = ac.display(),
        bk = bk.display()
    );
    let (code, out) = check_config(&yaml);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("listen[1].tls.cert: cannot read"), "{out}");
    assert!(
        out.contains("listen[2].tls.certificates[0].key: ")
            && out.contains("does not match the certificate"),
        "{out}"
    );
    assert!(
        out.contains("listen[2].tls.min_version: \"1.1\" is not allowed"),
        "{out}"
    );
}

/// A TLS upstream answering every request `200 secure`, with a certificate for `up.test`
/// signed by a CA whose certificate is written to `dir/ca.pem`; it counts requests for
/// `/probe` (health checks) that arrived over TLS.
fn tls_upstream(dir: &Path) -> (SocketAddr, PathBuf, Arc<AtomicUsize>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // rcgen names every certificate alike by default; a leaf named like its issuer would
    // look self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tollgate test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["up.test".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();

    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&openssl::x509::X509::from_pem(leaf.pem().as_bytes()).unwrap())
        .unwrap();
    b.set_private_key(
        &openssl::pkey::PKey::private_key_from_pem(leaf_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = b.build();
    let l = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let probes = Arc::new(AtomicUsize::new(0));
    let counter = probes.clone();
    runtime().spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let ssl = Ssl::new(acceptor.context()).unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut s = SslStream::new(ssl, tcp).unwrap();
                if Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                if head.starts_with(b"GET /probe ") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, ca_path, probes)
}

#[test]
fn upstream_tls_is_verified_against_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (up, ca, probes) = tls_upstream(dir.path());
    let gw = Gateway::start(&format!(
        "upstreams:\n  \
           trusted: {{targets: [\"{up}\"], tls: {{sni: up.test, ca: \"{ca}\"}},\n             \
                      health_check: {{path: /probe, interval: 100ms, healthy: 1, unhealthy: 1}}}}\n  \
           system: {{targets: [\"{up}\"], tls: {{sni: up.test}}, retries: 0}}\n\
         routes:\n  \
           - {{name: t, path_prefix: /trusted, upstream: trusted}}\n  \
           - {{name: s, path_prefix: /system, upstream: system}}\n",
        ca = ca.display()
    ));
    let r = gw.get("/trusted/x");
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
    assert_eq!(r.body, "secure");
    // The system roots do not know the test CA: the handshake fails, the client gets 502.
    let r = gw.get("/system/x");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "bad_gateway");
    // Health checks of a TLS upstream speak TLS (and verify): probes arrive, none fails.
    assert!(eventually(Duration::from_secs(5), || probes
        .load(Ordering::Relaxed)
        >= 2));
    let h = gw.admin_get("/health").json();
    assert_eq!(h["upstreams"]["trusted"]["health_changes"], 0, "{h}");
    assert_eq!(gw.get("/trusted/y").status, 200);
}

#[test]
fn upstream_tls_to_an_ip_without_sni_cannot_be_verified_so_is_refused() {
    let (code, out) = check_config("upstreams: {u: {targets: [\"127.0.0.1:1\"], tls: true}}\n");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("upstreams.u.tls: verifying the upstream's certificate needs a host name"),
        "{out}"
    );
}

#[test]
fn an_upstream_without_its_own_ca_is_verified_against_the_system_store() {
    let dir = tempfile::tempdir().unwrap();
    let (up, ca, probes) = tls_upstream(dir.path());
    // OpenSSL's system bundle is `SSL_CERT_FILE`: here one that trusts the test CA. A plain
    // upstream and one with its own `ca` sit beside it, and need no system store.
    let ca = ca.display().to_string();
    let gw = Gateway::start_with_env(
        &format!(
            "upstreams:\n  \
               system: {{targets: [\"{up}\"], tls: {{sni: up.test}},\n            \
                         health_check: {{path: /probe, interval: 100ms, healthy: 1, unhealthy: 1}}}}\n  \
               own: {{targets: [\"{up}\"], tls: {{sni: up.test, ca: \"{ca}\"}}}}\n\
             routes:\n  \
               - {{name: s, path_prefix: /system, upstream: system}}\n  \
               - {{name: o, path_prefix: /own, upstream: own}}\n"
        ),
        &[("SSL_CERT_FILE", &ca)],
    );
    let r = gw.get("/system/x");
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
    assert_eq!(r.body, "secure");
    assert_eq!(gw.get("/own/x").status, 200);
    // Its health checks verify against the same store: probes arrive and it never flips.
    assert!(eventually(Duration::from_secs(5), || probes
        .load(Ordering::Relaxed)
        >= 2));
    let h = gw.admin_get("/health").json();
    assert_eq!(h["upstreams"]["system"]["health_changes"], 0, "{h}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn health_checked_upstreams_do_not_each_hold_the_system_trust_store() {
    // Each Pingora health check builds its own TLS connectors, and each used to parse the
    // system CA bundle: about 0.6 MiB per checked upstream, TLS or not.
    let checked = |n: usize| {
        let mut yaml = String::from("upstreams:\n");
        for i in 0..n {
            yaml += &format!(
                "  u{i}: {{targets: [\"127.0.0.1:{}\"], health_check: {{path: /, interval: 1h}}}}\n",
                free_port()
            );
        }
        yaml + "routes:\n  - {name: a, path_prefix: /, upstream: u0}\n"
    };
    let one = Gateway::start(&checked(1));
    let many = Gateway::start(&checked(41));
    let (one, many) = (rss_kib(one.pid()), rss_kib(many.pid()));
    // 40 more checked upstreams cost about 3 MiB; they cost 25 (release) to 70 MiB (debug)
    // when each loaded the store.
    assert!(
        many < one + 12 * 1024,
        "RSS with 1 checked upstream {one} KiB, with 41 {many} KiB"
    );
}

/// Requests pipelined over TLS (HTTP/1.1 by ALPN) are answered in order, each reaching the
/// upstream: two GETs (the own codec's), then a POST with its body and a GET (Pingora's
/// session, then the own codec's), each batch in one write.
#[test]
fn pipelined_requests_over_tls_are_answered_in_order() {
    let (_dir, _gw, addr) = a_test_gateway("");
    let paths = runtime().block_on(async {
        let mut s = Client::a_test(b"\x08http/1.1").connect(addr).await.unwrap();
        let get = |p: &str| format!("GET /api{p} HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let post = "POST /api/post HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi";
        let close = "GET /api/last HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
        let batches = [
            get("/one") + &get("/two"),
            format!("{post}{}{close}", get("/three")),
        ];
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        // Answers expected once each batch is sent: all of its own, after all of the last's.
        for (batch, total) in batches.iter().zip([2, 5]) {
            s.write_all(batch.as_bytes()).await.unwrap();
            while seen.len() < total {
                if let Some((r, n)) = parse_one(&buf).unwrap() {
                    buf.drain(..n);
                    seen.push(r.json()["path"].as_str().unwrap_or("?").to_owned());
                    continue;
                }
                let mut chunk = [0u8; 16384];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed after {seen:?}");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        seen
    });
    assert_eq!(paths, ["/one", "/two", "/post", "/three", "/last"]);
}

/// Requests each in its own TLS record, the records sent in one segment: the gateway reads
/// ahead of the record it decrypts (one read for a record's header and body), and the
/// records it read ahead are served without waiting for the socket to be readable again.
#[test]
fn requests_in_records_read_ahead_are_all_answered() {
    let (_dir, _gw, addr) = a_test_gateway("");
    let paths = runtime().block_on(async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // Records go to this buffer, and to the socket only at a flush.
        let tcp = tokio::io::BufWriter::new(tcp);
        let mut s = SslStream::new(Client::a_test(b"\x08http/1.1").ssl(), tcp).unwrap();
        Pin::new(&mut s).connect().await.unwrap();
        for p in ["/one", "/two", "/three"] {
            let req = format!("GET /api{p} HTTP/1.1\r\nHost: a.test\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
        }
        s.write_all(b"GET /api/last HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        s.flush().await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "not every answer came: {}",
            String::from_utf8_lossy(&buf)
        );
        let mut seen = Vec::new();
        while let Some((r, n)) = parse_one(&buf).unwrap() {
            buf.drain(..n);
            seen.push(r.json()["path"].as_str().unwrap_or("?").to_owned());
        }
        seen
    });
    assert_eq!(paths, ["/one", "/two", "/three", "/last"]);
}
