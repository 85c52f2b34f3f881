//! One path, normalised once, before routing and auth; the upstream receives exactly it.
//!
//! Gateways have been bypassed by paths that the gateway and the upstream read differently
//! (`/public/%2e%2e/private`, `/public/..;/private`, `/private%2fx`). tollgate removes that
//! ambiguity instead of guessing how each upstream decodes: unreserved characters are decoded,
//! dot segments removed (RFC 3986 §5.2.4), repeated slashes merged, and every shape that could
//! still be read two ways is refused with 400.

use std::borrow::Cow;

/// Why a path is refused (400 `bad_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
    EncodedSeparator,
    Backslash,
    ControlCharacter,
    AboveRoot,
    DotSegmentWithParams,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with /",
            PathError::BadPercentEncoding => "the request path has a malformed percent-encoding",
            PathError::EncodedSeparator => {
                "the request path has an encoded '/', '\\' or NUL, which upstreams read differently"
            }
            PathError::Backslash => "the request path has a backslash",
            PathError::ControlCharacter => "the request path has a control character",
            PathError::AboveRoot => "the request path climbs above the root with '..'",
            PathError::DotSegmentWithParams => {
                "the request path has a '.' or '..' segment with ';' parameters"
            }
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `bytes` percent-encoded: unreserved characters (RFC 3986 §2.3) as they are, every other
/// byte `%XX` (a query component, a form field).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// A query name or value as a form reads it: `%XX` escapes decoded and `+` read as a space;
/// a malformed escape stays as it is. Borrowed unless there is something to decode.
pub fn form_decode(s: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => match (
                s.get(i + 1).and_then(|&b| hex(b)),
                s.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise a request path (no query). Borrowed when it is already normal, which is the
/// common case and costs one scan.
pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // The bytes this scan looks at twice; most of a path's are none of them.
    const MARKED: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            t[c] = matches!(c as u8, b'\\' | 0..=0x1f | 0x7f | b'%' | b';' | b'/' | b'.');
            c += 1;
        }
        t
    };
    let mut needs_work = false;
    for (i, &c) in b.iter().enumerate() {
        if !MARKED[usize::from(c)] {
            continue;
        }
        match c {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'%' | b';' => needs_work = true,
            b'/' if b.get(i + 1) == Some(&b'/') => needs_work = true,
            b'.' if b[i - 1] == b'/' => needs_work = true,
            _ => {}
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    normalise_slow(b).map(Cow::Owned)
}

fn normalise_slow(b: &[u8]) -> Result<String, PathError> {
    // 1. Decode unreserved escapes; upper-case the hex of the others; refuse separators.
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let (h, l) = match (
                b.get(i + 1).and_then(|&x| hex(x)),
                b.get(i + 2).and_then(|&x| hex(x)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadPercentEncoding),
            };
            let v = h << 4 | l;
            if matches!(v, b'/' | b'\\' | 0) {
                return Err(PathError::EncodedSeparator);
            }
            if is_unreserved(v) {
                decoded.push(v);
            } else {
                decoded.push(b'%');
                decoded.push(b"0123456789ABCDEF"[h as usize]);
                decoded.push(b"0123456789ABCDEF"[l as usize]);
            }
            i += 3;
        } else {
            decoded.push(c);
            i += 1;
        }
    }

    // 2. Split into segments (merging empty ones), resolve dot segments.
    let trailing_slash = decoded.len() > 1 && decoded.ends_with(b"/");
    let mut out: Vec<&[u8]> = Vec::new();
    let mut last_was_dot = false;
    for seg in decoded.split(|&c| c == b'/').filter(|s| !s.is_empty()) {
        let bare = seg.split(|&c| c == b';').next().unwrap_or(seg);
        let is_dot = bare == b"." || bare == b"..";
        if is_dot && bare.len() != seg.len() {
            return Err(PathError::DotSegmentWithParams);
        }
        last_was_dot = is_dot;
        match seg {
            b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(decoded.len());
    for seg in &out {
        s.push('/');
        // Input was a &str and only ASCII was rewritten, so each segment is valid UTF-8.
        s.push_str(std::str::from_utf8(seg).map_err(|_| PathError::BadPercentEncoding)?);
    }
    if s.is_empty() || ((trailing_slash || last_was_dot) && !s.ends_with('/')) {
        s.push('/');
    }
    Ok(s)
}

/// The path with `;parameters` removed from every segment (`/private;x/a` → `/private/a`),
/// as servlet containers read it; borrowed when there are none. The gateway refuses a request
/// whose two readings would route differently.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalise(p).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalise("/api/v1/items").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalise("/").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalise("/a.b/c..d").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("//a///b/").unwrap(), "/a/b/");
        assert_eq!(n("/public/%2e%2e/private").unwrap(), "/private");
        assert_eq!(n("/public/%2E%2e/private/x").unwrap(), "/private/x");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/%7euser").unwrap(), "/a/~user");
        assert_eq!(n("/a/%3a").unwrap(), "/a/%3A");
        assert_eq!(n("/a/%252e%252e/b").unwrap(), "/a/%252e%252e/b");
    }

    #[test]
    fn ambiguous_shapes_are_refused() {
        assert_eq!(n("/../x"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/%2e%2e/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(n("/private%2fx"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/private%5cx"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%00"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(n("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(
            n("/public/..;/private"),
            Err(PathError::DotSegmentWithParams)
        );
        assert_eq!(n("a"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn params_removed_for_the_second_reading() {
        assert_eq!(without_params("/private;x/a"), "/private/a");
        assert_eq!(without_params("/a;b=c;d/e;f"), "/a/e");
        assert!(matches!(without_params("/plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn idempotent() {
        for p in ["/a/./b/../c", "//x//y/", "/%7e/%3a/.", "/a;b=c/d"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once);
        }
    }
}
