//! The RateLimit headers of a limited route's responses: the IETF pair
//! (draft-ietf-httpapi-ratelimit-headers), the older `X-RateLimit-*` trio, and `Retry-After`
//! on a denial; built from preformatted parts, without `fmt`.

use http::{HeaderName, HeaderValue};

use super::{Decision, Limits, Policy};
use crate::headers::line;

use crate::headers::names::{
    RATELIMIT, RATELIMIT_POLICY, RETRY_AFTER, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
};

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

/// The value of one of a decision's headers, as [`Limits::each`] names it.
enum Value<'a> {
    /// Formatted at load.
    Fixed(&'a HeaderValue),
    Number(u64),
    /// `"name";r=REMAINING;t=RESET`.
    RateLimit,
}

impl Limits {
    /// A decision's headers, in order: the one list the four ways of using them below are
    /// made of (a local answer's list, a map's inserts, a codec's lines, the names).
    fn each<'a>(&'a self, d: &Decision, mut f: impl FnMut(&'static HeaderName, Value<'a>)) {
        let p = &self.policies[d.policy];
        if p.headers.ietf {
            f(&RATELIMIT_POLICY, Value::Fixed(&p.policy_header));
            f(&RATELIMIT, Value::RateLimit);
        }
        if p.headers.legacy {
            f(&X_RATELIMIT_LIMIT, Value::Fixed(&p.limit_header));
            f(&X_RATELIMIT_REMAINING, Value::Number(d.remaining));
            f(&X_RATELIMIT_RESET, Value::Number(d.reset));
        }
        if !d.allowed {
            f(&RETRY_AFTER, Value::Number(d.retry_after));
        }
    }

    fn value(&self, d: &Decision, v: Value<'_>) -> HeaderValue {
        match v {
            Value::Fixed(h) => h.clone(),
            Value::Number(n) => HeaderValue::from(n),
            Value::RateLimit => ratelimit_value(&self.policies[d.policy], d),
        }
    }

    /// The RateLimit headers of a decision (for a local answer), plus `Retry-After` on a
    /// denial.
    pub fn headers(&self, d: &Decision) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(6);
        self.each(d, |name, v| out.push((name.clone(), self.value(d, v))));
        out
    }

    /// Add the RateLimit headers to a proxied response: the same headers as [`Self::headers`]
    /// of an admitted request, without building a `Vec` of them.
    pub fn apply(&self, d: &Decision, headers: &mut http::HeaderMap) {
        self.each(d, |name, v| {
            headers.insert(name, self.value(d, v));
        });
    }

    /// Whether [`Self::apply`] sets a header of this name (any case) for this decision: a
    /// backend's header of that name is replaced, so a codec writing the head need not copy it.
    pub fn sets(&self, d: &Decision, name: &str) -> bool {
        let mut sets = false;
        self.each(d, |n, _| sets |= name.eq_ignore_ascii_case(n.as_str()));
        sets
    }

    /// The headers of [`Self::apply`] as HTTP/1 head lines, for a codec that writes the head
    /// itself: no map insert, and no value built (the digits go straight into `out`).
    pub fn write(&self, d: &Decision, out: &mut Vec<u8>) {
        let p = &self.policies[d.policy];
        self.each(d, |name, v| {
            line(out, name.as_str(), |o| match v {
                Value::Fixed(h) => o.extend_from_slice(h.as_bytes()),
                Value::Number(n) => digits(o, n),
                Value::RateLimit => ratelimit_bytes(p, d, o),
            })
        });
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
