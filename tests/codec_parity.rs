//! Codec parity: the same raw HTTP/1 requests through tollgate's own HTTP/1 codec
//! (`src/fastpath/h1/server.rs`) and through Pingora's session, and the client must see the same.
//!
//! Why: a plain bodiless request is served by one codec or the other depending on where it
//! goes (`Tollgate::serves` in `src/proxy/own.rs`), and the policy code behind both is shared,
//! so any difference a client can see is a bug in one codec, not a decision. The only allowed
//! differences are those docs/request-flow.md lists.
//!
//! How each engine is forced, for the same request, route, config and backend: two gateway
//! processes run the same config and share the echo upstream, both asked on a plain listener.
//! The first serves with the own engine (every upstream of the config is plaintext HTTP/1, so
//! every plain request there is the own codec's, `all_relayed`, routed or not); the second
//! has `fast_path: false`, so Pingora's listener, HTTP/1 session and proxy path serve it, the
//! reference. Two processes, so the rate-limit buckets start equal and the very same bytes
//! (path, `Host`) go to both. In CI's run with `TOLLGATE_FAST_PATH=0` both are Pingora's.
//!
//! Compared per request: the status line, the multiset of headers except `Date` and
//! `X-Request-Id` (whose presence and format are checked instead), the body bytes (with the
//! request id replaced), whether the connection stays open after it (the next request on it
//! is answered), and, for echo answers, the headers the upstream received.
//! The echo's `connection_requests` is masked: which pooled upstream connection a request
//! rides is no codec's doing (Pingora's pool reuses connections even at
//! `upstream_keepalive_pool_size: 0`, which the config keeps for the own engine's pool).

mod support;
use support::*;

use std::net::SocketAddr;

/// The two gateways: `own` with tollgate's own engine, the other with `fast_path: false`.
struct Pair {
    own: Gateway,
    pingora: Gateway,
    pingora_addr: SocketAddr,
}

impl Pair {
    /// `config` run twice: by the own engine, and with `fast_path: false`.
    fn of(config: &str) -> Pair {
        let own = Gateway::start(config);
        let pingora = Gateway::start(&format!("fast_path: false\n{config}"));
        let pingora_addr = pingora.addr;
        Pair {
            own,
            pingora,
            pingora_addr,
        }
    }
}

fn pair() -> Pair {
    Pair::of(&parity::config())
}

/// What the client saw of one request, less what differs on every response by design.
#[derive(Debug, PartialEq)]
struct Seen {
    status_line: String,
    /// Lower-case names, sorted; without `Date` and `X-Request-Id`.
    headers: Vec<(String, String)>,
    /// With this response's request id replaced by `<id>`.
    body: String,
    /// For an echo answer: the request headers the upstream received.
    upstream: Option<serde_json::Value>,
    /// The connection carried the next request (or a probe after the last).
    open_after: bool,
}

/// A request: its bytes, and whether it is HEAD (no body comes back).
type Req = (Vec<u8>, bool);

fn get(path: &str, extra: &str) -> Req {
    (head("GET", path, "1.1", extra), false)
}

fn get10(path: &str, extra: &str) -> Req {
    (head("GET", path, "1.0", extra), false)
}

/// Whether a response has a header of this (lower-case) name.
fn has(seen: &Seen, name: &str) -> bool {
    seen.headers.iter().any(|(k, _)| k == name)
}

/// Send `reqs` on one connection to `addr`, then a probe: what each got, until one is not
/// answered because the connection ended.
fn conversation(addr: SocketAddr, reqs: &[Req], side: &str) -> Vec<Seen> {
    let mut c = Client::connect(addr);
    let mut seen: Vec<Seen> = Vec::new();
    let probe = get("/echo/probe", "");
    for (i, (bytes, is_head)) in reqs.iter().chain([&probe]).enumerate() {
        let Some(r) = c.exchange(bytes, *is_head) else {
            assert!(i > 0, "{side}: the first request got no answer");
            break;
        };
        if let Some(last) = seen.last_mut() {
            last.open_after = true;
        }
        if i == reqs.len() {
            break;
        }
        seen.push(observe(r, side));
    }
    seen
}

