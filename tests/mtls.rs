//! mTLS: client certificates asked for on a TLS listener (`tls.client_auth`), and `type: mtls`
//! auth providers naming the caller by its certificate, with real TLS clients (OpenSSL) and
//! certificates made by rcgen.

mod support;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslConnector, SslMethod, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use support::tls_client::tls_handshake;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// A certificate authority of the test, its certificate written to `ca.pem` in its directory.
struct Ca {
    dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("tollgate test {name} CA"),
        );
        let issuer =
            rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Ca { dir, issuer }
    }

    fn pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A client certificate with the subject common name `cn`, shaped further by `edit`.
    fn client(&self, cn: &str, edit: impl FnOnce(&mut rcgen::CertificateParams)) -> Id {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        edit(&mut p);
        let c = p.signed_by(&key, &self.issuer).unwrap();
        Id {
            cert: X509::from_der(c.der()).unwrap(),
            key: PKey::private_key_from_pem(key.serialize_pem().as_bytes()).unwrap(),
        }
    }
}

/// A client's certificate and key.
struct Id {
    cert: X509,
    key: PKey<Private>,
}

impl Id {
    fn fingerprint(&self) -> String {
        hex::encode(
            self.cert
                .digest(openssl::hash::MessageDigest::sha256())
                .unwrap(),
        )
    }
}

fn san(p: &mut rcgen::CertificateParams, s: rcgen::SanType) {
    p.subject_alt_names.push(s);
}

fn ia5(s: &str) -> rcgen::string::Ia5String {
    s.try_into().unwrap()
}

/// The gateway's own certificate (for `a.test`), written to `dir`.
fn server_cert(dir: &Path) -> (PathBuf, PathBuf) {
    support::tls_client::cert(dir, "server", &["a.test"])
}

