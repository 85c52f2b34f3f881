//! The end of a sampled request's trace: what its server span says (route, status, caller,
//! rate-limit decision, failure), handed to the tracer with the last attempt's span.

use pingora::Error;

use super::{Ctx, Tollgate};
use crate::downstream::Downstream;

impl Tollgate {
    /// A sampled request's server span, and its last attempt's, go to the exporter.
    pub(super) fn trace_finished<D: Downstream>(
        &self,
        tracer: &crate::trace::Tracer,
        t: &mut crate::trace::Trace,
        session: &D,
        e: Option<&Error>,
        ctx: &Ctx,
        status: u16,
    ) {
        if !t.sampled() {
            return;
        }
        let req = session.req_header();
        let route = self.route(ctx).map(|r| (&*r.name, r.prefix.as_str()));
        let rate_limit = ctx.limit.as_ref().map(|d| {
            let policy = self.gw.rate_limits.policies.get(d.policy);
            (d.allowed, policy.map_or("", |p| &*p.name))
        });
        let upstream_error = e
            .filter(|e| e.esource() == &pingora::ErrorSource::Upstream)
            .map(|e| e.etype().as_str());
        let finished = crate::trace::Finished {
            method: req.method.as_str(),
            path: req.uri.path(),
            status,
            route,
            consumer: ctx.consumer(),
            rate_limit,
            client_ip: ctx.client_ip,
            request_id: ctx.request_id.to_str().unwrap_or("-"),
            error: e.map(|e| e.etype().as_str()),
        };
        tracer.finish(t, &finished, upstream_error);
    }
}
