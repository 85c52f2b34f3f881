//! HTTP/2 parity: the same HTTP/2 requests relayed by tollgate's own upstream leg
//! (`src/proxy/relay.rs`, taken from `request_filter` for a plain bodiless request) and by
//! Pingora's proxy loop, and the client and the backend must see the same.
//!
//! Why: an HTTP/2 client is always read by Pingora's session, but a plain request of it to a
//! plaintext HTTP/1 upstream is relayed by the own engine, which must then do what Pingora's
//! HTTP/2-to-HTTP/1 proxying does (`Host` from `:authority`, cookie crumbs joined, hop-by-hop
//! fields dropped, the answer's connection-specific fields dropped) and answer failures alike.
//!
//! How: two gateway processes run the same config, each with an h2c listener; the second has
//! `fast_path: false`, the reference. Each request goes on a fresh HTTP/2 connection to each.
//! Compared: the status, the header fields except `date` and `x-request-id` (checked
//! instead), the body with the request id replaced, and for echo answers the request headers
//! the upstream received.

mod support;
use support::*;

use std::net::SocketAddr;

struct Side {
    _gw: Gateway,
    addr: SocketAddr,
    name: &'static str,
}

fn sides() -> [Side; 2] {
    let config = parity::config();
    let h2c = |a| format!("{{address: \"{a}\", h2c: true}}");
    let (own, own_addr) = Gateway::with_listener(h2c, &config);
    let (pingora, pingora_addr) =
        Gateway::with_listener(h2c, &format!("fast_path: false\n{config}"));
    [
        Side {
            _gw: own,
            addr: own_addr,
            name: "own relay",
        },
        Side {
            _gw: pingora,
            addr: pingora_addr,
            name: "Pingora",
        },
    ]
}

/// What the client saw of one request, less what differs on every response by design.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    /// Sorted; without `date` and `x-request-id`.
    headers: Vec<(String, String)>,
    body: String,
    /// For an echo answer: the request headers the upstream received.
    upstream: Option<serde_json::Value>,
}

type Req = (http::Request<()>, Option<&'static [u8]>);

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://gw.example{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn ask(side: &Side, (r, body): &Req) -> Seen {
    let copy = {
        let mut b = http::Request::builder()
            .method(r.method().clone())
            .uri(r.uri().clone());
        for (k, v) in r.headers() {
            b = b.header(k, v);
        }
        b.body(()).unwrap()
    };
    let resp = runtime()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(side.addr).await.unwrap();
            h2client::send_body(tcp, copy, *body).await
        })
        .unwrap_or_else(|e| panic!("{}: {} {}: {e}", side.name, r.method(), r.uri()));
    observe(resp, side.name)
}

fn observe(mut r: h2client::H2Resp, side: &str) -> Seen {
    if r.headers
        .get("content-encoding")
        .is_some_and(|v| v == "gzip")
    {
        use std::io::Read;
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&r.raw[..])
            .read_to_string(&mut plain)
            .unwrap_or_else(|e| panic!("{side}: not gzip ({e}): {r:?}"));
        r.body = plain;
    }
    let date = r
        .headers
        .get("date")
        .unwrap_or_else(|| panic!("{side}: no date: {r:?}"));
    assert!(date.len() == 29, "{side}: {r:?}");
    let ids = r.headers.get_all("x-request-id").iter().count();
    assert_eq!(ids, 1, "{side}: one x-request-id: {r:?}");
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    parity::check_request_id(&id, side, &r);
    let upstream = r
        .headers
        .get("x-upstream")
        .filter(|_| !r.body.is_empty())
        .map(|_| parity::echoed_headers(&r.json(), &id, side));
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| *k != "date" && *k != "x-request-id")
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    Seen {
        status: r.status,
        headers,
        body: parity::mask_pooled(&r.body.replace(&id, "<id>")),
        upstream,
    }
}

