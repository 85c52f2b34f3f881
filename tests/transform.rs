//! Transformation on a route, seen from both ends: the path rewrite (`rewrite`), request
//! header and query edits as the upstream receives them, response header edits as the client
//! gets them, the variables header values may name, and the configs refused at load.
//! Tokens are signed with OpenSSL's HMAC, not with the crate tollgate verifies with.

mod support;
use std::time::Duration;

use support::*;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use openssl::{hash::MessageDigest, pkey::PKey, sign::Signer};

const SECRET: &str = "transform-test-secret-0123456789abcdef";

/// An HS256 JWT with these claims, by OpenSSL.
fn token(claims: serde_json::Value) -> String {
    let signed = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(claims.to_string())
    );
    let key = PKey::hmac(SECRET.as_bytes()).unwrap();
    let mut s = Signer::new(MessageDigest::sha256(), &key).unwrap();
    s.update(signed.as_bytes()).unwrap();
    format!("{signed}.{}", B64.encode(s.sign_to_vec().unwrap()))
}

fn exp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300
}

/// A gateway whose routes each show one transformation, all to the echo upstream.
fn gateway() -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        r#"
upstreams:
  up: {{targets: ["{up}"]}}
auth:
  tokens: {{type: jwt, algorithms: [HS256], secret: "{SECRET}", forward_claims: {{role: X-User-Role}}}}
routes:
  - name: legacy
    path_prefix: /api/v1
    upstream: up
    rewrite: {{regex: "^/api/v1/(?P<rest>.*)$", to: "/v1-legacy/$rest"}}
  - name: swap
    path_prefix: /swap
    upstream: up
    rewrite: {{regex: "^/swap/([^/]+)/([^/]+)$", to: "/people/$2/of/${{1}}"}}
  - name: norm
    path_prefix: /norm
    upstream: up
    rewrite: {{regex: "^/norm/(.*)$", to: "/base//$1/./"}}
  - name: climb
    path_prefix: /climb
    upstream: up
    rewrite: {{regex: "^/climb/(.*)$", to: "/$1/../../.."}}
  - name: encoded
    path_prefix: /enc
    upstream: up
    rewrite: {{regex: "^/enc/(.*)%25(.*)$", to: "/$1%$2"}}
  - name: edits
    path_prefix: /edits
    upstream: up
    request_headers:
      set: {{X-Tenant: acme}}
      add: {{Via: tollgate}}
      remove: [X-Debug]
    query: {{set: {{source: gw}}, remove: [debug]}}
  - name: vars
    path_prefix: /vars
    upstream: up
    auth: [tokens]
    request_headers:
      set:
        X-Ip: $client_ip
        X-Who: $consumer
        X-Rid: $request_id
        X-Route: $route
        X-Tenant: $claim.tenant
        X-Host: $host
        X-Price: "$$5 for ${{consumer}} at $route"
  - name: open
    path_prefix: /open
    upstream: up
    request_headers:
      set: {{X-Who: $consumer, X-Tenant: "t=$claim.tenant"}}
      add: {{X-Trace: "$consumer"}}
"#
    ))
}

fn path_and_query(r: &Resp) -> (String, Option<String>) {
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    let query = j["query"].as_str().map(str::to_owned);
    (j["path"].as_str().unwrap().to_owned(), query)
}

#[test]
fn rewrite_with_named_and_numbered_captures_keeps_the_query() {
    let gw = gateway();
    let r = gw.get("/api/v1/items/7?page=2");
    assert_eq!(
        path_and_query(&r),
        ("/v1-legacy/items/7".into(), Some("page=2".into()))
    );
    let r = gw.get("/swap/ann/9");
    assert_eq!(path_and_query(&r), ("/people/9/of/ann".into(), None));
    // A path the regex does not match goes upstream as it is: the rewrite replaces
    // strip_prefix, it does not fall back to it.
    let r = gw.get("/swap/ann");
    assert_eq!(path_and_query(&r), ("/swap/ann".into(), None));
}

