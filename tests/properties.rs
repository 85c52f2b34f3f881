//! Property tests of the pieces that read hostile input before anything else: the path
//! normaliser, the router, a whole request head through the framing guard and authentication
//! (API keys and the JWT front), and the config loader never panic, and the normaliser's
//! output is stable and unambiguous. (The cargo-fuzz targets the hardening issue
//! asks for need a nightly toolchain this project's machines do not have; these run in CI.)

use proptest::prelude::*;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tollgate::policy::path::normalise;

/// A gateway with an API-key route and a JWT route, compiled once.
fn gateway() -> &'static tollgate::gateway::compile::Gateway {
    static GW: OnceLock<tollgate::gateway::Loaded> = OnceLock::new();
    &GW.get_or_init(|| {
        tollgate::gateway::load_str(
            "consumers: {alice: {api_keys: [\"alice-key-0123456789\"]}}\n\
             auth:\n  keys: {type: api_key}\n  tokens: {type: jwt, algorithms: [HS256], secret: \"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t\", forward_claims: {sub: X-User-ID, role: X-User-Role}}\n\
             upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\n\
             routes:\n  - {name: a, path_prefix: /a, upstream: u, auth: [keys, tokens], claims: {role: [admin]}}\n",
        )
        .unwrap()
    })
    .gateway
}

/// Token-shaped strings: three base64url-ish segments, sometimes valid JSON inside.
fn tokenish() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        "[A-Za-z0-9_-]{0,60}",
        Just("eyJhbGciOiJIUzI1NiJ9".to_owned()),
        Just("eyJhbGciOiJub25lIn0".to_owned()),
        Just("eyJhbGciOiJIUzI1NiIsImNyaXQiOlsieCJdfQ".to_owned()),
        Just("eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ".to_owned()),
        "\\PC{0,20}",
    ];
    prop::collection::vec(seg, 1..5).prop_map(|v| v.join("."))
}

/// Paths built from the characters that matter for traversal and encoding tricks.
fn tricky_path() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5c".to_owned()),
        Just("%25".to_owned()),
        Just("%7e".to_owned()),
        Just("%41".to_owned()),
        Just("%".to_owned()),
        Just(";".to_owned()),
        Just("a".to_owned()),
        Just("private".to_owned()),
        "[a-z0-9._~-]{1,4}".prop_map(|s| s),
    ];
    prop::collection::vec(atom, 0..12).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn normalise_is_idempotent_and_unambiguous(p in tricky_path()) {
        if let Ok(n) = normalise(&p) {
            let n = n.into_owned();
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"), "{n}");
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{n}");
            let lower = n.to_ascii_lowercase();
            for enc in ["%2e", "%2f", "%5c", "%00", "%7e", "%41"] {
                prop_assert!(!lower.contains(enc), "{n} still has {enc}");
            }
            let again = normalise(&n).expect("normal output is accepted");
            prop_assert_eq!(again.as_ref(), n.as_str());
        }
    }

    #[test]
    fn normalise_never_panics_on_any_string(p in "\\PC{0,64}") {
        let _ = normalise(&p);
    }

    #[test]
    fn router_never_panics(host in proptest::option::of("\\PC{0,40}"), p in tricky_path(), m in "[A-Z]{1,8}") {
        let gw = tollgate::gateway::load_str(
            "upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\nroutes:\n  - {name: a, path_prefix: /a, upstream: u, methods: [GET]}\n  - {name: b, host: \"*.x.org\", path_prefix: /, upstream: u}\n",
        ).unwrap().gateway;
        let method = http::Method::from_bytes(m.as_bytes()).unwrap();
        let head = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        let _ = gw.router.find(host.as_deref().map(str::as_bytes), &p, &method, &head);
    }

    #[test]
    fn config_loader_never_panics(text in "\\PC{0,200}") {
        let _ = tollgate::gateway::load_str(&text);
    }

    #[test]
    fn config_loader_never_panics_on_plausible_yaml(
        key in prop::sample::select(vec!["routes", "upstreams", "listen", "limits", "access_log", "threads", "admin"]),
        val in prop::sample::select(vec!["[]", "{}", "1", "-1", "\"x\"", "[{name: a}]", "{a: {targets: [1]}}", "null", "[[[]]]"]),
    ) {
        let _ = tollgate::gateway::load_str(&format!("{key}: {val}\n"));
    }

    #[test]
    fn a_request_head_through_framing_and_auth_never_panics_and_never_admits_garbage(
        token in tokenish(),
        key in "\\PC{0,40}",
        scheme in prop::sample::select(vec!["Bearer ", "bearer ", "Basic ", "", "Bearer  "]),
        cl in prop::sample::select(vec!["", "5", "+5", "-0", "0x10", " 5", "1,1"]),
        te in prop::sample::select(vec!["", "chunked", "gzip, chunked", "Chunked", "identity"]),
    ) {
        let gw = gateway();
        let mut head = format!("GET /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {scheme}{token}\r\n");
        if !cl.is_empty() { head.push_str(&format!("Content-Length: {cl}\r\n")); }
        if !te.is_empty() { head.push_str(&format!("Transfer-Encoding: {te}\r\n")); }
        head.push_str("\r\n");
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut headers);
        if !matches!(parsed.parse(head.as_bytes()), Ok(httparse::Status::Complete(_))) {
            return Ok(());
        }
        let mut req = pingora::http::RequestHeader::build("GET", b"/a/x", None).unwrap();
        for h in parsed.headers.iter() {
            let _ = req.append_header(h.name.to_owned(), h.value);
        }
        if let Ok(v) = http::HeaderValue::from_str(&key) {
            let _ = req.append_header("X-Api-Key", v);
        }
        let _ = tollgate::policy::guard::check_framing(&req, Some(head.as_bytes()));
        let route = gw.router.routes()[0].auth.as_ref().expect("an auth route");
        let start = Instant::now();
        let verdict = gw.auth.check(route, &req, None);
        prop_assert!(start.elapsed() < Duration::from_millis(500), "auth took {:?}", start.elapsed());
        // Random tokens never verify and random keys never match: only the real key admits.
        if let Ok(id) = verdict {
            prop_assert_eq!(key.as_str(), "alice-key-0123456789", "admitted {:?}", id.consumer);
        }
    }

    #[test]
    fn auth_and_rate_limit_sections_never_panic_the_loader(
        key in prop::sample::select(vec!["consumers", "auth", "rate_limits", "redis"]),
        val in prop::sample::select(vec![
            "{}", "[]", "1", "null", "{a: 1}", "{a: {type: jwt}}", "{a: {type: api_key, header: \"\"}}",
            "{a: {type: jwt, algorithms: [none], secret: x}}", "{a: {api_keys: [{env: NOPE_NOT_SET}]}}",
            "{a: {api_keys: [\"sha256:zz\"]}}", "{a: {requests: 0, per: 0s}}", "{a: {requests: 1, per: 1s, key: \"header:\"}}",
            "{url: \"redis://\", timeout: 0s}", "{a: {type: jwt, algorithms: [RS256], jwks: {file: /nonexistent}}}",
        ]),
    ) {
        let _ = tollgate::gateway::load_str(&format!("{key}: {val}\n"));
    }
}
