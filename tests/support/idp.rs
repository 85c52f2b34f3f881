//! A real HTTPS identity provider for the tests, with its own CA: a JWKS (`GET /jwks`), an
//! OpenID discovery document (`GET /.well-known/openid-configuration`) and an OAuth2 token
//! introspection endpoint (`POST /introspect`, RFC 7662, checking the client's credentials).
//! It counts the requests it answers per path, keeps connections alive as a client asks, and
//! goes down (503), slow or garbled on demand. RS256 tokens are signed by the `openssl`
//! command line, not by the `jsonwebtoken` crate tollgate verifies with.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_openssl::SslStream;

use super::runtime;

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An RSA signing key with its `kid`; its private half in a PEM file for `openssl dgst`.
pub struct Key {
    pub kid: String,
    pkey: PKey<Private>,
    _dir: tempfile::TempDir,
    pem: PathBuf,
}

impl Key {
    pub fn new(kid: &str) -> Key {
        let pkey = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        std::fs::write(&pem, pkey.private_key_to_pem_pkcs8().unwrap()).unwrap();
        Key {
            kid: kid.to_owned(),
            pkey,
            _dir: dir,
            pem,
        }
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Value {
        let rsa = self.pkey.rsa().unwrap();
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": B64.encode(rsa.n().to_vec()), "e": B64.encode(rsa.e().to_vec()),
        })
    }

    /// An RS256 token with these claims, naming `kid`, signed by `openssl dgst -sha256 -sign`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#);
        let signed = format!("{}.{}", B64.encode(header), B64.encode(claims.to_string()));
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the openssl command line");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signed.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst failed");
        format!("{signed}.{}", B64.encode(out.stdout))
    }

    /// A token for `sub`, valid for five minutes, naming `kid` (this key's unless given).
    pub fn token_as(&self, kid: &str, sub: &str) -> String {
        self.sign(kid, &json!({"sub": sub, "exp": now() + 300}))
    }

    pub fn token(&self, sub: &str) -> String {
        self.token_as(&self.kid, sub)
    }
}

/// `GET /t/x` (the tests' protected route) with `Authorization: Bearer TOKEN`.
pub fn bearer(gw: &super::Gateway, token: &str) -> super::Resp {
    gw.send(
        "GET",
        "/t/x",
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

/// Admitted, and the upstream was told `X-User-ID: SUB`.
pub fn admitted(gw: &super::Gateway, token: &str, sub: &str) -> bool {
    let r = bearer(gw, token);
    r.status == 200 && r.upstream_header("x-user-id").as_deref() == Some(sub)
}

/// A JWKS document of these keys.
pub fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// A CA (its certificate written to `dir/NAME.pem`) and a `localhost` certificate it signed.
pub fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, SslAcceptor) {
    let [path, leaf, key] = super::tls_client::ca_and_leaf_files(dir, name);
    let (leaf, key) = (std::fs::read(leaf).unwrap(), std::fs::read(key).unwrap());
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&openssl::x509::X509::from_pem(&leaf).unwrap())
        .unwrap();
    b.set_private_key(&PKey::private_key_from_pem(&key).unwrap())
        .unwrap();
    (path, b.build())
}

/// What the identity provider serves, changed by the test as it goes.
struct State {
    /// The JWKS served; `None`: every path answers 503.
    jwks: Option<String>,
    /// The discovery document's `issuer` (the base URL unless changed).
    issuer: String,
    /// The discovery document's `jwks_uri`; the JWKS is served at its path too.
    jwks_uri: String,
    base: String,
    /// Introspection answers by token; any other token is `{"active": false}`.
    tokens: HashMap<String, Value>,
    /// The introspection client's credentials.
    client: (String, String),
    /// How long the introspection endpoint takes to answer.
    delay: Duration,
    /// The introspection endpoint answers 200 with a body that is not JSON.
    garbled: bool,
    /// Requests answered, by path.
    calls: HashMap<String, usize>,
    /// How each introspection call authenticated: `basic`, `post`, or `none`.
    auth_methods: Vec<&'static str>,
    /// TLS connections accepted.
    connections: usize,
}

/// The identity provider: `https://localhost:PORT`.
pub struct Idp {
    /// `https://localhost:PORT` (the issuer of its discovery document by default).
    pub base: String,
    /// The test CA's certificate.
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
}

/// The introspection endpoint's client, as [`Idp::start`] sets it.
pub const CLIENT_ID: &str = "gateway";
pub const CLIENT_SECRET: &str = "s3cret:with&odd=chars";