/// Check what both sides must have in their own right, and strip it for the comparison.
fn observe(r: Resp, side: &str) -> Seen {
    let date = r
        .header("date")
        .unwrap_or_else(|| panic!("{side}: no Date: {r:?}"));
    assert!(date.len() == 29 && date.ends_with(" GMT"), "{side}: {r:?}");
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{side}: no X-Request-Id: {r:?}"))
        .to_owned();
    let ids = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-request-id"));
    assert_eq!(ids.count(), 1, "{side}: {r:?}");
    parity::check_request_id(&id, side, &r);
    let upstream = r
        .header("x-upstream")
        .filter(|_| !r.body.is_empty())
        .map(|_| parity::echoed_headers(&r.json(), &id, side));
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| k != "date" && k != "x-request-id")
        // A cached answer's age, in whole seconds since each gateway stored its copy.
        .map(|(k, v)| match k.as_str() {
            "age" => (k, "<age>".to_owned()),
            _ => (k, v),
        })
        .collect();
    headers.sort();
    Seen {
        status_line: r.status_line,
        headers,
        body: parity::mask_pooled(&r.body.replace(&id, "<id>")),
        upstream,
        open_after: false,
    }
}

/// Both conversations, compared request by request.
fn compare(case: &str, reqs: &[Req]) -> Vec<Seen> {
    compare_on(pair(), case, reqs)
}

/// [`compare`] on the gateways of `p`.
fn compare_on(p: Pair, case: &str, reqs: &[Req]) -> Vec<Seen> {
    compare_on_ref(&p, case, reqs)
}

fn compare_on_ref(p: &Pair, case: &str, reqs: &[Req]) -> Vec<Seen> {
    let own = conversation(p.own.addr, reqs, "own codec");
    let pingora = conversation(p.pingora_addr, reqs, "Pingora");
    for (i, (o, g)) in own.iter().zip(&pingora).enumerate() {
        let req = String::from_utf8_lossy(&reqs[i].0);
        assert_eq!(
            o.upstream, g.upstream,
            "{case}, request {i} {req:?}: the upstream saw other headers (left: own codec, \
             right: Pingora)"
        );
        assert_eq!(
            o, g,
            "{case}, request {i} {req:?}: the clients saw different answers (left: own \
             codec, right: Pingora)"
        );
    }
    assert_eq!(
        own.len(),
        pingora.len(),
        "{case}: not as many requests answered (own codec: {own:#?}, Pingora: {pingora:#?})"
    );
    own
}

fn statuses(seen: &[Seen]) -> Vec<(&str, bool)> {
    seen.iter()
        .map(|s| (&s.status_line[..], s.open_after))
        .collect()
}

#[test]
fn get_with_a_query_head_and_content_length_zero() {
    let seen = compare(
        "GET / HEAD / Content-Length: 0",
        &[
            get("/echo/a?x=1&y=two", ""),
            (head("HEAD", "/echo/a?x=1&y=two", "1.1", ""), true),
            get("/echo/zero", "Content-Length: 0\r\n"),
        ],
    );
    assert_eq!(statuses(&seen), [("HTTP/1.1 200 OK", true); 3]);
}

#[test]
fn http10_keep_alive() {
    let ten = get10("/echo/ten", "Connection: keep-alive\r\n");
    let seen = compare("HTTP/1.0 keep-alive", &[ten.clone(), ten]);
    assert_eq!(statuses(&seen), [("HTTP/1.1 200 OK", true); 2]);
}

#[test]
fn http10_without_keep_alive() {
    let seen = compare("HTTP/1.0", &[get10("/echo/ten", "")]);
    assert_eq!(statuses(&seen), [("HTTP/1.1 200 OK", false)]);
}

#[test]
fn connection_close() {
    let seen = compare(
        "Connection: close",
        &[get("/echo/a", ""), get("/echo/b", "Connection: close\r\n")],
    );
    assert_eq!(
        statuses(&seen),
        [("HTTP/1.1 200 OK", true), ("HTTP/1.1 200 OK", false)]
    );
}

#[test]
fn gateway_answers_404_405_and_400() {
    let seen = compare(
        "404 / 405 / 400",
        &[
            get("/nowhere", ""),
            (head("POST", "/get-only/x", "1.1", ""), false),
            get("/../x", ""),
            get("/echo/after", ""),
        ],
    );
    let codes: Vec<_> = seen.iter().map(|s| &s.status_line[9..12]).collect();
    assert_eq!(codes, ["404", "405", "400", "200"]);
    assert!(has(&seen[1], "allow"), "{seen:?}");
}

