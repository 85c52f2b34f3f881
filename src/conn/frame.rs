//! Where one HTTP/1 request ends on its connection, so that Pingora's session only ever holds the
//! bytes of the request it serves: a client may pipeline (RFC 9112 §9.3.2), and a session keeps
//! what it reads past its request, out of reach of tollgate's screening, own codec and idle wait.
//! So the head and the body bytes already read go in as the session's prefix, [`Frame`] on the
//! connection's [`super::Guarded`] stream lets Pingora read the rest of that body and no further,
//! and bytes past it become the next request's first bytes in tollgate's loop. An upgrade request
//! is not framed: what follows its head is the tunnel's, or the connection ends (`screen.rs`).
//!
//! A body's extent comes from its head: `Content-Length`, or chunked framing read by [`Chunks`],
//! held to what Pingora's decoder accepts (a size it can add to its buffer index, trailer lines
//! ending in CRLF) minus two shapes parsers read differently, which nginx refuses too: a
//! chunk-size line without a size (Pingora's last chunk), and a bare LF in a chunk extension.
//! Pingora's limits on a chunk-size line and on trailers hold here whatever the reads.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use crate::fastpath::h1::{MAX_CHUNK_LINE as MAX_SIZE_LINE, MAX_TRAILERS};

/// What remains of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// This many bytes (`Content-Length`).
    Length(u64),
    /// Chunked, at this point of its framing.
    Chunked(Chunks),
}

/// Chunked framing (RFC 9112 §7.1), fed the body's bytes as they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunks {
    state: State,
    /// Bytes of the current chunk-size line, or of the trailers, so far.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// In a chunk-size line: the digits so far, the size, and what the line is past.
    #[default]
    Start,
    Size {
        digits: u8,
        size: u64,
    },
    /// Whitespace after the size: only more whitespace, `;` or the line end may follow.
    AfterSize {
        size: u64,
    },
    /// In a chunk extension, which Pingora ignores up to the line end.
    Extension {
        size: u64,
    },
    /// The size line's CR was read: its LF must follow.
    SizeLf {
        size: u64,
    },
    /// Chunk data, this many bytes still.
    Data(u64),
    /// After a chunk's data, its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines up to an empty one; `line_start`: at the start of
    /// a line.
    Trailers {
        line_start: bool,
    },
    /// A trailer line's CR was read: its LF must follow (the section ends if it was empty).
    TrailerLf {
        empty: bool,
    },
}

/// Why a chunked body is refused.
pub type Malformed = &'static str;

impl Chunks {
    /// Feed the next bytes of the body: `Some(n)` when the body ends after `n` of them,
    /// `None` when it goes on past them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if !matches!(self.state, State::Data(_) | State::DataCr | State::DataLf) {
                self.line += 1;
                if self.line > MAX_TRAILERS || (self.line > MAX_SIZE_LINE && !self.in_trailers()) {
                    return Err("a chunk-size line or the trailers are too long");
                }
            }
            self.state = match self.state {
                State::Start => match hex(b) {
                    Some(d) => State::Size { digits: 1, size: d },
                    None => return Err("a chunk-size line has no size"),
                },
                State::Size { digits, size } => match (hex(b), b) {
                    // 16 hex digits are the most Pingora's decoder takes.
                    (Some(_), _) if digits >= 16 => return Err("a chunk size is too large"),
                    (Some(d), _) => State::Size {
                        digits: digits + 1,
                        size: size << 4 | d,
                    },
                    (None, b' ' | b'\t') => State::AfterSize { size },
                    (None, b';') => State::Extension { size },
                    (None, b'\r') => State::SizeLf { size },
                    _ => return Err("a chunk-size line is malformed"),
                },
                State::AfterSize { size } => match b {
                    b' ' | b'\t' => State::AfterSize { size },
                    b';' => State::Extension { size },
                    b'\r' => State::SizeLf { size },
                    _ => return Err("a chunk-size line is malformed"),
                },
                State::Extension { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err("a chunk-size line ends in a bare LF"),
                    _ => State::Extension { size },
                },
                State::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => {
                        self.line = 0;
                        State::Trailers { line_start: true }
                    }
                    (b'\n', size) => {
                        // Pingora's decoder adds the size to the line's length and the data's
                        // CRLF, and refuses a chunk where that overflows.
                        let line = std::mem::take(&mut self.line);
                        if usize::try_from(size)
                            .ok()
                            .and_then(|s| s.checked_add(line + 2))
                            .is_none()
                        {
                            return Err("a chunk size is too large");
                        }
                        State::Data(size)
                    }
                    _ => return Err("a chunk-size line is malformed"),
                },
                State::Data(left) => {
                    let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Start,
                State::DataCr | State::DataLf => {
                    return Err("chunk data is not followed by CRLF");
                }
                State::Trailers { line_start } => match b {
                    b'\r' => State::TrailerLf { empty: line_start },
                    b'\n' => return Err("a trailer line ends in a bare LF"),
                    _ => State::Trailers { line_start: false },
                },
                State::TrailerLf { empty } => match b {
                    b'\n' if empty => return Ok(Some(i + 1)),
                    b'\n' => State::Trailers { line_start: true },
                    _ => return Err("a trailer line has a CR without LF"),
                },
            };
            i += 1;
        }
        Ok(None)
    }
}

