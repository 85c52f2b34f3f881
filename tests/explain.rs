//! `tollgate explain` tells, without sending anything, what the gateway would do.

mod support;

fn explain(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(support::bin())
        .args([
            "explain",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tollgate.yaml"),
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explains_the_matching_route_the_others_and_the_forwarded_target() {
    let (code, out) = explain(&["GET", "http://example.com/private/./v1//items?x=1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("normalised to /private/v1/items"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("private") && l.ends_with("MATCH")),
        "{out}"
    );
    assert!(
        out.lines().any(
            |l| l.trim_start().starts_with("public") && l.contains("path is not under /public")
        ),
        "{out}"
    );
    assert!(out.contains("forward:  GET /v1/items?x=1"), "{out}");
    assert!(out.contains("backends: 127.0.0.1:8082"), "{out}");
}

#[test]
fn explains_405_404_and_400() {
    let (_, out) = explain(&["POST", "/public/x"]);
    assert!(
        out.contains("answer:   405 method_not_allowed (Allow: GET, HEAD)"),
        "{out}"
    );
    assert!(out.contains("method POST not in [GET, HEAD]"), "{out}");
    let (_, out) = explain(&["GET", "/elsewhere"]);
    assert!(out.contains("answer:   404 no_route"), "{out}");
    let (_, out) = explain(&["GET", "/public/%2fetc"]);
    assert!(out.contains("answer:   400 bad_request"), "{out}");
}

/// `tollgate explain` (or `token`) with `conf` written to a temp file.
/// `tollgate explain GET PATH -H HEADER` against the authenticated config.
fn explain_authed(path: &str, header: &str) -> (i32, String) {
    run_with(AUTHED, &["explain", "GET", path, "-H", header])
}

fn run_with(conf: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, conf).unwrap();
    let out = std::process::Command::new(support::bin())
        .arg(args[0])
        .arg("-c")
        .arg(&path)
        .args(&args[1..])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const AUTHED: &str = r#"
upstreams: {u: {targets: ["127.0.0.1:9"]}}
consumers:
  alice: {api_keys: ["supersecretapikey"]}
  bob: {api_keys: ["bobsecretapikey1"]}
auth:
  keys: {type: api_key, header: X-Api-Key}
  qkeys: {type: api_key, query: api_key}
  tokens: {type: jwt, algorithms: [HS256], secret: "explain-test-secret-0123456789abcdef", issuer: iss.example, audience: api}
rate_limits:
  per-consumer: {requests: 5, per: 1m, burst: 2, key: consumer}
  per-ip: {requests: 100, per: 1s, key: client_ip}
routes:
  - {name: team, path_prefix: /team, upstream: u, auth: [keys, tokens], consumers: [alice], rate_limit: [per-consumer, per-ip]}
  - {name: admins, path_prefix: /admin, upstream: u, auth: [tokens], claims: {role: [admin]}}
  - {name: q, path_prefix: /q, upstream: u, auth: [qkeys]}
"#;

#[test]
fn explains_auth_requirements_verdicts_and_limits_of_an_authenticated_route() {
    let (code, out) = explain_authed("/team/x", "X-Api-Key: supersecretapikey");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("auth:     one of keys (api_key in header x-api-key), tokens (jwt HS256, issuer iss.example, audience api)"),
        "{out}"
    );
    assert!(out.contains("consumers: alice"), "{out}");
    assert!(out.contains("passes: caller alice"), "{out}");
    assert!(
        out.contains("limits:   per-consumer: 5 requests per 1m, burst 2, key consumer, store local (not consumed)"),
        "{out}"
    );
    assert!(
        out.contains("per-ip: 100 requests per 1s, burst 100, key client_ip, store local"),
        "{out}"
    );
    assert!(
        !out.contains("supersecretapikey"),
        "the key is never echoed: {out}"
    );

    let (_, out) = explain_authed("/team/x", "X-Api-Key: bobsecretapikey1");
    assert!(out.contains("answer:   403 forbidden (forbidden)"), "{out}");
    let (_, out) = explain_authed("/team/x", "X-Api-Key: not-a-key-at-all");
    assert!(
        out.contains("answer:   401 unauthorized (invalid_key)"),
        "{out}"
    );
    let (_, out) = run_with(AUTHED, &["explain", "GET", "/team/x"]);
    assert!(
        out.contains("answer:   401 unauthorized (missing)"),
        "{out}"
    );

    // A token minted for the route's provider is verified offline, claims included.
    let (code, token) = run_with(
        AUTHED,
        &[
            "token",
            "--auth",
            "tokens",
            "--sub",
            "carol",
            "--claim",
            "role=admin",
        ],
    );
    assert_eq!(code, 0, "{token}");
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let (_, out) = explain_authed("/admin/x", &bearer);
    assert!(out.contains("claim role in [admin]"), "{out}");
    assert!(out.contains("passes: caller carol"), "{out}");
    assert!(out.contains("limits:   none"), "{out}");
    let (_, out) = explain_authed("/admin/x", "Authorization: Bearer a.b.c");
    assert!(
        out.contains("answer:   401 unauthorized (malformed)"),
        "{out}"
    );
}

const MATCHED: &str = r#"
upstreams: {u: {targets: ["127.0.0.1:9"]}}
routes:
  - {name: stable, path_prefix: /api, upstream: u}
  - name: canary
    path_prefix: /api
    upstream: u
    priority: 10
    match: {headers: {X-Env: canary, X-Beta: "~^(1|true)$"}, query: {debug: "!"}, cookies: {tier: gold}}
  - {name: other, path_prefix: /other, upstream: u, match: {headers: {X-Env: canary}}}
"#;

#[test]
fn explains_which_match_rules_held_or_failed_for_each_candidate() {
    let (code, out) = run_with(
        MATCHED,
        &[
            "explain",
            "GET",
            "/api/x?debug=1",
            "-H",
            "X-Env: canary",
            "-H",
            "Cookie: tier=gold",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let line = |start: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in:\n{out}"))
            .to_owned()
    };
    assert!(line("canary").ends_with("match rules fail"), "{out}");
    assert!(line("priority").ends_with("priority 10"), "{out}");
    assert!(
        line("match headers.x-env").ends_with("= \"canary\": holds"),
        "{out}"
    );
    assert!(
        line("match headers.x-beta").ends_with("~ \"^(1|true)$\": fails"),
        "{out}"
    );
    assert!(
        line("match query.debug").ends_with("absent: fails"),
        "{out}"
    );
    assert!(
        line("match cookies.tier").ends_with("= \"gold\": holds"),
        "{out}"
    );
    assert!(line("stable").ends_with("MATCH"), "{out}");
    // Not a candidate (another prefix): its rules are not shown.
    assert!(line("other").contains("path is not under /other"), "{out}");
    assert_eq!(out.matches("match headers.x-env").count(), 1, "{out}");

    let (_, out) = run_with(
        MATCHED,
        &[
            "explain",
            "GET",
            "/api/x",
            "-H",
            "X-Env: canary",
            "-H",
            "X-Beta: 1",
            "-H",
            "Cookie: a=1; tier=gold",
        ],
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("canary") && l.ends_with("MATCH")),
        "{out}"
    );
    assert!(!out.contains(": fails"), "{out}");
}
