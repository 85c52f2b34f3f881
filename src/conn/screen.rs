//! An HTTP/1 request head checked with Pingora's own parser before Pingora's session is given it,
//! and the request framed (`frame.rs`).
//!
//! A head Pingora's session refuses (a space before a header name's colon, a repeated `Host`,
//! conflicting `Content-Length`s, ...) is answered by Pingora before any hook of tollgate's runs:
//! a bare 400 (405 for CONNECT), no JSON body, no access-log line, no metric. Parsing the head here
//! first with the code the session runs (`ServerSession::read_request` over the head alone) finds
//! exactly those heads, so tollgate answers them in its contract. A head that passes is parsed
//! again by the session, on Pingora's path only, never on the own codec's. The head is read whole
//! (its end found as `Guarded` finds it, within `limits.head_timeout`), with the request's extent:
//! its body's framing, and how much of what was read belongs to it. A chunked body whose first
//! chunks are already here is checked now, so a malformed one is refused before anything is sent.

use std::borrow::Cow;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

use super::frame::{self, Body, Chunks};
use super::guarded::EndOfHead;
use crate::error::Reject;

/// The largest head Pingora's session reads (its `MAX_HEADER_SIZE`).
const MAX_HEAD: usize = 1_048_575;

/// What became of a head.
#[derive(Debug)]
pub enum Screened {
    /// A request for Pingora's session: its head and what of its body is here (`bytes`),
    /// what the client sent after it (`ahead`), and what remains of its body (`body`).
    /// `body` is `None` for an upgrade request: what follows its head is the tunnel's if the
    /// upgrade is accepted, and never another request if not (the session is given all of it,
    /// and closes the connection after a refused upgrade, as ever).
    Request {
        bytes: BytesMut,
        ahead: Option<BytesMut>,
        body: Option<Body>,
    },
    /// A request Pingora would refuse: tollgate answers it, and the connection ends.
    Refused(Refusal),
    /// The client closed, failed or ran out of `limits.head_timeout` before its head was
    /// whole: there is nothing to answer.
    Gone,
}

/// A refused request head: the answer and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reject: Reject,
    pub why: Cow<'static, str>,
    /// The method read was HEAD (the answer has no body).
    pub head_request: bool,
}

impl Refusal {
    fn bad(why: impl Into<Cow<'static, str>>, head_request: bool) -> Self {
        Refusal {
            reject: Reject::BadRequest,
            why: why.into(),
            head_request,
        }
    }
}

/// Read the rest of the head that begins with `bytes` from `stream`, check it as Pingora's
/// session would, and frame its request.
pub async fn screen(stream: &mut Stream, mut bytes: BytesMut) -> Screened {
    let mut end = EndOfHead::default();
    let mut scanned = 0;
    let head_len = loop {
        if let Some(n) = end.end_in(&bytes[scanned..]) {
            break scanned + n;
        }
        scanned = bytes.len();
        if scanned > MAX_HEAD {
            return Screened::Refused(Refusal {
                reject: Reject::HeadersTooLarge,
                why: "the request head is larger than the gateway reads".into(),
                head_request: bytes.starts_with(b"HEAD "),
            });
        }
        bytes.reserve(4096);
        match stream.read_buf(&mut bytes).await {
            Ok(0) | Err(_) => return Screened::Gone,
            Ok(_) => {}
        }
    };
    let head_request = bytes.starts_with(b"HEAD ");
    let mut body = match parse(&bytes[..head_len]).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return Screened::Request {
                bytes,
                ahead: None,
                body: None,
            }
        }
        Err(why) => return Screened::Refused(why),
    };
    let ahead = match frame::measure(&mut body, &bytes[head_len..]) {
        Ok(None) => None,
        Ok(Some(n)) => Some(bytes.split_off(head_len + n)).filter(|a| !a.is_empty()),
        Err(why) => return Screened::Refused(Refusal::bad(why, head_request)),
    };
    Screened::Request {
        bytes,
        ahead,
        body: Some(body),
    }
}

/// Parse `head` (exactly one head) with Pingora's session: the framing of its body (`None`
/// for an upgrade request), or why the session would refuse it.
async fn parse(head: &[u8]) -> Result<Option<Body>, Refusal> {
    let head_request = head.starts_with(b"HEAD ");
    // A session over a stream with nothing in it: the head is its pipelined prefix, which it
    // parses without reading.
    let mut session = ServerSession::new_http1(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
    session.set_pipelined_prefix(BytesMut::from(head));
    match session.read_request().await {
        Ok(true) => {}
        Ok(false) => return Err(Refusal::bad("the request head is incomplete", head_request)),
        Err(e) => return Err(Refusal::bad(why_refused(&e), head_request)),
    }
    let req = session.req_header();
    if req.method == http::Method::CONNECT {
        // What Pingora's proxy answers (405) unless CONNECT proxying is enabled, which
        // tollgate never does.
        return Err(Refusal {
            reject: Reject::MethodNotAllowed,
            why: "CONNECT is not proxied".into(),
            head_request: false,
        });
    }
    if session.is_upgrade_req() {
        return Ok(None);
    }
    if req.headers.contains_key(TRANSFER_ENCODING) {
        // The session has checked that chunked is the final coding.
        return Ok(Some(Body::Chunked(Chunks::default())));
    }
    // Read as the session reads it (identical repeats, `5, 5`, are one; the proxy refuses
    // them later).
    let values = req.headers.get_all(CONTENT_LENGTH).into_iter();
    match crate::headers::framing_length(values.map(|v| v.as_bytes())) {
        Ok(n) => Ok(Some(Body::Length(n.unwrap_or(0)))),
        Err(why) => Err(Refusal::bad(why, head_request)),
    }
}

/// The message for a head Pingora's session refused: its own words when they are a fixed
/// explanation, never the head's bytes it quotes for a parse error.
fn why_refused(e: &pingora::Error) -> Cow<'static, str> {
    if let Some(parse) = e
        .cause
        .as_ref()
        .and_then(|c| c.downcast_ref::<httparse::Error>())
    {
        return crate::fastpath::h1::server::refused(*parse)
            .unwrap_or("the request line is malformed")
            .into();
    }
    match e.context.as_ref().map(|c| c.as_str()) {
        Some(c) if !c.starts_with("buf") => Cow::Owned(format!("the request head is refused: {c}")),
        _ => "the request head is malformed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Screened {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut stream: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
            screen(&mut stream, BytesMut::from(bytes)).await
        })
    }

    fn refused(bytes: &[u8]) -> bool {
        matches!(run(bytes), Screened::Refused(_))
    }

    #[test]
    fn heads_pingora_refuses_are_refused_here() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(refused(bad), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn requests_are_cut_where_they_end() {
        let post = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let get = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let Screened::Request { bytes, ahead, body } = run(&[&post[..], &get[..]].concat()) else {
            panic!("a POST and a GET");
        };
        assert_eq!(&bytes[..], &post[..]);
        assert_eq!(ahead.as_deref(), Some(&get[..]));
        assert_eq!(body, Some(Body::Length(0)));
        let Screened::Request { ahead, body, .. } = run(&post[..post.len() - 2]) else {
            panic!("a POST in part");
        };
        assert_eq!((ahead, body), (None, Some(Body::Length(2))));
        // A head that never ends: the client is gone before it does.
        assert!(matches!(run(b"GET / HTTP/1.1\r\n"), Screened::Gone));
    }
}
