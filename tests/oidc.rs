//! OpenID Connect discovery against a real HTTPS identity provider of the tests
//! (`support::idp`): the keys are found through `<issuer>/.well-known/openid-configuration`,
//! whose issuer must be the configured one. Tokens are signed RS256 by the openssl command
//! line.

mod support;
use support::*;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::idp::{admitted, bearer, now, Idp, Key};

const DISCOVERY: &str = "/.well-known/openid-configuration";
const WAIT: Duration = Duration::from_secs(15);

/// Provider `p` (RS256, `discovery: true` with `issuer`, and `more` keys), route `/t`.
fn body(issuer: &str, more: &str, state_dir: &Path) -> String {
    let up = echo("up");
    format!(
        "state_dir: \"{}\"\n\
         upstreams: {{u: {{targets: [\"{up}\"]}}}}\n\
         auth: {{p: {{type: jwt, algorithms: [RS256], issuer: \"{issuer}\", discovery: true, \
                 forward_claims: {{sub: X-User-ID}}{more}}}}}\n\
         routes: [{{name: t, path_prefix: /t, upstream: u, auth: [p]}}]\n",
        state_dir.display()
    )
}

/// The usual provider: the IdP's issuer, trusting its CA, with `jwks` settings `more`.
fn discovering(idp: &Idp, more: &str, state_dir: &Path) -> String {
    body(
        &idp.base,
        &format!(", jwks: {{ca: \"{}\"{more}}}", idp.ca.display()),
        state_dir,
    )
}

/// A token of `key` (naming `kid`) for `sub`, issued by `idp`.
fn token(idp: &Idp, key: &Key, kid: &str, sub: &str) -> String {
    key.sign(
        kid,
        &json!({"sub": sub, "iss": idp.base, "exp": now() + 300}),
    )
}

#[test]
fn the_keys_are_found_through_the_discovery_document() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    // The keys are wherever the document says, not at a path tollgate guesses.
    idp.set_jwks_uri(&format!("{}/oauth2/v1/keys", idp.base));
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&discovering(&idp, "", state.path()));
    assert!(
        admitted(&gw, &token(&idp, &a, "a", "alice"), "alice"),
        "{}",
        gw.logs()
    );
    assert_eq!(idp.calls(DISCOVERY), 1);
    assert_eq!(idp.calls("/oauth2/v1/keys"), 1);
    assert_eq!(idp.calls("/jwks"), 0);
    // The issuer rule holds: a token another issuer made is refused.
    let other = a.sign(
        "a",
        &json!({"sub": "mallory", "iss": "https://other.example", "exp": now() + 300}),
    );
    assert_401(&bearer(&gw, &other), "issuer");
    assert!(gw.logs().contains("1 keys from"), "{}", gw.logs());
}

#[test]
fn a_document_naming_another_issuer_stops_the_start_naming_the_key() {
    let a = Key::new("a");
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let conf = discovering(&idp, "", state.path());
    // A set kept from an earlier run does not paper over a wrong issuer.
    drop(Gateway::start(&conf));
    idp.set_issuer(&format!("{}/", idp.base));
    let err = start_fails(&conf);
    assert!(
        err.contains(&format!(
            "auth.p.issuer: {}{DISCOVERY} names the issuer \"{}/\", not \"{}\" as configured",
            idp.base, idp.base, idp.base
        )),
        "{err}"
    );
    let err = start_fails(&discovering(&idp, ", on_unavailable: deny", state.path()));
    assert!(err.contains("auth.p.issuer: "), "{err}");
}

#[test]
fn a_new_kid_is_fetched_from_the_discovered_jwks_uri() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&discovering(
        &idp,
        ", refresh: 24h, min_refresh: 1s",
        state.path(),
    ));
    let token_a = token(&idp, &a, "a", "alice");
    assert!(admitted(&gw, &token_a, "alice"));
    idp.serve(&[&b]);
    let token_b = token(&idp, &b, "b", "bob");
    assert_401(&bearer(&gw, &token_b), "unknown key");
    assert!(
        eventually(WAIT, || admitted(&gw, &token_b, "bob")),
        "{}",
        gw.logs()
    );
    // The retired key is refused, even for the token verified with it before.
    assert_401(&bearer(&gw, &token_a), "unknown key");
    assert_eq!(
        idp.calls(DISCOVERY),
        1,
        "the document is read once per refresh, not at every fetch of the set"
    );
    assert!(idp.calls("/jwks") >= 2);
}

