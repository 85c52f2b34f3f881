//! The request's story when tollgate's own HTTP/1 codec serves the client
//! ([`crate::fastpath::h1::server`]): the same steps as Pingora's hooks, in the same order, on the
//! same code: who is calling, admission, the fast-path relay, the answer to a failure, the
//! log. Taken only by a request both ends of which the fast path handles (a plain request
//! routed to a plaintext HTTP/1 upstream); the codec hands every other one to Pingora.

use std::cell::Cell;
use std::sync::Arc;

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::cache::Own;
use super::{Ctx, Tollgate};
use crate::conn::{Refusal, Served};
use crate::downstream::{answer, Downstream};
use crate::error::Reject;
use crate::fastpath::{self, h1::server as h1, h1::server::Head, h1::server::H1};
use crate::policy::router::Match;

impl Tollgate {
    /// Whether the own codec serves this request: it is carried by the own engine whatever
    /// admission decides (if it is not answered before), so serving it here changes nothing
    /// but the cost. A request no route takes is answered by admission alike, whoever serves it.
    /// On a caching route, what it does at the cache step is put in `own` (a hit or a miss it
    /// takes); what it cannot do there, Pingora's cache path does.
    fn serves<'a>(
        &'a self,
        req: &pingora::http::RequestHeader,
        own: &Cell<Option<Box<Own<'a>>>>,
        routed: &Cell<Option<usize>>,
    ) -> bool {
        if self.all_relayed {
            return fastpath::plain(req);
        }
        let Ok(path) = crate::policy::path::normalise(req.uri.path()) else {
            return false;
        };
        let host = super::admit::route_host(req);
        match self.gw.router.find(host, &path, &req.method, req) {
            Match::Route(r) => {
                if matches!(path, std::borrow::Cow::Borrowed(_)) {
                    routed.set(Some(r.id));
                }
                r.upstreams()
                    .all(|up| fastpath::carries(req, &self.gw.upstreams[up]))
                    && (self.gw.caches[r.id].is_none()
                        || self
                            .own_cache_ahead(req, r)
                            .map(|o| own.set(Some(o)))
                            .is_some())
            }
            _ => false,
        }
    }
}

impl Tollgate {
    /// Answer a head refused before it became a request (by the own codec's parse, or by the
    /// screening of a head for Pingora's session): the JSON error contract, then close.
    /// Nothing of it is trusted, so it is neither routed nor logged with its fields; it is
    /// one access-log line and one request sample all the same.
    pub(crate) async fn refuse_head(&self, stream: &mut Stream, refusal: Refusal) {
        let started = std::time::Instant::now();
        // The codec needs a request to answer; the method decides only that a body is sent.
        let method = if refusal.head_request { "HEAD" } else { "GET" };
        let Ok(placeholder) = pingora::http::RequestHeader::build_no_case(method, b"/", None)
        else {
            return;
        };
        let mut session = H1::new(stream, placeholder, true);
        let id = crate::client::new_request_id();
        let reject = refusal.reject;
        // An address over its connection cap may try again in a second.
        let retry = [(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        )];
        let extra: &[_] = if reject == Reject::Unavailable {
            &retry
        } else {
            &[]
        };
        let _ = answer::respond(&mut session, reject, &refusal.why, Some(&id), extra, false).await;
        let sent = session.body_bytes_sent();
        self.obs
            .head_refused(session.peer_ip(), &id, reject, sent, started.elapsed());
    }
}

impl Tollgate {
    /// [`crate::conn::Serve::serve`] for the generation `self`, which [`crate::live::Live`]
    /// serves with: taking the generation's `Arc` makes this the request's only future, not
    /// one the caller's would hold and copy in.
    pub async fn serve(
        self: Arc<Self>,
        stream: &mut Stream,
        head: BytesMut,
        shutting_down: bool,
    ) -> Served {
        if !self.fast_path {
            return Served::NotMine(head);
        }
        let (own, routed) = (Cell::new(None), Cell::new(None));
        let parsed = h1::parse(head, |req| self.serves(req, &own, &routed));
        let own = own.into_inner();
        let (req, ahead) = match parsed {
            Head::Serve(req, ahead) => (req, ahead),
            Head::Refuse { why, head_request } => {
                let refusal = Refusal {
                    reject: Reject::BadRequest,
                    why: why.into(),
                    head_request,
                };
                self.refuse_head(stream, refusal).await;
                return Served::Done {
                    reuse: false,
                    ahead: None,
                };
            }
            Head::Pass(head) => return Served::NotMine(head),
        };
        let mut session = H1::new(stream, req, shutting_down);
        let mut ctx = Ctx {
            routed: routed.get(),
            ..Ctx::default()
        };
        self.identify(&session, &mut ctx);
        let outcome = match self.admit(&mut session, &mut ctx).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.mirror(&mut session, &mut ctx);
                // What the codec decided at the cache step (boxed: a route without a cache
                // carries nothing more through the request).
                let mut own = own;
                let hit = match own.as_deref() {
                    Some(Own::Hit(key)) => self.own_hit(&mut session, &mut ctx, key).await,
                    _ => Ok(false),
                };
                match (hit, own.as_deref_mut()) {
                    (Ok(false), Some(Own::Miss(miss))) => {
                        self.own_miss(&mut session, &mut ctx, miss).await
                    }
                    (Ok(false), _) => self.relay(&mut session, &mut ctx).await,
                    (answered, _) => answered,
                }
            }
            Err(e) => Err(e),
        };
        let error = outcome.err();
        if let Some(e) = &error {
            // As Pingora's `fail_to_proxy`: answered if nothing was sent yet, and the
            // connection is not reused (which the answer says).
            session.set_keepalive(None);
            let status = self.answer_failure(&mut session, e, &mut ctx, false).await;
            // The line Pingora's `handle_error` writes for a failure on its path.
            log::error!(
                "Fail to proxy: {e}, status: {status}, {}",
                super::failure::summary(&session)
            );
        }
        self.own_cache_count(&ctx);
        self.finished(&session, error.as_deref(), &mut ctx);
        Served::Done {
            reuse: session.reusable(),
            ahead,
        }
    }
}
