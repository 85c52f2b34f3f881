//! RFC 9111 on a route's terms: whether an upstream's response head may be stored and for
//! how long ([`cacheable`]), and which variant of a stored response a request wants
//! ([`variance`]). The directives are read by pingora-cache's `CacheControl`; the route's
//! `ttl`, `statuses`, `store_set_cookie` and stale windows fill in what the response leaves out.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header;
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};

use super::Rules;

fn no_default(_: http::StatusCode) -> Option<Duration> {
    None
}

/// How long a storable response is fresh and may be served stale: [`storable`]'s verdict,
/// before any copy of the head is made.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub fresh_until: SystemTime,
    /// When it was fetched: what its age counts from.
    pub updated: SystemTime,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
}

/// A response head [`storable`] said yes to.
pub struct Storable {
    pub freshness: Freshness,
    cc: Option<CacheControl>,
    /// The head has a `Vary`.
    vary: bool,
}

impl Storable {
    /// Whether the head has a `Vary`.
    pub fn has_vary(&self) -> bool {
        self.vary
    }

    /// The variant of the stored response `req` makes ([`variance_of`]).
    pub fn variance(&self, resp: &ResponseHeader, req: &RequestHeader) -> Option<HashBinary> {
        if !self.vary {
            return None;
        }
        variance_of(&resp.headers, req)
    }

    /// The head as it is stored: `resp` without the headers a `no-cache="..."` or
    /// `private="..."` directive names (`resp` itself when they name none).
    pub fn head<'r>(&self, resp: &'r ResponseHeader) -> Cow<'r, ResponseHeader> {
        match &self.cc {
            Some(c) if c.private_field_names().is_some() || c.no_cache_field_names().is_some() => {
                let mut head = resp.clone();
                c.strip_private_headers(&mut head);
                Cow::Owned(head)
            }
            _ => Cow::Borrowed(resp),
        }
    }
}

/// Whether `resp` may be stored under `rules`, and its freshness. `authorization`: the
/// request carried a credential that is not in the key (a route without auth, or `shared`):
/// then RFC 9111 §3.5 applies (stored only when `public`, `s-maxage` or `must-revalidate`
/// says so).
pub fn storable(
    rules: &Rules,
    resp: &ResponseHeader,
    authorization: bool,
) -> Result<Storable, NoCacheReason> {
    if !rules.statuses.contains(&resp.status.as_u16()) {
        return Err(NoCacheReason::Custom("status"));
    }
    let h = &resp.headers;
    // One pass over the head for the few names the verdict reads; most heads have none.
    let (mut cookie, mut vary, mut control, mut expires) = (false, false, false, false);
    for name in h.keys() {
        cookie |= name == header::SET_COOKIE;
        vary |= name == header::VARY;
        control |= name == header::CACHE_CONTROL;
        expires |= name == header::EXPIRES;
    }
    if cookie && !rules.store_set_cookie {
        return Err(NoCacheReason::Custom("set-cookie"));
    }
    let vary_any = vary
        && h.get_all(header::VARY)
            .iter()
            .any(|v| crate::headers::tokens(v.as_bytes()).any(|t| t == b"*"));
    if vary_any {
        return Err(NoCacheReason::Custom("vary-star"));
    }
    let cc = control
        .then(|| CacheControl::from_resp_headers(resp))
        .flatten();
    if authorization
        && !cc
            .as_ref()
            .is_some_and(|c| c.allow_caching_authorized_req())
    {
        return Err(NoCacheReason::Custom("authorization"));
    }
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No)
    {
        return Err(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    let fresh_until = cc
        .as_ref()
        .and_then(|c| c.fresh_duration())
        .map(|d| at(now, d))
        .or_else(|| {
            expires
                .then(|| calculate_expires_header_time(resp))
                .flatten()
        })
        .unwrap_or_else(|| at(now, rules.ttl));
    let secs = |d: Option<Duration>| d.map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32);
    let defaults = CacheMetaDefaults::new(
        no_default,
        secs(rules.stale_while_revalidate),
        secs(rules.stale_if_error),
    );
    let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &defaults);
    let freshness = Freshness {
        fresh_until,
        updated: now,
        stale_while_revalidate: swr,
        stale_if_error: sie,
    };
    Ok(Storable {
        freshness,
        cc,
        vary,
    })
}

/// [`storable`] as Pingora's `response_cache_filter` answers it.
pub fn cacheable(rules: &Rules, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
    match storable(rules, resp, authorization) {
        Ok(s) => {
            let f = s.freshness;
            let head = s.head(resp).into_owned();
            let (swr, sie) = (f.stale_while_revalidate, f.stale_if_error);
            RespCacheable::Cacheable(CacheMeta::new(f.fresh_until, f.updated, swr, sie, head))
        }
        Err(reason) => RespCacheable::Uncacheable(reason),
    }
}

/// `now + d`, or already stale when `d` is zero (`max-age=0`, `no-cache`).
fn at(now: SystemTime, d: Duration) -> SystemTime {
    match d.is_zero() {
        true => now - Duration::from_secs(1),
        false => now + d,
    }
}

/// The variant of `meta` that `req` wants: a hash of the request's values of the headers the
/// stored response's `Vary` names; `None` when it names none.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    variance_of(meta.headers(), req)
}

/// [`variance`] of a response whose head is `resp`.
fn variance_of(resp: &http::HeaderMap, req: &RequestHeader) -> Option<HashBinary> {
    let mut v = VarianceBuilder::new();
    for value in resp.get_all(header::VARY) {
        for name in crate::headers::tokens(value.as_bytes()) {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let mut got = Vec::new();
            for (i, x) in req.headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    got.extend_from_slice(b", ");
                }
                got.extend_from_slice(x.as_bytes());
            }
            v.add_owned_name_value(name, got);
        }
    }
    v.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            ttl: Duration::from_secs(60),
            methods: (true, true),
            statuses: super::super::config::DEFAULT_STATUSES.to_vec(),
            key: Vec::new(),
            shared: false,
            auth: false,
            store_set_cookie: false,
            honour_client_no_cache: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            lock: Duration::from_secs(2),
            max_object: 1 << 20,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fresh_secs(r: RespCacheable) -> Option<u64> {
        match r {
            RespCacheable::Cacheable(m) => Some(m.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn the_response_wins_over_ttl() {
        let r = rules();
        assert_eq!(fresh_secs(cacheable(&r, &resp(200, &[]), false)), Some(60));
        let cc = [("cache-control", "max-age=5")];
        assert_eq!(fresh_secs(cacheable(&r, &resp(200, &cc), false)), Some(5));
        let cc = [("cache-control", "max-age=5, s-maxage=9")];
        assert_eq!(fresh_secs(cacheable(&r, &resp(200, &cc), false)), Some(9));
        for cc in ["no-store", "private"] {
            let h = [("cache-control", cc)];
            assert_eq!(
                fresh_secs(cacheable(&r, &resp(200, &h), false)),
                None,
                "{cc}"
            );
        }
        assert_eq!(fresh_secs(cacheable(&r, &resp(500, &[]), false)), None);
        let cookie = [("set-cookie", "a=b")];
        assert_eq!(fresh_secs(cacheable(&r, &resp(200, &cookie), false)), None);
        assert_eq!(fresh_secs(cacheable(&r, &resp(200, &[]), true)), None);
        let public = [("cache-control", "public, max-age=7")];
        assert_eq!(
            fresh_secs(cacheable(&r, &resp(200, &public), true)),
            Some(7)
        );
    }
}
