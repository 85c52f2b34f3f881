//! tollgate's own HTTP/1.1 client for plaintext upstreams: the upstream leg of the fast path
//! (`src/proxy/relay.rs`). Pingora's upstream leg (its connector, its pooled `HttpSession`, the
//! two tasks and channels of `proxy_1to1`) is a large share of what its engine costs a request,
//! and spawns an idle-watch task for every connection put back in its pool. Here a connection is
//! a tokio stream with its read buffer, and the pool a per-thread list (`super::pool`).
//!
//! Errors are Pingora's (`Error` with an upstream source), with its rules for what may be retried:
//! a pooled connection that fails before any byte of the response (but does not time out) is
//! `RetryType::ReusedOnly`, so tollgate's retry policy (`error_while_proxy`) treats both paths
//! alike. The response head is passed on as the backend sent it, but for the headers its caller
//! replaces anyway (the gateway's own, `crate::policy::stamp::Stamp`), which are not copied, and
//! its hop-by-hop headers, removed where both paths remove them (`headers::remove_hop_by_hop`).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result, RetryType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{pool, response_framing, Chunks, Framing, MAX_HEAD, MAX_HEADERS};
use crate::timer::Lazy;
use crate::upstream::Timeouts;

/// A response head starts in this much buffer: Pingora's `INIT_HEADER_BUF_SIZE`
/// (`pingora_core::protocols::http::v1::common::INIT_HEADER_BUF_SIZE`).
const READ: usize = 4096;
/// The most one read of a body takes.
const BODY_READ: usize = 16 * 1024;

/// An HTTP/1.1 request head as this client writes it: `headers` as given (the caller leaves
/// out what is not for the backend), names as `HeaderName` spells them.
pub fn request_head<'h>(
    method: &http::Method,
    target: &[u8],
    headers: impl Iterator<Item = (&'h http::HeaderName, &'h http::HeaderValue)>,
    hint: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + hint * 48);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One upstream connection, pooled or new.
pub struct Conn {
    stream: TcpStream,
    /// The read timer, kept with the connection for all its requests.
    timer: Option<Lazy>,
    addr: SocketAddr,
    /// Taken from the pool: a failure before the response's first byte may be the backend
    /// having closed it meanwhile.
    pub reused: bool,
    buf: BytesMut,
    /// The backend keeps the connection and its framing held: it may go back to the pool.
    keep: bool,
    read: Duration,
    write: Duration,
    /// How long it may wait in the pool (the upstream's `timeouts.idle`).
    idle: Duration,
}

fn upstream(etype: ErrorType, context: &'static str) -> Box<Error> {
    let mut e = Error::explain(etype, context);
    e.as_up();
    e
}

fn invalid(context: &'static str) -> Box<Error> {
    upstream(ErrorType::InvalidHTTPHeader, context)
}

