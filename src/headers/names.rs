//! The names of the headers that are the gateway's own: those it sets on the way up and on
//! the way down, reads from clients, or keeps for itself. Defined here once and imported
//! everywhere, so a name is spelt in one place (the README and docs list the same).

use http::{HeaderName, HeaderValue};

/// On every answer, proxied or local: which gateway answered, with [`GATEWAY_NAME`].
pub static X_GATEWAY: HeaderName = HeaderName::from_static("x-gateway");
/// `X-Gateway`'s value.
pub static GATEWAY_NAME: HeaderValue = HeaderValue::from_static("tollgate");
/// The request's id: a client's sane one kept, else made; forwarded, and echoed on every answer.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Forwarding headers set on the upstream request (`X-Forwarded-For` is also read from
/// trusted proxies).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// W3C Trace Context, set on the upstream request when `tracing` is configured.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The authenticated consumer, forwarded upstream (a client's copy is never forwarded).
pub static X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");
/// Where an `api_key` provider reads the key when the config names no header or query.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A limited route's budget (draft-ietf-httpapi-ratelimit-headers), the older trio, and
/// `Retry-After` on a denial.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub static RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;
/// What a caching route's cache step did (`crate::cache`).
pub static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// Response headers tollgate owns: a route's `response_headers` may not set them.
pub static RESERVED_RESPONSE: [&HeaderName; 5] = [
    &X_GATEWAY,
    &X_REQUEST_ID,
    &http::header::CONTENT_LENGTH,
    &http::header::TRANSFER_ENCODING,
    &http::header::CONNECTION,
];

/// `name` as a name whose copies are free: kept for the life of the process, as the gateway's
/// own names are. For names read from the config, which are copied onto every request or
/// response that uses them (a name made at run time is reference-counted instead, paid on
/// each copy and drop). Each distinct name is kept once, however often the config is loaded.
pub fn lasting_name(name: HeaderName) -> HeaderName {
    match std::str::from_utf8(interned(name.as_str().as_bytes())) {
        Ok(s) => HeaderName::from_static(s),
        Err(_) => name,
    }
}

/// [`lasting_name`] for a header value from the config.
pub fn lasting_value(value: HeaderValue) -> HeaderValue {
    let bytes = bytes::Bytes::from_static(interned(value.as_bytes()));
    HeaderValue::from_maybe_shared(bytes).unwrap_or(value)
}

fn interned(b: &[u8]) -> &'static [u8] {
    static KEPT: std::sync::Mutex<std::collections::BTreeSet<&'static [u8]>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    match kept.get(b) {
        Some(k) => k,
        None => {
            let k: &'static [u8] = Box::leak(b.into());
            kept.insert(k);
            k
        }
    }
}

/// A header name read from the wire, as `HeaderName::from_bytes` makes it, but found in a
/// table first for the names nearly every request or response carries: those cost a
/// case-insensitive compare and a copy of a constant, where `from_bytes` lower-cases and
/// matches the whole standard list (and allocates for a name outside it, like `x-api-key`).
pub fn parse(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use http::header::*;
    let known: &[&HeaderName] = match name.len() {
        4 => &[&HOST, &DATE, &ETAG, &VARY],
        6 => &[&ACCEPT, &SERVER, &COOKIE, &ORIGIN, &PRAGMA],
        7 => &[&REFERER, &EXPIRES],
        9 => &[&X_API_KEY],
        10 => &[&USER_AGENT, &CONNECTION, &SET_COOKIE],
        11 => &[&TRACEPARENT],
        12 => &[&CONTENT_TYPE, &X_REQUEST_ID],
        13 => &[
            &AUTHORIZATION,
            &CACHE_CONTROL,
            &LAST_MODIFIED,
            &IF_NONE_MATCH,
        ],
        14 => &[&CONTENT_LENGTH],
        15 => &[&ACCEPT_ENCODING, &ACCEPT_LANGUAGE, &X_FORWARDED_FOR],
        16 => &[&CONTENT_ENCODING],
        17 => &[&TRANSFER_ENCODING, &IF_MODIFIED_SINCE, &X_FORWARDED_PROTO],
        _ => &[],
    };
    for k in known {
        if eq_lower(name, k.as_str().as_bytes()) {
            return Ok((*k).clone());
        }
    }
    HeaderName::from_bytes(name)
}

