//! Response compression: gzip or brotli when the route offers it and the client accepts it,
//! decoded here to the upstream's exact bytes; left alone when it must not be touched.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn gateway() -> (Backend, Gateway) {
    let up = Backend::start("up");
    let gw = Gateway::start(&format!(
        r#"
upstreams: {{u: {{targets: ["{}"]}}}}
routes:
  - {{name: both, path_prefix: /both, upstream: u, compression: true}}
  - {{name: gzip, path_prefix: /gzip, upstream: u, compression: {{gzip: 9, min_size: 1KiB, types: [application/json]}}}}
  - {{name: off, path_prefix: /off, upstream: u}}
"#,
        up.addr
    ));
    (up, gw)
}

/// A response with its body as bytes, de-chunked.
struct Raw {
    head: Resp,
    body: Vec<u8>,
}

fn fetch(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = parse_response(&buf[..end]).unwrap();
    let rest = &buf[end..];
    let body = if head
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Raw { head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap().trim(), 16).unwrap();
        b = &b[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("a complete gzip stream");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .expect("a complete brotli stream");
    out
}

const BIG: &str = "/x?size=20000";

/// `GET {route}{BIG}` with `Accept-Encoding: ae`: the coding the gateway chose, checked
/// against `expected`, and the body decoded (a compressed body must be much smaller).
fn decoded(gw: &Gateway, route: &str, ae: &str, expected: &str) -> Vec<u8> {
    let r = fetch(
        gw,
        "GET",
        &format!("{route}{BIG}"),
        &[("Accept-Encoding", ae)],
    );
    let coding = r.head.header("content-encoding");
    assert_eq!(coding, Some(expected), "{ae}: {:?}", r.head);
    assert_eq!(r.head.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.head.header("content-length"), None);
    assert!(r.body.len() < 2000, "{ae}: {} bytes", r.body.len());
    match expected {
        "gzip" => gunzip(&r.body),
        _ => unbrotli(&r.body),
    }
}

#[test]
fn gzip_and_brotli_bodies_decode_to_the_upstream_bytes() {
    let (_up, gw) = gateway();
    let plain = fetch(&gw, "GET", &format!("/both{BIG}"), &[]);
    assert_eq!(plain.head.status, 200);
    assert_eq!(plain.body.len(), 20000);
    assert_eq!(plain.head.header("content-encoding"), None);
    assert_eq!(plain.head.header("vary"), Some("Accept-Encoding"));

    assert_eq!(decoded(&gw, "/both", "gzip", "gzip"), plain.body);
    // Both accepted with the same weight: brotli. Preferred by q: that one.
    assert_eq!(decoded(&gw, "/both", "gzip, deflate, br", "br"), plain.body);
    assert_eq!(decoded(&gw, "/both", "br;q=0.5, gzip", "gzip"), plain.body);
    // A route offering gzip only, at level 9.
    assert_eq!(decoded(&gw, "/gzip", "br, gzip", "gzip"), plain.body);
}

#[test]
fn not_compressed_when_not_accepted_or_refused_with_q_0() {
    let (_up, gw) = gateway();
    for ae in [
        None,
        Some("identity"),
        Some("gzip;q=0, br;q=0"),
        Some("*;q=0"),
        Some("deflate"),
    ] {
        let headers: Vec<_> = ae.map(|v| ("Accept-Encoding", v)).into_iter().collect();
        let r = fetch(&gw, "GET", &format!("/both{BIG}"), &headers);
        assert_eq!(r.head.header("content-encoding"), None, "{ae:?}");
        assert_eq!(r.head.header("content-length"), Some("20000"), "{ae:?}");
        assert_eq!(r.head.header("vary"), Some("Accept-Encoding"), "{ae:?}");
        assert_eq!(r.body.len(), 20000);
    }
    // Not offered by the route at all: no Vary either.
    let r = fetch(
        &gw,
        "GET",
        &format!("/off{BIG}"),
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(r.head.header("content-encoding"), None);
    assert_eq!(r.head.header("vary"), None);
}

#[test]
fn already_encoded_small_and_uncompressible_responses_are_left_alone() {
    let (_up, gw) = gateway();
    let ae = [("Accept-Encoding", "gzip, br")];
    let cases = [
        // The upstream encoded it already: passed through untouched.
        ("/both/x?size=20000&ce=br", Some("br")),
        // Under min_size (default 256 bytes; 1KiB on /gzip).
        ("/both/x?size=200", None),
        ("/gzip/x?size=1000", None),
        // Not a compressible type (default list; /gzip lists JSON only).
        ("/both/x?size=20000&ctype=image/png", None),
        ("/gzip/x?size=20000&ctype=text/html", None),
        // The upstream forbids transformations.
        ("/both/x?size=20000&cc=no-transform", None),
    ];
    for (path, encoding) in cases {
        let r = fetch(&gw, "GET", path, &ae);
        assert_eq!(r.head.status, 200, "{path}");
        assert_eq!(r.head.header("content-encoding"), encoding, "{path}");
        assert!(
            r.head.header("content-length").is_some(),
            "{path}: {:?}",
            r.head
        );
        assert_eq!(r.head.header("vary"), None, "{path}");
        let size: usize = path
            .split("size=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(r.body.len(), size, "{path}");
    }
    // HEAD: nothing to compress, the length stays the upstream's.
    let r = fetch(&gw, "HEAD", &format!("/both{BIG}"), &ae);
    assert_eq!(r.head.header("content-encoding"), None);
    assert_eq!(r.head.header("content-length"), Some("20000"));
}

#[test]
fn bad_compression_config_is_refused_with_the_key_path() {
    let (code, out) = check_config(
        r#"
upstreams: {u: {targets: ["127.0.0.1:9"]}}
routes:
  - {name: a, path_prefix: /a, upstream: u, compression: {gzip: 12, types: [json]}}
  - {name: b, path_prefix: /b, upstream: u, compression: {zstd: 3}}
  - {name: c, path_prefix: /c, upstream: u, websocket: false, websocket_idle_timeout: 5s}
"#,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[0].compression.gzip: must be between 1 and 9"),
        "{out}"
    );
    assert!(out.contains("routes[0].compression.types[0]"), "{out}");
    assert!(out.contains("routes[1]") && out.contains("zstd"), "{out}");
    assert!(
        out.contains("routes[2].websocket_idle_timeout: has no effect with websocket: false"),
        "{out}"
    );
}