#[test]
fn the_client_path_is_normalised_before_and_the_rewritten_path_after() {
    let gw = gateway();
    // The client's `%2e%2e` is resolved before the regex sees the path.
    let r = gw.get("/api/v1/x/%2e%2e/items");
    assert_eq!(path_and_query(&r).0, "/v1-legacy/items");
    let r = gw.get("/norm/a/b");
    assert_eq!(path_and_query(&r).0, "/base/a/b/");
}

#[test]
fn rewrites_that_escape_the_root_or_encode_a_slash_are_refused() {
    let gw = gateway();
    for (path, id) in [("/climb/a", "rw-climb"), ("/enc/x%252Fy", "rw-encoded")] {
        let r = gw.send("GET", path, &[("X-Request-Id", id)]);
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert_eq!(r.error_code(), "bad_request");
        assert!(r.json()["message"].as_str().unwrap().contains("rewrite"));
        let logged = eventually(Duration::from_secs(5), || {
            gw.logs()
                .lines()
                .any(|l| l.contains(&format!("request_id={id} ")) && l.contains("\" 400 "))
        });
        assert!(logged, "{id} not in the access log:\n{}", gw.logs());
    }
    // The same routes still serve a path whose rewrite is fine.
    assert_eq!(path_and_query(&gw.get("/climb/a/b/c/d")).0, "/a/");
}

#[test]
fn request_headers_set_add_remove_and_query_edits() {
    let gw = gateway();
    let r = gw.send(
        "GET",
        "/edits/x?a=1&debug=1&source=client&debu%67=2",
        &[
            ("X-Tenant", "evil"),
            ("X-Tenant", "evil2"),
            ("Via", "1.1 cdn"),
            ("X-Debug", "1"),
            ("X-Other", "kept"),
        ],
    );
    let (path, query) = path_and_query(&r);
    assert_eq!(path, "/x");
    assert_eq!(query.as_deref(), Some("a=1&source=gw"));
    // `set` replaces the client's copies; `add` appends to them.
    assert_eq!(r.upstream_header("x-tenant").as_deref(), Some("acme"));
    let via = r.json()["headers"]["via"].clone();
    assert_eq!(via, serde_json::json!(["1.1 cdn", "tollgate"]), "{r:?}");
    assert_eq!(r.upstream_header("x-debug"), None);
    assert_eq!(r.upstream_header("x-other").as_deref(), Some("kept"));
    // Without a query, `set` makes one.
    let r = gw.get("/edits/y");
    assert_eq!(path_and_query(&r).1.as_deref(), Some("source=gw"));
}