#[test]
fn api_key_401_then_200() {
    let seen = compare(
        "API key",
        &[
            get("/keys/x", ""),
            get("/keys/x", "X-Api-Key: alice-key-0123456789\r\n"),
        ],
    );
    assert_eq!(seen[0].status_line, "HTTP/1.1 401 Unauthorized");
    assert_eq!(statuses(&seen)[1], ("HTTP/1.1 200 OK", true));
}

#[test]
fn rate_limited_429_with_its_headers() {
    let limited = get("/limited/x", "");
    let seen = compare("rate limit", &[limited.clone(), limited.clone(), limited]);
    assert_eq!(seen[2].status_line, "HTTP/1.1 429 Too Many Requests");
    for name in [
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-reset",
        "retry-after",
    ] {
        assert!(has(&seen[2], name), "{name}: {seen:?}");
    }
}

#[test]
fn route_response_headers() {
    let seen = compare("response_headers", &[get("/decorated/x", "")]);
    assert!(seen[0]
        .headers
        .contains(&("cache-control".into(), "no-store".into())));
}

/// The values of a (lower-case) header name a response carries, in order.
fn values<'a>(seen: &'a Seen, name: &str) -> Vec<&'a str> {
    let of = seen.headers.iter().filter(|(k, _)| k == name);
    of.map(|(_, v)| v.as_str()).collect()
}

/// A backend's headers of the names the gateway sets are replaced by the gateway's, one of
/// each, on both codecs (the own codec writes the gateway's after the backend's, and does not
/// copy the backend's); where the gateway sets none (a route without a limit), the backend's
/// pass.
#[test]
fn the_gateways_headers_replace_a_backends_of_the_same_names() {
    let seen = compare(
        "the backend's own gateway headers",
        &[get("/claims/limited/x", ""), get("/claims/x", "")],
    );
    let (limited, open) = (&seen[0], &seen[1]);
    assert_eq!(values(limited, "x-gateway"), ["tollgate"], "{limited:?}");
    assert_eq!(
        values(limited, "ratelimit-policy"),
        ["\"two\";q=2;w=3600"],
        "{limited:?}"
    );
    assert_eq!(values(limited, "ratelimit").len(), 1, "{limited:?}");
    assert!(values(limited, "ratelimit")[0].starts_with("\"two\";r=1;t="));
    assert_eq!(values(limited, "x-ratelimit-limit"), ["2"], "{limited:?}");
    assert_eq!(
        values(limited, "cache-control"),
        ["no-store"],
        "{limited:?}"
    );
    assert_eq!(values(open, "x-gateway"), ["tollgate"], "{open:?}");
    assert_eq!(
        values(open, "ratelimit-policy"),
        ["\"backend\";q=9;w=9"],
        "{open:?}"
    );
    assert_eq!(values(open, "ratelimit"), ["\"backend\";r=8;t=9"]);
    assert_eq!(values(open, "cache-control"), ["public"], "{open:?}");
    assert_eq!(limited.body, "ok");
}

#[test]
fn cors_preflight_and_simple_request() {
    let origin = "Origin: https://app.example\r\n";
    let seen = compare(
        "CORS",
        &[
            (
                head(
                    "OPTIONS",
                    "/cors/x",
                    "1.1",
                    &format!("{origin}Access-Control-Request-Method: PUT\r\n"),
                ),
                false,
            ),
            get("/cors/x", origin),
        ],
    );
    assert_eq!(seen[0].status_line, "HTTP/1.1 204 No Content");
}

/// Framing the codecs write themselves: bodiless statuses, a chunked body, HEAD of a
/// gateway answer.
#[test]
fn framing_of_upstream_and_gateway_answers() {
    let seen = compare(
        "framing",
        &[
            get("/echo/x?status=503", ""),
            get("/echo/x?status=304", ""),
            get("/raw/chunked", ""),
            (head("HEAD", "/keys/x", "1.1", ""), true),
        ],
    );
    assert_eq!(seen[2].body, "hello");
    assert!(seen.iter().all(|s| s.open_after), "{seen:?}");
}

/// A `Connection` list naming `keep-alive`: Pingora (`parse_connection_header`) takes
/// `keep-alive` only as the whole value; in a list it reads `close` alone, else the version's
/// default. The own codec reads it the same way.
#[test]
fn connection_lists_naming_keep_alive() {
    compare(
        "keep-alive, close",
        &[get("/echo/x", "Connection: keep-alive, close\r\n")],
    );
    let ten = get10("/echo/x", "Connection: keep-alive, keep-alive\r\n");
    compare("HTTP/1.0 keep-alive, keep-alive", &[ten]);
}

