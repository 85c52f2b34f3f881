//! Response compression per route: gzip or brotli, when the client accepts it and the response is
//! worth it. Pingora's compression module does not fit a gateway's contract: it ignores `q` values
//! and `Cache-Control: no-transform`, takes the client's first coding, has a fixed minimum size
//! and type list, and its brotli encoder flushes at the end instead of finishing the stream, which
//! a strict decoder rejects. So [`Compression::start`] decides in `response_filter` and
//! [`Encoder`] encodes in `response_body_filter`, with the crates Pingora links (`flate2`,
//! `brotli`).
//!
//! A response is *eligible* when its status has a body that may be transformed (not 1xx, 204, 206,
//! 304, nor an answer to HEAD), it has no `Content-Encoding` and no `Cache-Control: no-transform`,
//! a compressible `Content-Type`, and a `Content-Length` (if known) of at least `min_size`.
//! Eligible responses get `Vary: Accept-Encoding`, compressed or not. The offered coding with the
//! highest `q` wins (brotli on a tie); the body is streamed, so `Content-Length` is dropped, a
//! strong `ETag` weakened and `Accept-Ranges` removed.

use std::io::Write;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE,
    ETAG, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, OrErr, Result};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::config::ConfigErrors;
use crate::config::Size;

const DEFAULT_GZIP: u32 = 6;
const DEFAULT_BROTLI: u32 = 4;
const DEFAULT_MIN_SIZE: u64 = 256;
/// Compressed by default: text, and the structured text formats APIs answer with.
const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/problem+json",
    "application/manifest+json",
    "application/graphql-response+json",
    "application/wasm",
    "image/svg+xml",
];
/// Never compressed: an event stream must reach the client event by event, and an encoder
/// holds bytes back until it has enough to compress.
const STREAMING: &str = "text/event-stream";

/// `compression:` on a route: `true` (gzip and brotli at their default levels), or
/// `{gzip: LEVEL, brotli: LEVEL, min_size: SIZE, types: [..]}` where the codings listed are
/// the ones offered (none listed: both).
#[derive(Debug, Default)]
pub struct CompressionFile {
    pub enabled: bool,
    pub gzip: Option<u32>,
    pub brotli: Option<u32>,
    pub min_size: Option<Size>,
    pub types: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for CompressionFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default)]
            gzip: Option<u32>,
            #[serde(default)]
            brotli: Option<u32>,
            #[serde(default)]
            min_size: Option<Size>,
            #[serde(default)]
            types: Option<Vec<String>>,
        }
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Bool(enabled) => Ok(CompressionFile {
                enabled,
                ..Default::default()
            }),
            v @ serde_yaml::Value::Mapping(_) => {
                let f: Full = serde_yaml::from_value(v).map_err(de::Error::custom)?;
                Ok(CompressionFile {
                    enabled: true,
                    gzip: f.gzip,
                    brotli: f.brotli,
                    min_size: f.min_size,
                    types: f.types,
                })
            }
            _ => Err(de::Error::custom(
                "compression is true, false, or {gzip: 1-9, brotli: 1-11, min_size, types}",
            )),
        }
    }
}

/// A route's compiled compression settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// gzip level (1-9), when offered.
    pub gzip: Option<u32>,
    /// brotli quality (1-11), when offered.
    pub brotli: Option<u32>,
    /// Responses with a smaller `Content-Length` are left alone.
    pub min_size: u64,
    /// `type/subtype` (exact) or `type/` (any subtype), lower case.
    types: Vec<String>,
}

