//! Differential tests: tollgate's own HTTP/1 parsers against Pingora's, on the same bytes.
//!
//! Why: tollgate serves the common plain request with its own codec (`src/fastpath/h1/server.rs`)
//! and relays it with its own upstream client (`src/fastpath/h1/client.rs`); every other request goes
//! through Pingora's sessions, after the connection layer has screened and framed its head
//! (`src/conn/screen.rs`, `src/conn/frame.rs`). Where the two read the same bytes differently,
//! a client or backend could smuggle a request or response past one of them. So:
//!
//! - Request heads: what the own codec serves, Pingora's server session reads as the same
//!   head (method, target, version, headers), bodiless, with the next request starting at
//!   the same byte; what the own codec refuses (400), Pingora refuses; what it hands over,
//!   the connection layer screens, and what that passes on is framed as Pingora frames it
//!   (an upgrade, a body of the same extent) or still running where Pingora's is too.
//! - Response heads and bodies: where the own upstream client reads a response, Pingora's
//!   client session reads the same status, headers and body bytes, ending the same way;
//!   where it refuses one, Pingora refuses it too, but for the shapes documented in
//!   `STRICTER` (refused on purpose; each asserted to be exactly that).
//!
//! Inputs are seeds of the smuggling shapes (CL+TE, `Transfer-Encoding` obfuscations,
//! obs-fold, bare LF, NUL, underscores, odd `Content-Length`s, repeated `Host` and `Content-Length`,
//! bad chunk sizes), heads assembled from parts, and both mutated byte by byte. Every seed
//! is also run as a fixed case, so the suite checks them whatever proptest draws.

use std::cell::RefCell;
use std::io::Cursor;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as PingoraClient;
use pingora::protocols::http::v1::server::HttpSession as PingoraServer;
use pingora::ErrorType;
use proptest::prelude::*;
use proptest::sample::Index;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::conn::{RequestBody, Screened};
use tollgate::fastpath::h1::client::Conn;
use tollgate::fastpath::h1::server::{self as h1, Head};

/// Cases per property (in CI; `PROPTEST_CASES` asks for more): the file stays within seconds.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok());
    ProptestConfig {
        cases: cases.unwrap_or(CASES),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A runtime and a listener standing in for a backend, one per test thread.
struct Local {
    rt: tokio::runtime::Runtime,
    backend: tokio::net::TcpListener,
    addr: SocketAddr,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

fn block_on<T>(f: impl FnOnce(&Local) -> T) -> T {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let local = l.get_or_insert_with(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let backend = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = backend.local_addr().unwrap();
            Local { rt, backend, addr }
        });
        f(local)
    })
}

/// A head as both engines represent it: header names lowercase, in the map's order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReqHead {
    method: String,
    target: Vec<u8>,
    version: http::Version,
    headers: Vec<(String, Vec<u8>)>,
}

fn req_head(req: &RequestHeader) -> ReqHead {
    ReqHead {
        method: req.method.to_string(),
        target: req.raw_path().to_vec(),
        version: req.version,
        headers: pairs(&req.headers),
    }
}

