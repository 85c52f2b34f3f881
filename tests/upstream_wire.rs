//! The upstream side of the wire, where tollgate speaks HTTP/1.1 to a backend itself (the
//! fast path of `src/proxy/relay.rs`): every way a response body can be delimited reaches the
//! client intact, upstream connections are reused only when their framing held, and a pooled
//! connection the backend closed while idle costs the client nothing.

mod support;
use support::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A raw backend: for each request head, the answer `script(path)` gives, then whether to
/// close the connection. Counts connections accepted and connections it closed.
struct Raw {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

type Script = fn(&str) -> (&'static [u8], bool);

fn raw_backend(script: Script) -> Raw {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            a.fetch_add(1, SeqCst);
            let c = c.clone();
            std::thread::spawn(move || serve(s, script, &c));
        }
    });
    Raw {
        addr,
        accepted,
        closed,
    }
}

fn serve(mut s: TcpStream, script: Script, closed: &AtomicUsize) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let (answer, close) = script(&path);
        if s.write_all(answer).is_err() {
            return;
        }
        if close {
            let _ = s.shutdown(std::net::Shutdown::Both);
            closed.fetch_add(1, SeqCst);
            return;
        }
    }
}

fn gateway(up: SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: r, path_prefix: /, upstream: u}}]"
    ))
}

/// One request on its own client connection; the raw bytes of the whole answer.
fn fetch(gw: &Gateway, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn has_header(answer: &str, line: &str) -> bool {
    let head = answer.split_once("\r\n\r\n").map_or(answer, |(h, _)| h);
    head.lines().any(|l| l.eq_ignore_ascii_case(line))
}

#[test]
fn a_chunked_response_arrives_whole_and_its_connection_is_reused() {
    let up = raw_backend(|_| {
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
        )
    });
    let gw = gateway(up.addr);
    for _ in 0..6 {
        let a = fetch(&gw, "GET", "/c");
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(has_header(&a, "transfer-encoding: chunked"), "{a}");
        // Re-chunked for the client: the data, then the last chunk, nothing after it.
        let body = body_of(&a);
        let data: String = decode_chunked(body);
        assert_eq!(data, "hello world", "{a}");
    }
    // Each of the gateway's two threads keeps its own idle connections. Pingora's proxy loop
    // returns a connection to its pool only after the client has its answer, so the next
    // request may race it there: reused at least once is what holds.
    let most = if own_engine() { 2 } else { 5 };
    assert!(
        up.accepted.load(SeqCst) <= most,
        "reused: {}",
        up.accepted.load(SeqCst)
    );
}

/// A chunked answer from a backend that closes after it (`Connection: close`, or an HTTP/1.0
/// status line): still chunked, so the client gets the data, never the chunk framing as data.
#[test]
fn a_chunked_response_before_a_close_is_decoded_once() {
    let up = raw_backend(|path| match path {
        "/close" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
            true,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            true,
        ),
    });
    let gw = gateway(up.addr);
    for path in ["/close", "/two-codings"] {
        let a = fetch(&gw, "GET", path);
        assert!(a.starts_with("HTTP/1.1 200"), "{path}: {a}");
        assert_eq!(decode_chunked(body_of(&a)), "hello", "{path}: {a}");
    }
}

fn decode_chunked(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
        if size == 0 {
            assert_eq!(rest, "\r\n", "the body ends after the last chunk");
            return out;
        }
        out.push_str(&rest[..size]);
        body = rest[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after chunk data");
    }
}

#[test]
fn a_response_delimited_by_close_arrives_whole() {
    let up = raw_backend(|_| {
        (
            b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nuntil the end",
            true,
        )
    });
    let gw = gateway(up.addr);
    for _ in 0..2 {
        let a = fetch(&gw, "GET", "/x");
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        // Chunked for the client, so the end of the body is not the end of its connection.
        assert!(has_header(&a, "transfer-encoding: chunked"), "{a}");
        assert_eq!(decode_chunked(body_of(&a)), "until the end", "{a}");
    }
    assert_eq!(up.accepted.load(SeqCst), 2, "never pooled");
}

