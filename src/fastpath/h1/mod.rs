//! HTTP/1 as both roles of tollgate's own engine write and read it: the server role
//! ([`server`], the client's side) and the client role ([`client`], the backend's side, with
//! its per-thread [`pool`]) share one framing of a body, one rule for a response's framing,
//! chunked coding (the encoder beside the decoder) and one set of limits on a head, which are
//! Pingora's, so that neither role takes what Pingora's sessions would refuse.

use bytes::{Buf, BytesMut};
use pingora::{Error, ErrorType, Result};

pub mod client;
pub(crate) mod pool;
pub mod server;

/// The most header lines a head may have: Pingora's `MAX_HEADERS`
/// (`pingora_core::protocols::http::v1::common::MAX_HEADERS`).
pub const MAX_HEADERS: usize = 256;

/// A head is refused once this much of it was read without its end: one byte past Pingora's
/// `MAX_HEADER_SIZE` (`pingora_core::protocols::http::v1::common::MAX_HEADER_SIZE`, 1048575),
/// past which its sessions refuse one.
pub const MAX_HEAD: usize = 1 << 20;

/// The most of a chunk-size line (the size and its extensions) held without its end:
/// Pingora's `PARTIAL_CHUNK_HEAD_LIMIT` (`pingora_core::protocols::http::v1::body`).
pub const MAX_CHUNK_LINE: usize = 8 * 1024;

/// The most trailer bytes after the last chunk: Pingora's `TRAILER_SIZE_LIMIT` (the same
/// module).
pub const MAX_TRAILERS: usize = 64 * 1024;

/// Header lines the server role parses in place. A head with more is handed to Pingora's
/// session whole, which applies [`MAX_HEADERS`]: the limit is the same, only the parser is not.
pub const SERVED_HEADERS: usize = 64;

/// How a body is delimited on the wire (RFC 9112 §6.3), and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, or its end was reached.
    Done,
    /// `Content-Length`: this many bytes still to go.
    Length(u64),
    /// Chunked coding; where its decoder is (the encoder keeps no state).
    Chunked(Chunks),
    /// Until the connection closes.
    Close,
}

impl Framing {
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done)
    }
}

/// A response body's framing from its final head: none for a HEAD request, 1xx, 204 and 304;
/// chunked when the last `Transfer-Encoding` coding is `chunked` (a `Content-Length` beside
/// it is ignored); else the `Content-Length`; else until the connection closes.
pub fn response_framing(
    status: u16,
    head_request: bool,
    chunked: bool,
    length: Option<u64>,
) -> Framing {
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Framing::Done;
    }
    match (chunked, length) {
        (true, _) => Framing::Chunked(Chunks::Size),
        (false, Some(0)) => Framing::Done,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Close,
    }
}

/// The end of a chunked body: the last chunk, no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `data` as one chunk (nothing for empty data, which would end the body).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `n` in hexadecimal, as a chunk size.
fn push_hex(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(n >> (i * 4)) & 0xf]);
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines (dropped) up to the empty one; bytes of them so far.
    Trailers(usize),
    End,
}

