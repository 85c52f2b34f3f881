//! The cache step of a caching route, on Pingora's cache hooks: enable pingora-cache with the
//! route's store, lock and limits; the key; the verdict on a response head; the status header.
//! The decisions are [`crate::cache`]'s; this only hands them to Pingora's session. It runs
//! after admission, so auth and rate limits are spent before a hit is served.
//!
//! The own engine answers the common hit itself ([`Tollgate::own_hit`]): a fresh entry of one
//! variant, framed by length, for a GET or HEAD without ranges or conditions, on a route whose
//! key admission does not decide (no consumer, claim or split branch in it). It writes what
//! Pingora's hit path writes (the stored head, `Age`, `Accept-Ranges`, `X-Cache-Status: HIT`,
//! the gateway's headers). The same GET for a key the store holds nothing for (no variant,
//! nothing stale) and no other request is filling, it relays and stores ([`super::miss`]);
//! every other cached request goes to Pingora's cache path.

use std::time::SystemTime;

use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::miss::Miss;
use super::{Ctx, Tollgate};
use crate::cache::store::Probe;
use crate::cache::{KeyInput, RouteCache, Status, Storable};
use crate::downstream::Downstream;
use crate::headers::names::X_CACHE_STATUS;
use crate::policy::router::Route;

impl Tollgate {
    /// The request's route cache, if its route has one.
    pub(super) fn route_cache(&self, ctx: &Ctx) -> Option<&RouteCache> {
        self.gw.caches[ctx.route?].as_deref()
    }

    /// `request_cache_filter`: a request of a caching route goes through the cache step; it
    /// takes the cache when its method is one the route caches (else `BYPASS`).
    pub(super) fn cache_enable(&self, session: &mut Session, ctx: &mut Ctx) {
        let Some(c) = self.route_cache(ctx) else {
            return;
        };
        ctx.cache = Some(Status::Bypass);
        if !c.takes(&session.req_header().method) || ctx.websocket.is_some() || ctx.grpc {
            return;
        }
        // The store keeps its own LRU (no eviction manager of Pingora's).
        session
            .cache
            .enable(c.store, None, None, Some(c.lock), Some(c.lock_options()));
        session.cache.set_max_file_size_bytes(c.rules.max_object);
    }

    /// What the key of this request is made of (`explain` builds the same from its request).
    pub(super) fn cache_key(&self, req: &RequestHeader, ctx: &Ctx) -> Result<CacheKey> {
        let c = self.route_cache(ctx).ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "cache key without a caching route",
            )
        })?;
        let split = self.route(ctx).is_some_and(|r| r.split.is_some());
        Ok(c.key(&key_input(req, ctx, split)))
    }

    /// `cache_hit_filter`: a client's `Cache-Control: no-cache` revalidates the entry when the
    /// route honours it.
    pub(super) fn cache_hit(&self, req: &RequestHeader, ctx: &Ctx) -> Option<ForcedFreshness> {
        let c = self.route_cache(ctx)?;
        (c.rules.honour_client_no_cache && client_no_cache(req))
            .then_some(ForcedFreshness::ForceExpired)
    }

    /// `response_cache_filter`: whether the upstream's response head may be stored.
    pub(super) fn cache_verdict(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        ctx: &Ctx,
    ) -> RespCacheable {
        match self.route_cache(ctx) {
            Some(c) => verdict(c, req, resp),
            None => RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled),
        }
    }

    /// `response_filter`: the `X-Cache-Status` of a response that went through the cache step.
    pub(super) fn cache_status(&self, session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
        if ctx.cache.is_none() {
            return;
        }
        let status = Status::of(session.cache.phase());
        ctx.cache = Some(status);
        let _ = resp.insert_header(&X_CACHE_STATUS, status.as_str());
    }

    /// `fail_to_proxy`: what the cache step did for a request the upstream then failed.
    pub(super) fn cache_failed(&self, session: &Session, ctx: &mut Ctx) {
        if ctx.cache.is_some() {
            ctx.cache = Some(Status::of(session.cache.phase()));
        }
    }

    /// `logging`: the request's cache status and lock wait, counted for `/metrics`.
    pub(super) fn cache_count(&self, session: &Session, ctx: &Ctx) {
        if let (Some(c), Some(status)) = (self.route_cache(ctx), ctx.cache) {
            let waited = session.cache.enabled() && session.cache.lock_duration().is_some();
            c.count(status, waited);
        }
    }
}

/// What the own engine does at a caching route's cache step, decided by the codec before it
/// takes the request. Boxed whole: the miss carries its fill inline, one allocation the
/// fewer for it, at the cost of a larger box for a hit.
#[allow(clippy::large_enum_variant)]
pub(super) enum Own<'a> {
    /// Answer from the fresh entry under this key.
    Hit(CacheKey),
    /// Relay and store: nothing is stored under the key, whose lock this request holds.
    Miss(Miss<'a>),
}

