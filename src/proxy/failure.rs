//! When the upstream fails: whether the attempt is retried (`fail_to_connect`,
//! `error_while_proxy`, and the own relay alike), and the answer the client then gets
//! (`fail_to_proxy`): the JSON error contract, or a response cut short.

use http::HeaderValue;
use pingora::Error;

use super::{Ctx, Tollgate};
use crate::downstream::Downstream;
use crate::error::{self, Reject};

impl Tollgate {
    /// Nothing reached the backend: another one may be tried, within the retry budget.
    pub(super) fn connect_failed(
        &self,
        ctx: &mut Ctx,
        method: &http::Method,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(t) = ctx.trace.as_mut() {
            t.attempt_failed(method.as_str(), e.etype().as_str());
        }
        if let Some(mut a) = ctx.attempt.take() {
            a.failure();
        }
        ctx.attempt_failed(&e);
        let budget = self.upstream(ctx).map_or(0, |u| u.retries as usize);
        e.set_retry(ctx.tried.len() <= budget);
        e
    }

    /// Bytes may have reached the backend: whether to retry, and where (`error_while_proxy`).
    pub(super) fn proxy_failed<D: Downstream>(
        &self,
        session: &D,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if let Some(t) = ctx.trace.as_mut() {
            let method = session.req_header().method.as_str();
            t.attempt_failed(method, e.etype().as_str());
        }
        let replayable = session.req_header().method.is_idempotent()
            && session.response_written().is_none()
            && !session.retry_buffer_truncated();
        // A pooled connection the backend had already closed: not the backend's failure, and
        // retried on a fresh connection outside the retry budget.
        if client_reused && replayable && matches!(e.retry, pingora::RetryType::ReusedOnly) {
            ctx.attempt = None;
            e.retry.decide_reuse(true);
            return e;
        }
        if let Some(mut a) = ctx.attempt.take() {
            // A client that went away is not the backend's failure.
            if e.esource() == &pingora::ErrorSource::Upstream {
                a.failure();
            }
        }
        ctx.attempt_failed(&e);
        let budget = self.upstream(ctx).map_or(0, |u| u.retries as usize);
        if !replayable || ctx.tried.len() > budget {
            e.set_retry(false);
        } else if e.esource() == &pingora::ErrorSource::Upstream {
            // The backend failed (reset, timeout) before any response reached the client, and
            // the request can be replayed: try another backend.
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// Answer a failure to proxy with the JSON error contract, unless a response already
    /// began (then a gRPC call still ends with the failure's status in trailers); the status
    /// for the log (0: none). `unanswered`: a WebSocket handshake timed out.
    pub(super) async fn answer_failure<D: Downstream>(
        &self,
        session: &mut D,
        e: &Error,
        ctx: &mut Ctx,
        unanswered: bool,
    ) -> u16 {
        let reject = match unanswered {
            true => Some(Reject::GatewayTimeout),
            false => Reject::from_proxy_error(e),
        };
        let code = reject.map_or(0, Reject::status);
        if let Some(reject) = reject {
            let upstream = self.upstream(ctx).map(|u| &*u.name);
            let msg = error::proxy_error_message(reject, upstream);
            if session.response_written().is_some() {
                match session.pingora() {
                    Some(session) if ctx.grpc => {
                        let ended = crate::grpc::end_with_status(session, reject, &msg);
                        let status = ended.then(|| crate::grpc::status(reject));
                        ctx.grpc_status = status.or(ctx.grpc_status);
                    }
                    // Pingora's HTTP/1 session holds a head whose body has not finished in
                    // its write buffer, and the connection ends after this: what the client
                    // was promised leaves first, so it sees the response cut short.
                    Some(session) if !session.as_downstream().is_http2() => {
                        Downstream::cut_short(session).await
                    }
                    _ => {}
                }
            } else {
                let mut extra = Vec::new();
                if reject == Reject::Unavailable {
                    let secs = self.upstream(ctx).map_or(1, |u| u.retry_after());
                    extra.push((http::header::RETRY_AFTER, HeaderValue::from(secs)));
                }
                // The upstream failed after the cache step: it still says what that step did.
                if let Some(status) = ctx.cache {
                    let v = HeaderValue::from_static(status.as_str());
                    extra.push((crate::headers::names::X_CACHE_STATUS.clone(), v));
                }
                let _ = self.reject(session, ctx, reject, &msg, &extra).await;
            }
        }
        code
    }
}

/// A failed request as the error log names it: method, path and Host, never the query (which
/// can carry an API key). Pingora's `request_summary` and the own codec's log line both use it.
pub(super) fn summary<D: Downstream>(session: &D) -> String {
    let req = session.req_header();
    let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
    let host = String::from_utf8_lossy(host.unwrap_or_default());
    format!("{} {}, Host: {host}", req.method, req.uri.path())
}
