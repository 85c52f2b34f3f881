//! Remote JWKS against a real HTTPS identity provider of the tests: its own CA, keys it
//! rotates, an outage on demand, and a count of the fetches it answers. Tokens are signed
//! RS256 with OpenSSL, not with the `jsonwebtoken` crate tollgate verifies with.

mod support;
use support::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_openssl::SslStream;

/// An RSA signing key with its `kid`.
struct Key {
    kid: String,
    pkey: PKey<Private>,
}

impl Key {
    fn new(kid: &str) -> Key {
        Key {
            kid: kid.to_owned(),
            pkey: PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
        }
    }

    /// The public half as a JWK.
    fn jwk(&self) -> serde_json::Value {
        let rsa = self.pkey.rsa().unwrap();
        serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": B64.encode(rsa.n().to_vec()), "e": B64.encode(rsa.e().to_vec()),
        })
    }

    /// An RS256 token for `sub`, valid for five minutes, naming `kid` (this key's unless
    /// given).
    fn token_as(&self, kid: &str, sub: &str) -> String {
        let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#);
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 300;
        let payload = format!(r#"{{"sub":"{sub}","exp":{exp}}}"#);
        let signed = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let mut s = Signer::new(MessageDigest::sha256(), &self.pkey).unwrap();
        s.update(signed.as_bytes()).unwrap();
        format!("{signed}.{}", B64.encode(s.sign_to_vec().unwrap()))
    }

    fn token(&self, sub: &str) -> String {
        self.token_as(&self.kid, sub)
    }
}

fn jwks(keys: &[&Key]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// A CA (its certificate written to `dir/NAME.pem`) and a `localhost` certificate it signed.
fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, SslAcceptor) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("tollgate test {name}"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, ca.pem()).unwrap();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&openssl::x509::X509::from_pem(leaf.pem().as_bytes()).unwrap())
        .unwrap();
    b.set_private_key(&PKey::private_key_from_pem(leaf_key.serialize_pem().as_bytes()).unwrap())
        .unwrap();
    (path, b.build())
}

/// The identity provider: `GET /jwks` over HTTPS answers the current set, or 503 while it
/// is down; every request is counted.
struct Idp {
    url: String,
    ca: PathBuf,
    dir: tempfile::TempDir,
    /// The set served, `None` while down.
    serving: Arc<Mutex<Option<String>>>,
    calls: Arc<AtomicUsize>,
}

impl Idp {
    fn start(keys: &[&Key]) -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let (ca, acceptor) = ca_and_leaf(dir.path(), "ca");
        let l = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr: SocketAddr = l.local_addr().unwrap();
        let serving = Arc::new(Mutex::new(Some(jwks(keys))));
        let calls = Arc::new(AtomicUsize::new(0));
        let (s, c) = (serving.clone(), calls.clone());
        runtime().spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let ssl = Ssl::new(acceptor.context()).unwrap();
                let (s, c) = (s.clone(), c.clone());
                tokio::spawn(async move {
                    let mut tls = SslStream::new(ssl, tcp).unwrap();
                    if Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && tls.read(&mut byte).await.unwrap_or(0) == 1
                    {
                        head.push(byte[0]);
                    }
                    c.fetch_add(1, Relaxed);
                    let body = s.lock().unwrap().clone();
                    let answer = match body {
                        Some(b) if head.starts_with(b"GET /jwks ") => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{b}",
                            b.len()
                        ),
                        Some(_) => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
                        None => {
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into()
                        }
                    };
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Idp {
            url: format!("https://localhost:{}/jwks", addr.port()),
            ca,
            dir,
            serving,
            calls,
        }
    }

    fn serve(&self, keys: &[&Key]) {
        *self.serving.lock().unwrap() = Some(jwks(keys));
    }

    fn down(&self) {
        *self.serving.lock().unwrap() = None;
    }

    fn calls(&self) -> usize {
        self.calls.load(Relaxed)
    }
}

/// A gateway config: provider `p` with this `jwks` (flow mapping body), route `/t`.
fn body(jwks: &str, state_dir: &Path) -> String {
    let up = echo("up");
    format!(
        "state_dir: \"{}\"\n\
         upstreams: {{u: {{targets: [\"{up}\"]}}}}\n\
         auth: {{p: {{type: jwt, algorithms: [RS256], jwks: {{{jwks}}}, \
                 forward_claims: {{sub: X-User-ID}}}}}}\n\
         routes: [{{name: t, path_prefix: /t, upstream: u, auth: [p]}}]\n",
        state_dir.display()
    )
}

fn remote(idp: &Idp, more: &str) -> String {
    format!("url: \"{}\", ca: \"{}\"{more}", idp.url, idp.ca.display())
}

