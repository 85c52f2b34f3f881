//! OAuth2 token introspection (RFC 7662) against a real HTTPS identity provider of the tests
//! (`support::idp`), which checks the gateway's client credentials and counts its calls.

mod support;
use support::*;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::idp::{bearer, now, Idp, CLIENT_ID, CLIENT_SECRET};

const WAIT: Duration = Duration::from_secs(15);
const CALLS: &str = "/introspect";

/// Provider `p`'s settings: asking `idp` at `endpoint`, forwarding some claims.
fn settings(endpoint: &str, idp: &Idp) -> Vec<(&'static str, String)> {
    vec![
        ("endpoint", format!("\"{endpoint}\"")),
        ("client_id", CLIENT_ID.to_owned()),
        ("client_secret", format!("\"{CLIENT_SECRET}\"")),
        ("ca", format!("\"{}\"", idp.ca.display())),
        (
            "forward_claims",
            "{sub: X-User-ID, scope: X-Scope, client_id: X-Client}".to_owned(),
        ),
    ]
}

/// `settings` with `key: value` set (replaced, or added).
fn with(
    mut s: Vec<(&'static str, String)>,
    key: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    match s.iter_mut().find(|(k, _)| *k == key) {
        Some(kv) => kv.1 = value.to_owned(),
        None => s.push((key, value.to_owned())),
    }
    s
}

/// Provider `p` with `settings`, and routes: `/t` (any active token), `/admin` (claim
/// `role: admin`), `/alice` (consumer alice), `/l` (2 a minute per `username` claim).
fn config(settings: &[(&str, String)]) -> String {
    let up = echo("up");
    let p: Vec<String> = settings.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\n\
         auth: {{p: {{type: introspection, {}}}}}\n\
         rate_limits: {{per-user: {{requests: 2, per: 1m, key: \"claim:username\"}}}}\n\
         routes:\n\
         - {{name: t, path_prefix: /t, upstream: u, auth: [p]}}\n\
         - {{name: admin, path_prefix: /admin, upstream: u, auth: [p], claims: {{role: [admin]}}}}\n\
         - {{name: alice, path_prefix: /alice, upstream: u, auth: [p], consumers: [alice]}}\n\
         - {{name: l, path_prefix: /l, upstream: u, auth: [p], rate_limit: per-user}}\n",
        p.join(", ")
    )
}

/// The usual config, with `key: value` set (`""`: nothing more).
fn body(idp: &Idp, key: &'static str, value: &str) -> String {
    let s = settings(&idp.introspect_url(), idp);
    config(&if key.is_empty() {
        s
    } else {
        with(s, key, value)
    })
}

fn get(gw: &Gateway, path: &str, token: &str) -> Resp {
    gw.send(
        "GET",
        path,
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

/// The introspection endpoint says `token` is active for `user` (role, exp in 5 minutes).
fn active(idp: &Idp, token: &str, user: &str, role: &str) {
    idp.introspects(
        token,
        json!({"active": true, "sub": user, "username": user, "role": role,
               "scope": "read write", "client_id": "app-1", "exp": now() + 300}),
    );
}

fn metric(gw: &Gateway, result: &str) -> u64 {
    let m = gw.admin_get("/metrics").body;
    let line = format!("tollgate_introspection_total{{provider=\"p\",result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in {m}"))
        .parse()
        .unwrap()
}

fn assert_503(r: &Resp) {
    assert_eq!(
        (r.status, r.error_code()),
        (503, "unavailable".into()),
        "{r:?}"
    );
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("introspection endpoint is unavailable"),
        "{r:?}"
    );
}

#[test]
fn an_active_token_is_admitted_with_its_claims_and_remembered() {
    let idp = Idp::start(&[]);
    active(&idp, "tok-alice", "alice", "user");
    let gw = Gateway::start(&body(&idp, "", ""));
    let r = bearer(&gw, "tok-alice");
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("alice"));
    assert_eq!(r.upstream_header("x-scope").as_deref(), Some("read write"));
    assert_eq!(r.upstream_header("x-client").as_deref(), Some("app-1"));
    assert_eq!(r.upstream_header("x-consumer").as_deref(), Some("alice"));
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "the token stays here"
    );
    assert_eq!(idp.calls(CALLS), 1);

    // Asked once: the next requests are answered from what the gateway remembers.
    for _ in 0..3 {
        assert_eq!(bearer(&gw, "tok-alice").status, 200);
    }
    assert_eq!(idp.calls(CALLS), 1, "the identity provider was asked again");
    assert_eq!((metric(&gw, "miss"), metric(&gw, "hit")), (1, 3));
    assert_eq!(idp.auth_methods(), ["basic"], "HTTP Basic by default");
    assert!(!gw.logs().contains("tok-alice"), "a token in the log");
}

#[test]
fn an_inactive_token_is_401_and_remembered_for_negative_ttl_only() {
    let idp = Idp::start(&[]);
    let gw = Gateway::start(&body(&idp, "negative_ttl", "1s"));
    assert_401(&bearer(&gw, "tok-new"), "not active");
    // Active from now on at the identity provider: the gateway still remembers "no" a while.
    active(&idp, "tok-new", "nina", "user");
    assert_401(&bearer(&gw, "tok-new"), "not active");
    assert_eq!(idp.calls(CALLS), 1);
    assert!(
        eventually(WAIT, || bearer(&gw, "tok-new").status == 200),
        "{}",
        gw.logs()
    );
    assert_eq!(idp.calls(CALLS), 2);
    let m = gw.admin_get("/metrics").body;
    let inactive = m.lines().find_map(|l| {
        l.strip_prefix("tollgate_auth_failures_total{route=\"t\",reason=\"inactive\"} ")
    });
    assert!(
        inactive.is_some_and(|n| n.parse::<u64>().unwrap() >= 2),
        "{m}"
    );
    // A token that is not a bearer token at all is refused without asking.
    assert_401(&bearer(&gw, "not a token"), "malformed");
    assert_eq!(idp.calls(CALLS), 2);
}

#[test]
fn a_token_is_asked_about_again_once_its_exp_passes() {
    let idp = Idp::start(&[]);
    let gw = Gateway::start(&body(&idp, "cache_ttl", "1h"));
    idp.introspects(
        "tok-short",
        json!({"active": true, "sub": "sam", "exp": now() + 2}),
    );
    assert_eq!(bearer(&gw, "tok-short").status, 200);
    assert_eq!(bearer(&gw, "tok-short").status, 200);
    assert_eq!(idp.calls(CALLS), 1);
    // Past its exp the gateway asks again (not after cache_ttl), and hears "not active".
    assert!(
        eventually(WAIT, || bearer(&gw, "tok-short").status == 401),
        "{}",
        gw.logs()
    );
    assert_eq!(idp.calls(CALLS), 2);
}

#[test]
fn an_endpoint_that_cannot_answer_gets_503_never_an_admission_and_nothing_is_remembered() {
    let idp = Idp::start(&[]);
    active(&idp, "tok-alice", "alice", "user");
    let gw = Gateway::start(&body(&idp, "timeout", "300ms"));

    idp.down();
    assert_503(&bearer(&gw, "tok-alice"));
    assert_503(&bearer(&gw, "tok-alice"));
    assert_eq!(idp.calls(CALLS), 2, "a failure is not remembered");
    idp.serve(&[]);

    idp.garble(true);
    assert_503(&bearer(&gw, "tok-alice"));
    idp.garble(false);

    idp.delay(Duration::from_secs(2));
    let t = Instant::now();
    assert_503(&bearer(&gw, "tok-alice"));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    idp.delay(Duration::ZERO);

    // Back: admitted, and only now remembered.
    assert_eq!(bearer(&gw, "tok-alice").status, 200);
    assert_eq!(metric(&gw, "error"), 4);
    let logs = gw.logs();
    assert!(
        logs.contains(&format!(
            "auth.p: the introspection endpoint {} cannot answer: answered 503",
            idp.introspect_url()
        )),
        "{logs}"
    );
    assert!(!logs.contains("tok-alice"), "a token in the log");

    // Nothing listens there at all.
    let gw = Gateway::start(&config(&settings(
        &format!("https://localhost:{}/introspect", closed_port().port()),
        &idp,
    )));
    assert_503(&bearer(&gw, "tok-alice"));
}

#[test]
fn the_client_authenticates_as_auth_method_says_with_its_secret_from_any_source() {
    let idp = Idp::start(&[]);
    active(&idp, "tok-alice", "alice", "user");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let from_file = config(&with(
        settings(&idp.introspect_url(), &idp),
        "auth_method",
        "post",
    ))
    .replace(
        &format!("\"{CLIENT_SECRET}\""),
        &format!("{{file: \"{}\"}}", secret_file.display()),
    );
    let gw = Gateway::start(&from_file);
    assert_eq!(bearer(&gw, "tok-alice").status, 200, "{}", gw.logs());
    assert_eq!(idp.auth_methods(), ["post"]);
    drop(gw);

    let from_env = body(&idp, "client_secret", "{env: IDP_SECRET}");
    let gw = Gateway::start_with_env(&from_env, &[("IDP_SECRET", CLIENT_SECRET)]);
    assert_eq!(bearer(&gw, "tok-alice").status, 200, "{}", gw.logs());
    assert_eq!(idp.auth_methods(), ["post", "basic"]);
    drop(gw);

    // A wrong secret: the identity provider refuses the gateway, and the gateway says so.
    let wrong = body(&idp, "", "").replace(CLIENT_SECRET, "not-the-secret");
    let gw = Gateway::start(&wrong);
    assert_503(&bearer(&gw, "tok-alice"));
    assert!(
        gw.logs()
            .contains("answered 401, not 200: it refused the gateway's client_id/client_secret"),
        "{}",
        gw.logs()
    );
}

#[test]
fn claims_rules_consumers_and_claim_limits_read_the_introspected_claims() {
    let idp = Idp::start(&[]);
    active(&idp, "tok-admin", "alice", "admin");
    active(&idp, "tok-user", "bob", "user");
    // Another token of alice's: the limit follows the claim, not the token.
    active(&idp, "tok-admin-2", "alice", "admin");
    let gw = Gateway::start(&body(&idp, "", ""));
    assert_eq!(get(&gw, "/admin/x", "tok-admin").status, 200);
    assert_eq!(get(&gw, "/admin/x", "tok-user").status, 403);
    assert_eq!(get(&gw, "/alice/x", "tok-admin").status, 200);
    assert_eq!(get(&gw, "/alice/x", "tok-user").status, 403);

    assert_eq!(get(&gw, "/l/x", "tok-admin").status, 200);
    assert_eq!(get(&gw, "/l/x", "tok-admin-2").status, 200);
    let r = get(&gw, "/l/x", "tok-admin");
    assert_eq!((r.status, r.error_code()), (429, "rate_limited".into()));
    assert_eq!(get(&gw, "/l/x", "tok-user").status, 200, "bob has his own");
}

#[test]
fn the_connection_to_the_endpoint_is_kept_for_the_next_call() {
    let idp = Idp::start(&[]);
    active(&idp, "tok-alice", "alice", "user");
    let gw = Gateway::start(&body(&idp, "cache_ttl", "0s"));
    for _ in 0..10 {
        assert_eq!(bearer(&gw, "tok-alice").status, 200);
    }
    // Mostly one connection: Pingora's pool misses, now and then, a connection another
    // thread has just returned (its idle watcher still holds it), so a few more may open.
    assert_eq!(idp.calls(CALLS), 10);
    assert!(idp.connections() <= 5, "{} connections", idp.connections());
}

#[test]
fn concurrent_requests_with_one_unknown_token_make_one_call() {
    let idp = Idp::start(&[]);
    active(&idp, "tok-busy", "alice", "user");
    idp.delay(Duration::from_millis(300));
    let gw = Gateway::start(&body(&idp, "", ""));
    std::thread::scope(|s| {
        let gw = &gw;
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(move || bearer(gw, "tok-busy").status))
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    assert_eq!(idp.calls(CALLS), 1, "{}", gw.logs());
    assert_eq!((metric(&gw, "miss"), metric(&gw, "hit")), (1, 7));
}

/// `tollgate explain` of `GET /t/x` with a bearer token, on `conf`.
fn explain(conf: &std::path::Path) -> String {
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(conf)
        .args(["GET", "http://gw/t/x", "-H", "Authorization: Bearer tok-x"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn explain_says_which_endpoint_it_would_call_and_calls_none() {
    let idp = Idp::start(&[]);
    let body = config(&with(
        with(settings(&idp.introspect_url(), &idp), "auth_method", "post"),
        "cache_ttl",
        "30s",
    ));
    let gw = Gateway::start(&body);
    let text = explain(&gw.conf_path());
    let url = idp.introspect_url();
    let would_call =
        format!("would call {url} to introspect the token (not called: explain is offline)");
    assert!(
        text.contains(&format!(
            "p (introspection: would call {url} as client gateway (post auth); active tokens \
             kept 30s (at most until exp), inactive 5s; timeout 2s)"
        )) && text.contains(&would_call),
        "{text}"
    );
    assert!(!text.contains("answer:"), "the endpoint's to give: {text}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");

    // Beside a JWT provider, which refuses an opaque token: still the endpoint's answer.
    let both = body
        .replace(
            "auth: {p:",
            "auth: {j: {type: jwt, algorithms: [HS256], \
             secret: \"0123456789abcdef0123456789abcdef\"}, p:",
        )
        .replace("upstream: u, auth: [p]}", "upstream: u, auth: [j, p]}");
    let text = explain(&gw.write_conf("both.yaml", &both));
    assert!(
        text.contains(&would_call)
            && text.contains("the other providers refuse it: 401 unauthorized (malformed)")
            && !text.contains("answer:"),
        "{text}"
    );
    assert_eq!(idp.calls(CALLS), 0);
}

#[test]
fn check_config_names_each_bad_key_and_never_calls_the_endpoint() {
    let idp = Idp::start(&[]);
    let (code, out) = check_config(&config(&settings("https://localhost:1/introspect", &idp)));
    assert_eq!(code, 0, "{out}");
    for (key, value, path, says) in [
        (
            "endpoint",
            "\"http://idp/i\"",
            "auth.p.endpoint",
            "must be an https:// URL",
        ),
        ("client_id", "\"\"", "auth.p.client_id", "must not be empty"),
        (
            "client_secret",
            "\"\"",
            "auth.p.client_secret",
            "must not be empty",
        ),
        (
            "client_secret",
            "{env: TOLLGATE_TEST_UNSET}",
            "auth.p.client_secret.env",
            "is not set",
        ),
        (
            "auth_method",
            "digest",
            "auth.p.auth_method",
            "unknown variant `digest`",
        ),
        (
            "timeout",
            "0s",
            "auth.p.timeout",
            "must be between 10ms and 1m",
        ),
        (
            "cache_ttl",
            "2d",
            "auth.p.cache_ttl",
            "must be between 0s and 1day",
        ),
        (
            "negative_ttl",
            "2d",
            "auth.p.negative_ttl",
            "must be between 0s and 1day",
        ),
        ("ca", "/nonexistent.pem", "auth.p.ca", "cannot read"),
        ("cache", "1m", "auth.p.cache", "unknown field `cache`"),
        (
            "forward_claims",
            "{sub: \"X User\"}",
            "auth.p.forward_claims.sub",
            "not a valid header name",
        ),
    ] {
        let (code, out) = check_config(&body(&idp, key, value));
        assert_eq!(code, 1, "{key}: {value}: {out}");
        assert!(
            out.contains(&format!("{path}: ")) && out.contains(says),
            "{key}: {value}: {out}"
        );
        assert!(
            out.contains("invalid config: 1 error\n"),
            "one error, at its key: {out}"
        );
    }
    // The type is read first, so its settings' errors name their keys; a provider in error
    // does not make the routes naming it wrong too.
    let (code, out) = check_config(
        &config(&settings("https://idp/i", &idp)).replace("type: introspection", "type: oauth"),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("auth.p.type: unknown type \"oauth\" (api_key, jwt, introspection or mtls)")
            && out.contains("invalid config: 1 error\n"),
        "{out}"
    );
    assert_eq!(idp.calls(CALLS), 0);
}

/// Not a check: the numbers of the report (`cargo test --test introspection -- --ignored
/// --nocapture`). Median latency over one keep-alive client connection of a public route, a
/// remembered token, and a token asked every time (`cache_ttl: 0s`, the endpoint's
/// connection kept), against the test identity provider on loopback.
#[test]
#[ignore]
fn measure_a_miss_and_a_hit() {
    let idp = Idp::start(&[]);
    active(&idp, "tok-alice", "alice", "user");
    let up = echo("up");
    let p = |ttl: &str| {
        let s: Vec<String> = with(settings(&idp.introspect_url(), &idp), "cache_ttl", ttl)
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("{{type: introspection, {}}}", s.join(", "))
    };
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\n\
         auth: {{kept: {}, asked: {}}}\n\
         routes:\n\
         - {{name: pub, path_prefix: /pub, upstream: u}}\n\
         - {{name: hit, path_prefix: /hit, upstream: u, auth: [kept]}}\n\
         - {{name: miss, path_prefix: /miss, upstream: u, auth: [asked]}}\n",
        p("60s"),
        p("0s")
    ));
    let mut c = support::Client::connect(gw.addr);
    let auth = "Authorization: Bearer tok-alice\r\n";
    let first = Instant::now();
    assert_eq!(c.get("/miss/x", auth).status, 200);
    println!(
        "first miss (new TLS connection to the endpoint): {:?}",
        first.elapsed()
    );
    let mut median = |path: &str| {
        let mut t: Vec<Duration> = (0..300)
            .map(|_| {
                let at = Instant::now();
                assert_eq!(c.get(path, auth).status, 200);
                at.elapsed()
            })
            .collect();
        t.sort();
        t[t.len() / 2]
    };
    let (public, hit, miss) = (median("/pub/x"), median("/hit/x"), median("/miss/x"));
    println!(
        "median: public route {public:?}, remembered token {hit:?}, asked every time {miss:?}"
    );
    println!(
        "a miss costs {:?} more than a hit; a hit {:?} more than no auth",
        miss.saturating_sub(hit),
        hit.saturating_sub(public)
    );
    // The first request of each route asks. Each provider keeps a connection (Pingora's pool
    // now and then misses a connection just returned on another thread: a few more).
    assert_eq!(idp.calls(CALLS), 302);
    println!("{} TLS connections to the endpoint", idp.connections());
}
