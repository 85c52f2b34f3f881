//! What one request learns on its way through the hooks of [`crate::proxy`].

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use http::HeaderValue;

use crate::error::Reject;
use crate::upstream;

/// Where a copy of the request body goes as it is read (a route's `mirror`).
pub trait BodyCopy: Send + Sync {
    /// A piece of the body (`end`: the last); `false` once the copy needs no more.
    fn piece(&mut self, piece: Option<&[u8]>, end: bool) -> bool;
}

/// What one request learns on its way through the hooks.
pub struct Ctx {
    /// When the context was made: the request's head had just been read.
    pub started: Instant,
    pub request_id: HeaderValue,
    pub peer_ip: Option<IpAddr>,
    pub client_ip: Option<IpAddr>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// The route the own codec found for the request before taking it, for a path that was
    /// normal as sent: admission's own normalising and `find` (the same host, path and
    /// method), not made twice.
    pub routed: Option<usize>,
    /// The upstream the request goes to: the route's, or the branch its `split` chose.
    pub upstream: Option<usize>,
    /// The request target for the upstream when it differs from the client's.
    pub target: Option<String>,
    /// Backends this request already tried (failed), so a retry goes elsewhere.
    pub tried: Vec<SocketAddr>,
    pub backend: Option<SocketAddr>,
    /// When the first backend was picked, and when a response head came back.
    pub upstream_started: Option<Instant>,
    pub upstream_answered: Option<Instant>,
    /// The current attempt: counted in flight, its outcome feeds the circuit breaker.
    pub attempt: Option<upstream::Attempt>,
    /// Set when tollgate answered itself.
    pub local_status: Option<u16>,
    /// Whether this request was counted in flight.
    pub counted: bool,
    /// Request body bytes seen so far.
    pub body_bytes: u64,
    /// How the last attempt on a backend failed, for the answer when no backend is left.
    pub last_failure: Option<Reject>,
    /// The rate-limit decision of a limited route, for the response's RateLimit headers.
    pub limit: Option<crate::policy::limit::Decision>,
    /// The authenticated caller, forwarded upstream.
    pub identity: Option<crate::policy::auth::Identity>,
    /// A gRPC call (by its Content-Type): refusals are answered with a gRPC status.
    pub grpc: bool,
    /// The `grpc-status` the call ended with (ours or the backend's), for the access log.
    pub grpc_status: Option<u8>,
    /// A WebSocket handshake its route admits: the tunnel's idle timeout.
    pub websocket: Option<std::time::Duration>,
    /// When the 101 went out: the connection has been a tunnel since.
    pub tunnel: Option<Instant>,
    /// The tunnel was closed by its idle timeout.
    pub tunnel_idled: bool,
    /// A mirrored request's copy, waiting for its body.
    pub mirror: Option<Box<dyn BodyCopy>>,
    /// The body encoder of a compressed response.
    pub encoder: Option<crate::compress::Encoder>,
    /// The route's `response_headers` that name variables, rendered for this request.
    pub response_values: Box<[Option<HeaderValue>]>,
    /// Why tollgate refused the request, when a policy did (the dashboard's refusals).
    pub why: Option<Why>,
    /// The request's trace, when `tracing` is configured.
    pub trace: Option<crate::trace::Trace>,
    /// A caching route's request went through the cache step: what it did (`X-Cache-Status`).
    pub cache: Option<crate::cache::Status>,
    /// The cache's background refresh of a stale entry (`stale_while_revalidate`): admitted
    /// like the request that triggered it, but it spends no rate-limit budget.
    pub refresh: bool,
}

/// Which policy refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A credential was missing or refused (`bad_signature`, `expired`, ...).
    Auth(crate::policy::auth::Reason),
    /// The rate limit decision in `Ctx::limit` said no.
    RateLimited,
    /// Another refusal: its error code.
    Refused(&'static str),
}

impl Ctx {
    /// The authenticated caller's name: an API key's consumer, or a JWT's `sub` (or
    /// `consumer_claim`). Keys `key: consumer` limits and `hash_key: consumer` balancing.
    pub fn consumer(&self) -> Option<&str> {
        self.consumer_bytes()
            .and_then(|c| std::str::from_utf8(c).ok())
    }

    /// [`Self::consumer`] as bytes, for keying (no check of every byte): a name that is not
    /// ASCII is as good a key.
    pub fn consumer_bytes(&self) -> Option<&[u8]> {
        self.identity.as_ref()?.consumer_bytes()
    }

    /// The current attempt failed with `e`: remember how, for the answer when no backend is
    /// left, and do not pick this backend again.
    pub fn attempt_failed(&mut self, e: &pingora::Error) {
        self.last_failure = Reject::from_proxy_error(e);
        if let Some(b) = self.backend {
            self.tried.push(b);
        }
    }

    /// A verified JWT claim, for `key: claim:NAME` limits.
    pub fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.identity.as_ref()?.claim(name)
    }
}

impl Default for Ctx {
    /// A fresh context, as `new_ctx` hands it to the hooks.
    fn default() -> Self {
        Ctx {
            started: Instant::now(),
            request_id: HeaderValue::from_static(""),
            peer_ip: None,
            client_ip: None,
            route: None,
            routed: None,
            upstream: None,
            target: None,
            tried: Vec::new(),
            backend: None,
            upstream_started: None,
            upstream_answered: None,
            attempt: None,
            local_status: None,
            counted: false,
            body_bytes: 0,
            last_failure: None,
            limit: None,
            identity: None,
            grpc: false,
            grpc_status: None,
            websocket: None,
            tunnel: None,
            tunnel_idled: false,
            response_values: Box::default(),
            why: None,
            mirror: None,
            encoder: None,
            trace: None,
            cache: None,
            refresh: false,
        }
    }
}