impl Chunks {
    fn in_trailers(&self) -> bool {
        matches!(self.state, State::Trailers { .. } | State::TrailerLf { .. })
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// How much of `bytes` is the body `body` (from its start): `Ok(Some(n))` when the body ends
/// there, `Ok(None)` when all of it is body and `body` is what remains after.
pub fn measure(body: &mut Body, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
    match body {
        Body::Length(left) => {
            let here = bytes.len() as u64;
            if here >= *left {
                let n = *left as usize;
                *left = 0;
                Ok(Some(n))
            } else {
                *left -= here;
                Ok(None)
            }
        }
        Body::Chunked(c) => c.feed(bytes),
    }
}

/// A request's extent on the stream under Pingora's session ([`super::Guarded`] holds it
/// while the session runs).
#[derive(Debug)]
pub struct Frame {
    /// The rest of the body, or `None` once it is read: from then on what the client sends
    /// is held back in `ahead`.
    body: Option<Body>,
    /// Bytes past the request, for the next one.
    ahead: BytesMut,
}

impl Frame {
    pub fn new(body: Body) -> Self {
        let body = match body {
            Body::Length(0) => None,
            body => Some(body),
        };
        Frame {
            body,
            ahead: BytesMut::new(),
        }
    }

    /// The bytes past the request, once its session is done.
    pub fn into_ahead(self) -> Option<BytesMut> {
        (!self.ahead.is_empty()).then_some(self.ahead)
    }

    /// Read from `inner` into `buf` no further than the request's end.
    pub fn poll_read(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let Some(body) = self.body.as_mut() else {
            return self.hold(inner, cx, buf);
        };
        let before = buf.filled().len();
        std::task::ready!(Pin::new(inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        match measure(body, read) {
            Ok(None) => {}
            Ok(Some(n)) => {
                // Never 0 of a read that brought bytes: the session would take it for a close.
                self.ahead.extend_from_slice(&read[n..]);
                buf.set_filled(before + n);
                self.body = None;
            }
            Err(why) => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    why,
                )))
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The request is read: what the client sends now is its next request, kept here. The
    /// session sees nothing of it (it waits), only the client's close.
    fn hold(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.ahead.is_empty() || buf.remaining() == 0 {
            // The next request has begun: nothing more is read until this one is answered.
            return Poll::Pending;
        }
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut into = ReadBuf::uninit(&mut space);
        std::task::ready!(Pin::new(inner).poll_read(cx, &mut into))?;
        if into.filled().is_empty() {
            // The client closed its side: the session is told.
            return Poll::Ready(Ok(()));
        }
        self.ahead.extend_from_slice(into.filled());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> Result<Option<usize>, Malformed> {
        let mut c = Chunks::default();
        let mut at = 0;
        for piece in chunks {
            if let Some(n) = c.feed(piece)? {
                return Ok(Some(at + n));
            }
            at += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_pingora_ends_them() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let end = body.len() - b"GET / HTTP/1.1\r\n".len();
        assert_eq!(ends(&[body]), Ok(Some(end)));
        // Cut anywhere, the end is the same.
        for cut in 0..body.len() {
            assert_eq!(ends(&[&body[..cut], &body[cut..]]), Ok(Some(end)), "{cut}");
        }
        let trailers = b"0\r\nX-T: 1\r\n\r\nnext";
        assert_eq!(ends(&[trailers]), Ok(Some(trailers.len() - 4)));
        let ext = b"A \t;ext\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(ends(&[ext]), Ok(Some(ext.len())));
        assert_eq!(ends(&[b"5\r\nhel"]), Ok(None));
    }

    #[test]
    fn ambiguous_chunk_lines_are_refused() {
        for bad in [
            &b"\r\n5\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            // What Pingora's decoder refuses too: a size it cannot add to its buffer index,
            // trailer lines not ending in CRLF.
            b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\n\n",
            b"0\r\nX-T: 1\rX\r\n\r\n",
        ] {
            assert!(ends(&[bad]).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn lengths_are_counted() {
        let mut b = Body::Length(5);
        assert_eq!(measure(&mut b, b"he"), Ok(None));
        assert_eq!(measure(&mut b, b"lloGET"), Ok(Some(3)));
    }
}
