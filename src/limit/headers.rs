//! The RateLimit headers of a limited route's responses: the IETF pair
//! (draft-ietf-httpapi-ratelimit-headers), the older `X-RateLimit-*` trio, and `Retry-After`
//! on a denial; built from preformatted parts, without `fmt`.

use http::{HeaderName, HeaderValue};

use super::{Decision, Limits, Policy};
use crate::headers::line;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub static RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;

/// Which headers report a policy's budget. Every header is work on every response of the
/// route, so the older `X-RateLimit-*` trio is opt-in: the IETF pair carries the same
/// numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// `RateLimit` and `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
    pub ietf: bool,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    pub legacy: bool,
}

impl Headers {
    pub const IETF: Headers = Headers {
        ietf: true,
        legacy: false,
    };
    pub const LEGACY: Headers = Headers {
        ietf: false,
        legacy: true,
    };
    pub const BOTH: Headers = Headers {
        ietf: true,
        legacy: true,
    };
    pub const NONE: Headers = Headers {
        ietf: false,
        legacy: false,
    };

    /// As the config writes it.
    pub fn describe(&self) -> &'static str {
        match (self.ietf, self.legacy) {
            (true, false) => "ietf",
            (false, true) => "legacy",
            (true, true) => "both",
            (false, false) => "none",
        }
    }
}

impl Limits {
    /// The RateLimit headers of a decision (for a local answer), plus `Retry-After` on a
    /// denial.
    pub fn headers(&self, d: &Decision) -> Vec<(HeaderName, HeaderValue)> {
        let p = &self.policies[d.policy];
        let mut v = Vec::with_capacity(6);
        if p.headers.ietf {
            v.push((RATELIMIT_POLICY.clone(), p.policy_header.clone()));
            v.push((RATELIMIT.clone(), ratelimit_value(p, d)));
        }
        if p.headers.legacy {
            v.push((X_RATELIMIT_LIMIT.clone(), p.limit_header.clone()));
            v.push((
                X_RATELIMIT_REMAINING.clone(),
                HeaderValue::from(d.remaining),
            ));
            v.push((X_RATELIMIT_RESET.clone(), HeaderValue::from(d.reset)));
        }
        if !d.allowed {
            v.push((RETRY_AFTER.clone(), HeaderValue::from(d.retry_after)));
        }
        v
    }

    /// Add the RateLimit headers to a proxied response: the same headers as [`Self::headers`]
    /// of an admitted request, without building a `Vec` of them.
    pub fn apply(&self, d: &Decision, headers: &mut http::HeaderMap) {
        let p = &self.policies[d.policy];
        if p.headers.ietf {
            headers.insert(&RATELIMIT_POLICY, p.policy_header.clone());
            headers.insert(&RATELIMIT, ratelimit_value(p, d));
        }
        if p.headers.legacy {
            headers.insert(&X_RATELIMIT_LIMIT, p.limit_header.clone());
            headers.insert(&X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
            headers.insert(&X_RATELIMIT_RESET, HeaderValue::from(d.reset));
        }
        if !d.allowed {
            headers.insert(&RETRY_AFTER, HeaderValue::from(d.retry_after));
        }
    }

    /// Whether [`Self::apply`] sets a header of this name (any case) for this decision: a
    /// backend's header of that name is replaced, so a codec writing the head need not copy it.
    pub fn sets(&self, d: &Decision, name: &str) -> bool {
        let p = &self.policies[d.policy];
        let is = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str());
        (p.headers.ietf && (is(&RATELIMIT_POLICY) || is(&RATELIMIT)))
            || (p.headers.legacy
                && (is(&X_RATELIMIT_LIMIT) || is(&X_RATELIMIT_REMAINING) || is(&X_RATELIMIT_RESET)))
            || (!d.allowed && is(&RETRY_AFTER))
    }

    /// The headers of [`Self::apply`] as HTTP/1 head lines, for a codec that writes the head
    /// itself: no map insert, and no value built (the digits go straight into `out`).
    pub fn write(&self, d: &Decision, out: &mut Vec<u8>) {
        let p = &self.policies[d.policy];
        if p.headers.ietf {
            line(out, RATELIMIT_POLICY.as_str(), |o| {
                o.extend_from_slice(p.policy_header.as_bytes())
            });
            line(out, RATELIMIT.as_str(), |o| ratelimit_bytes(p, d, o));
        }
        if p.headers.legacy {
            line(out, X_RATELIMIT_LIMIT.as_str(), |o| {
                o.extend_from_slice(p.limit_header.as_bytes())
            });
            line(out, X_RATELIMIT_REMAINING.as_str(), |o| {
                digits(o, d.remaining)
            });
            line(out, X_RATELIMIT_RESET.as_str(), |o| digits(o, d.reset));
        }
        if !d.allowed {
            line(out, RETRY_AFTER.as_str(), |o| digits(o, d.retry_after));
        }
    }
}

fn digits(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `"name";r=REMAINING;t=RESET`, from the policy's preformatted prefix (no `fmt`): it is on
/// every response of a limited route, so the digits come from `itoa`'s two-digit table.
fn ratelimit_bytes(p: &Policy, d: &Decision, out: &mut Vec<u8>) {
    out.extend_from_slice(&p.ratelimit_prefix);
    digits(out, d.remaining);
    out.extend_from_slice(b";t=");
    digits(out, d.reset);
}

fn ratelimit_value(p: &Policy, d: &Decision) -> HeaderValue {
    let mut v = Vec::with_capacity(p.ratelimit_prefix.len() + 2 * 20 + 3);
    ratelimit_bytes(p, d, &mut v);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v))
        .unwrap_or_else(|_| HeaderValue::from(d.remaining))
}

#[cfg(test)]
impl Limits {
    /// One local policy, `"per-client"`: 100 a minute per client IP, bursts of 20, reported
    /// in `mode`.
    pub(crate) fn one_for_tests(mode: Headers) -> Limits {
        let mut p = Policy::new(
            "per-client",
            100,
            std::time::Duration::from_secs(60),
            20,
            super::KeyKind::ClientIp,
            super::Store::Local,
            64,
        );
        p.headers = mode;
        let mut limits = Limits::default();
        limits.policies.push(p);
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_value_and_applied_headers() {
        let mut limits = Limits::one_for_tests(Headers::IETF);
        let p = &limits.policies[0];
        for (remaining, reset) in [(0, 0), (19, 1), (u64::MAX, 1234567890)] {
            let d = Decision {
                policy: 0,
                allowed: true,
                remaining,
                reset,
                retry_after: 0,
            };
            assert_eq!(
                ratelimit_value(p, &d).to_str().unwrap(),
                format!("\"per-client\";r={remaining};t={reset}")
            );
        }
        let d = Decision {
            policy: 0,
            allowed: true,
            remaining: 19,
            reset: 1,
            retry_after: 0,
        };
        for (mode, names) in [
            (
                Headers::BOTH,
                &[
                    "ratelimit-policy",
                    "ratelimit",
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ][..],
            ),
            (Headers::IETF, &["ratelimit-policy", "ratelimit"][..]),
            (
                Headers::LEGACY,
                &[
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ][..],
            ),
            (Headers::NONE, &[][..]),
        ] {
            limits.policies[0].headers = mode;
            let mut headers = http::HeaderMap::new();
            limits.apply(&d, &mut headers);
            let local = limits.headers(&d);
            assert_eq!(local.len(), names.len(), "{}", mode.describe());
            for (name, value) in local {
                assert_eq!(headers.get(&name), Some(&value), "{name}");
            }
            let got: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            assert_eq!(got, names, "{}", mode.describe());
        }
    }
}
