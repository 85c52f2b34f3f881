//! The floor of an HTTP/1 engine of tollgate's own, to weigh against Pingora's: the same job
//! `examples/bare_pingora.rs` does with Pingora (accept, keep-alive on both sides, parse each
//! request head, write it to a pooled upstream connection, parse the response head, relay
//! both heads and bodies), on one tokio thread with no Pingora in the way. The load harness
//! and `benches/instructions.sh` run it in bare Pingora's place (`BARE_BIN`), so the ratio of
//! the two in one run says what replacing Pingora's HTTP/1 path could buy, before anyone
//! builds it.
//!
//!     cargo build --release --example h1_floor
//!     target/release/examples/h1_floor 127.0.0.1:8085 127.0.0.1:8081
//!
//! It does the work a real engine cannot skip, no less: both heads are parsed (httparse, as
//! Pingora) and written anew without their hop-by-hop headers, each upstream read and write
//! is timed (tollgate's default read and write timeouts, as `Upstream::peer` sets them), a
//! pooled upstream connection that closed or sent unasked bytes while idle is not reused, an
//! idle client connection holds its socket and no buffer, and `keepalive_timeout` ends it.
//! What it leaves out is what the fast path would hand back to Pingora: chunked bodies (it
//! answers 501 for a chunked request and 502 for a chunked response), upgrades, HTTP/2, TLS,
//! pipelining (bytes past a request's end close the connection), and every policy.
//!
//! Not a product, not tollgate: a measuring rig, with no error contract and no config.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Context;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

// tollgate's allocator (src/main.rs), as bare Pingora's.
#[global_allocator]
static GLOBAL: tollgate::alloc::Mimalloc = tollgate::alloc::Mimalloc;

/// tollgate's defaults (`docs/config.md`): upstream connect, read and write timeouts, client
/// keep-alive.
const CONNECT: Duration = Duration::from_secs(5);
const READ: Duration = Duration::from_secs(60);
const WRITE: Duration = Duration::from_secs(60);
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Pingora's head buffer starts at 4 KiB and stops at 1 MiB; so does this one.
const HEAD: usize = 4096;
const MAX_HEAD: usize = 1 << 20;
const MAX_HEADERS: usize = 128;
/// Idle upstream connections kept (tollgate's `upstream_keepalive_pool_size` default).
const POOL: usize = 128;

/// Idle upstream connections, newest last. One thread, so no lock: `Rc<RefCell<_>>`.
type Pool = Rc<RefCell<Vec<TcpStream>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: h1_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("h1_floor: upstream {upstream:?}: {e}");
        std::process::exit(2);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| {
            eprintln!("h1_floor: listen on {listen}: {e}");
            std::process::exit(2);
        });
        let pool: Pool = Rc::new(RefCell::new(Vec::with_capacity(POOL)));
        let accept = async {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                tokio::task::spawn_local(serve(client, pool.clone(), upstream));
            }
        };
        // SIGINT ends it (the harnesses' stop; a shell's `&` starts it with SIGINT ignored).
        tokio::select! {
            () = accept => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
}

/// One client connection: requests until either side ends it or one cannot be relayed.
async fn serve(mut client: TcpStream, pool: Pool, upstream: SocketAddr) {
    loop {
        // Idle: wait for the next head's first bytes holding the socket only.
        match timeout(KEEPALIVE, client.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        match exchange(&mut client, &pool, upstream).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// Relay one request and its response; `Ok(true)` when the client connection stays open.
async fn exchange(client: &mut TcpStream, pool: &Pool, upstream: SocketAddr) -> io::Result<bool> {
    let mut buf = BytesMut::with_capacity(HEAD);
    // The request head.
    let (mut out, body_len, keep) = loop {
        if client.read_buf(&mut buf).await? == 0 {
            return Ok(false);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let head = request_head(&req)?;
                buf.advance(n);
                break head;
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => buf.reserve(HEAD),
            _ => return answer(client, 400).await,
        }
    };
    let Some(body_len) = body_len else {
        return answer(client, 501).await;
    };
    if buf.len() as u64 > body_len {
        return answer(client, 400).await; // pipelined bytes: off, as in tollgate
    }

    // Upstream: the head and what of the body came with it in one write, then the rest.
    let mut up = match checkout(pool, upstream).await {
        Ok(up) => up,
        Err(_) => return answer(client, 502).await,
    };
    out.extend_from_slice(&buf);
    let sent = buf.len() as u64;
    buf.clear();
    timeout(WRITE, up.write_all(&out))
        .await
        .map_err(timed_out)??;
    relay(client, &mut up, body_len - sent, &mut buf).await?;

    // The response head.
    let (head, resp_len, up_keep) = loop {
        if timeout(READ, up.read_buf(&mut buf))
            .await
            .map_err(timed_out)??
            == 0
        {
            return answer(client, 502).await;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let head = response_head(&resp, keep);
                buf.advance(n);
                break head;
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => buf.reserve(HEAD),
            _ => return answer(client, 502).await,
        }
    };
    let Some(resp_len) = resp_len else {
        return answer(client, 502).await;
    };
    if buf.len() as u64 > resp_len {
        return answer(client, 502).await;
    }
    out.clear();
    out.extend_from_slice(&head);
    out.extend_from_slice(&buf);
    let got = buf.len() as u64;
    buf.clear();
    client.write_all(&out).await?;
    relay(&mut up, client, resp_len - got, &mut buf).await?;
    if up_keep {
        checkin(pool, up);
    }
    Ok(keep)
}

/// The request head as it goes upstream, the body's length (`None`: chunked), and whether the
/// client keeps its connection.
fn request_head(req: &httparse::Request) -> io::Result<(Vec<u8>, Option<u64>, bool)> {
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(io::ErrorKind::InvalidData.into());
    };
    let mut out = Vec::with_capacity(HEAD);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut len = Some(0);
    let mut keep = version == 1;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = parse_len(h.value)
                .map(Some)
                .ok_or(io::ErrorKind::InvalidData)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            len = None;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep = connection_keeps(h.value, keep);
            continue;
        } else if hop_by_hop(h.name) {
            continue;
        }
        header(&mut out, h.name.as_bytes(), h.value);
    }
    out.extend_from_slice(b"\r\n");
    Ok((out, len, keep))
}