impl Conn {
    /// An idle pooled connection to `addr`, or a new one within the connect timeouts.
    pub async fn get(addr: SocketAddr, t: &Timeouts) -> Result<Conn> {
        let pooled = pool::checkout(addr);
        let (stream, timer, reused) = match pooled {
            Some((s, timer)) => (s, timer, true),
            None => {
                let limit = t.total.map_or(t.connect, |total| total.min(t.connect));
                let s = match timeout(limit, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let mut e = Error::because(ErrorType::ConnectError, "connecting", e);
                        e.as_up();
                        return Err(e);
                    }
                    Err(_) => return Err(upstream(ErrorType::ConnectTimedout, "connecting")),
                };
                let _ = s.set_nodelay(true);
                (s, None, false)
            }
        };
        Ok(Conn {
            stream,
            timer,
            addr,
            reused,
            buf: BytesMut::new(),
            keep: true,
            read: t.read,
            write: t.write,
            idle: t.idle,
        })
    }

    /// Give the connection back to this thread's pool (at most `cap` idle per backend), when
    /// its response was read to the end and the backend keeps it open.
    pub fn release(self, cap: usize) {
        if !self.keep || !self.buf.is_empty() {
            return;
        }
        let mut timer = self.timer;
        if let Some(t) = &mut timer {
            t.detach();
        }
        pool::release(self.addr, self.stream, timer, self.idle, cap);
    }

    /// Send a request head (a bodiless request: the head is all there is).
    pub async fn send(&mut self, head: &[u8]) -> Result<()> {
        // A head nearly always fits the socket's buffer at once: no timer then.
        let mut write = std::pin::pin!(self.stream.write_all(head));
        let written = match poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => timeout(self.write, write).await,
        };
        let mut e = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => Error::because(ErrorType::WriteError, "writing the request head", e),
            Err(_) => Error::explain(ErrorType::WriteTimedout, "writing the request head"),
        };
        e.as_up();
        if self.reused && e.etype() == &ErrorType::WriteError {
            e.retry = RetryType::ReusedOnly;
        }
        Err(e)
    }

    /// Read into the buffer within the read timeout; `Ok(0)` at the end of the stream.
    async fn fill(&mut self, want: usize) -> Result<usize> {
        self.buf.reserve(want);
        let timer = Lazy::arm(&mut self.timer, tokio::time::Instant::now() + self.read);
        let mut read = std::pin::pin!(self.stream.read_buf(&mut self.buf));
        let read = poll_fn(|cx| match read.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => timer.poll_due(cx).map(|()| None),
        });
        match read.await {
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) => {
                let mut e = Error::because(ErrorType::ReadError, "reading the response", e);
                e.as_up();
                Err(e)
            }
            None => Err(upstream(ErrorType::ReadTimedout, "reading the response")),
        }
    }

    /// Read the response head (skipping 1xx interim responses) and how its body is delimited.
    /// `head_request`: the request was a HEAD, whose response has no body whatever it says.
    /// A header for which `replaced` says yes (given its name as sent) is not copied.
    pub async fn response(
        &mut self,
        head_request: bool,
        replaced: impl Fn(&str) -> bool,
    ) -> Result<(ResponseHeader, Framing)> {
        let mut first = true;
        loop {
            if let Some((resp, body)) = self.parse_head(head_request, &replaced)? {
                if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    // Never asked for (the fast path relays no upgrade, RFC 9110 §15.2.2):
                    // what follows is no HTTP this client reads. (Pingora's relays the 101
                    // and then the connection's bytes as its body.)
                    return Err(invalid("a 101 response to a request for no upgrade"));
                }
                if resp.status.is_informational() {
                    first = false;
                    continue;
                }
                return Ok((resp, body));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(invalid("the response head is too large"));
            }
            let n = match self.fill(READ).await {
                // A pooled connection the backend dropped fails the first read at once; one
                // that times out reached a backend that is slow, and is not retried for free
                // (Pingora's client decides the same).
                Err(mut e)
                    if first
                        && self.buf.is_empty()
                        && self.reused
                        && e.etype() != &ErrorType::ReadTimedout =>
                {
                    e.retry = RetryType::ReusedOnly;
                    return Err(e);
                }
                r => r?,
            };
            if n == 0 {
                let mut e = upstream(ErrorType::ConnectionClosed, "reading the response head");
                if first && self.buf.is_empty() {
                    e.retry = RetryType::ReusedOnly;
                }
                return Err(e);
            }
        }
    }

    /// The head at the front of the buffer, taken off it, if it is complete.
    fn parse_head(
        &mut self,
        head_request: bool,
        replaced: &impl Fn(&str) -> bool,
    ) -> Result<Option<(ResponseHeader, Framing)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        // Pingora's client parses as leniently (RFC 9112 §5.1, §5.2: a proxy removes the
        // whitespace before a colon and replaces an obs-fold with spaces).
        let mut config = httparse::ParserConfig::default();
        config.allow_spaces_after_header_name_in_responses(true);
        config.allow_obsolete_multiline_headers_in_responses(true);
        let n = match config.parse_response(&mut parsed, &self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(invalid("an invalid response head")),
        };
        let code = parsed.code.ok_or_else(|| invalid("no status"))?;
        // Sized for the headers tollgate adds too, so the map never grows (and rehashes).
        let room = parsed.headers.len() + crate::headers::HEADROOM;
        // What `ResponseHeader::build_no_case` makes, without a builder. The headers go into
        // the map itself: Pingora's `append_header` parses each name twice.
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status =
            http::StatusCode::from_u16(code).map_err(|_| invalid("an invalid status"))?;
        parts.headers.reserve(room);
        // The values stay where they were read: slices of one copy of the head.
        let shared = bytes::Bytes::copy_from_slice(&self.buf[..n]);
        let base = self.buf.as_ptr() as usize;
        // `chunked`: the last Transfer-Encoding line ends with chunked (`None`: no such line);
        // `close`: the backend ends the connection after this response (which says nothing
        // about where the body ends).
        // `lengths`: the Content-Length values, the first apart (a second is rare: no vector).
        let (mut length, mut more_lengths) = (None, Vec::new());
        let (mut chunked, mut close) = (None, parsed.version == Some(0));
        for h in parsed.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                // Checked once the head is read: a Transfer-Encoding overrides it.
                match length {
                    None => length = Some(h.value),
                    Some(_) => more_lengths.push(h.value),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Only `chunked` is understood; a body whose final coding is another is read
                // until close.
                chunked = Some(crate::headers::ends_chunked(h.value));
            } else if name.eq_ignore_ascii_case("date") {
                // Replaced by the client side's own whichever codec writes the response
                // (`super::server`, and Pingora's sessions: pingora-core 0.9.1
                // protocols/http/v1/server.rs, v2/server.rs): not copied.
                continue;
            } else if name.eq_ignore_ascii_case("connection") {
                let mut plain = true;
                for t in crate::headers::tokens(h.value) {
                    close |= t.eq_ignore_ascii_case(b"close");
                    plain &=
                        t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive");
                }
                if plain {
                    // Only about this connection, and Pingora writes the client's own: not
                    // copied. One that names other headers is, for `remove_hop_by_hop`.
                    continue;
                }
            } else if replaced(name) {
                continue;
            }
            let at = h.value.as_ptr() as usize - base;
            // As Pingora's client takes it: an obs-fold, a CR or a NUL becomes a space. A
            // value httparse let through is a valid `HeaderValue` but for those (the check
            // `from_maybe_shared` makes anyway), so only a value it refuses is normalised.
            let raw = || shared.slice(at..at + h.value.len());
            let value = http::HeaderValue::from_maybe_shared(raw())
                .unwrap_or_else(|_| pingora::http::header_value_from_raw(raw()));
            let name = crate::headers::names::parse(name.as_bytes())
                .map_err(|_| invalid("an invalid response header name"))?;
            parts
                .headers
                .try_append(name, value)
                .map_err(|_| invalid("an invalid response header"))?;
        }
        let length = match chunked {
            Some(_) => None,
            None => crate::headers::framing_length(length.into_iter().chain(more_lengths))
                .map_err(invalid)?,
        };
        let mut resp = ResponseHeader::from(parts);
        self.buf.advance(n);
        let body = response_framing(
            resp.status.as_u16(),
            head_request,
            chunked == Some(true),
            length,
        );
        match body {
            // A Content-Length beside chunked framing is ignored (RFC 9112 §6.3) and dropped,
            // so the client sees one framing.
            Framing::Chunked(_) => {
                resp.remove_header(&http::header::CONTENT_LENGTH);
            }
            // Sent to the client chunked, as Pingora does, so its connection survives the
            // backend's close.
            Framing::Close => {
                resp.remove_header(&http::header::CONTENT_LENGTH);
                resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")
                    .map_err(|_| invalid("an invalid response header"))?;
            }
            _ => {}
        }
        self.keep &= !close && !matches!(body, Framing::Close);
        Ok(Some((resp, body)))
    }

    /// The next piece of the body, or `None` once it is complete.
    pub async fn body(&mut self, body: &mut Framing) -> Result<Option<Bytes>> {
        loop {
            match body {
                Framing::Done => {
                    // Bytes past the response's end: the connection's framing is lost.
                    self.keep &= self.buf.is_empty();
                    return Ok(None);
                }
                Framing::Length(n) | Framing::Chunked(Chunks::Data(n)) => {
                    if self.buf.is_empty() {
                        let want = (*n).min(BODY_READ as u64) as usize;
                        if self.fill(want).await? == 0 {
                            return Err(upstream(
                                ErrorType::ConnectionClosed,
                                "the response body ended early",
                            ));
                        }
                    }
                    let take = (self.buf.len() as u64).min(*n);
                    let piece = self.buf.split_to(take as usize).freeze();
                    *n -= take;
                    if *n == 0 {
                        *body = match body {
                            Framing::Length(_) => Framing::Done,
                            _ => Framing::Chunked(Chunks::DataEnd),
                        };
                    }
                    return Ok(Some(piece));
                }
                Framing::Close => {
                    if self.buf.is_empty() && self.fill(BODY_READ).await? == 0 {
                        *body = Framing::Done;
                        continue;
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Framing::Chunked(c) => {
                    if let Some(next) = c.advance(&mut self.buf)? {
                        *c = next;
                        if matches!(c, Chunks::End) {
                            *body = Framing::Done;
                        }
                        continue;
                    }
                    if self.buf.len() >= MAX_HEAD {
                        return Err(invalid("a chunk header or trailer is too large"));
                    }
                    if self.fill(READ).await? == 0 {
                        return Err(upstream(
                            ErrorType::ConnectionClosed,
                            "the chunked response body ended early",
                        ));
                    }
                }
            }
        }
    }
}
