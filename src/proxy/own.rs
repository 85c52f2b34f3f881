//! The request's story when tollgate's own HTTP/1 codec serves the client
//! ([`crate::downstream::h1`]): the same steps as Pingora's hooks, in the same order, on the
//! same code: who is calling, admission, the fast-path relay, the answer to a failure, the
//! log. Taken only by a request both ends of which the fast path handles (a plain request
//! routed to a plaintext HTTP/1 upstream); the codec hands every other one to Pingora.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::{relay, Ctx, Tollgate};
use crate::conn::{Serve, Served};
use crate::downstream::h1::{self, H1};
use crate::downstream::Downstream;
use crate::router::Match;

impl Tollgate {
    /// Whether the own codec serves this request: it takes the fast path whatever admission
    /// decides, so answering it here changes nothing but the cost.
    fn serves(&self, req: &pingora::http::RequestHeader) -> bool {
        if !relay::plain(req) || crate::grpc::is_grpc(req) {
            return false;
        }
        let Ok(path) = crate::path::normalise(req.uri.path()) else {
            return false;
        };
        let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
        match self.gw.router.find(host, &path, &req.method) {
            Match::Route(r) => relay::relays_to(&self.gw.upstreams[r.upstream]),
            _ => false,
        }
    }
}

impl Serve for Tollgate {
    async fn serve(&self, stream: &mut Stream, head: &BytesMut, shutting_down: bool) -> Served {
        let Some(req) = h1::parse(head, |req| self.serves(req)) else {
            return Served::NotMine;
        };
        let mut session = H1::new(stream, req, shutting_down);
        let mut ctx = Ctx::default();
        self.identify(&session, &mut ctx);
        let outcome = match self.admit(&mut session, &mut ctx).await {
            Ok(true) => Ok(true),
            Ok(false) => self.relay(&mut session, &mut ctx).await,
            Err(e) => Err(e),
        };
        let error = outcome.err();
        if let Some(e) = &error {
            // As Pingora's `fail_to_proxy`: answered if nothing was sent yet, and the
            // connection is not reused (which the answer says).
            session.set_keepalive(None);
            self.answer_failure(&mut session, e, &mut ctx, false).await;
        }
        self.finished(&session, error.as_deref(), &mut ctx);
        Served::Done {
            reuse: session.reusable(),
        }
    }
}