/// The auth providers and routes every gateway here runs, behind an echo upstream.
fn body(up: SocketAddr) -> String {
    format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         consumers: {{alice: {{api_keys: [\"alice-key-0123456789\"]}}}}\n\
         auth:\n\
         \x20 cert: {{type: mtls}}\n\
         \x20 dns: {{type: mtls, consumer_from: san_dns}}\n\
         \x20 email: {{type: mtls, consumer_from: san_email}}\n\
         \x20 uri: {{type: mtls, consumer_from: san_uri}}\n\
         \x20 fwd: {{type: mtls, forward_certificate: X-Client-Cert, forward_fingerprint: X-Client-Cert-Sha256}}\n\
         \x20 keys: {{type: api_key}}\n\
         routes:\n\
         \x20 - {{name: open, path_prefix: /open, upstream: up}}\n\
         \x20 - {{name: cert, path_prefix: /cert, upstream: up, auth: [cert]}}\n\
         \x20 - {{name: dns, path_prefix: /dns, upstream: up, auth: [dns]}}\n\
         \x20 - {{name: email, path_prefix: /email, upstream: up, auth: [email]}}\n\
         \x20 - {{name: uri, path_prefix: /uri, upstream: up, auth: [uri]}}\n\
         \x20 - {{name: fwd, path_prefix: /fwd, upstream: up, auth: [fwd]}}\n\
         \x20 - {{name: billing, path_prefix: /billing, upstream: up, auth: [cert], consumers: [billing]}}\n\
         \x20 - {{name: either, path_prefix: /either, upstream: up, auth: [keys, cert]}}\n"
    )
}

/// A gateway whose TLS listener (at `tls`) asks for certificates from a CA file; its access
/// log is JSON in `files/access.log`.
struct MtlsGateway {
    gw: Gateway,
    tls: SocketAddr,
    body: String,
    files: tempfile::TempDir,
}

impl MtlsGateway {
    fn access_log(&self) -> PathBuf {
        self.files.path().join("access.log")
    }
}

fn mtls_gateway(ca: &Path, required: bool) -> MtlsGateway {
    let files = tempfile::tempdir().unwrap();
    let (c, k) = server_cert(files.path());
    let up = echo("up");
    let body = body(up);
    let log = files.path().join("access.log");
    let body = format!(
        "{body}access_log: {{format: json, path: \"{}\"}}\n",
        log.display()
    );
    let (gw, tls) = Gateway::with_listener(
        |a| {
            format!(
                "{{address: \"{a}\", tls: {{cert: \"{}\", key: \"{}\", client_auth: {{ca: \"{}\", required: {required}}}}}}}",
                c.display(),
                k.display(),
                ca.display()
            )
        },
        &body,
    );
    MtlsGateway {
        gw,
        tls,
        body,
        files,
    }
}

/// How a test client connects: its certificate, the highest TLS version, ALPN h2.
#[derive(Clone, Copy, Default)]
struct Client<'a> {
    id: Option<&'a Id>,
    tls12: bool,
    h2: bool,
}

impl<'a> Client<'a> {
    fn with(id: &'a Id) -> Client<'a> {
        Client {
            id: Some(id),
            ..Default::default()
        }
    }

    fn connector(&self) -> openssl::ssl::SslConnectorBuilder {
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        if let Some(id) = self.id {
            b.set_certificate(&id.cert).unwrap();
            b.set_private_key(&id.key).unwrap();
        }
        if self.tls12 {
            b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        }
        b.set_alpn_protos(if self.h2 { b"\x02h2" } else { b"\x08http/1.1" })
            .unwrap();
        b
    }

    async fn connect(self, addr: SocketAddr) -> Result<SslStream<TcpStream>, String> {
        let ssl = self.connector().build().configure().unwrap();
        tls_handshake(ssl.into_ssl("a.test").unwrap(), addr).await
    }

    /// One request (`extra`: header lines, `body`: sent with a length) on a fresh connection:
    /// the answer, or why there was none (a refused handshake: OpenSSL's error, with the
    /// gateway's alert).
    fn request(
        self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        extra: &str,
        body: &str,
    ) -> Result<Resp, String> {
        runtime().block_on(async {
            let s = self.connect(addr).await?;
            exchange(s, method, path, extra, body).await
        })
    }

    fn get(self, addr: SocketAddr, path: &str) -> Result<Resp, String> {
        self.request(addr, "GET", path, "", "")
    }
}

async fn exchange(
    mut s: SslStream<TcpStream>,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> Result<Resp, String> {
    let len = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: a.test\r\n{extra}{len}Connection: close\r\n\r\n{body}"
    );
    // Under TLS 1.3 the client's handshake ends before the gateway has judged its
    // certificate: a refusal arrives as an alert on the first read.
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf).await;
    // A close_notify, or OpenSSL takes the session for a broken one and never resumes it.
    let _ = s.shutdown().await;
    if buf.is_empty() {
        return Err(match read {
            Err(e) => e.to_string(),
            Ok(_) => "closed without an answer".to_owned(),
        });
    }
    parse_response(&buf).map_err(|e| e.to_string())
}

/// `r` is a 401 from an mtls route with the metric reason `reason`'s message.
fn assert_cert_401(r: &Resp, says: &str) {
    assert_401(r, says);
    assert_eq!(
        r.header("www-authenticate"),
        Some("ClientCertificate"),
        "{r:?}"
    );
}

fn scrape(gw: &Gateway, series: &str) -> u64 {
    let text = gw.admin_get("/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn refused(r: Result<Resp, String>, alert: &str) {
    match r {
        Err(e) => assert!(e.contains(alert), "refused, but not with {alert:?}: {e}"),
        Ok(r) => panic!("answered instead of refusing the handshake: {r:?}"),
    }
}

#[test]
fn required_client_auth_refuses_a_client_without_a_certificate_at_the_handshake() {
    let ca = Ca::new("clients");
    let m = mtls_gateway(&ca.pem_path(), true);
    // TLS 1.3: the alert "certificate required"; TLS 1.2: a handshake failure.
    refused(
        Client::default().get(m.tls, "/open/x"),
        "certificate required",
    );
    let tls12 = Client {
        tls12: true,
        ..Default::default()
    };
    refused(tls12.get(m.tls, "/open/x"), "handshake failure");

    let billing = ca.client("billing", |_| {});
    let r = Client::with(&billing).get(m.tls, "/cert/x").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("billing"));
    // A route that asks for nothing admits the same client without naming it.
    let r = Client::with(&billing).get(m.tls, "/open/x").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-consumer"), None);
}

#[test]
fn optional_client_auth_admits_certificate_less_clients_to_routes_that_ask_for_none() {
    let ca = Ca::new("clients");
    let m = mtls_gateway(&ca.pem_path(), false);
    let anon = Client::default();
    let r = anon.get(m.tls, "/open/x").unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    for (method, body) in [("GET", ""), ("POST", "{\"a\":1}")] {
        let r = anon.request(m.tls, method, "/cert/x", "", body).unwrap();
        assert_cert_401(&r, "requires a client certificate");
    }
    assert_eq!(
        scrape(
            &m.gw,
            "tollgate_auth_failures_total{route=\"cert\",reason=\"no_certificate\"}"
        ),
        2
    );
    let log = m.access_log();
    let mut lines = String::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&log).unwrap_or_default();
            lines
                .lines()
                .filter(|l| l.contains("\"route\":\"cert\""))
                .count()
                >= 2
        }),
        "no access-log line for the refusals: {lines}"
    );
    let refusal: serde_json::Value = serde_json::from_str(
        lines
            .lines()
            .find(|l| l.contains("\"route\":\"cert\""))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(refusal["status"], 401, "{lines}");

    // On a route taking a key or a certificate, neither is a 401 naming both.
    let r = anon.get(m.tls, "/either/x").unwrap();
    assert_401(&r, "client certificate, an API key");
    let r = anon
        .request(
            m.tls,
            "GET",
            "/either/x",
            "X-Api-Key: alice-key-0123456789\r\n",
            "",
        )
        .unwrap();
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("alice"));

    // With a certificate, both engines' requests (a GET, and a POST with a body) are admitted.
    let billing = ca.client("billing", |_| {});
    for (method, body) in [("GET", ""), ("POST", "{\"a\":1}")] {
        let r = Client::with(&billing)
            .request(m.tls, method, "/cert/x", "", body)
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("billing"));
    }
    let r = Client::with(&billing).get(m.tls, "/either/x").unwrap();
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("billing"));
}