impl Chunks {
    /// Consume framing at the front of `buf`: the next state, or `None` for more bytes.
    /// Only called outside `Data`. A failure is the backend's (the client role decodes).
    pub fn advance(&self, buf: &mut BytesMut) -> Result<Option<Chunks>> {
        let bad = || {
            let mut e = Error::explain(ErrorType::InvalidHTTPHeader, "an invalid chunked body");
            e.as_up();
            e
        };
        Ok(match self {
            Chunks::Size => match httparse::parse_chunk_size(buf) {
                // A size Pingora's decoder cannot add to its buffer index (with the line and
                // the data's CRLF) is refused as it refuses it.
                Ok(httparse::Status::Complete((n, size)))
                    if usize::try_from(size)
                        .ok()
                        .and_then(|s| s.checked_add(n + 2))
                        .is_none() =>
                {
                    return Err(bad())
                }
                Ok(httparse::Status::Complete((n, size))) => {
                    buf.advance(n);
                    Some(if size == 0 {
                        Chunks::Trailers(0)
                    } else {
                        Chunks::Data(size)
                    })
                }
                // A line that outgrows Pingora's limit unfinished is refused as it refuses it.
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => return Err(bad()),
                Ok(httparse::Status::Partial) => None,
                Err(_) => return Err(bad()),
            },
            // Refused at its first wrong byte, as Pingora's decoder refuses it.
            Chunks::DataEnd if buf.first().is_some_and(|&b| b != b'\r') => return Err(bad()),
            Chunks::DataEnd if buf.len() < 2 => None,
            Chunks::DataEnd if &buf[..2] == b"\r\n" => {
                buf.advance(2);
                Some(Chunks::Size)
            }
            Chunks::DataEnd => return Err(bad()),
            // Trailer lines end in CRLF, as Pingora's decoder holds them: a CR or LF alone
            // is refused.
            Chunks::Trailers(read) => match memchr::memchr2(b'\r', b'\n', buf) {
                Some(i) if read + i > MAX_TRAILERS => return Err(bad()),
                Some(i) if buf[i] == b'\n' => return Err(bad()),
                Some(i) if buf.len() < i + 2 => None,
                Some(i) if buf[i + 1] != b'\n' => return Err(bad()),
                Some(0) => {
                    buf.advance(2);
                    Some(Chunks::End)
                }
                Some(i) => {
                    buf.advance(i + 2);
                    Some(Chunks::Trailers(read + i))
                }
                None if read + buf.len() > MAX_TRAILERS => return Err(bad()),
                None => None,
            },
            Chunks::Data(_) | Chunks::End => Some(Chunks::End),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `wire` to a decoder in `Size`, as the client role reads it: the state it ends in,
    /// or the refusal.
    fn decode(wire: &[u8]) -> Result<Chunks> {
        let mut buf = BytesMut::from(wire);
        let mut state = Chunks::Size;
        loop {
            match state {
                Chunks::Data(n) => {
                    let take = buf.len().min(n as usize);
                    buf.advance(take);
                    state = if take as u64 == n {
                        Chunks::DataEnd
                    } else {
                        return Ok(Chunks::Data(n - take as u64));
                    };
                }
                Chunks::End => return Ok(Chunks::End),
                s => match s.advance(&mut buf)? {
                    Some(next) => state = next,
                    None => return Ok(s),
                },
            }
        }
    }

    /// Pingora's decoder refuses a chunk-size line that outgrows 8 KiB unfinished, and
    /// trailers past 64 KiB; so does the client role (it read up to a 1 MiB before).
    #[test]
    fn chunk_lines_and_trailers_have_pingoras_limits() {
        let ext = |n: usize| format!("5;x={}", "a".repeat(n)).into_bytes();
        assert_eq!(
            decode(&ext(8_000)).unwrap(),
            Chunks::Size,
            "unfinished, within the limit"
        );
        assert!(decode(&ext(9_000)).is_err(), "unfinished past 8 KiB");
        let mut whole = ext(9_000);
        whole.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            decode(&whole).unwrap(),
            Chunks::End,
            "a whole line is taken, as by Pingora"
        );
        let trailers = |n: usize| {
            let mut w = b"0\r\n".to_vec();
            for _ in 0..n {
                w.extend_from_slice(format!("x-t: {}\r\n", "b".repeat(1000)).as_bytes());
            }
            w.extend_from_slice(b"\r\n");
            w
        };
        assert_eq!(decode(&trailers(60)).unwrap(), Chunks::End);
        assert!(decode(&trailers(70)).is_err(), "trailers past 64 KiB");
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for n in [
            0usize,
            1,
            9,
            10,
            15,
            16,
            255,
            4096,
            65535,
            1 << 20,
            usize::MAX,
        ] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:x}"));
        }
    }
}
