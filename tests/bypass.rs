//! No path trick reaches a protected route through its public sibling. The protection here is
//! the route's `ip_deny` (the test client's loopback address is denied on /private); what is
//! asserted is that every spelling of /private is either refused or routed to /private.

mod support;
use support::*;

#[test]
fn path_tricks_never_bypass_a_protected_prefix() {
    let public = echo("public");
    let private = echo("private");
    let gw = Gateway::start(&format!(
        r#"
upstreams: {{public: {{targets: ["{public}"]}}, private: {{targets: ["{private}"]}}}}
routes:
  - {{name: public, path_prefix: /public, upstream: public}}
  - {{name: private, path_prefix: /private, upstream: private, ip_deny: ["127.0.0.0/8", "::1"]}}
"#
    ));
    let tricks = TRICKS;
    for t in tricks {
        let r = gw.get(t);
        let ok = match r.status {
            400 | 403 | 404 => true,
            200 => r.json()["service"] == "public",
            _ => false,
        };
        assert!(ok, "{t}: {} {}", r.status, r.body);
        if r.status == 200 {
            // Only a double-encoded spelling lands on public, and it is forwarded exactly as
            // routed: decoded once, never twice.
            assert_eq!(r.json()["path"], "/%252e%252e/private/x", "{t}");
        }
    }
    // Absolute-form targets follow the same rules.
    let r = gw.raw(
        b"GET http://gw/public/../private/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    );
    assert!(matches!(r.status, 400 | 403), "{r:?}");
    // And the public route still works, including a walk back into it.
    assert_eq!(gw.get("/private/../public/x").json()["service"], "public");
}

/// Spellings of `/private/x` that a naive gateway routes elsewhere.
const TRICKS: [&str; 21] = [
    "/private/x",
    "/public/../private/x",
    "/public/./../private/x",
    "/public/%2e%2e/private/x",
    "/public/%2E%2e/private/x",
    "/public/.%2e/private/x",
    "//private/x",
    "/%70rivate/x",
    "/%70%72ivate/x",
    "/./private/x",
    "/private/./x",
    "/private;x/y",
    "/private;/x",
    "/public/..;/private/x",
    "/public%2f..%2fprivate/x",
    "/public/..%2fprivate/x",
    "/public/..%5cprivate/x",
    "/public\\..\\private/x",
    "/private%00/x",
    "/public/%252e%252e/private/x",
    "/public/%2e%2e%2fprivate/x",
];

#[test]
fn path_and_header_tricks_never_bypass_authentication() {
    let public = echo("public");
    let private = echo("private");
    let gw = Gateway::start(&format!(
        r#"
consumers: {{alice: {{api_keys: ["alice-key-0123456789"]}}}}
auth: {{keys: {{type: api_key}}}}
upstreams: {{public: {{targets: ["{public}"]}}, private: {{targets: ["{private}"]}}}}
routes:
  - {{name: public, path_prefix: /public, upstream: public}}
  - {{name: private, path_prefix: /private, upstream: private, auth: [keys]}}
"#
    ));
    for t in TRICKS {
        let r = gw.get(t);
        let ok = match r.status {
            400 | 401 | 404 => true,
            200 => r.json()["service"] == "public",
            _ => false,
        };
        assert!(ok, "{t}: {} {}", r.status, r.body);
    }
    // Header tricks: a lookalike header name, an empty or padded key, a key in a spoofed
    // identity header, the key twice.
    let header_tricks: [&[(&str, &str)]; 6] = [
        &[("X-Api-Key ", "alice-key-0123456789")],
        &[("X-Api-Key", "")],
        &[("X-Api-Key", "alice-key-0123456789x")],
        &[("X-Consumer", "alice")],
        &[
            ("X-Api-Key", "alice-key-0123456789"),
            ("X-Api-Key", "bogus"),
        ],
        &[("X-Api_Key", "alice-key-0123456789")],
    ];
    for h in header_tricks {
        let r = gw.send("GET", "/private/x", h);
        assert!(
            matches!(r.status, 400 | 401),
            "{h:?}: {} {}",
            r.status,
            r.body
        );
    }
    let r = gw.send(
        "GET",
        "/private/x",
        &[("x-api-key", "alice-key-0123456789")],
    );
    assert_eq!(r.status, 200, "header names are case-insensitive: {r:?}");
    assert_eq!(r.upstream_header("X-Consumer").as_deref(), Some("alice"));
    assert_eq!(
        r.upstream_header("X-Api-Key"),
        None,
        "the key is not forwarded"
    );
}