/// Validate `compression` at `path`; `None` when it is off or wrong (errors pushed).
pub fn compile(path: &str, f: CompressionFile, errs: &mut ConfigErrors) -> Option<Compression> {
    if !f.enabled {
        return None;
    }
    let before = errs.0.len();
    let neither = f.gzip.is_none() && f.brotli.is_none();
    let mut level = |key: &str, v: Option<u32>, max: u32, default: u32| match v {
        Some(l) if l == 0 || l > max => {
            errs.push(
                format!("{path}.{key}"),
                format!("must be between 1 and {max}"),
            );
            None
        }
        Some(l) => Some(l),
        None => neither.then_some(default),
    };
    let gzip = level("gzip", f.gzip, 9, DEFAULT_GZIP);
    let brotli = level("brotli", f.brotli, 11, DEFAULT_BROTLI);
    let given = f.types.is_some();
    let list = f
        .types
        .unwrap_or_else(|| DEFAULT_TYPES.iter().map(|t| t.to_string()).collect());
    if given && list.is_empty() {
        errs.push(
            format!("{path}.types"),
            "must list at least one media type, or be left out for the defaults",
        );
    }
    let mut types = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        let valid = t.split_once('/').is_some_and(|(a, b)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&c) || c == b'*'
                    })
            };
            token(a) && token(b) && !a.contains('*') && (b == "*" || !b.contains('*'))
        });
        if !valid {
            errs.push(
                format!("{path}.types[{i}]"),
                format!("{t:?} is not a media type (e.g. \"application/json\" or \"text/*\")"),
            );
            continue;
        }
        types.push(t.strip_suffix('*').map_or_else(|| t.clone(), str::to_owned));
    }
    (errs.0.len() == before).then_some(Compression {
        gzip,
        brotli,
        min_size: f.min_size.map_or(DEFAULT_MIN_SIZE, |s| s.0),
        types,
    })
}

impl Compression {
    /// Decide for one response, in `response_filter`: set `Vary` on eligible responses, and
    /// when the client accepts a coding the route offers, rewrite the head and return the
    /// encoder for the body.
    pub fn start(&self, req: &RequestHeader, resp: &mut ResponseHeader) -> Result<Option<Encoder>> {
        if !self.eligible(req, resp) {
            return Ok(None);
        }
        add_vary(resp)?;
        if req.version != Version::HTTP_11 && req.version != Version::HTTP_2 {
            // An HTTP/1.0 client cannot take a chunked body.
            return Ok(None);
        }
        let Some(coding) = self.choose(&req.headers) else {
            return Ok(None);
        };
        let encoder = Encoder::new(coding);
        resp.insert_header(CONTENT_ENCODING, HeaderValue::from_static(coding.name()))?;
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&ACCEPT_RANGES);
        if req.version == Version::HTTP_11 {
            resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked"))?;
        }
        weaken_etag(resp)?;
        Ok(Some(encoder))
    }

    fn eligible(&self, req: &RequestHeader, resp: &ResponseHeader) -> bool {
        let h = &resp.headers;
        let status = resp.status.as_u16();
        let ct = h.get(CONTENT_TYPE).map_or(&b""[..], |v| v.as_bytes());
        let essence = ct.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
        req.method != Method::HEAD
            && status >= 200
            && !matches!(status, 204 | 206 | 304)
            && h.get(CONTENT_ENCODING)
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
            && !no_transform(h)
            && !no_transform(&req.headers)
            && !essence.eq_ignore_ascii_case(STREAMING.as_bytes())
            && self.types.iter().any(|t| media_matches(t, essence))
            && declared_len(h).is_none_or(|len| len >= self.min_size)
    }

    /// The offered coding the client prefers (highest `q`; brotli on a tie).
    fn choose(&self, headers: &HeaderMap) -> Option<Coding> {
        let (gzip, br) = accepted(headers);
        let gzip = self
            .gzip
            .filter(|_| gzip > 0)
            .map(|l| (gzip, Coding::Gzip(l)));
        let br = self
            .brotli
            .filter(|_| br > 0)
            .map(|l| (br, Coding::Brotli(l)));
        match (gzip, br) {
            (Some((qg, g)), Some((qb, _))) if qg > qb => Some(g),
            (_, Some((_, b))) => Some(b),
            (g, None) => g.map(|(_, g)| g),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip(u32),
    Brotli(u32),
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip(_) => "gzip",
            Coding::Brotli(_) => "br",
        }
    }
}

/// The body encoder of one response.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// Taken when the stream is finished.
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
}