#[test]
fn a_head_response_has_no_body_and_keeps_the_connection() {
    let up = raw_backend(|p| match p {
        "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter", false),
    });
    let gw = gateway(up.addr);
    // One client connection, so one gateway thread and its one pooled upstream connection.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"HEAD /head HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    let a = read_until(&mut s, |b| b.ends_with(b"\r\n\r\n"));
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert!(has_header(&a, "content-length: 5"), "{a}");
    // The next request on the same upstream connection reads its own answer, not a body the
    // HEAD never had.
    s.write_all(b"GET /get HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    let b = read_until(&mut s, |b| b.ends_with(b"after"));
    assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    assert_eq!(up.accepted.load(SeqCst), 1);
}

/// Read from `s` until `done` says the bytes so far are the whole answer.
fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> String {
    let mut out = Vec::new();
    while !done(&out) {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bytes_past_the_content_length_are_dropped_with_the_connection() {
    let up = raw_backend(|p| {
        match p {
        "/extra" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforge",
            false,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal", false),
    }
    });
    let gw = gateway(up.addr);
    assert_eq!(body_of(&fetch(&gw, "GET", "/extra")), "ok");
    // The smuggled second answer is never served as the next request's response.
    assert_eq!(body_of(&fetch(&gw, "GET", "/next")), "real");
    assert_eq!(
        up.accepted.load(SeqCst),
        2,
        "the first connection was not reused"
    );
}

#[test]
fn a_pooled_connection_the_backend_closed_is_not_the_clients_problem() {
    // Every answer keeps the connection open by its headers, then the backend closes it
    // anyway, as a backend whose keep-alive timeout expires does.
    let up = raw_backend(|_| (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true));
    let gw = gateway(up.addr);
    for i in 1..=4 {
        let a = fetch(&gw, "GET", "/x");
        assert!(
            a.starts_with("HTTP/1.1 200"),
            "request {i}: {a}\n{}",
            gw.logs()
        );
        assert_eq!(body_of(&a), "ok");
        assert!(
            eventually(Duration::from_secs(5), || up.closed.load(SeqCst) == i),
            "the backend closed its connection"
        );
    }
    assert_eq!(up.accepted.load(SeqCst), 4);
}

#[test]
fn a_body_cut_short_is_not_passed_off_as_complete() {
    let up = raw_backend(|_| (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true));
    let gw = gateway(up.addr);
    let a = fetch(&gw, "GET", "/x");
    // The head went out before the body failed: the client sees the length it was promised
    // and a connection that ends before it, never a 200 that claims to be whole.
    assert!(a.starts_with("HTTP/1.1 200"), "{a}\n{}", gw.logs());
    assert!(has_header(&a, "content-length: 10"), "{a}");
    assert_eq!(body_of(&a), "abc", "{a}");
}

/// A backend that does not answer in time on a pooled connection gets the request once: a
/// read timeout is a 504 after one `timeouts.read`, not a stale connection to retry on a fresh
/// one (which would send the request twice and double the wait), as Pingora's client decides.
/// The timeout counts from the request itself: an earlier request's deadline on the same
/// connection does not cut its wait short.
#[test]
fn a_read_timeout_on_a_pooled_connection_is_not_retried() {
    let up = raw_backend(|path| match path {
        "/slow" => (b"", false),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
    });
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{}\"], timeouts: {{read: 400ms}}}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: u}}]",
        up.addr
    ));
    // Both on one client connection, so on one worker thread and its upstream pool (the
    // gateway runs two, and a new connection goes to either).
    let mut client = Client::connect(gw.addr);
    assert_eq!(client.get("/fast", "").status, 200);
    // The idle time is what is under test: the first request's deadline passes during the
    // second's wait.
    std::thread::sleep(Duration::from_millis(250));
    let asked = Instant::now();
    let answer = client.get("/slow", "");
    let waited = asked.elapsed();
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(
        up.accepted.load(SeqCst),
        1,
        "the slow request went out once, on the pooled connection"
    );
    assert!(
        waited >= Duration::from_millis(380) && waited < Duration::from_secs(3),
        "504 after {waited:?}, expected one read timeout (400ms)"
    );
}