#[test]
fn every_variable() {
    let gw = gateway();
    let t = token(serde_json::json!({"sub": "bob", "tenant": "acme", "exp": exp()}));
    let r = gw.send(
        "GET",
        "/vars/x",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("X-Request-Id", "rid-vars-1"),
            ("Host", "shop.test"),
            ("X-Who", "forged"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    for (name, want) in [
        ("x-ip", "127.0.0.1"),
        ("x-who", "bob"),
        ("x-rid", "rid-vars-1"),
        ("x-route", "vars"),
        ("x-tenant", "acme"),
        ("x-host", "shop.test"),
        ("x-price", "$5 for bob at vars"),
    ] {
        assert_eq!(r.upstream_header(name).as_deref(), Some(want), "{name}");
    }
}

#[test]
fn a_header_whose_variable_is_absent_is_not_set() {
    let gw = gateway();
    // No claim `tenant`: X-Tenant is not set, and the client's copy does not stand in.
    let t = token(serde_json::json!({"sub": "bob", "exp": exp()}));
    let r = gw.send(
        "GET",
        "/vars/x",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("X-Tenant", "forged"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-tenant"), None);
    assert_eq!(r.upstream_header("x-who").as_deref(), Some("bob"));
    // No consumer on a public route.
    let r = gw.send(
        "GET",
        "/open/x",
        &[
            ("X-Who", "forged"),
            ("X-Tenant", "forged"),
            ("X-Trace", "client"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.upstream_header("x-who"), None);
    assert_eq!(r.upstream_header("x-tenant"), None);
    assert_eq!(r.upstream_header("x-trace").as_deref(), Some("client"));
}

/// A backend answering with headers a route may want gone.
fn chatty(_method: &str, _path: &str) -> (Vec<u8>, bool) {
    let body = "{}";
    let head = format!(
        "HTTP/1.1 200 OK\r\nServer: backend/1.0\r\nX-Powered-By: PHP\r\n\
         Cache-Control: public\r\nX-Kept: 1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    (head.into_bytes(), false)
}

#[test]
fn response_headers_set_and_remove() {
    let up = scripted(chatty);
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  up: {{targets: ["{up}"]}}
routes:
  - name: full
    path_prefix: /full
    upstream: up
    response_headers: {{set: {{Cache-Control: no-store}}, remove: [Server, X-Powered-By]}}
  - name: map
    path_prefix: /map
    upstream: up
    response_headers: {{Cache-Control: no-store}}
"#
    ));
    let r = gw.get("/full/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-powered-by"), None, "{r:?}");
    assert_ne!(r.header("server"), Some("backend/1.0"), "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let all_cc = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
        .count();
    assert_eq!(all_cc, 1, "{r:?}");
    assert_eq!(r.header("x-kept"), Some("1"));
    assert_eq!(r.header("x-gateway"), Some("tollgate"));
    // The map form still means set, and removes nothing.
    let r = gw.get("/map/x");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-powered-by"), Some("PHP"));
}

/// Response header values name variables too: rendered per request, and a header whose
/// variable is absent is not sent (nor the backend's of that name), on both engines.
#[test]
fn response_headers_with_variables() {
    let up = scripted(chatty);
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  up: {{targets: ["{up}"]}}
auth:
  tokens: {{type: jwt, algorithms: [HS256], secret: "{SECRET}"}}
routes:
  - name: vars
    path_prefix: /vars
    upstream: up
    auth: [tokens]
    response_headers:
      set:
        X-Served-For: $consumer
        X-Rid: $request_id
        X-Kept: "tenant $claim.tenant"
        X-Price: "$$5 on $route"
"#
    ));
    let with_tenant = token(serde_json::json!({"sub": "ann", "tenant": "acme", "exp": exp()}));
    let r = gw.send(
        "GET",
        "/vars/x",
        &[("Authorization", &format!("Bearer {with_tenant}"))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-served-for"), Some("ann"), "{r:?}");
    assert_eq!(r.header("x-rid"), r.header("x-request-id"), "{r:?}");
    assert!(r.header("x-rid").is_some_and(|v| !v.is_empty()), "{r:?}");
    assert_eq!(r.header("x-kept"), Some("tenant acme"), "{r:?}");
    assert_eq!(r.header("x-price"), Some("$5 on vars"), "{r:?}");
    let kept = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-kept"));
    assert_eq!(kept.count(), 1, "{r:?}");
    // No `tenant` claim: X-Kept is not sent, not even the backend's; a body goes through
    // Pingora's path, with the same answer.
    let without = token(serde_json::json!({"sub": "bob", "exp": exp()}));
    for body in [false, true] {
        let r = match body {
            false => gw.send(
                "GET",
                "/vars/x",
                &[("Authorization", &format!("Bearer {without}"))],
            ),
            true => gw.raw(
                format!(
                    "POST /vars/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {without}\r\n\
                     Content-Length: 2\r\nConnection: close\r\n\r\nhi"
                )
                .as_bytes(),
            ),
        };
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-served-for"), Some("bob"), "{r:?}");
        assert_eq!(r.header("x-kept"), None, "{r:?}");
        assert_eq!(r.header("x-price"), Some("$5 on vars"), "{r:?}");
    }
}

const BASE: &str = r#"
upstreams:
  up: {targets: ["127.0.0.1:8081"]}
auth:
  tokens: {type: jwt, algorithms: [HS256], secret: "transform-test-secret-0123456789abcdef", forward_claims: {role: X-User-Role}}
routes:
"#;

/// `-t` refuses `route` (one routes[0] entry) with each of `needles` in its output.
fn refused(route: &str, needles: &[&str]) {
    let yaml = format!("{BASE}  - {{name: r, path_prefix: /r, upstream: up, {route}}}\n");
    let (code, out) = check_config(&yaml);
    assert_eq!(code, 1, "expected exit 1 for:\n{yaml}\noutput:\n{out}");
    for n in needles {
        assert!(out.contains(n), "expected {n:?} in:\n{out}");
    }
}

#[test]
fn statically_visible_escapes_and_bad_rewrites_are_config_errors() {
    refused(
        r#"rewrite: {regex: "^/r", to: "/../etc"}"#,
        &["routes[0].rewrite.to:", "above the root"],
    );
    refused(
        r#"rewrite: {regex: "^/r/(.*)", to: "/x%2F$1"}"#,
        &["routes[0].rewrite.to:", "encoded '/'"],
    );
    refused(
        r#"rewrite: {regex: "^/r/(.*)", to: "x/$1"}"#,
        &["routes[0].rewrite.to:", "must start with /"],
    );
    refused(
        r#"rewrite: {regex: "^/r/(", to: "/x"}"#,
        &["routes[0].rewrite.regex:"],
    );
    refused(
        r#"rewrite: {regex: "^/r/(.*)", to: "/$rest"}"#,
        &[
            "routes[0].rewrite.to:",
            "$rest: the regex has no such group",
        ],
    );
    refused(
        r#"strip_prefix: false, rewrite: {regex: "^/r", to: "/x"}"#,
        &["routes[0].rewrite:", "strip_prefix"],
    );
}

#[test]
fn unknown_variables_and_owned_headers_are_config_errors() {
    refused(
        r#"request_headers: {set: {X-A: "$nope"}}"#,
        &[
            "routes[0].request_headers.set.X-A:",
            "unknown variable $nope",
        ],
    );
    refused(
        r#"response_headers: {X-A: "$nope"}"#,
        &["routes[0].response_headers.X-A:", "unknown variable $nope"],
    );
    refused(
        r#"request_headers: {add: {X-A: "5$"}}"#,
        &["routes[0].request_headers.add.X-A:", "$$"],
    );
    for (edit, path) in [
        ("set: {X-Forwarded-For: x}", "set.X-Forwarded-For"),
        ("set: {X-Forwarded-Prefix: x}", "set.X-Forwarded-Prefix"),
        ("add: {X-Real-IP: x}", "add.X-Real-IP"),
        ("set: {X-Request-Id: x}", "set.X-Request-Id"),
        ("set: {X-Consumer: x}", "set.X-Consumer"),
        ("set: {X-User-Role: x}", "set.X-User-Role"),
        ("remove: [X-Consumer]", "remove[0]"),
        ("remove: [Connection]", "remove[0]"),
        ("set: {Content-Length: \"1\"}", "set.Content-Length"),
        ("remove: [Host]", "remove[0]"),
    ] {
        refused(
            &format!("request_headers: {{{edit}}}"),
            &[&format!("routes[0].request_headers.{path}:")],
        );
    }
    refused(
        "response_headers: {remove: [X-Request-Id]}",
        &["routes[0].response_headers.remove[0]:", "cannot be removed"],
    );
    refused(
        "query: {set: {a: \"1\"}, remove: [a]}",
        &["routes[0].query.remove[0]:"],
    );
}

#[test]
fn a_route_with_every_edit_is_valid() {
    let yaml = format!(
        "{BASE}  - name: r\n    path_prefix: /r\n    upstream: up\n    \
         rewrite: {{regex: \"^/r/(?P<rest>.*)$\", to: \"/v2/$rest\"}}\n    \
         request_headers: {{set: {{X-Tenant: \"$claim.tenant\"}}, add: {{Via: tollgate}}, remove: [X-Debug]}}\n    \
         response_headers: {{set: {{Cache-Control: no-store}}, remove: [Server, X-Powered-By]}}\n    \
         query: {{set: {{source: gw}}, remove: [debug]}}\n"
    );
    let (code, out) = check_config(&yaml);
    assert_eq!(code, 0, "{yaml}\n{out}");
}

/// `tollgate explain` shows the rewritten target, the refusal of a bad one, and the
/// response headers a route removes.
#[test]
fn explain_shows_the_rewritten_target() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("t.yaml");
    std::fs::write(
        &conf,
        "upstreams: {up: {targets: [\"127.0.0.1:1\"]}}\nroutes:\n  - name: r\n    path_prefix: /r\n    \
         upstream: up\n    rewrite: {regex: \"^/r/(?P<rest>.*)$\", to: \"/v2/$rest/../../..\"}\n    \
         query: {set: {source: gw}}\n    response_headers: {remove: [Server]}\n",
    )
    .unwrap();
    let explain = |target: &str| {
        let out = std::process::Command::new(bin())
            .args(["explain", "-c"])
            .arg(&conf)
            .args(["GET", target])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = explain("/r/a/b/c?x=1");
    assert!(out.contains("forward:  GET /v2/?x=1&source=gw"), "{out}");
    assert!(out.contains("response: - server"), "{out}");
    let out = explain("/r/a");
    assert!(out.contains("refused, 400"), "{out}");
}

/// The requests tollgate's own engine does not carry (an HTTP/2 client, a request with a
/// body) go through Pingora's proxy loop whatever the mode: the same edits reach the upstream.
#[test]
fn edits_apply_on_pingoras_path_too() {
    let up = echo("up");
    let h2c = |a| format!("{{address: \"{a}\", h2c: true}}");
    let (gw, h2c_addr) = Gateway::with_listener(
        h2c,
        &format!(
            r#"
upstreams:
  up: {{targets: ["{up}"]}}
routes:
  - name: r
    path_prefix: /api
    upstream: up
    rewrite: {{regex: "^/api/(?P<rest>.*)$", to: "/v2/$rest"}}
    request_headers: {{set: {{X-Tenant: acme, X-Route: $route, X-Version: 2}}, add: {{Via: tollgate}}, remove: [X-Debug]}}
    query: {{set: {{source: gw, v: 2}}, remove: [debug]}}
"#
        ),
    );
    let r = runtime()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(h2c_addr).await.unwrap();
            let req = http::Request::get("http://gw/api/items?debug=1&a=2")
                .header("x-tenant", "evil")
                .header("x-debug", "1")
                .body(())
                .unwrap();
            h2client::send(tcp, req).await
        })
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["path"], "/v2/items");
    // A number in the config is its text.
    assert_eq!(j["query"], "a=2&source=gw&v=2");
    assert_eq!(j["headers"]["x-tenant"], "acme");
    assert_eq!(j["headers"]["x-version"], "2");
    assert_eq!(j["headers"]["x-route"], "r");
    assert_eq!(j["headers"]["via"], "tollgate");
    assert!(j["headers"].get("x-debug").is_none(), "{j}");
    let r = gw.raw(
        b"POST /api/items?debug=1 HTTP/1.1\r\nHost: gw\r\nX-Tenant: evil\r\nVia: 1.1 cdn\r\n\
          Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["path"], "/v2/items");
    assert_eq!(j["query"], "source=gw&v=2");
    assert_eq!(j["headers"]["x-tenant"], "acme");
    assert_eq!(
        j["headers"]["via"],
        serde_json::json!(["1.1 cdn", "tollgate"])
    );
}