/// Each request to both sides in turn, compared; what the own relay's side saw.
fn compare(case: &str, reqs: &[Req]) -> Vec<Seen> {
    let [own, pingora] = sides();
    let mut seen = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let o = ask(&own, r);
        let p = ask(&pingora, r);
        let what = format!("{} {}", r.0.method(), r.0.uri());
        assert_eq!(
            o.upstream, p.upstream,
            "{case}, request {i} ({what}): the upstream saw other headers (left: own relay, \
             right: Pingora)"
        );
        assert_eq!(
            o, p,
            "{case}, request {i} ({what}): the clients saw different answers (left: own relay, \
             right: Pingora)"
        );
        seen.push(o);
    }
    seen
}

#[test]
fn echoed_requests_reach_the_upstream_alike() {
    let seen = compare(
        "echo",
        &[
            (req("GET", "/echo/a?x=1&y=%20", &[]), None),
            (
                req(
                    "GET",
                    "/echo/crumbs",
                    &[
                        ("cookie", "a=1"),
                        ("cookie", "b=2; c=3"),
                        ("te", "trailers"),
                        ("x-custom", "v"),
                        ("x-forwarded-for", "203.0.113.9"),
                        ("accept-encoding", "identity"),
                    ],
                ),
                None,
            ),
            (req("HEAD", "/echo/head", &[]), None),
            (req("DELETE", "/echo/gone", &[]), None),
            (req("POST", "/echo/empty", &[("content-length", "0")]), None),
            (
                req("POST", "/echo/post", &[("content-type", "text/plain")]),
                Some(b"hello"),
            ),
            (req("GET", "/decorated/x", &[]), None),
            (req("GET", "/zip/x", &[("accept-encoding", "gzip")]), None),
            (
                req("GET", "/zip/y", &[("accept-encoding", "br;q=0, identity")]),
                None,
            ),
        ],
    );
    let upstream = seen[0].upstream.as_ref().expect("an echo answer");
    assert_eq!(
        upstream["host"], "gw.example",
        "Host from :authority: {upstream}"
    );
    let crumbs = seen[1].upstream.as_ref().expect("an echo answer");
    assert_eq!(crumbs["cookie"], "a=1; b=2; c=3", "{crumbs}");
    assert!(crumbs.get("te").is_none(), "te is hop-by-hop: {crumbs}");
    let zipped = &seen[7].headers;
    assert!(
        zipped.contains(&("content-encoding".into(), "gzip".into())),
        "{zipped:?}"
    );
}

#[test]
fn gateway_answers_and_policy_agree() {
    let key = [("x-api-key", "alice-key-0123456789")];
    let seen = compare(
        "policy",
        &[
            (req("GET", "/nowhere", &[]), None),
            (req("POST", "/get-only/x", &[]), None),
            (req("GET", "/keys/x", &[]), None),
            (req("GET", "/keys/x", &key), None),
            (req("GET", "/limited/1", &[]), None),
            (req("GET", "/limited/2", &[]), None),
            (req("GET", "/limited/3", &[]), None),
            (
                req(
                    "OPTIONS",
                    "/cors/x",
                    &[
                        ("origin", "https://app.example"),
                        ("access-control-request-method", "PUT"),
                    ],
                ),
                None,
            ),
            (
                req("GET", "/cors/x", &[("origin", "https://app.example")]),
                None,
            ),
            (req("GET", "/down/x", &[]), None),
        ],
    );
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [404, 405, 401, 200, 200, 200, 429, 204, 200, 502]);
}

#[test]
fn backend_framing_and_its_gateway_named_headers_agree() {
    let seen = compare(
        "framing",
        &[
            (req("GET", "/raw/chunked", &[]), None),
            (req("GET", "/claims/x", &[]), None),
        ],
    );
    assert_eq!(seen[0].body, "hello");
    let names: Vec<&str> = seen[1].headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        !names.contains(&"connection") && !names.contains(&"keep-alive"),
        "{names:?}"
    );
}