/// What the upstream is told about the client, and what never reaches it.
#[test]
fn forwarding_headers_and_hop_by_hop() {
    let extra = "X-Forwarded-For: 198.51.100.7\r\nX-Real-IP: 198.51.100.8\r\n\
                 X-Forwarded-Proto: https\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                 TE: trailers\r\nProxy-Authorization: Basic eDp5\r\nX-Custom: kept\r\n";
    let seen = compare(
        "forwarding",
        &[get("/echo/fwd", extra), get("/echo/fwd?q", "")],
    );
    let up = seen[0].upstream.as_ref().unwrap();
    assert_eq!(up["x-custom"], "kept", "{up}");
    for gone in ["connection", "keep-alive", "te", "proxy-authorization"] {
        assert!(up.get(gone).is_none(), "{gone} reached the upstream: {up}");
    }
}

/// Where the engines used to differ: Pingora's path now frames for an HTTP/1.0 client and
/// closes after a failed relay exactly as the own engine does.
#[test]
fn http10_framing_and_the_close_after_a_failed_relay_agree() {
    let p = pair();
    for addr in [p.own.addr, p.pingora_addr] {
        let first = |(bytes, _): Req| {
            let mut c = Client::connect(addr);
            c.send(&bytes);
            (c.read_response(false), c)
        };
        // HTTP/1.0 and a chunked upstream body: as it is, until the close (RFC 9112 §6.1).
        let (r, mut c) = first(get10("/raw/chunked", "Connection: keep-alive\r\n"));
        let framing = (
            r.header("transfer-encoding"),
            &*r.body,
            r.header("connection"),
        );
        assert_eq!(framing, (None, "hello", Some("close")), "{addr}: {r:?}");
        c.assert_closed();
        // A failed relay: the connection ends, and the answer says so.
        let (r, mut c) = first(get("/down/x", ""));
        assert_eq!(
            (r.status, r.header("connection")),
            (502, Some("close")),
            "{addr}: {r:?}"
        );
        c.assert_closed();
    }
}

/// Two gateways with a cached route: the own engine answers a fresh hit itself, Pingora's
/// cache path answers it in the other (and everything else in both).
fn cache_pair() -> Pair {
    let up = scripted(|_, _| {
        let page = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\
                    ETag: \"v1\"\r\nContent-Type: text/plain\r\n\r\nhello";
        (page.as_bytes().to_vec(), false)
    });
    let config = format!(
        "caches: {{pages: {{max_size: 1MiB}}}}\n\
         upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         routes:\n\
         \x20 - {{name: cached, path_prefix: /cached, upstream: up, cache: {{ttl: 1m}},\n\
         \x20     response_headers: {{X-Frame-Options: DENY}}}}\n\
         \x20 - {{name: echo, path_prefix: /echo, upstream: up}}\n"
    );
    Pair::of(&config)
}

#[test]
fn cache_hits_head_ranges_and_conditions() {
    let seen = compare_on(
        cache_pair(),
        "cache",
        &[
            get("/cached/a?x=1", ""),
            get("/cached/a?x=1", ""),
            (head("HEAD", "/cached/a?x=1", "1.1", ""), true),
            get("/cached/a?x=1", "Range: bytes=1-2\r\n"),
            get("/cached/a?x=1", "If-None-Match: \"v1\"\r\n"),
            get("/cached/a?x=1", "Connection: close\r\n"),
        ],
    );
    let cache_status: Vec<&str> = seen
        .iter()
        .map(|s| values(s, "x-cache-status")[0])
        .collect();
    assert_eq!(cache_status, ["MISS", "HIT", "HIT", "HIT", "HIT", "HIT"]);
    let status: Vec<&str> = seen.iter().map(|s| &s.status_line[..]).collect();
    assert_eq!(
        status,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 206 Partial Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 200 OK"
        ]
    );
    assert_eq!(seen[1].body, "hello");
    assert!(!seen[5].open_after);
}

