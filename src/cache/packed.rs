//! A stored response packed in one allocation: the head's headers (names as the head spells
//! them when it keeps their case), the entry's tag, then the body. A store at its size makes
//! an entry and drops its oldest on every fill; a head kept as a header map is half a dozen
//! allocations to make and as many to free, cold by then. A hit reads the head back
//! ([`Packed::head`]), its values slices of the same bytes.
//!
//! The headers are written as `name length, name, value length, value` (lengths as `u32`; a
//! common name as its index in a table instead): read back only from what [`Packing::new`]
//! wrote, never from a peer.

use std::ops::Range;

use bytes::{BufMut, Bytes};
use http::{header, HeaderName, HeaderValue, StatusCode, Version};
use pingora::http::ResponseHeader;

/// Names packed as their index here rather than spelled out: reading a name back costs a
/// parse, an index nothing. The names responses carry most.
static KNOWN: [HeaderName; 24] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::SERVER,
    header::DATE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::VARY,
    header::ACCEPT_RANGES,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_RANGE,
    header::CONTENT_DISPOSITION,
    header::AGE,
    header::LOCATION,
    header::LINK,
    header::SET_COOKIE,
    header::PRAGMA,
    header::STRICT_TRANSPORT_SECURITY,
    header::X_CONTENT_TYPE_OPTIONS,
    header::X_FRAME_OPTIONS,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::CONTENT_SECURITY_POLICY,
];

/// A name length with this bit set is an index into [`KNOWN`] (no name follows).
const KNOWN_FLAG: u32 = 1 << 31;

/// A packed header's name.
enum Name {
    Known(usize),
    /// Where its bytes are.
    Literal(Range<usize>),
}

/// What a head is besides its headers.
#[derive(Debug, Clone)]
struct Line {
    status: StatusCode,
    version: Version,
    reason: Option<Box<str>>,
    /// The head keeps its names' case (a head read by Pingora's HTTP/1 client).
    cased: bool,
    headers: usize,
}

/// A stored response: see the module's doc.
#[derive(Debug, Clone)]
pub struct Packed {
    line: Line,
    data: Bytes,
    headers_end: usize,
    tag_end: usize,
}

/// A [`Packed`] being made: the head and the tag written, the body appended as it comes.
pub struct Packing {
    line: Line,
    data: Vec<u8>,
    headers_end: usize,
    tag_end: usize,
}

impl Packing {
    /// Start with `head` and `tag`, room made for a body of `body_hint` bytes.
    pub fn new(head: &ResponseHeader, tag: &str, body_hint: usize) -> Packing {
        let cased = head.has_case();
        let mut size = tag.len() + body_hint;
        let mut headers = 0usize;
        for (name, value) in head.headers.iter() {
            size += 8 + name.as_str().len() + value.len();
            headers += 1;
        }
        let mut data = Vec::with_capacity(size);
        let mut put = |name: &[u8], known: Option<usize>, value: &HeaderValue| {
            match known {
                Some(i) => data.put_u32_le(KNOWN_FLAG | i as u32),
                None => {
                    data.put_u32_le(name.len() as u32);
                    data.put_slice(name);
                }
            }
            data.put_u32_le(value.len() as u32);
            data.put_slice(value.as_bytes());
        };
        if cased {
            for (name, value) in head.case_header_iter() {
                put(name.as_slice(), None, value);
            }
        } else {
            for (name, value) in head.headers.iter() {
                let known = KNOWN.iter().position(|k| k == name);
                put(name.as_str().as_bytes(), known, value);
            }
        }
        let headers_end = data.len();
        data.put_slice(tag.as_bytes());
        let line = Line {
            status: head.status,
            version: head.version,
            // Only a phrase of the upstream's own (a head reads back the canonical one).
            reason: head
                .get_reason_phrase()
                .filter(|r| Some(*r) != head.status.canonical_reason())
                .map(Into::into),
            cased,
            headers,
        };
        Packing {
            line,
            tag_end: data.len(),
            data,
            headers_end,
        }
    }

    /// Append a piece of the body.
    pub fn body(&mut self, piece: &[u8]) {
        self.data.extend_from_slice(piece);
    }

    pub fn finish(self) -> Packed {
        Packed {
            line: self.line,
            data: fitted(self.data),
            headers_end: self.headers_end,
            tag_end: self.tag_end,
        }
    }
}

/// `data` as `Bytes` in its own allocation, cut to its length: the store counts the bytes an
/// entry holds, and a buffer filled to its capacity becomes `Bytes` without a second allocation
/// (for its count) that would be freed, cold, when the entry is dropped.
fn fitted(mut data: Vec<u8>) -> Bytes {
    data.shrink_to_fit();
    Bytes::from(data)
}