impl Idp {
    /// Serve `keys` (and discovery, introspection) over HTTPS on a free port.
    pub fn start(keys: &[&Key]) -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let (ca, acceptor) = ca_and_leaf(dir.path(), "ca");
        let l = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr: SocketAddr = l.local_addr().unwrap();
        let base = format!("https://localhost:{}", addr.port());
        let state = Arc::new(Mutex::new(State {
            jwks: Some(jwks(keys)),
            issuer: base.clone(),
            jwks_uri: format!("{base}/jwks"),
            base: base.clone(),
            tokens: HashMap::new(),
            client: (CLIENT_ID.into(), CLIENT_SECRET.into()),
            delay: Duration::ZERO,
            garbled: false,
            calls: HashMap::new(),
            auth_methods: Vec::new(),
            connections: 0,
        }));
        let s = state.clone();
        runtime().spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let ssl = Ssl::new(acceptor.context()).unwrap();
                let s = s.clone();
                tokio::spawn(async move {
                    let mut tls = SslStream::new(ssl, tcp).unwrap();
                    if Pin::new(&mut tls).accept().await.is_ok() {
                        s.lock().unwrap().connections += 1;
                        serve(tls, s).await;
                    }
                });
            }
        });
        Idp {
            base,
            ca,
            dir,
            state,
        }
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base)
    }

    /// The introspection endpoint.
    pub fn introspect_url(&self) -> String {
        format!("{}/introspect", self.base)
    }

    pub fn serve(&self, keys: &[&Key]) {
        self.state.lock().unwrap().jwks = Some(jwks(keys));
    }

    /// Every path answers 503 until [`Idp::serve`].
    pub fn down(&self) {
        self.state.lock().unwrap().jwks = None;
    }

    /// The issuer its discovery document names.
    pub fn set_issuer(&self, issuer: &str) {
        self.state.lock().unwrap().issuer = issuer.to_owned();
    }

    /// The `jwks_uri` its discovery document names (served too when it is on this server).
    pub fn set_jwks_uri(&self, uri: &str) {
        self.state.lock().unwrap().jwks_uri = uri.to_owned();
    }

    /// The introspection endpoint's answer for `token` (`active` and the claims).
    pub fn introspects(&self, token: &str, answer: Value) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_owned(), answer);
    }

    /// The introspection endpoint waits this long before it answers.
    pub fn delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    /// The introspection endpoint answers 200 with a body that is not JSON.
    pub fn garble(&self, on: bool) {
        self.state.lock().unwrap().garbled = on;
    }

    /// Requests answered on `path`.
    pub fn calls(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// How each introspection call authenticated (`basic`, `post`, `none`), in order.
    pub fn auth_methods(&self) -> Vec<&'static str> {
        self.state.lock().unwrap().auth_methods.clone()
    }
}

/// Answer requests on one connection until the client closes it or asks to.
async fn serve(mut tls: SslStream<tokio::net::TcpStream>, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = super::read_head(&mut tls, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let header = |name: &str| super::header_in(&head, name);
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut parts = head.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let ((status, body), delay) = answer(
            &state,
            method,
            path,
            header("authorization"),
            &String::from_utf8_lossy(&body),
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if tls.write_all(out.as_bytes()).await.is_err() || close {
            let _ = tls.shutdown().await;
            return;
        }
    }
}

type Answer = (&'static str, String);

/// The answer to one request, and how long to wait before giving it.
fn answer(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    authorization: Option<String>,
    body: &str,
) -> (Answer, Duration) {
    let mut s = state.lock().unwrap();
    *s.calls.entry(path.to_owned()).or_default() += 1;
    let not_found = ("404 Not Found", String::new());
    if s.jwks.is_none() {
        return (("503 Service Unavailable", String::new()), Duration::ZERO);
    }
    let at_jwks_uri = s.jwks_uri.strip_prefix(&s.base) == Some(path);
    let a = match (method, path) {
        ("GET", "/jwks") => ("200 OK", s.jwks.clone().unwrap_or_default()),
        ("GET", _) if at_jwks_uri => ("200 OK", s.jwks.clone().unwrap_or_default()),
        ("GET", "/.well-known/openid-configuration") => (
            "200 OK",
            json!({
                "issuer": s.issuer, "jwks_uri": s.jwks_uri,
                "introspection_endpoint": format!("{}/introspect", s.issuer),
                "id_token_signing_alg_values_supported": ["RS256"],
            })
            .to_string(),
        ),
        ("POST", "/introspect") => {
            let delay = s.delay;
            return (introspect(&mut s, authorization, body), delay);
        }
        _ => not_found,
    };
    (a, Duration::ZERO)
}

/// RFC 7662 §2: the client authenticates (RFC 6749 §2.3.1: HTTP Basic with form-encoded
/// id and secret, or both in the body); the token's answer, or `{"active": false}`.
fn introspect(s: &mut State, authorization: Option<String>, body: &str) -> Answer {
    let form = form(body);
    let basic = authorization.and_then(|a| {
        let b64 = a.strip_prefix("Basic ")?;
        let text = String::from_utf8(STANDARD.decode(b64).ok()?).ok()?;
        let (id, secret) = text.split_once(':')?;
        Some((decode(id), decode(secret)))
    });
    let post = form
        .get("client_id")
        .zip(form.get("client_secret"))
        .map(|(i, s)| (i.clone(), s.clone()));
    let (method, given) = match (basic, post) {
        (Some(b), None) => ("basic", Some(b)),
        (None, Some(p)) => ("post", Some(p)),
        (None, None) => ("none", None),
        (Some(_), Some(_)) => ("both", None),
    };
    s.auth_methods.push(method);
    if given.as_ref() != Some(&s.client) {
        return (
            "401 Unauthorized",
            json!({"error": "invalid_client"}).to_string(),
        );
    }
    if s.garbled {
        return ("200 OK", "<html>not json</html>".into());
    }
    let Some(token) = form.get("token") else {
        return (
            "400 Bad Request",
            json!({"error": "invalid_request"}).to_string(),
        );
    };
    let inactive = json!({"active": false});
    let a = match s.tokens.get(token) {
        Some(a) if a["exp"].as_u64().is_some_and(|exp| exp <= now()) => inactive,
        Some(a) => a.clone(),
        None => inactive,
    };
    ("200 OK", a.to_string())
}

/// An `application/x-www-form-urlencoded` body.
fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Form decoding: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