/// Whether `name` is `lower` (lower-case ASCII) in any case: `eq_ignore_ascii_case`, a word
/// at a time. In a word of `lower`, the bytes that are letters get a mask of 0x20 (a byte in
/// `a..=z` is at least 0x61 and below 0x7b: the high bits of two additions say so, and no
/// addition carries into the next byte, every byte being below 0x80); `name` matches where
/// it equals `lower`, or differs by 0x20 on a letter.
fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    fn same<const N: usize>(x: [u8; N], y: [u8; N]) -> bool {
        let word = |b: [u8; N]| b.iter().rev().fold(0u64, |w, &c| w << 8 | u64::from(c));
        let (x, y) = (word(x), word(y));
        let ones = u64::MAX / 0xff;
        let letters = (y + 0x1f * ones) & !(y + 0x05 * ones) & (0x80 * ones);
        x | letters >> 2 == y
    }
    debug_assert!(lower.is_ascii(), "{lower:?}");
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    let at = |b: &[u8], i: usize| -> [u8; 8] { b[i..i + 8].try_into().unwrap_or_default() };
    let at4 = |b: &[u8], i: usize| -> [u8; 4] { b[i..i + 4].try_into().unwrap_or_default() };
    match n {
        // Overlapping words cover what a whole word does not.
        8.. => {
            (0..n - 8)
                .step_by(8)
                .all(|i| same(at(name, i), at(lower, i)))
                && same(at(name, n - 8), at(lower, n - 8))
        }
        4..8 => same(at4(name, 0), at4(lower, 0)) && same(at4(name, n - 4), at4(lower, n - 4)),
        _ => name.eq_ignore_ascii_case(lower),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name the gateway owns, lower case (as `HeaderName` spells it).
    fn all() -> Vec<&'static str> {
        [
            &X_GATEWAY,
            &X_REQUEST_ID,
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &X_REAL_IP,
            &X_CONSUMER,
            &X_API_KEY,
            &RATELIMIT_POLICY,
            &RATELIMIT,
            &X_RATELIMIT_LIMIT,
            &X_RATELIMIT_REMAINING,
            &X_RATELIMIT_RESET,
            &RETRY_AFTER,
            &TRACEPARENT,
            &TRACESTATE,
        ]
        .iter()
        .map(|n| n.as_str())
        .collect()
    }

    /// A name of the table is the name `from_bytes` makes, in any case; others are its.
    #[test]
    fn parse_is_from_bytes() {
        for name in [
            "Host",
            "HOST",
            "host",
            "X-Api-Key",
            "x-api-KEY",
            "Content-Length",
            "server",
            "Date",
            "dat",
            "datE",
            "X-Request-Id",
            "x-request-ix",
            "user-agent",
            "Traceparent",
            "transfer-encodinG",
            "x-custom",
            "",
            "bad name",
            "ho\u{e9}t",
            "content-lengtj",
        ] {
            let ours = parse(name.as_bytes());
            let theirs = HeaderName::from_bytes(name.as_bytes());
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{name:?}");
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a, b, "{name:?}");
                assert_eq!(a.as_str(), b.as_str(), "{name:?}");
            }
        }
    }

    /// The word-wise compare agrees with `eq_ignore_ascii_case` on every byte a name may
    /// hold, and on those that are not letters but one bit from one.
    #[test]
    fn eq_lower_is_eq_ignore_ascii_case() {
        let lowers = [
            "host",
            "x-api-key",
            "content-length",
            "server",
            "referer",
            "a",
            "ab1",
        ];
        let odd = [
            b'@', b'[', b'`', b'{', b'^', b'~', b'\r', b'\x0d', b'M', b'0', b'\x10',
        ];
        for lower in lowers {
            let l = lower.as_bytes();
            for i in 0..l.len() {
                for b in (0u8..=255).chain(odd) {
                    let mut name = l.to_vec();
                    name[i] = b;
                    assert_eq!(
                        eq_lower(&name, l),
                        name.eq_ignore_ascii_case(l),
                        "{lower} with byte {i} as {b:#x}"
                    );
                }
            }
            assert!(eq_lower(lower.to_ascii_uppercase().as_bytes(), l));
            assert!(!eq_lower(&l[1..], l));
        }
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// No code in src/ (tests aside) spells one of these names in a string literal: a name
    /// starting a literal (`"x-gateway"`, `"X-Gateway: ..."`) is one spelt again.
    #[test]
    fn no_other_module_spells_the_gateways_header_names() {
        let mut files = Vec::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        assert!(files.len() > 20);
        let mut found = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("headers/names.rs")) {
            let text = std::fs::read_to_string(file).unwrap().to_ascii_lowercase();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for name in all() {
                for quoted in [format!("\"{name}\""), format!("\"{name}:")] {
                    if code.contains(&quoted) {
                        found.push(format!("{}: {quoted}", file.display()));
                    }
                }
            }
        }
        assert!(found.is_empty(), "spelt outside names.rs: {found:#?}");
    }

    #[test]
    fn the_reserved_response_headers_include_the_gateways_own() {
        for own in [&X_GATEWAY, &X_REQUEST_ID] {
            assert!(RESERVED_RESPONSE.contains(&own));
        }
    }
}