/// An upstream whose answers the path chooses: `nostore`, `private`, `cookie` (a Set-Cookie),
/// `vary` (on Accept-Language), `big` (3000 bytes, over `max_object`), `chunked` (framed by
/// chunks, `bigchunked` 3000 bytes of them), `missing` (a 404), `broken` (a 500), `cut` (half
/// the promised body, then the connection closes); else a fresh page of 5 bytes.
fn miss_pair() -> Pair {
    let up = scripted(|_, path| miss_answer(path));
    let config = format!(
        "caches: {{pages: {{max_size: 1MiB}}}}\n\
         upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         routes:\n\
         \x20 - {{name: cached, path_prefix: /cached, upstream: up,\n\
         \x20     cache: {{ttl: 1m, max_object: 2KiB, lock: 30s}},\n\
         \x20     response_headers: {{X-Frame-Options: DENY}}}}\n\
         \x20 - {{name: echo, path_prefix: /echo, upstream: up}}\n"
    );
    Pair::of(&config)
}

/// [`miss_pair`]'s upstream answer to `path`.
fn miss_answer(path: &str) -> (Vec<u8>, bool) {
    let fixed = |extra: &str, body: &str| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{extra}Content-Type: text/plain\r\n\r\n",
            body.len()
        );
        (format!("{head}{body}").into_bytes(), false)
    };
    let chunked = |n: usize| {
        let body = "y".repeat(n);
        let page = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n\
             {n:x}\r\n{body}\r\n0\r\n\r\n"
        );
        (page.into_bytes(), false)
    };
    let status = |line: &str| {
        let page = format!("HTTP/1.1 {line}\r\nContent-Length: 4\r\n\r\nnope");
        (page.into_bytes(), false)
    };
    let case = [
        "nostore",
        "private",
        "cookie",
        "vary",
        "bigchunked",
        "big",
        "chunked",
    ]
    .into_iter()
    .chain(["missing", "broken", "cut"])
    .find(|k| path.contains(k));
    match case {
        Some("nostore") => fixed("Cache-Control: no-store\r\n", "hello"),
        Some("private") => fixed("Cache-Control: private, max-age=60\r\n", "hello"),
        Some("cookie") => fixed("Set-Cookie: s=1\r\nCache-Control: max-age=60\r\n", "hello"),
        Some("vary") => fixed("Vary: Accept-Language\r\nETag: \"v\"\r\n", "hello"),
        Some("bigchunked") => chunked(3000),
        Some("big") => fixed("Cache-Control: max-age=60\r\n", &"z".repeat(3000)),
        Some("chunked") => chunked(5),
        Some("missing") => status("404 Not Found"),
        Some("broken") => status("500 Internal Server Error"),
        Some("cut") => {
            let page = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
            (page.as_bytes().to_vec(), true)
        }
        _ => fixed("Cache-Control: max-age=60\r\nETag: \"v1\"\r\n", "hello"),
    }
}

fn cache_statuses(seen: &[Seen]) -> Vec<&str> {
    seen.iter()
        .map(|s| values(s, "x-cache-status").first().copied().unwrap_or("-"))
        .collect()
}