fn bearer(gw: &Gateway, token: &str) -> Resp {
    gw.send(
        "GET",
        "/t/x",
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

fn admitted(gw: &Gateway, token: &str, sub: &str) -> bool {
    let r = bearer(gw, token);
    r.status == 200 && r.upstream_header("x-user-id").as_deref() == Some(sub)
}

const WAIT: Duration = Duration::from_secs(15);

/// Run the gateway on `body`, expecting it to refuse to start: its stderr.
fn start_fails(body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("tollgate.yaml");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(&conf, gateway_yaml(dir.path(), addr, admin, body)).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(bin())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "tollgate kept running:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

#[test]
fn a_key_added_at_the_idp_is_used_after_a_refresh_and_one_removed_is_refused() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 1s, min_refresh: 1s"),
        state.path(),
    ));
    let token_a = a.token("alice");
    assert!(admitted(&gw, &token_a, "alice"), "{}", gw.logs());
    assert_401(&bearer(&gw, &b.token("bob")), "unknown key");

    idp.serve(&[&a, &b]);
    assert!(
        eventually(WAIT, || admitted(&gw, &b.token("bob"), "bob")),
        "{}",
        gw.logs()
    );
    assert!(
        admitted(&gw, &token_a, "alice"),
        "both keys while both are published"
    );

    // `a` is retired: even the token already verified (and remembered) with it is refused.
    idp.serve(&[&b]);
    assert!(eventually(WAIT, || bearer(&gw, &token_a).status == 401));
    assert_401(&bearer(&gw, &token_a), "unknown key");
    assert!(admitted(&gw, &b.token("bob"), "bob"));
}

#[test]
fn an_unknown_kid_fetches_the_set_at_once_without_waiting_for_the_refresh() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 24h, min_refresh: 1s"),
        state.path(),
    ));
    assert_eq!(idp.calls(), 1, "fetched once at start");
    idp.serve(&[&a, &b]);
    // Refused while the fetch it wakes runs; admitted once the new set is in.
    assert_401(&bearer(&gw, &b.token("bob")), "unknown key");
    assert!(
        eventually(WAIT, || admitted(&gw, &b.token("bob"), "bob")),
        "{}",
        gw.logs()
    );
    assert!(idp.calls() >= 2);
}

#[test]
fn a_flood_of_made_up_kids_cannot_hammer_the_idp() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 24h, min_refresh: 1h"),
        state.path(),
    ));
    assert_eq!(idp.calls(), 1);
    idp.serve(&[&a, &b]);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (gw, a) = (&gw, &a);
            s.spawn(move || {
                for i in 0..50 {
                    let r = bearer(gw, &a.token_as(&format!("made-up-{t}-{i}"), "x"));
                    assert_eq!(r.status, 401);
                }
            });
        }
    });
    // Within min_refresh of the last fetch, not even a real new kid fetches again.
    assert_401(&bearer(&gw, &b.token("bob")), "unknown key");
    assert!(admitted(&gw, &a.token("alice"), "alice"));
    assert_eq!(idp.calls(), 1, "the identity provider was asked again");
    let m = gw.admin_get("/metrics").body;
    assert!(
        m.lines()
            .any(|l| l.contains("reason=\"unknown_kid\"") && l.ends_with(" 201")),
        "{m}"
    );
}

#[test]
fn the_last_good_keys_keep_working_while_the_idp_is_down() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 1s, min_refresh: 1s"),
        state.path(),
    ));
    assert!(admitted(&gw, &a.token("alice"), "alice"));
    idp.down();
    let before = idp.calls();
    assert!(eventually(WAIT, || idp.calls() >= before + 2));
    // A token never seen before: verified with the keys held, not remembered from earlier.
    assert!(admitted(&gw, &a.token("carol"), "carol"), "{}", gw.logs());
    assert!(gw.logs().contains("keeping the 1 held"), "{}", gw.logs());
}

#[test]
fn a_restart_while_the_idp_is_down_uses_the_set_kept_in_the_state_dir() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let conf = body(&remote(&idp, ""), state.path());
    drop(Gateway::start(&conf));
    let kept: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(&kept[0]).unwrap(),
        jwks(&[&a]),
        "the set as served"
    );

    idp.down();
    let gw = Gateway::start(&conf);
    assert!(admitted(&gw, &a.token("alice"), "alice"), "{}", gw.logs());
    assert!(
        gw.logs().contains("using the set cached in"),
        "{}",
        gw.logs()
    );

    // `tollgate explain` is offline: it reads the same copy, and says so.
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(gw.conf_path())
        .args(["GET", "http://gw/t/x", "-H"])
        .arg(format!("Authorization: Bearer {}", a.token("alice")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "keys from {}, as cached in {}",
            idp.url,
            kept[0].display()
        )),
        "{text}"
    );
    assert!(text.contains("kid a"), "{text}");

    // With neither the identity provider nor a kept set, the start fails and says why.
    let empty = tempfile::tempdir().unwrap();
    let err = start_fails(&body(&remote(&idp, ""), empty.path()));
    assert!(
        err.contains(&format!(
            "auth.p.jwks: cannot fetch the keys from {}: answered 503",
            idp.url
        )) && err.contains("no cached set"),
        "{err}"
    );
}

