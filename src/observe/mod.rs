//! What tollgate tells operators: one access-log line and the metrics of every request.

pub mod access_log;
pub mod cache_metrics;
pub mod metrics;
pub mod refusals;

use std::time::{Instant, SystemTime};

use pingora::Error;

use crate::ctx::Ctx;
use crate::downstream::Downstream;
use crate::policy::router::Route;
use access_log::{AccessLog, Entry, RateLimitEntry};
use metrics::Metrics;

/// The observers the proxy reports to.
pub struct Observe {
    /// This config generation's series (a reload carries the counts of routes that stay).
    pub metrics: Metrics,
    /// Shared by every generation whose `access_log` section is the same.
    pub access_log: std::sync::Arc<AccessLog>,
    /// The last refusals, for the admin dashboard (shared by every generation).
    pub refusals: std::sync::Arc<refusals::Refusals>,
}

impl Observe {
    /// A credential was refused on `route`.
    pub fn auth_failed(&self, route: usize, f: &crate::policy::auth::Failure) {
        self.metrics.auth_failed(route, f.reason);
    }

    /// A request on `route` was answered 429 after `d`.
    pub fn rate_limited(&self, route: usize, d: &crate::policy::limit::Decision) {
        self.metrics.rate_limited(route, d.policy);
    }

    /// The `/metrics` page: the request series, then what other modules count (the access
    /// log's drops, the Redis store's failures) and the backends' state, read now.
    pub fn render(
        &self,
        auth: &crate::policy::auth::Auth,
        limits: &crate::policy::limit::Limits,
        upstreams: &[std::sync::Arc<crate::upstream::Upstream>],
        mirrors: &[(&str, &crate::mirror::Mirror)],
    ) -> String {
        let dropped = self.access_log.dropped();
        let redis = limits.redis.as_ref().map_or(0, |r| r.failures());
        let (spans_exported, spans_dropped) = crate::trace::export::counts();
        self.metrics.render(&|o: &mut String| {
            let counters = [
                ("tollgate_access_log_dropped_total", "Access-log lines dropped because the writer fell behind or the destination refused them.", dropped),
                ("tollgate_redis_errors_total", "Rate-limit store calls to Redis that failed or timed out.", redis),
                ("tollgate_trace_spans_exported_total", "Spans the OTLP collector accepted.", spans_exported),
                ("tollgate_trace_spans_dropped_total", "Spans dropped because the export queue was full or the export failed.", spans_dropped),
            ];
            for (name, help, value) in counters {
                o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
            }
            metrics::render_introspection(o, auth);
            metrics::render_upstreams(o, upstreams);
            metrics::render_mirrors(o, mirrors);
        })
    }

    /// A request head refused before it was parsed into a request: one line whose request
    /// fields are `-` (nothing of the head is trusted, nor written), and one request sample
    /// without a route or method; `reject`'s code is the line's `error`.
    pub fn head_refused(
        &self,
        client_ip: Option<std::net::IpAddr>,
        request_id: &http::HeaderValue,
        reject: crate::error::Reject,
        bytes_out: usize,
        total: std::time::Duration,
    ) {
        let status = reject.status();
        self.metrics.rejected(reject.code());
        self.metrics.head_refused(status, total);
        if self.refusals.enabled() && refusals::is_refusal(status) {
            self.refusals.record(refusals::Refusal {
                at: SystemTime::now(),
                status,
                method: "-".into(),
                path: "-".into(),
                route: None,
                client_ip,
                consumer: None,
                // Before a request: only the connection cap answers 503 here.
                reason: match reject {
                    crate::error::Reject::Unavailable => "connection_cap".to_owned(),
                    r => r.code().to_owned(),
                },
                request_id: request_id.to_str().unwrap_or("").into(),
            });
        }
        self.access_log.write(&Entry {
            time: SystemTime::now(),
            request_id: request_id.to_str().unwrap_or("-"),
            client_ip: client_ip.map(crate::client::canonical),
            consumer: None,
            method: "-",
            path: "-",
            version: "-",
            route: None,
            status,
            bytes_in: 0,
            bytes_out,
            upstream: None,
            upstream_time: None,
            total,
            websocket: None,
            rate_limit: None,
            user_agent: None,
            referer: None,
            error: Some(reject.code()),
            grpc_status: None,
            trace_id: None,
        });
    }

    /// Called once per request, from `logging`, whatever happened; the status answered
    /// (0: none).
    pub fn finish<D: Downstream>(
        &self,
        session: &D,
        e: Option<&Error>,
        ctx: &Ctx,
        route: Option<&Route>,
    ) -> u16 {
        let req = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let total = ctx.started.elapsed();
        let upstream = ctx
            .upstream_started
            .zip(ctx.upstream_answered)
            .map(|(a, b): (Instant, Instant)| b.saturating_duration_since(a));
        if ctx.counted {
            self.metrics.request_done();
        }
        self.metrics
            .request_finished(ctx.route, &req.method, status, total, upstream);
        if !self.access_log.enabled() {
            return status;
        }
        let header =
            |name: http::header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        self.access_log.write(&Entry {
            time: SystemTime::now(),
            request_id: ctx.request_id.to_str().unwrap_or("-"),
            client_ip: ctx.client_ip,
            consumer: ctx.consumer(),
            method: req.method.as_str(),
            path: req.uri.path(),
            version: match req.version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            },
            route: route.map(|r| &*r.name),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            upstream: ctx.backend,
            upstream_time: upstream,
            total,
            websocket: ctx.tunnel.map(|t| t.elapsed()),
            rate_limit: ctx.limit.map(|d| RateLimitEntry {
                allowed: d.allowed,
                remaining: d.remaining,
            }),
            user_agent: header(http::header::USER_AGENT),
            // Like the request's own, the referring URL's query may carry a credential.
            referer: header(http::header::REFERER)
                .map(|r| r.split(['?', '#']).next().unwrap_or("")),
            error: match e {
                Some(e) => Some(e.etype().as_str()),
                None => ctx.tunnel_idled.then_some("websocket_idle_timeout"),
            },
            grpc_status: ctx.grpc_status,
            trace_id: ctx.trace.as_ref().map(|t| &t.trace_id),
        });
        status
    }
}