impl Tollgate {
    /// Whether the own engine can take this request of `route` at the cache step, and how:
    /// see the module's doc. The key is computed once, here: it is known before admission.
    pub(super) fn own_cache_ahead(
        &self,
        req: &RequestHeader,
        route: &Route,
    ) -> Option<Box<Own<'_>>> {
        let c = self.gw.caches[route.id].as_deref()?;
        if route.split.is_some() || !c.key_before_admission() || !simple_request(c, req) {
            return None;
        }
        let key = c.key(&key_input_of(req, None, None));
        match c.store.probe(&key, SystemTime::now()) {
            Probe::Fresh => Some(Box::new(Own::Hit(key))),
            // A HEAD miss fetches with GET and stores the object: Pingora's path does that.
            // None if another request fills the key: Pingora's path waits for it.
            Probe::Absent if req.method == http::Method::GET => {
                let permit = c.lock.own(&key)?;
                Some(Box::new(Own::Miss(Miss::new(c, key, permit))))
            }
            _ => None,
        }
    }

    /// Answer an admitted request from the cache under `key`, as Pingora's hit path does;
    /// `Ok(false)`: the entry went stale or away since the codec looked (the request is then
    /// relayed, uncached).
    pub(super) async fn own_hit<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
        key: &CacheKey,
    ) -> Result<bool> {
        let Some(c) = self.route_cache(ctx) else {
            return Ok(false);
        };
        let Some(hit) = c.store.fresh(key, SystemTime::now()) else {
            return Ok(false);
        };
        let mut resp = hit.header;
        resp.set_version(http::Version::HTTP_11);
        resp.insert_header(http::header::AGE, hit.age)?;
        if resp.status == http::StatusCode::OK {
            resp.insert_header(http::header::ACCEPT_RANGES, "bytes")?;
        }
        ctx.cache = Some(Status::Hit);
        resp.insert_header(&X_CACHE_STATUS, Status::Hit.as_str())?;
        self.answered(&resp, ctx);
        let stamp = session.finish_head(&mut resp, self.finish(ctx))?;
        let encoder = self.compression(session.req_header(), &mut resp, ctx)?;
        let head_only = session.req_header().method == http::Method::HEAD;
        let end = head_only || (hit.body.is_empty() && encoder.is_none());
        session
            .write_response_header(Box::new(resp), stamp, end)
            .await?;
        ctx.encoder = encoder;
        if !end {
            let mut body = Some(hit.body);
            super::encode(ctx, &mut body, true)?;
            session.write_response_body(body, true).await?;
        }
        Ok(true)
    }

    /// Relay and store a miss the codec took ([`Own::Miss`]): see [`super::miss`].
    pub(super) async fn own_miss<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
        miss: &mut Miss<'_>,
    ) -> Result<bool> {
        ctx.cache = Some(Status::Miss);
        self.relay_teed(session, ctx, miss).await
    }

    /// The own engine's cache step, counted for `/metrics` as `logging` counts Pingora's.
    pub(super) fn own_cache_count(&self, ctx: &Ctx) {
        if let (Some(c), Some(status)) = (self.route_cache(ctx), ctx.cache) {
            c.count(status, false);
        }
    }
}

/// Whether `resp` may be stored under `c`'s rules (`response_cache_filter`).
pub(super) fn verdict(c: &RouteCache, req: &RequestHeader, resp: &ResponseHeader) -> RespCacheable {
    crate::cache::cacheable(&c.rules, resp, unkeyed_credential(c, req))
}

/// [`verdict`] before any copy of the head is made (the own engine's miss).
pub(super) fn storable(
    c: &RouteCache,
    req: &RequestHeader,
    resp: &ResponseHeader,
) -> std::result::Result<Storable, NoCacheReason> {
    crate::cache::storable(&c.rules, resp, unkeyed_credential(c, req))
}

/// A credential the key does not separate (a route without auth, or `shared`): RFC 9111 §3.5
/// applies to the response.
fn unkeyed_credential(c: &RouteCache, req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::AUTHORIZATION) && (!c.rules.auth || c.rules.shared)
}

/// A GET or HEAD the route caches, without a range, a condition, or a `no-cache` the route
/// honours: Pingora's hit path would answer it with the stored response as it is.
fn simple_request(c: &RouteCache, req: &RequestHeader) -> bool {
    use http::header::{
        IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
    };
    // One pass over the few headers a request has, rather than a lookup per name.
    let conditional = req.headers.keys().any(|n| {
        [
            &RANGE,
            &IF_NONE_MATCH,
            &IF_MODIFIED_SINCE,
            &IF_RANGE,
            &IF_MATCH,
            &IF_UNMODIFIED_SINCE,
        ]
        .contains(&n)
    });
    c.takes(&req.method)
        && (req.method == http::Method::GET || req.method == http::Method::HEAD)
        && !conditional
        && !(c.rules.honour_client_no_cache && client_no_cache(req))
}

/// The variant of a stored response this request wants (`cache_vary_filter`).
pub(super) fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<[u8; 16]> {
    crate::cache::variance(meta, req)
}

/// The parts of the key a request gives: Host, the path and query as the client sent them,
/// the caller, the split's branch.
pub(crate) fn key_input<'a>(req: &'a RequestHeader, ctx: &'a Ctx, split: bool) -> KeyInput<'a> {
    let branch = if split { ctx.upstream } else { None };
    key_input_of(req, ctx.identity.as_ref(), branch)
}

fn key_input_of<'a>(
    req: &'a RequestHeader,
    identity: Option<&'a crate::policy::auth::Identity>,
    branch: Option<usize>,
) -> KeyInput<'a> {
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default();
    KeyInput {
        host,
        target: req.raw_path(),
        path: req.uri.path(),
        headers: &req.headers,
        identity,
        branch,
    }
}

/// A client's `Cache-Control: no-cache` (or `Pragma: no-cache` without `Cache-Control`).
fn client_no_cache(req: &RequestHeader) -> bool {
    let has = |name: http::header::HeaderName| {
        req.headers.get_all(name).iter().any(|v| {
            crate::headers::tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"no-cache"))
        })
    };
    has(http::header::CACHE_CONTROL)
        || (!req.headers.contains_key(http::header::CACHE_CONTROL) && has(http::header::PRAGMA))
}