#[test]
fn an_idp_certificate_from_another_ca_is_refused() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    let (other, _) = ca_and_leaf(idp.dir.path(), "other");
    let state = tempfile::tempdir().unwrap();
    let err = start_fails(&body(
        &format!("url: \"{}\", ca: \"{}\"", idp.url, other.display()),
        state.path(),
    ));
    assert!(
        err.contains("auth.p.jwks: cannot fetch the keys from") && err.contains("certificate"),
        "{err}"
    );
    // Nor do the system roots know the test CA.
    let err = start_fails(&body(&format!("url: \"{}\"", idp.url), state.path()));
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}

#[test]
fn on_unavailable_deny_serves_401_until_the_keys_arrive() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    idp.down();
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&body(
        &remote(&idp, ", refresh: 1s, min_refresh: 1s, on_unavailable: deny"),
        state.path(),
    ));
    assert_401(
        &bearer(&gw, &a.token("alice")),
        "keys are not available yet",
    );
    assert!(gw.logs().contains("on_unavailable: deny"), "{}", gw.logs());
    idp.serve(&[&a]);
    assert!(
        eventually(WAIT, || admitted(&gw, &a.token("alice"), "alice")),
        "{}",
        gw.logs()
    );
}

#[test]
fn check_config_reads_files_but_never_the_network_and_names_each_bad_key() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    // Nothing listens on port 1: `-t` passes because it does not try.
    let (code, out) = check_config(&body("url: \"https://localhost:1/jwks\"", dir));
    assert_eq!(code, 0, "{out}");

    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (jwks, path, says) in [
        (
            "url: \"http://idp/jwks\"",
            "auth.p.jwks.url",
            "must be an https:// URL",
        ),
        (
            "url: \"https://idp/k\", refresh: 0s",
            "auth.p.jwks.refresh",
            "between 1s and 24h",
        ),
        (
            "url: \"https://idp/k\", refresh: 2d",
            "auth.p.jwks.refresh",
            "between 1s and 24h",
        ),
        (
            "url: \"https://idp/k\", refresh: 1m, min_refresh: 5m",
            "auth.p.jwks.min_refresh",
            "must not be longer than refresh (1m)",
        ),
        (
            "url: \"https://idp/k\", ca: /nonexistent.pem",
            "auth.p.jwks.ca",
            "cannot read",
        ),
        (
            &format!("url: \"https://idp/k\", ca: \"{}\"", not_pem.display()),
            "auth.p.jwks.ca",
            "holds no PEM certificate",
        ),
        (
            "url: \"https://idp/k\", on_unavailable: maybe",
            "auth.p.jwks.on_unavailable",
            "unknown variant",
        ),
        (
            "url: \"https://idp/k\", refesh: 1m",
            "auth.p.jwks.refesh",
            "unknown field `refesh`",
        ),
    ] {
        let (code, out) = check_config(&body(jwks, dir));
        assert_eq!(code, 1, "{jwks}: {out}");
        assert!(
            out.contains(&format!("{path}: ")) && out.contains(says),
            "{jwks}: {out}"
        );
        assert!(
            out.contains("invalid config: 1 error\n"),
            "one error, at its key: {out}"
        );
    }
    let (code, out) = check_config(
        &body("url: \"https://idp/k\"", dir).replace("algorithms: [RS256]", "algorithms: [HS256]"),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("auth.p.algorithms: a remote JWKS publishes public keys"),
        "{out}"
    );
    let (code, out) = check_config(&body("url: \"https://idp/k\"", dir).replace(
        &format!("state_dir: \"{}\"", dir.display()),
        "state_dir: \"\"",
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("state_dir: must not be empty"), "{out}");
}

#[test]
fn the_new_process_of_an_upgrade_fetches_the_keys_before_it_serves() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let conf = body(
        &remote(&idp, ", refresh: 24h, min_refresh: 1h"),
        state.path(),
    );
    let gw = Gateway::start(&conf);
    assert_eq!(idp.calls(), 1);
    // Rotated at the identity provider: the running process will not ask again for an hour.
    idp.serve(&[&b]);
    let mut next = gw.upgrade(&conf);
    assert!(eventually(WAIT, || idp.calls() == 2));
    // Once the old process has drained, every answer is the new one's, with the new set.
    assert!(
        eventually(WAIT, || admitted(&gw, &b.token("bob"), "bob")
            && bearer(&gw, &a.token("alice")).status == 401),
        "{}",
        gw.logs()
    );
    let _ = next.kill();
}