#[test]
fn the_consumer_comes_from_the_cn_or_the_san_kind_the_provider_names() {
    let ca = Ca::new("clients");
    let m = mtls_gateway(&ca.pem_path(), true);
    let svc = ca.client("billing", |p| {
        san(p, rcgen::SanType::DnsName(ia5("billing.internal")));
        san(p, rcgen::SanType::Rfc822Name(ia5("billing@example.com")));
        san(
            p,
            rcgen::SanType::URI(ia5("spiffe://example.com/ns/prod/sa/billing")),
        );
    });
    for (path, want) in [
        ("/cert/x", "billing"),
        ("/dns/x", "billing.internal"),
        ("/email/x", "billing@example.com"),
        ("/uri/x", "spiffe://example.com/ns/prod/sa/billing"),
    ] {
        let r = Client::with(&svc).get(m.tls, path).unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(
            r.upstream_header("x-consumer").as_deref(),
            Some(want),
            "{path}"
        );
    }

    // A certificate without the part the provider reads names nobody.
    let bare = ca.client("bare", |_| {});
    for (path, says) in [
        ("/dns/x", "no DNS subject alternative name"),
        ("/email/x", "no e-mail subject alternative name"),
        ("/uri/x", "no URI subject alternative name"),
    ] {
        let r = Client::with(&bare).get(m.tls, path).unwrap();
        assert_cert_401(&r, says);
    }
    assert_eq!(
        scrape(
            &m.gw,
            "tollgate_auth_failures_total{route=\"dns\",reason=\"unmapped_certificate\"}"
        ),
        1
    );

    // `consumers:` restricts the mapped names, which need not be in `consumers`.
    assert_eq!(
        Client::with(&svc).get(m.tls, "/billing/x").unwrap().status,
        200
    );
    let r = Client::with(&bare).get(m.tls, "/billing/x").unwrap();
    assert_eq!(
        (r.status, r.error_code()),
        (403, "forbidden".into()),
        "{r:?}"
    );
}

