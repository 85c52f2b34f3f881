//! The cache step of a caching route, on Pingora's cache hooks: enable pingora-cache with the
//! route's store, lock and limits; the key; the verdict on a response head; the status header.
//! The decisions are [`crate::cache`]'s; this only hands them to Pingora's session. It runs
//! after admission, so auth and rate limits are spent before a hit is served.

use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::{Ctx, Tollgate};
use crate::cache::{KeyInput, RouteCache, Status};
use crate::headers::names::X_CACHE_STATUS;

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
        let store = c.store;
        session.cache.enable(
            store,
            Some(&store.eviction),
            None,
            Some(c.lock),
            Some(c.lock_options()),
        );
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
        let Some(c) = self.route_cache(ctx) else {
            return RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled);
        };
        // A credential the key does not separate: RFC 9111 §3.5.
        let authorization = req.headers.contains_key(http::header::AUTHORIZATION)
            && (!c.rules.auth || c.rules.shared);
        crate::cache::cacheable(&c.rules, resp, authorization)
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

/// The variant of a stored response this request wants (`cache_vary_filter`).
pub(super) fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<[u8; 16]> {
    crate::cache::variance(meta, req)
}

/// The parts of the key a request gives: Host, the path and query as the client sent them,
/// the caller, the split's branch.
pub(crate) fn key_input<'a>(req: &'a RequestHeader, ctx: &'a Ctx, split: bool) -> KeyInput<'a> {
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
        identity: ctx.identity.as_ref(),
        branch: if split { ctx.upstream } else { None },
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