#[test]
fn a_restart_while_the_idp_is_down_uses_the_kept_set_and_rediscovers_when_it_is_back() {
    let (a, b) = (Key::new("a"), Key::new("b"));
    let idp = Idp::start(&[&a]);
    let state = tempfile::tempdir().unwrap();
    let conf = discovering(&idp, ", refresh: 24h, min_refresh: 1s", state.path());
    drop(Gateway::start(&conf));
    let kept: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");

    idp.down();
    let gw = Gateway::start(&conf);
    assert!(
        admitted(&gw, &token(&idp, &a, "a", "alice"), "alice"),
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        logs.contains(&format!(
            "cannot fetch the keys from the jwks_uri of {}{DISCOVERY}: the discovery document: \
             answered 503",
            idp.base
        )) && logs.contains("using the set cached in"),
        "{logs}"
    );

    // `tollgate explain` says where the keys come from, offline.
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(gw.conf_path())
        .args(["GET", "http://gw/t/x"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "keys from the jwks_uri of {}{DISCOVERY}, as cached in {}",
            idp.base,
            kept[0].display()
        )) && text.contains("kid a"),
        "{text}"
    );

    // Back, with a new key: the gateway, serving the kept set, asks again every min_refresh.
    let before = idp.calls(DISCOVERY);
    idp.serve(&[&a, &b]);
    assert!(
        eventually(WAIT, || admitted(&gw, &token(&idp, &b, "b", "bob"), "bob")),
        "{}",
        gw.logs()
    );
    assert!(idp.calls(DISCOVERY) > before);
}

#[test]
fn check_config_refuses_discovery_without_an_https_issuer_or_with_a_url_and_never_fetches() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    // Nothing listens on port 1: `-t` passes because it does not try.
    let (code, out) = check_config(&body("https://localhost:1", "", dir));
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_config(&body(
        "https://localhost:1",
        ", jwks: {refresh: 5m, min_refresh: 10s, on_unavailable: deny}",
        dir,
    ));
    assert_eq!(code, 0, "{out}");

    let no_issuer = body("x", "", dir).replace("issuer: \"x\", ", "");
    for (conf, path, says) in [
        (
            no_issuer,
            "auth.p.discovery",
            "needs issuer: the discovery document is read from \
             <issuer>/.well-known/openid-configuration",
        ),
        (
            body("http://idp.example", "", dir),
            "auth.p.issuer",
            "with discovery: true, \"http://idp.example\" must be an https:// URL",
        ),
        (
            body("idp.example", "", dir),
            "auth.p.issuer",
            "must be an https:// URL",
        ),
        (
            body(
                "https://idp.example",
                ", jwks: {url: \"https://idp.example/jwks\"}",
                dir,
            ),
            "auth.p.jwks.url",
            "not with discovery: true",
        ),
        (
            body("https://idp.example", ", jwks: {file: /etc/keys.json}", dir),
            "auth.p.jwks",
            "with discovery: true, jwks takes only",
        ),
        (
            body("https://idp.example", ", jwks: {refresh: 0s}", dir),
            "auth.p.jwks.refresh",
            "between 1s and 24h",
        ),
        (
            body("https://idp.example", ", jwks: {ca: /nonexistent.pem}", dir),
            "auth.p.jwks.ca",
            "cannot read",
        ),
        (
            body("https://idp.example", "", dir).replace("[RS256]", "[HS256]"),
            "auth.p.algorithms",
            "a remote JWKS publishes public keys",
        ),
        (
            // Without discovery, a remote set's settings need its url.
            body("https://idp.example", ", jwks: {refresh: 1m}", dir)
                .replace("discovery: true, ", ""),
            "auth.p.jwks.url",
            "missing",
        ),
    ] {
        let (code, out) = check_config(&conf);
        assert_eq!(code, 1, "{conf}: {out}");
        assert!(
            out.contains(&format!("{path}: ")) && out.contains(says),
            "{conf}: {out}"
        );
        assert!(
            out.contains("invalid config: 1 error\n"),
            "one error, at its key: {out}"
        );
    }
}