#[test]
fn a_certificate_from_another_ca_or_expired_is_refused_at_the_handshake() {
    let ca = Ca::new("clients");
    // Optional client auth still refuses a certificate it cannot verify.
    let m = mtls_gateway(&ca.pem_path(), false);
    let stranger = Ca::new("other").client("billing", |_| {});
    refused(Client::with(&stranger).get(m.tls, "/open/x"), "unknown ca");
    let expired = ca.client("billing", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    refused(
        Client::with(&expired).get(m.tls, "/cert/x"),
        "certificate expired",
    );
    let tls12 = Client {
        tls12: true,
        ..Client::with(&stranger)
    };
    refused(tls12.get(m.tls, "/cert/x"), "unknown ca");
    // A certificate for servers only is not one for clients.
    let server_only = ca.client("billing", |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    refused(
        Client::with(&server_only).get(m.tls, "/cert/x"),
        "unsupported certificate",
    );
}

/// Percent-decoding, as the backend would undo nginx's `$ssl_client_escaped_cert`.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn the_certificate_and_its_fingerprint_are_forwarded_and_forged_copies_removed() {
    let ca = Ca::new("clients");
    let m = mtls_gateway(&ca.pem_path(), false);
    let billing = ca.client("billing", |_| {});
    let forged = "X-Consumer: admin\r\nX-Client-Cert: forged\r\nX-Client-Cert-Sha256: 00ff\r\n";
    for (method, body) in [("GET", ""), ("POST", "{\"a\":1}")] {
        let r = Client::with(&billing)
            .request(m.tls, method, "/fwd/x", forged, body)
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("billing"));
        let escaped = r.upstream_header("x-client-cert").unwrap();
        assert!(
            escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
            "{escaped}"
        );
        assert!(!escaped.contains(['\n', ' ', '+', '/', '=']), "{escaped}");
        let pem = unescape(&escaped);
        assert_eq!(
            X509::from_pem(&pem).unwrap().to_der().unwrap(),
            billing.cert.to_der().unwrap(),
            "the forwarded PEM is the client's certificate"
        );
        assert_eq!(
            r.upstream_header("x-client-cert-sha256"),
            Some(billing.fingerprint())
        );
    }
    // On a route that forwards nothing of the certificate, and on a public one, the client's
    // copies are removed all the same.
    for path in ["/cert/x", "/open/x"] {
        let r = Client::with(&billing)
            .request(m.tls, "GET", path, forged, "")
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let want = (path == "/cert/x").then(|| "billing".to_owned());
        assert_eq!(r.upstream_header("x-consumer"), want, "{path}");
        assert_eq!(r.upstream_header("x-client-cert"), None, "{path}");
        assert_eq!(r.upstream_header("x-client-cert-sha256"), None, "{path}");
    }
    let r = Client::default()
        .request(m.tls, "GET", "/open/x", forged, "")
        .unwrap();
    assert_eq!(r.upstream_header("x-consumer"), None);
    assert_eq!(r.upstream_header("x-client-cert"), None);

    // Over HTTP/2 (Pingora's session) the certificate is the connection's too.
    let r = runtime().block_on(async {
        let s = Client {
            h2: true,
            ..Client::with(&billing)
        }
        .connect(m.tls)
        .await
        .unwrap();
        assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
        support::h2client::get(s, "https://a.test/fwd/x")
            .await
            .unwrap()
    });
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-consumer"], "billing");
    assert_eq!(
        r.json()["headers"]["x-client-cert-sha256"],
        billing.fingerprint()
    );
}