impl Encoder {
    fn new(coding: Coding) -> Self {
        match coding {
            Coding::Gzip(level) => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            // A 1 MiB window (lgwin 20): brotli's default 4 MiB is a lot per response.
            Coding::Brotli(q) => Encoder::Brotli(Some(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                q,
                20,
            )))),
        }
    }

    /// Encode the next chunk of the body; `end` finishes the stream. Returns what the
    /// encoder has to send so far (often nothing until enough input has been seen).
    pub fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes> {
        const WHAT: &str = "compressing the response body";
        match self {
            Encoder::Gzip(e) => {
                e.write_all(input).or_err(ErrorType::InternalError, WHAT)?;
                if end {
                    e.try_finish().or_err(ErrorType::InternalError, WHAT)?;
                }
                Ok(std::mem::take(e.get_mut()).into())
            }
            Encoder::Brotli(slot) => {
                let Some(w) = slot.as_mut() else {
                    return Error::e_explain(ErrorType::InternalError, "brotli stream finished");
                };
                w.write_all(input).or_err(ErrorType::InternalError, WHAT)?;
                if end {
                    // `into_inner` finishes the stream (the last meta-block), unlike `flush`.
                    let w = slot.take().map(|w| w.into_inner()).unwrap_or_default();
                    return Ok(w.into());
                }
                Ok(std::mem::take(w.get_mut()).into())
            }
        }
    }
}

/// `type/` prefixes match any subtype; others match exactly (case-insensitive).
fn media_matches(pattern: &str, essence: &[u8]) -> bool {
    let p = pattern.as_bytes();
    if p.ends_with(b"/") {
        essence.len() > p.len() && essence[..p.len()].eq_ignore_ascii_case(p)
    } else {
        essence.eq_ignore_ascii_case(p)
    }
}

fn declared_len(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn no_transform(h: &HeaderMap) -> bool {
    h.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    })
}

/// The client's `q` for gzip and br, in thousandths (0: not acceptable), from every
/// `Accept-Encoding` line. A coding not named takes the `q` of `*`; a malformed `q` is 0.
/// No `Accept-Encoding` at all: nothing is compressed.
fn accepted(headers: &HeaderMap) -> (u16, u16) {
    let (mut gzip, mut br, mut star) = (None, None, None);
    for line in headers.get_all(ACCEPT_ENCODING) {
        let Ok(line) = line.to_str() else { continue };
        for item in line.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("q").then(|| qvalue(v.trim()))
                })
                .unwrap_or(Some(1000))
                .unwrap_or(0);
            let slot =
                if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    &mut gzip
                } else if coding.eq_ignore_ascii_case("br") {
                    &mut br
                } else if coding == "*" {
                    &mut star
                } else {
                    continue;
                };
            *slot = Some(slot.map_or(q, |old: u16| old.min(q)));
        }
    }
    (gzip.or(star).unwrap_or(0), br.or(star).unwrap_or(0))
}

/// An RFC 9110 `qvalue` in thousandths: `0[.ddd]` or `1[.000]`.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let f = frac
        .bytes()
        .zip([100u16, 10, 1])
        .map(|(b, w)| u16::from(b - b'0') * w)
        .sum::<u16>();
    match int {
        "0" => Some(f),
        "1" if f == 0 => Some(1000),
        _ => None,
    }
}

/// Add `Accept-Encoding` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary(resp: &mut ResponseHeader) -> Result<()> {
    let mut existing = Vec::new();
    for v in resp.headers.get_all(VARY) {
        for token in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token == b"*" || token.eq_ignore_ascii_case(b"accept-encoding") {
                return Ok(());
            }
            if !token.is_empty() {
                existing.push(token.to_vec());
            }
        }
    }
    if existing.is_empty() {
        return resp.insert_header(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    existing.push(b"Accept-Encoding".to_vec());
    let value = HeaderValue::from_bytes(&existing.join(&b", "[..]))
        .or_err(ErrorType::InternalError, "building Vary")?;
    resp.insert_header(VARY, value)
}

/// A strong validator no longer describes the bytes sent: weaken it (as nginx does).
fn weaken_etag(resp: &mut ResponseHeader) -> Result<()> {
    let Some(etag) = resp.headers.get(ETAG) else {
        return Ok(());
    };
    if etag.as_bytes().starts_with(b"\"") {
        let weak = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
            .or_err(ErrorType::InternalError, "weakening ETag")?;
        resp.insert_header(ETAG, weak)?;
    } else if !etag.as_bytes().starts_with(b"W/") {
        resp.remove_header(&ETAG);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