/// A miss the own engine relays and stores answers as Pingora's cache path does, and stores
/// what it stores: the hit after it, the responses never stored, the variants, the limits.
#[test]
fn cache_misses_store_what_pingoras_path_stores() {
    let twice = |path: &str| [get(path, ""), get(path, "")];
    let mut reqs: Vec<Req> = Vec::new();
    for path in [
        "/cached/m?x=1",
        "/cached/nostore",
        "/cached/private",
        "/cached/cookie",
        "/cached/big",
        "/cached/bigchunked",
        "/cached/chunked",
        "/cached/missing",
        "/cached/broken",
    ] {
        reqs.extend(twice(path));
    }
    let en = "Accept-Language: en\r\n";
    let fr = "Accept-Language: fr\r\n";
    reqs.extend([
        get("/cached/vary", en),
        get("/cached/vary", en),
        get("/cached/vary", fr),
        get("/cached/vary", fr),
        get("/cached/vary", en),
        get("/cached/h", "Connection: close\r\n"),
    ]);
    let p = miss_pair();
    let counts = |gw: &Gateway| -> Vec<String> {
        let m = gw.admin_get("/metrics").body;
        let lines = m
            .lines()
            .filter(|l| l.starts_with("tollgate_cache_requests_total"));
        lines.map(str::to_owned).collect()
    };
    let (own_before, pingora_before) = (counts(&p.own), counts(&p.pingora));
    let seen = compare_on_ref(&p, "cache misses", &reqs);
    assert_eq!(own_before, pingora_before);
    // Counted as each request's log line is written, after its answer: polled.
    let misses = |c: &[String]| c.iter().any(|l| l.contains("MISS") && l.ends_with(" 18"));
    let settled = eventually(std::time::Duration::from_secs(5), || {
        misses(&counts(&p.own)) && misses(&counts(&p.pingora))
    });
    let own = counts(&p.own);
    assert!(settled, "{own:?}");
    assert_eq!(own, counts(&p.pingora), "the same requests counted alike");
    assert_eq!(
        cache_statuses(&seen),
        [
            "MISS", "HIT", // a fresh page
            "MISS", "MISS", // no-store
            "MISS", "MISS", // private
            "MISS", "MISS", // Set-Cookie
            "MISS", "MISS", // over max_object by its length
            "MISS", "MISS", // over max_object in chunks
            "MISS", "HIT", // chunked, stored
            "MISS", "HIT", // a 404 is heuristically cacheable
            "MISS", "MISS", // a 500 is not
            "MISS", "HIT", "MISS", "HIT", "HIT",  // Vary: each variant its own entry
            "MISS", // closing the connection
        ]
    );
    let (miss, hit) = (&seen[0], &seen[1]);
    assert_eq!((&*miss.body, &*hit.body), ("hello", "hello"));
    assert_eq!(values(miss, "accept-ranges"), ["bytes"], "{miss:?}");
    assert!(!has(miss, "age") && has(hit, "age"), "{hit:?}");
    assert_eq!(values(hit, "x-frame-options"), ["DENY"], "{hit:?}");
    assert!(
        !has(&seen[8], "accept-ranges"),
        "too large to store: no ranges"
    );
    assert_eq!(seen[10].body.len(), 3000);
    assert!(!seen[seen.len() - 1].open_after);
}

/// A response cut short is not stored, on either engine: the next request misses again.
#[test]
fn a_miss_cut_short_stores_nothing() {
    let p = miss_pair();
    for (side, addr) in [("own", p.own.addr), ("Pingora", p.pingora_addr)] {
        for i in 0..2 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            use std::io::{Read, Write};
            s.write_all(&head("GET", "/cached/cut", "1.1", "")).unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(got.starts_with("http/1.1 200 ok"), "{side}, {i}: {got}");
            assert!(got.contains("x-cache-status: miss"), "{side}, {i}: {got}");
            assert!(got.ends_with("\r\n\r\nhello"), "{side}, {i}: {got}");
        }
    }
}

/// Concurrent misses of one key reach the upstream once, on either engine, and when the
/// engines share the storm (plain requests the own engine takes, ranges Pingora's path
/// takes), the cache lock is theirs in common.
#[test]
fn concurrent_misses_reach_the_upstream_once_on_either_engine() {
    let b = Backend::start("b");
    let config = format!(
        "caches: {{pages: {{max_size: 1MiB}}}}\n\
         upstreams: {{up: {{targets: [\"{}\"]}}}}\n\
         routes: [{{name: cached, path_prefix: /cached, upstream: up, cache: {{lock: 30s}}}}]\n",
        b.addr
    );
    let p = Pair::of(&config);
    let storm = |addr: SocketAddr, path: &'static str, ranges: bool| {
        let threads: Vec<_> = (0..20)
            .map(|i| {
                std::thread::spawn(move || {
                    let extra = if ranges && i % 2 == 1 {
                        "Range: bytes=0-1\r\n"
                    } else {
                        ""
                    };
                    let mut c = Client::connect(addr);
                    let r = c.get(path, extra);
                    (r.status, r.header("x-cache-status").map(str::to_owned))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    };
    for (side, addr) in [("own", p.own.addr), ("Pingora", p.pingora_addr)] {
        for (name, ranges) in [("plain", false), ("mixed", true)] {
            let path: &'static str =
                Box::leak(format!("/cached/storm-{side}-{name}?delay_ms=300").into_boxed_str());
            let answers = storm(addr, path, ranges);
            let upstream = b.count_of(&format!("storm-{side}-{name}"));
            assert_eq!(upstream, 1, "{side}, {name}: {answers:?}");
            assert!(
                answers
                    .iter()
                    .all(|(s, c)| [200, 206].contains(s) && c.is_some()),
                "{side}, {name}: {answers:?}"
            );
            let misses = answers.iter().filter(|(_, c)| c.as_deref() == Some("MISS"));
            assert_eq!(misses.count(), 1, "{side}, {name}: {answers:?}");
        }
    }
}
