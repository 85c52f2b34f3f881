//! The running generation of the compiled config, swappable while the process serves
//! (`SIGHUP`, [`crate::inplace`]).
//!
//! Every holder of the gateway (Pingora's proxy, the own HTTP/1 engine, the admin service, the
//! state hand-over) holds a [`Live`] and loads the current [`Tollgate`] (gateway, metrics,
//! access log) once per request: Pingora's per-request context is a [`Req`], the loaded
//! generation beside the request's [`Ctx`], so every hook of one request sees the same config
//! (route and upstream indices stay valid) and a request in flight finishes on the generation it
//! started on. Connections are not tied to a generation: a keep-alive connection's next request
//! loads the current one.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

use crate::conn::{Refusal, Serve, Served};
use crate::ctx::Ctx;
use crate::proxy::Tollgate;

/// A shared handle on the current generation.
#[derive(Clone)]
pub struct Live(Arc<ArcSwap<Tollgate>>);

impl Live {
    pub fn new(first: Tollgate) -> Self {
        Live(Arc::new(ArcSwap::from_pointee(first)))
    }

    /// The current generation (one atomic load and a reference count).
    pub fn current(&self) -> Arc<Tollgate> {
        self.0.load_full()
    }

    /// Make `next` the generation new requests take; the previous one is returned (requests in
    /// flight still hold it).
    pub fn swap(&self, next: Tollgate) -> Arc<Tollgate> {
        self.0.swap(Arc::new(next))
    }
}

/// Pingora's per-request context: the generation the request runs on, and its [`Ctx`].
pub struct Req {
    gen: Arc<Tollgate>,
    ctx: Ctx,
}

/// Forward a hook to the request's generation, with its `Ctx`.
macro_rules! on_gen {
    ($req:ident, $hook:ident($($arg:expr),*)) => {{
        let Req { gen, ctx } = $req;
        gen.$hook($($arg,)* ctx)
    }};
}

#[async_trait]
impl ProxyHttp for Live {
    type CTX = Req;

    fn new_ctx(&self) -> Req {
        let gen = self.current();
        Req {
            ctx: gen.new_ctx(),
            gen,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, req: &mut Req) -> Result<()> {
        on_gen!(req, early_request_filter(session)).await
    }

    async fn request_filter(&self, session: &mut Session, req: &mut Req) -> Result<bool> {
        on_gen!(req, request_filter(session)).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        req: &mut Req,
    ) -> Result<()> {
        on_gen!(req, request_body_filter(session, body, end_of_stream)).await
    }

    fn request_cache_filter(&self, session: &mut Session, req: &mut Req) -> Result<()> {
        on_gen!(req, request_cache_filter(session))
    }

    fn cache_key_callback(&self, session: &Session, req: &mut Req) -> Result<CacheKey> {
        on_gen!(req, cache_key_callback(session))
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit: &mut HitHandler,
        is_fresh: bool,
        req: &mut Req,
    ) -> Result<Option<ForcedFreshness>> {
        on_gen!(req, cache_hit_filter(session, meta, hit, is_fresh)).await
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        req: &mut Req,
    ) -> Result<RespCacheable> {
        on_gen!(req, response_cache_filter(session, resp))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        req: &mut Req,
        head: &RequestHeader,
    ) -> Option<[u8; 16]> {
        req.gen.cache_vary_filter(meta, &mut req.ctx, head)
    }

    fn should_serve_stale(&self, session: &mut Session, req: &mut Req, e: Option<&Error>) -> bool {
        req.gen.should_serve_stale(session, &mut req.ctx, e)
    }

    async fn upstream_peer(&self, session: &mut Session, req: &mut Req) -> Result<Box<HttpPeer>> {
        on_gen!(req, upstream_peer(session)).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        head: &mut RequestHeader,
        req: &mut Req,
    ) -> Result<()> {
        on_gen!(req, upstream_request_filter(session, head)).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        req: &mut Req,
    ) -> Result<()> {
        on_gen!(req, response_filter(session, resp)).await
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        req: &mut Req,
    ) -> Result<Option<std::time::Duration>> {
        on_gen!(req, response_body_filter(session, body, end_of_stream))
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        req: &mut Req,
    ) -> Result<Option<bytes::Bytes>> {
        on_gen!(req, response_trailer_filter(session, trailers)).await
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        req: &mut Req,
        e: Box<Error>,
    ) -> Box<Error> {
        req.gen.fail_to_connect(session, peer, &mut req.ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        req: &mut Req,
        client_reused: bool,
    ) -> Box<Error> {
        req.gen
            .error_while_proxy(peer, session, e, &mut req.ctx, client_reused)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, req: &mut Req) -> FailToProxy {
        on_gen!(req, fail_to_proxy(session, e)).await
    }

    fn request_summary(&self, session: &Session, req: &Req) -> String {
        req.gen.request_summary(session, &req.ctx)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, req: &mut Req) {
        on_gen!(req, logging(session, e)).await
    }
}

impl Serve for Live {
    fn serve(
        &self,
        stream: &mut Stream,
        head: BytesMut,
        shutting_down: bool,
    ) -> impl Future<Output = Served> + Send {
        self.current().serve(stream, head, shutting_down)
    }

    async fn refuse(&self, stream: &mut Stream, refusal: Refusal) {
        self.current().refuse_head(stream, refusal).await
    }
}