impl Packed {
    /// The head as it was packed, with room for the headers the gateway adds (`None`: its
    /// status was refused, which a status `ResponseHeader` took once is not).
    pub fn head(&self) -> Option<ResponseHeader> {
        let line = &self.line;
        let room = line.headers + crate::headers::HEADROOM;
        let mut head = match line.cased {
            true => {
                let mut head = ResponseHeader::build(line.status, Some(room)).ok()?;
                for (name, value) in self.headers() {
                    let _ = match name {
                        Name::Literal(name) => head.append_header(self.data.slice(name), value),
                        Name::Known(i) => head.append_header(&KNOWN[i], value),
                    };
                }
                head
            }
            false => {
                // Straight into the map: `append_header` parses each name twice.
                let head = ResponseHeader::build_no_case(line.status, Some(room)).ok()?;
                let mut parts = http::response::Parts::from(head);
                for (name, value) in self.headers() {
                    let name = match name {
                        Name::Known(i) => KNOWN[i].clone(),
                        Name::Literal(name) => match HeaderName::from_bytes(&self.data[name]) {
                            Ok(name) => name,
                            Err(_) => continue,
                        },
                    };
                    parts.headers.append(name, value);
                }
                ResponseHeader::from(parts)
            }
        };
        head.set_version(line.version);
        if let Some(r) = &line.reason {
            let _ = head.set_reason_phrase(Some(r));
        }
        Some(head)
    }

    /// The packed headers: each name, and its value.
    fn headers(&self) -> impl Iterator<Item = (Name, HeaderValue)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || loop {
            let (name, value, next) = self.header_at(at)?;
            at = next;
            if let Ok(value) = HeaderValue::from_maybe_shared(self.data.slice(value)) {
                return Some((name, value));
            }
        })
    }

    /// The name of the header packed at `at`, where its value is, and where the next one
    /// starts.
    fn header_at(&self, at: usize) -> Option<(Name, Range<usize>, usize)> {
        let word = |at: usize| {
            let n = self.data.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(n))
        };
        let (name, end) = match word(at)? {
            w if w & KNOWN_FLAG != 0 => {
                let i = (w & !KNOWN_FLAG) as usize;
                (Name::Known(i), at + 4)
            }
            n => {
                let name = at + 4..at + 4 + n as usize;
                let end = name.end;
                (Name::Literal(name), end)
            }
        };
        if matches!(name, Name::Known(i) if i >= KNOWN.len()) {
            return None;
        }
        let value = end + 4..end + 4 + word(end)? as usize;
        (value.end <= self.headers_end).then_some((name, value.clone(), value.end))
    }

    /// The route and client path the entry was stored for.
    pub fn tag(&self) -> &str {
        std::str::from_utf8(&self.data[self.headers_end..self.tag_end]).unwrap_or_default()
    }

    pub fn body(&self) -> Bytes {
        self.data.slice(self.tag_end..)
    }

    pub fn body_len(&self) -> usize {
        self.data.len() - self.tag_end
    }

    /// The bytes held (headers, tag and body).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The same body and tag under a new head (a revalidation's).
    pub fn with_head(&self, head: &ResponseHeader) -> Packed {
        let mut p = Packing::new(head, self.tag(), self.body_len());
        p.body(&self.data[self.tag_end..]);
        p.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn wire(h: &ResponseHeader) -> Vec<u8> {
        let mut out = BytesMut::new();
        h.header_to_h1_wire(&mut out);
        out.to_vec()
    }

    #[test]
    fn a_head_reads_back_as_it_was_packed_case_and_all() {
        for cased in [true, false] {
            let mut h = match cased {
                true => ResponseHeader::build(203, None).unwrap(),
                false => ResponseHeader::build_no_case(203, None).unwrap(),
            };
            h.append_header("Content-Type", "text/plain").unwrap();
            h.append_header("X-Odd-Case", "a").unwrap();
            h.append_header("x-odd-case", "b").unwrap();
            h.append_header("ETag", "\"v1\"").unwrap();
            h.append_header("X-Obs", HeaderValue::from_bytes(b"caf\xe9").unwrap())
                .unwrap();
            h.set_reason_phrase(Some("Fine Thanks")).unwrap();
            h.set_version(Version::HTTP_10);
            let mut p = Packing::new(&h, "route\n/c/a", 3);
            p.body(b"ab");
            p.body(b"c");
            let p = p.finish();
            let back = p.head().unwrap();
            assert_eq!(wire(&back), wire(&h), "cased: {cased}");
            assert_eq!(back.headers, h.headers);
            assert_eq!(back.status, h.status);
            assert_eq!(back.version, Version::HTTP_10);
            assert_eq!(back.get_reason_phrase(), Some("Fine Thanks"));
            assert_eq!(back.has_case(), cased);
            assert_eq!(
                (p.tag(), &p.body()[..], p.body_len()),
                ("route\n/c/a", &b"abc"[..], 3)
            );
            let mut newer = h.clone();
            newer.insert_header("ETag", "\"v2\"").unwrap();
            let q = p.with_head(&newer);
            assert_eq!(wire(&q.head().unwrap()), wire(&newer));
            assert_eq!((q.tag(), &q.body()[..]), ("route\n/c/a", &b"abc"[..]));
        }
    }

    #[test]
    fn an_empty_head_and_body_pack_too() {
        let h = ResponseHeader::build_no_case(204, None).unwrap();
        let p = Packing::new(&h, "", 0).finish();
        let back = p.head().unwrap();
        assert_eq!(back.status, 204);
        assert!(back.headers.is_empty());
        assert_eq!((p.tag(), p.body_len()), ("", 0));
    }
}