fn pairs(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// What Pingora's HTTP/1 server session makes of the bytes a client sent.
#[derive(Debug)]
enum PingoraRequest {
    /// The bytes end before the head does.
    Incomplete,
    /// Refused: by the session's parse and checks, or (CONNECT) by Pingora's proxy, which
    /// answers 405 unless CONNECT proxying is on (tollgate never turns it on). Why, for
    /// failure messages.
    Refused(#[allow(dead_code)] String),
    Read {
        head: ReqHead,
        upgrade: bool,
        /// The session says the request has no body.
        empty: bool,
        body: PingoraBody,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum PingoraBody {
    /// The body ended as framed; `next`: the bytes after it, the next request's (`None`
    /// when the session would not keep the connection, so it does not say).
    Done { next: Option<Vec<u8>> },
    /// The bytes ran out first.
    Cut,
    /// The body's framing is broken.
    Malformed(String),
    /// An upgrade request: what follows is not read as a body.
    Upgrade,
}

async fn pingora_request(input: &[u8]) -> PingoraRequest {
    let mut s = PingoraServer::new(Box::new(Cursor::new(input.to_vec())));
    s.set_pipelining_enabled(true);
    match s.read_request().await {
        Ok(Some(_)) => {}
        Ok(None) => return PingoraRequest::Incomplete,
        Err(e) if e.etype() == &ErrorType::ConnectionClosed => return PingoraRequest::Incomplete,
        Err(e) => return PingoraRequest::Refused(e.to_string()),
    }
    let req = s.req_header();
    if req.method == http::Method::CONNECT {
        return PingoraRequest::Refused("CONNECT (405 from Pingora's proxy)".into());
    }
    let head = req_head(req);
    let upgrade = s.is_upgrade_req();
    let empty = s.is_body_empty();
    if upgrade {
        return PingoraRequest::Read {
            head,
            upgrade,
            empty,
            body: PingoraBody::Upgrade,
        };
    }
    // Keep the connection if the client lets it, to learn where the next request starts.
    s.set_server_keepalive(Some(0));
    let body = loop {
        match s.read_body_bytes().await {
            Ok(Some(_)) => {}
            Ok(None) => break None,
            Err(e) if e.etype() == &ErrorType::ConnectionClosed => break Some(PingoraBody::Cut),
            Err(e) => break Some(PingoraBody::Malformed(e.to_string())),
        }
    };
    let body = match body {
        Some(b) => b,
        None => PingoraBody::Done {
            next: match s.reuse().await {
                Ok(Some(r)) => Some(r.into_parts().1.map(|b| b.to_vec()).unwrap_or_default()),
                _ => None,
            },
        },
    };
    PingoraRequest::Read {
        head,
        upgrade,
        empty,
        body,
    }
}

async fn screen(input: &[u8]) -> Screened {
    let mut stream: pingora::protocols::Stream = Box::new(Cursor::new(Vec::<u8>::new()));
    tollgate::conn::screen(&mut stream, BytesMut::from(input)).await
}

/// The own engine and Pingora on one client's bytes (see the module doc for what must hold).
fn check_request(input: &[u8]) {
    let show = input.escape_ascii().to_string();
    let (pingora, own, screened) = block_on(|l| {
        l.rt.block_on(async {
            let own = h1::parse(BytesMut::from(input), tollgate::fastpath::plain);
            let screened = match &own {
                Head::Pass(bytes) => {
                    assert_eq!(&bytes[..], input, "handed over as read: {show}");
                    Some(screen(input).await)
                }
                _ => None,
            };
            (pingora_request(input).await, own, screened)
        })
    });
    match (own, screened) {
        (Head::Serve(req, ahead), _) => {
            let PingoraRequest::Read {
                head,
                upgrade,
                empty,
                body,
            } = pingora
            else {
                panic!("served by the own codec, {pingora:?} by Pingora: {show}");
            };
            assert_eq!(req_head(&req), head, "served head: {show}");
            assert!(!upgrade && empty, "served as bodiless: {show}");
            let PingoraBody::Done { next } = body else {
                panic!("served, Pingora's body {body:?}: {show}");
            };
            if let Some(next) = next {
                let ahead = ahead.map(|a| a.to_vec()).unwrap_or_default();
                assert_eq!(ahead, next, "the next request starts at: {show}");
            }
        }
        (Head::Refuse { why, .. }, _) => {
            assert!(
                matches!(pingora, PingoraRequest::Refused(_)),
                "refused ({why}) by the own codec, {pingora:?} by Pingora: {show}"
            );
        }
        (Head::Pass(_), Some(screened)) => check_screened(input, screened, pingora, &show),
        (Head::Pass(_), None) => unreachable!(),
    }
}

/// What the connection layer decided of a head the own codec handed over, against Pingora.
fn check_screened(input: &[u8], screened: Screened, pingora: PingoraRequest, show: &str) {
    match screened {
        // The screen waits for the head's end before it parses it (and answers nothing to a
        // client that leaves first); Pingora may refuse a prefix that is bad already, which
        // the screen refuses too once the head is whole (the same parse).
        Screened::Gone => assert!(
            matches!(
                pingora,
                PingoraRequest::Incomplete | PingoraRequest::Refused(_)
            ),
            "an incomplete head for the screen, {pingora:?} for Pingora: {show}"
        ),
        Screened::Refused(r) => match &pingora {
            PingoraRequest::Refused(_)
            | PingoraRequest::Read {
                body: PingoraBody::Malformed(_),
                ..
            } => {}
            _ => assert!(
                stricter_request(&r.why),
                "refused ({}) by the screen, {pingora:?} by Pingora: {show}",
                r.why
            ),
        },
        Screened::Request { bytes, ahead, body } => {
            let PingoraRequest::Read {
                upgrade,
                body: pbody,
                ..
            } = &pingora
            else {
                panic!("passed by the screen, {pingora:?} by Pingora: {show}");
            };
            let Some(body) = body else {
                assert!(*upgrade, "an upgrade for the screen only: {show}");
                return;
            };
            assert!(!upgrade, "an upgrade for Pingora only: {show}");
            match ahead {
                // The body ended here: Pingora ends it at the same byte.
                Some(ahead) => {
                    assert_eq!(bytes.len() + ahead.len(), input.len(), "{show}");
                    match pbody {
                        PingoraBody::Done { next: Some(next) } => {
                            assert_eq!(&ahead[..], &next[..], "the next request starts at: {show}")
                        }
                        PingoraBody::Done { next: None } => {}
                        other => panic!("the body ends for the screen, {other:?}: {show}"),
                    }
                }
                // The body runs on past these bytes, or ends with them.
                None => {
                    assert_eq!(bytes.len(), input.len(), "{show}");
                    let ended = matches!(body, RequestBody::Length(0));
                    match pbody {
                        PingoraBody::Cut if !ended => {}
                        PingoraBody::Done { next }
                            if next.as_deref().unwrap_or_default() == b"" => {}
                        other => {
                            panic!("the body runs on ({body:?}) for the screen, {other:?}: {show}")
                        }
                    }
                }
            }
        }
    }
}

/// Request bodies the screen refuses on purpose where Pingora's decoder reads them
/// (`frame.rs`): a chunk-size line without a size, which Pingora reads as the last chunk
/// (nginx refuses it), a bare LF in a chunk extension, which Pingora reads as part of the
/// extension where others end the line, and size lines or trailers longer than Pingora's
/// limits, which it enforces only when they are split over reads.
fn stricter_request(why: &str) -> bool {
    const STRICTER: &[&str] = &[
        "a chunk-size line has no size",
        "a chunk-size line ends in a bare LF",
        "a chunk-size line or the trailers are too long",
    ];
    STRICTER.contains(&why)
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// What a client session made of a backend's response.
#[derive(Debug, PartialEq, Eq)]
enum Response {
    Refused(String),
    Read {
        status: u16,
        /// Without the framing and per-connection headers, which each engine rewrites for the
        /// client anyway (`Date`, `Content-Length`, `Transfer-Encoding`, a `Connection` of
        /// only `close` / `keep-alive`), by name. Framing shows in `body`.
        headers: Vec<(String, Vec<u8>)>,
        body: ResponseBody,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum ResponseBody {
    Whole(Vec<u8>),
    /// The backend closed before the framing said the body ends.
    Cut,
    Malformed,
}

fn end_to_end(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let plain = |v: &[u8]| {
        tollgate::headers::tokens(v)
            .all(|t| t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive"))
    };
    let mut kept: Vec<_> = pairs(h)
        .into_iter()
        .filter(|(n, v)| match n.as_str() {
            "date" | "content-length" | "transfer-encoding" => false,
            "connection" => !plain(v),
            _ => true,
        })
        .collect();
    // The order of different names means nothing (RFC 9110 §5.3), and a map's removals
    // reorder them; each name's values keep theirs (a stable sort).
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    kept
}

fn upstream_request(head: bool) -> Box<RequestHeader> {
    let mut req = RequestHeader::build(if head { "HEAD" } else { "GET" }, b"/", None).unwrap();
    req.insert_header("host", "backend").unwrap();
    Box::new(req)
}

async fn pingora_response(input: &[u8], head: bool) -> Response {
    let (client, mut backend) = tokio::io::duplex(1 << 20);
    let mut s = PingoraClient::new(Box::new(client));
    s.write_request_header(upstream_request(head))
        .await
        .unwrap();
    backend.write_all(input).await.unwrap();
    drop(backend);
    // Interim responses are skipped, as both proxies do before the final one.
    let resp: ResponseHeader = loop {
        if let Err(e) = s.read_response().await {
            return Response::Refused(e.to_string());
        }
        let resp = s.resp_header().unwrap();
        if !resp.status.is_informational() || resp.status == 101 {
            break resp.clone();
        }
    };
    let body = to_end(async || s.read_body_bytes().await).await;
    read(&resp, body)
}

async fn own_response(l: &Local, input: &[u8], head: bool) -> Response {
    let timeouts = tollgate::upstream::Timeouts {
        read: Duration::from_secs(10),
        ..Default::default()
    };
    let mut conn = Conn::get(l.addr, &timeouts).await.unwrap();
    let (mut backend, _) = l.backend.accept().await.unwrap();
    let req = upstream_request(head);
    let wire = tollgate::fastpath::h1::client::request_head(
        &req.method,
        req.raw_path(),
        req.headers.iter(),
        req.headers.len(),
    );
    conn.send(&wire).await.unwrap();
    // The request read whole before the answer, so closing the socket sends no reset.
    let mut got = vec![0; wire.len()];
    backend.read_exact(&mut got).await.unwrap();
    backend.write_all(input).await.unwrap();
    backend.shutdown().await.unwrap();
    let (resp, mut framing) = match conn.response(head, |_| false).await {
        Ok(r) => r,
        Err(e) => return Response::Refused(e.to_string()),
    };
    let body = to_end(async || conn.body(&mut framing).await).await;
    read(&resp, body)
}

/// A response body read to its end, piece by piece (`next`: either client's next piece).
async fn to_end(
    mut next: impl AsyncFnMut() -> pingora::Result<Option<bytes::Bytes>>,
) -> ResponseBody {
    let mut body = Vec::new();
    loop {
        match next().await {
            Ok(Some(b)) => body.extend_from_slice(&b),
            Ok(None) => return ResponseBody::Whole(body),
            Err(e) if e.etype() == &ErrorType::ConnectionClosed => return ResponseBody::Cut,
            Err(_) => return ResponseBody::Malformed,
        }
    }
}

fn read(resp: &ResponseHeader, body: ResponseBody) -> Response {
    Response::Read {
        status: resp.status.as_u16(),
        headers: end_to_end(&resp.headers),
        body,
    }
}

/// The own upstream client and Pingora's on one backend's bytes.
fn check_response(input: &[u8], head: bool) {
    let show = input.escape_ascii().to_string();
    let (own, pingora) = block_on(|l| {
        l.rt.block_on(async {
            (
                own_response(l, input, head).await,
                pingora_response(input, head).await,
            )
        })
    });
    match (&own, &pingora) {
        (Response::Refused(why), Response::Read { .. }) => assert!(
            stricter_response(&pingora),
            "refused ({why}) by the own client, {pingora:?} by Pingora (HEAD: {head}): {show}"
        ),
        (Response::Refused(_), Response::Refused(_)) => {}
        _ => assert_eq!(own, pingora, "HEAD: {head}: {show}"),
    }
}

/// Responses the own client refuses on purpose where Pingora's reads them: a 101 to a request
/// that asked for no upgrade (RFC 9110 §15.2.2), which Pingora relays, and then the rest of
/// the connection as its body.
fn stricter_response(pingora: &Response) -> bool {
    matches!(pingora, Response::Read { status: 101, .. })
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

const REQUEST_SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    // CL + TE.
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
    // Transfer-Encoding obfuscations.
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    // obs-fold, bare LF, NUL.
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
    b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n",
    // Underscores.
    b"GET / HTTP/1.1\r\nHost: a\r\nX_Api_Key: k\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n",
    // Content-Length: leading zeros, sign, whitespace, lists, repeats.
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 05\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:  5 \r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    // Host: repeated, missing, with userinfo, disagreeing with the target.
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    b"GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    // Chunk sizes: empty, hex prefix, extensions, huge, signs, spaces.
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ; ext=\"v\"\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0;\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n",
    // Pipelined, upgrades, CONNECT, Expect, odd request lines.
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxx",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab",
    b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n\r\n",
];

const RESPONSE_SEEDS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n5\r\nhello\r\n6;ext\r\n world\r\n0\r\nT: 1\r\n\r\n",
    // CL + TE, TE obfuscations.
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 2\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    // obs-fold, bare LF, NUL, underscores.
    b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\nX: a\0b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX_Y: a\r\nContent_Length: 9\r\nContent-Length: 2\r\n\r\nok",
    // Content-Length: leading zeros, sign, whitespace, lists, repeats, conflicts.
    b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2 \r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    // Connection headers.
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 2\r\n\r\nok",
    // Chunk sizes and chunk framing.
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0;\n\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nEXTRA",
    // Status lines.
    b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 \x80\xff\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
];

/// An edit of an input.
#[derive(Debug, Clone)]
enum Edit {
    Insert(Index, u8),
    Delete(Index),
    Replace(Index, u8),
    /// Flip the case of a letter.
    Case(Index),
}

/// Bytes that matter to HTTP/1 framing, more often than any other.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(&b" \t\r\n\0:;,_-+=\"0159aAfFxX/"[..]),
        1 => any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<Index>().prop_map(Edit::Delete),
        (any::<Index>(), byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        any::<Index>().prop_map(Edit::Case),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        match e {
            Edit::Insert(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.insert(at, *b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i.index(bytes.len()));
            }
            Edit::Replace(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Edit::Case(i) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = match bytes[at] {
                    b if b.is_ascii_lowercase() => b.to_ascii_uppercase(),
                    b => b.to_ascii_lowercase(),
                };
            }
            _ => {}
        }
    }
    bytes
}

/// A seed with a few edits.
fn mutated(seeds: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 0..4),
    )
        .prop_map(|(seed, edits)| apply(seed.to_vec(), &edits))
}

/// A header line from parts: a name (framing names among others), a separator, a value and
/// a line end, each from the variants parsers have disagreed on.
fn header_line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(
        &[
            "Host",
            "host",
            "Content-Length",
            "content-length",
            "CONTENT-LENGTH",
            "Transfer-Encoding",
            "transfer-encoding",
            "Transfer_Encoding",
            "Connection",
            "Upgrade",
            "Expect",
            "X-Api-Key",
            "X_Api_Key",
            "Content-Type",
            "Trailer",
        ][..],
    );
    let sep = prop::sample::select(&[": ", ":", ":\t", " : ", ":  ", "\t:"][..]);
    let value = prop::sample::select(
        &[
            "a",
            "a:80",
            "0",
            "5",
            "05",
            "+5",
            " 5",
            "5 ",
            "5, 5",
            "5,6",
            "chunked",
            "Chunked",
            "chunked, identity",
            "identity, chunked",
            "gzip, chunked",
            "\tchunked",
            "xchunked",
            "chunked ",
            "close",
            "keep-alive",
            "Upgrade",
            "websocket",
            "100-continue",
            "application/grpc",
            "",
            "a\0b",
            "a\r\n b",
        ][..],
    );
    let end = prop::sample::select(&["\r\n", "\r\n", "\r\n", "\n"][..]);
    (name, sep, value, end).prop_map(|(n, s, v, e)| format!("{n}{s}{v}{e}").into_bytes())
}

/// A chunked body (or a prefix of one) from parts.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let size = prop::sample::select(
        &[
            "5", "05", "5;x=y", "5 ", "5\t;x", "0x5", "", " 5", "5 5", "+5", "a", "A",
        ][..],
    );
    let end = prop::sample::select(&["\r\n", "\r\n", "\n", "\r"][..]);
    let chunk = (size, end.clone(), end).prop_map(|(s, e1, e2)| {
        let n = match s.trim_start_matches(['0', ' ', '+']) {
            t if t.starts_with(['a', 'A']) => 10,
            _ => 5,
        };
        format!("{s}{e1}{}{e2}", "x".repeat(n)).into_bytes()
    });
    let last = prop::sample::select(
        &[
            "0\r\n\r\n",
            "0\r\nT: 1\r\n\r\n",
            "0\n\n",
            "0\r\n\n",
            "0;x\r\n\r\n",
            "00\r\n\r\n",
            "",
        ][..],
    );
    (prop::collection::vec(chunk, 0..3), last).prop_map(|(chunks, last)| {
        let mut b = chunks.concat();
        b.extend_from_slice(last.as_bytes());
        b
    })
}

/// A message from parts: a start line, up to four header lines and a body (none, plain or
/// chunked).
fn message(lines: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![Just(Vec::new()), Just(b"hello".to_vec()), chunked_body(),];
    let headers = prop::collection::vec(header_line(), 0..5);
    (prop::sample::select(lines), headers, body).prop_map(|(line, headers, body)| {
        let mut b = line.as_bytes().to_vec();
        b.extend(headers.concat());
        b.extend_from_slice(b"\r\n");
        b.extend(body);
        b
    })
}

const REQUEST_LINES: &[&str] = &[
    "GET / HTTP/1.1\r\n",
    "POST /p HTTP/1.1\r\n",
    "HEAD / HTTP/1.1\r\n",
    "GET / HTTP/1.0\r\n",
    "POST / HTTP/1.0\r\n",
    "GET http://a/ HTTP/1.1\r\n",
    "OPTIONS * HTTP/1.1\r\n",
    "GET / HTTP/1.1\n",
];

const STATUS_LINES: &[&str] = &[
    "HTTP/1.1 200 OK\r\n",
    "HTTP/1.0 200 OK\r\n",
    "HTTP/1.1 204 No Content\r\n",
    "HTTP/1.1 304 Not Modified\r\n",
    "HTTP/1.1 404 Not Found\r\n",
    "HTTP/1.1 200 OK\n",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
];

/// A request that follows the input (as a pipelining client's would): whether the screen
/// ends a body where Pingora does shows in where this one starts.
const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

fn with_next(mut input: Vec<u8>, next: bool) -> Vec<u8> {
    if next {
        input.extend_from_slice(NEXT);
    }
    input
}

/// Run `check` on every seed, and fail with all the seeds that fail it.
fn every(seeds: &[&[u8]], check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let failed: Vec<String> = seeds
        .iter()
        .filter(|seed| std::panic::catch_unwind(|| check(seed)).is_err())
        .map(|seed| seed.escape_ascii().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn request_seeds_agree() {
    every(REQUEST_SEEDS, |seed| {
        check_request(seed);
        check_request(&with_next(seed.to_vec(), true));
    });
}

#[test]
fn response_seeds_agree() {
    every(RESPONSE_SEEDS, |seed| {
        check_response(seed, false);
        check_response(seed, true);
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_requests_agree(input in mutated(REQUEST_SEEDS), next in any::<bool>()) {
        check_request(&with_next(input, next));
    }

    #[test]
    fn assembled_requests_agree(input in message(REQUEST_LINES), edits in prop::collection::vec(edit(), 0..2), next in any::<bool>()) {
        check_request(&with_next(apply(input, &edits), next));
    }

    #[test]
    fn mutated_responses_agree(input in mutated(RESPONSE_SEEDS), head in any::<bool>()) {
        check_response(&input, head);
    }

    #[test]
    fn assembled_responses_agree(input in message(STATUS_LINES), edits in prop::collection::vec(edit(), 0..2), head in prop::bool::weighted(0.2)) {
        check_response(&apply(input, &edits), head);
    }
}