#[test]
fn a_resumed_tls_session_keeps_its_client_certificate() {
    let ca = Ca::new("clients");
    let m = mtls_gateway(&ca.pem_path(), true);
    let billing = ca.client("billing", |_| {});
    for tls12 in [false, true] {
        let client = Client {
            tls12,
            ..Client::with(&billing)
        };
        let kept: Arc<Mutex<Option<SslSession>>> = Arc::default();
        let mut b = client.connector();
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        let slot = kept.clone();
        b.set_new_session_callback(move |_, s| *slot.lock().unwrap() = Some(s));
        let connector = b.build();
        let fresh = |resume: Option<&SslSession>| {
            let mut ssl = connector.configure().unwrap().into_ssl("a.test").unwrap();
            if let Some(s) = resume {
                // SAFETY: the session came from a connection of this same context.
                unsafe { ssl.set_session(s).unwrap() };
            }
            runtime().block_on(async {
                let s = tls_handshake(ssl, m.tls).await?;
                let resumed = s.ssl().session_reused();
                exchange(s, "GET", "/cert/x", "", "")
                    .await
                    .map(|r| (resumed, r))
            })
        };
        let (_, r) = fresh(None).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let session = kept.lock().unwrap().take().expect("a session to resume");
        let (resumed, r) = fresh(Some(&session)).unwrap();
        assert!(resumed, "tls12: {tls12}: the session was not resumed");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("billing"));
    }
}

#[test]
fn a_reload_reads_the_ca_file_again() {
    let first = Ca::new("first");
    let second = Ca::new("second");
    let files = tempfile::tempdir().unwrap();
    let ca_path = files.path().join("clients.pem");
    std::fs::copy(first.pem_path(), &ca_path).unwrap();
    let mut m = mtls_gateway(&ca_path, true);
    let (old, new) = (first.client("old", |_| {}), second.client("new", |_| {}));
    assert_eq!(
        Client::with(&old).get(m.tls, "/cert/x").unwrap().status,
        200
    );
    refused(Client::with(&new).get(m.tls, "/cert/x"), "unknown ca");

    std::fs::copy(second.pem_path(), &ca_path).unwrap();
    let _next = m.gw.upgrade(&m.body);
    assert!(
        eventually(Duration::from_secs(20), || m.gw.exited()),
        "the old process never exited:\n{}",
        m.gw.logs()
    );
    let r = Client::with(&new).get(m.tls, "/cert/x").unwrap();
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("new"));
    refused(Client::with(&old).get(m.tls, "/cert/x"), "unknown ca");
}