/// The response head as it goes to the client, the body's length (`None`: chunked or
/// close-delimited), and whether the upstream connection can be pooled.
fn response_head(resp: &httparse::Response, client_keeps: bool) -> (Vec<u8>, Option<u64>, bool) {
    let code = resp.code.unwrap_or(502);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_body = code == 204 || code == 304 || (100..200).contains(&code);
    let mut len = if no_body { Some(0) } else { None };
    let mut keep = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if !no_body {
                len = parse_len(h.value);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            len = None;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep = connection_keeps(h.value, keep);
            continue;
        } else if hop_by_hop(h.name) {
            continue;
        }
        header(&mut out, h.name.as_bytes(), h.value);
    }
    if !client_keeps {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, len, keep && len.is_some())
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn hop_by_hop(name: &str) -> bool {
    ["keep-alive", "proxy-connection", "te", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

fn connection_keeps(value: &[u8], default: bool) -> bool {
    let v = std::str::from_utf8(value).unwrap_or("");
    if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
        false
    } else {
        default
            || v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
    }
}

fn parse_len(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A pooled connection that is still quiet, or a new one. A pooled connection the upstream
/// closed (or wrote to unasked) while idle is readable: tokio's readiness, no system call.
async fn checkout(pool: &Pool, upstream: SocketAddr) -> io::Result<TcpStream> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    while let Some(up) = pool.borrow_mut().pop() {
        if up.poll_read_ready(&mut cx).is_pending() {
            return Ok(up);
        }
    }
    let up = timeout(CONNECT, TcpStream::connect(upstream))
        .await
        .map_err(timed_out)??;
    up.set_nodelay(true)?;
    Ok(up)
}

fn checkin(pool: &Pool, up: TcpStream) {
    let mut idle = pool.borrow_mut();
    if idle.len() < POOL {
        idle.push(up);
    }
}

/// Relay `n` body bytes, each read and write timed (one of the two sides is the upstream).
async fn relay(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut n: u64,
    buf: &mut BytesMut,
) -> io::Result<()> {
    while n > 0 {
        buf.clear();
        buf.reserve(HEAD.min(n as usize));
        let got = timeout(READ, from.read_buf(buf))
            .await
            .map_err(timed_out)??;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if got as u64 > n {
            // More than the framing said: nothing past it is forwarded, nor pooled.
            return Err(io::ErrorKind::InvalidData.into());
        }
        timeout(WRITE, to.write_all(buf))
            .await
            .map_err(timed_out)??;
        n -= got as u64;
    }
    Ok(())
}

/// A bodiless answer of the gateway's own; the connection ends after it.
async fn answer(client: &mut TcpStream, status: u16) -> io::Result<bool> {
    let line: &[u8] = match status {
        400 => b"HTTP/1.1 400 Bad Request\r\n",
        501 => b"HTTP/1.1 501 Not Implemented\r\n",
        _ => b"HTTP/1.1 502 Bad Gateway\r\n",
    };
    let mut out = line.to_vec();
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n\r\n");
    client.write_all(&out).await?;
    Ok(false)
}

fn timed_out(_: tokio::time::error::Elapsed) -> io::Error {
    io::ErrorKind::TimedOut.into()
}
