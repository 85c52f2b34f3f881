//! What of the client's request headers reaches the upstream: `Content-Length` in canonical
//! form, and header names with underscores as `underscores_in_headers` says (drop, the
//! default, allow, reject), on every protocol and engine: HTTP/1.1 on the plain listener
//! (tollgate's own codec for a bodiless GET), on an h2c listener (Pingora's session), and
//! HTTP/2 with prior knowledge.

mod support;
use support::*;

const KEY: &str = "alice-key-0123456789";

/// A gateway with `extra` top-level keys: `/keys` needs an API key in `header`, the rest is
/// public; both go to an echo upstream. Its plain and h2c listener addresses.
fn gateway(extra: &str, header: &str) -> (Gateway, (std::net::SocketAddr, std::net::SocketAddr)) {
    let up = echo("up");
    let (gw, h2c) = Gateway::with_listener(
        |a| format!("{{address: \"{a}\", h2c: true}}"),
        &format!(
            "consumers: {{alice: {{api_keys: [\"{KEY}\"]}}}}\n\
             auth: {{keys: {{type: api_key, header: {header}}}}}\n\
             upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
             routes:\n\
             - {{name: keys, path_prefix: /keys, upstream: up, auth: [keys]}}\n\
             - {{name: open, path_prefix: /, upstream: up}}\n{extra}"
        ),
    );
    let addrs = (gw.addr, h2c);
    (gw, addrs)
}

/// `GET path` with `headers` over HTTP/1.1 on the plain listener (the own codec) and on the
/// h2c one (Pingora's session), and over HTTP/2: the three answers, status and JSON body.
fn get_all(
    (plain, h2c): (std::net::SocketAddr, std::net::SocketAddr),
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<(u16, serde_json::Value)> {
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let h1 = [plain, h2c].map(|addr| Client::connect(addr).get(path, &extra));
    let h2 = runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
        let mut req = http::Request::get(format!("http://gw{path}"));
        for (k, v) in headers {
            req = req.header(k.to_ascii_lowercase(), *v);
        }
        h2client::send(tcp, req.body(()).unwrap()).await.unwrap()
    });
    let json = |status: u16, body: &str| (status, serde_json::from_str(body).unwrap_or_default());
    let mut all: Vec<_> = h1.iter().map(|r| json(r.status, &r.body)).collect();
    all.push(json(h2.status, &h2.body));
    all
}

const UNDERSCORED: &[(&str, &str)] = &[("X_Api_Key", KEY), ("Transfer_Encoding", "chunked")];

#[test]
fn underscored_headers_are_dropped_by_default_and_cannot_authenticate() {
    let (_gw, addrs) = gateway("", "X-Api-Key");
    for (status, echo) in get_all(addrs, "/open", UNDERSCORED) {
        assert_eq!(status, 200, "{echo}");
        let headers = echo["headers"].as_object().unwrap();
        assert!(
            !headers.keys().any(|k| k.contains('_')),
            "an underscored header reached the upstream: {headers:?}"
        );
    }
    // As a credential, the key under an underscored name is not seen at all.
    for (status, body) in get_all(addrs, "/keys/x", &[("X_Api_Key", KEY)]) {
        assert_eq!(status, 401, "{body}");
    }
}

#[test]
fn underscored_headers_pass_under_allow() {
    let (_gw, addrs) = gateway("underscores_in_headers: allow", "X_Api_Key");
    for (status, echo) in get_all(addrs, "/open", UNDERSCORED) {
        assert_eq!(status, 200, "{echo}");
        assert_eq!(echo["headers"]["transfer_encoding"], "chunked", "{echo}");
    }
    for (status, echo) in get_all(addrs, "/keys/x", &[("X_Api_Key", KEY)]) {
        assert_eq!(status, 200, "{echo}");
    }
}

#[test]
fn underscored_headers_get_400_under_reject() {
    let (_gw, addrs) = gateway("underscores_in_headers: reject", "X-Api-Key");
    for (status, body) in get_all(addrs, "/open", &UNDERSCORED[1..]) {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "bad_request", "{body}");
    }
    // A name without one is fine.
    for (status, body) in get_all(addrs, "/open", &[("X-Fine", "1")]) {
        assert_eq!(status, 200, "{body}");
    }
}

#[test]
fn an_underscored_api_key_header_under_drop_is_a_config_error() {
    let up = echo("up");
    let yaml = format!(
        "listen: [\"127.0.0.1:{}\"]\n\
         consumers: {{alice: {{api_keys: [\"{KEY}\"]}}}}\n\
         auth: {{keys: {{type: api_key, header: X_Api_Key}}}}\n\
         upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         routes: [{{name: keys, path_prefix: /, upstream: up, auth: [keys]}}]\n",
        free_port()
    );
    let (code, out) = check_config(&yaml);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("auth.keys.header:"), "{out}");
    assert!(out.contains("underscores_in_headers"), "{out}");
    let (code, out) = check_config(&format!("{yaml}underscores_in_headers: allow\n"));
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_config(&format!("{yaml}underscores_in_headers: maybe\n"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("underscores_in_headers"), "{out}");
}

/// A route rule on a client header whose name has an underscore could never hold under
/// `drop` (the header is gone before routing): refused with its key path, accepted under
/// `allow`.
#[test]
fn an_underscored_match_or_sticky_header_under_drop_is_a_config_error() {
    let up = echo("up");
    let yaml = format!(
        "listen: [\"127.0.0.1:{}\"]\n\
         upstreams: {{a: {{targets: [\"{up}\"]}}, b: {{targets: [\"{up}\"]}}}}\n\
         routes:\n\
         \x20 - {{name: canary, path_prefix: /, upstream: a, match: {{headers: {{X_Env: canary}}}}}}\n\
         \x20 - {{name: rest, path_prefix: /, split: [{{upstream: a}}, {{upstream: b}}], sticky: \"header:X_User\"}}\n",
        free_port()
    );
    let (code, out) = check_config(&yaml);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[0].match.headers.X_Env: \"X_Env\" has an underscore"),
        "{out}"
    );
    assert!(
        out.contains("routes[1].sticky: \"X_User\" has an underscore"),
        "{out}"
    );
    let (code, out) = check_config(&format!("{yaml}underscores_in_headers: allow\n"));
    assert_eq!(code, 0, "{out}");
}

/// `Content-Length: 05` reaches the upstream as `5`, with its 5 bytes, on both listeners
/// (a body is always Pingora's session's to read).
#[test]
fn content_length_is_forwarded_in_canonical_form() {
    let (_gw, (plain, h2c)) = gateway("", "X-Api-Key");
    for addr in [plain, h2c] {
        let req = "POST /open HTTP/1.1\r\nHost: gw\r\nContent-Length: 05\r\nConnection: close\r\n\r\nhello";
        let r = request(addr, req).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.upstream_header("content-length").as_deref(),
            Some("5"),
            "{r:?}"
        );
        assert_eq!(r.json()["body"], "hello", "{r:?}");
    }
}