#[test]
fn client_auth_and_mtls_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = server_cert(dir.path());
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let ca = Ca::new("clients");
    let tls = |client_auth: &str| {
        format!(
            "{{address: \"127.0.0.1:{}\", tls: {{cert: \"{}\", key: \"{}\", client_auth: {client_auth}}}}}",
            free_port(),
            c.display(),
            k.display()
        )
    };
    let yaml = format!(
        "listen:\n\
         \x20 - {{address: \"127.0.0.1:{}\", client_auth: {{ca: \"{}\"}}}}\n\
         \x20 - {}\n\
         \x20 - {}\n\
         \x20 - {}\n\
         \x20 - {}\n\
         upstreams: {{up: {{targets: [\"127.0.0.1:1\"]}}}}\n\
         auth:\n\
         \x20 a: {{type: mtls, consumer_from: serial}}\n\
         \x20 b: {{type: mtls, forward_certificate: \"bad header\"}}\n\
         routes: [{{name: r, path_prefix: /, upstream: up, auth: [a, b]}}]\n",
        free_port(),
        ca.pem_path().display(),
        tls(&format!("{{ca: \"{}/missing.pem\"}}", dir.path().display())),
        tls(&format!("{{ca: \"{}\"}}", not_pem.display())),
        tls(&format!(
            "{{ca: \"{}\", required: maybe}}",
            ca.pem_path().display()
        )),
        tls(&format!(
            "{{ca: \"{}\", verify: true}}",
            ca.pem_path().display()
        )),
    );
    let (code, out) = check_config(&yaml);
    assert_eq!(code, 1, "{out}");
    for want in [
        "listen[0].client_auth: client certificates need TLS",
        "listen[1].tls.client_auth.ca: cannot read",
        "listen[2].tls.client_auth.ca: ",
        "holds no PEM certificate",
        "listen[3].tls.client_auth.required",
        "listen[4].tls.client_auth.verify: unknown field",
        "auth.a.consumer_from: \"serial\" is not one of cn, san_dns, san_email, san_uri",
        "auth.b.forward_certificate: \"bad header\" is not a valid header name",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        !out.contains("routes[0]"),
        "a provider in error is reported once:\n{out}"
    );

    // An mtls provider needs a listener that asks for certificates.
    let (code, out) = check_config(
        "listen: [\"127.0.0.1:1\"]\n\
         upstreams: {up: {targets: [\"127.0.0.1:2\"]}}\n\
         auth: {cert: {type: mtls}}\n\
         routes: [{name: r, path_prefix: /, upstream: up, auth: [cert]}]\n",
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "auth.cert: type mtls needs a TLS listener that asks clients for a certificate"
        ),
        "{out}"
    );

    // A good one passes, with a consumer the `consumers` section does not list.
    let (code, out) = check_config(&format!(
        "listen: [{}]\n\
         upstreams: {{up: {{targets: [\"127.0.0.1:2\"]}}}}\n\
         auth: {{cert: {{type: mtls, consumer_from: san_uri}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: up, auth: [cert], consumers: [billing]}}]\n",
        tls(&format!("{{ca: \"{}\"}}", ca.pem_path().display()))
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn explain_shows_what_an_mtls_route_needs_and_checks_a_certificate() {
    let ca = Ca::new("clients");
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = server_cert(dir.path());
    let conf = dir.path().join("t.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: [{{address: \"127.0.0.1:{}\", tls: {{cert: \"{}\", key: \"{}\", client_auth: {{ca: \"{}\", required: false}}}}}}]\n\
             upstreams: {{up: {{targets: [\"127.0.0.1:2\"]}}}}\n\
             auth: {{fwd: {{type: mtls, forward_certificate: X-Client-Cert, forward_fingerprint: X-Client-Sha256}}}}\n\
             routes: [{{name: r, path_prefix: /, upstream: up, auth: [fwd]}}]\n",
            free_port(),
            c.display(),
            k.display(),
            ca.pem_path().display()
        ),
    )
    .unwrap();
    let write = |name: &str, id: &Id| {
        let p = dir.path().join(name);
        std::fs::write(&p, id.cert.to_pem().unwrap()).unwrap();
        p
    };
    let good = write("good.pem", &ca.client("billing", |_| {}));
    let other = write("other.pem", &Ca::new("other").client("billing", |_| {}));
    let server_only = write(
        "server-only.pem",
        &ca.client("billing", |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        }),
    );
    let explain = |extra: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["explain", "-c"])
            .arg(&conf)
            .args(["GET", "/x"])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = explain(&[]);
    for want in [
        "fwd (mtls, client certificate's cn names the caller, certificate forwarded in x-client-cert, SHA-256 fingerprint in x-client-sha256)",
        &format!("client certificate from {}", ca.pem_path().display()),
        "optional at the handshake",
        "answer:   401 unauthorized (no_certificate)",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let out = explain(&["--cert", good.to_str().unwrap()]);
    assert!(out.contains("certificate accepted by listener"), "{out}");
    assert!(out.contains("passes: caller billing"), "{out}");
    for (cert, why) in [
        (&other, "unable to get local issuer certificate"),
        (&server_only, "unsuitable certificate purpose"),
    ] {
        let out = explain(&["--cert", cert.to_str().unwrap()]);
        assert!(out.contains(why), "{out}");
        assert!(out.contains("TLS handshake refused"), "{out}");
        assert!(!out.contains("passes"), "{out}");
    }
}
