//! Why a request was refused or failed, in words an operator reads on the dashboard
//! (`bad_signature`, `rate_limited policy=per-ip`, `circuit_open backend=10.0.0.7:80`,
//! `upstream_timeout backend=...`): what the policy or the failure said, and its subject.

use pingora::{Error, ErrorType};

use super::{Ctx, Tollgate};
use crate::ctx::Why;
use crate::downstream::Downstream;
use crate::observe::refusals::Refusal;

impl Tollgate {
    /// Keep this refused request for the dashboard.
    pub(super) fn record_refusal<D: Downstream>(
        &self,
        session: &D,
        e: Option<&Error>,
        ctx: &Ctx,
        status: u16,
    ) {
        let req = session.req_header();
        self.obs.refusals.record(Refusal {
            at: std::time::SystemTime::now(),
            status,
            method: req.method.as_str().into(),
            path: req.uri.path().into(),
            route: self.route(ctx).map(|r| (*r.name).into()),
            client_ip: ctx.client_ip,
            consumer: ctx.consumer().map(Into::into),
            reason: self.reason(e, ctx, status),
            request_id: ctx.request_id.to_str().unwrap_or("").into(),
        });
    }

    fn reason(&self, e: Option<&Error>, ctx: &Ctx, status: u16) -> String {
        let backend = || {
            ctx.backend
                .map_or(String::new(), |b| format!(" backend={b}"))
        };
        match (ctx.why, e) {
            (Some(Why::Auth(r)), _) => r.as_str().to_owned(),
            (Some(Why::RateLimited), _) => {
                let policy = ctx
                    .limit
                    .map(|d| &*self.gw.rate_limits.policies[d.policy].name);
                format!("rate_limited policy={}", policy.unwrap_or("?"))
            }
            (_, Some(e)) => match e.etype() {
                ErrorType::HTTPStatus(503) if ctx.tried.is_empty() => self.no_backend(ctx),
                // Every backend tried failed: how the last one did.
                ErrorType::HTTPStatus(_) if !ctx.tried.is_empty() => {
                    let word = match ctx.last_failure {
                        Some(crate::error::Reject::GatewayTimeout) => "upstream_timeout",
                        _ => "upstream_error",
                    };
                    let last = ctx.tried.last().map_or(String::new(), |b| b.to_string());
                    format!("{word} backend={last} attempts={}", ctx.tried.len())
                }
                ErrorType::ConnectTimedout => format!("upstream_connect_timeout{}", backend()),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    format!("upstream_timeout{}", backend())
                }
                ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => {
                    format!("upstream_unreachable{}", backend())
                }
                // A limit the proxy applied itself (a body over `max_body`...).
                ErrorType::HTTPStatus(s) => match ctx.why {
                    Some(Why::Refused(code)) => code.to_owned(),
                    _ => format!("status_{s}"),
                },
                t => match ctx.why {
                    Some(Why::Refused(code)) if ctx.backend.is_none() => code.to_owned(),
                    _ => format!("upstream_{}{}", snake(t.as_str()), backend()),
                },
            },
            (Some(Why::Refused(code)), None) => code.to_owned(),
            (None, None) if status >= 500 && ctx.backend.is_some() => {
                format!("upstream_status_{status}{}", backend())
            }
            (None, None) => format!("status_{status}"),
        }
    }

    /// No backend of the request's upstream could take it: because their circuits are
    /// open (naming them), or because none is healthy.
    fn no_backend(&self, ctx: &Ctx) -> String {
        let Some(up) = self.upstream(ctx) else {
            return "no_backend".to_owned();
        };
        let open: Vec<String> = match &up.breaker {
            Some(c) => up
                .backends()
                .iter()
                .filter(|b| b.breaker.state(c) != crate::upstream::breaker::State::Closed)
                .map(|b| b.addr.to_string())
                .collect(),
            None => Vec::new(),
        };
        match open.is_empty() {
            true => format!("no_healthy_backend upstream={}", up.name),
            false => format!("circuit_open backend={}", open.join(",")),
        }
    }
}

/// `ReadError` as `read_error`, `TLSHandshakeFailure` as `tls_handshake_failure`.
fn snake(camel: &str) -> String {
    let c: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, &ch) in c.iter().enumerate() {
        let word_starts = ch.is_ascii_uppercase()
            && i > 0
            && (!c[i - 1].is_ascii_uppercase()
                || c.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()));
        if word_starts {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_types_read_as_words() {
        for (camel, word) in [
            ("ReadError", "read_error"),
            ("H2Error", "h2_error"),
            ("ConnectionClosed", "connection_closed"),
            ("TLSHandshakeFailure", "tls_handshake_failure"),
            ("HTTPStatus", "http_status"),
        ] {
            assert_eq!(super::snake(camel), word);
        }
    }
}
