//! One line per request on the `access` log target.
//!
//! The query string is never logged: it may carry credentials.

use pingora::proxy::Session;
use pingora::Error;

use crate::proxy::Ctx;
use crate::router::Route;

pub const TARGET: &str = "access";

pub fn log(session: &Session, e: Option<&Error>, ctx: &Ctx, route: Option<&Route>) {
    if !log::log_enabled!(target: TARGET, log::Level::Info) {
        return;
    }
    let req = session.req_header();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.local_status)
        .unwrap_or(0);
    let client = ctx.client_ip.map(|ip| ip.to_string());
    let backend = ctx.backend.map(|b| b.to_string());
    log::info!(
        target: TARGET,
        "{client} \"{method} {path}\" {status} route={route} upstream={backend} duration_ms={ms:.3} request_id={id}{err}",
        client = client.as_deref().unwrap_or("-"),
        method = req.method,
        path = req.uri.path(),
        route = route.map_or("-", |r| &r.name),
        backend = backend.as_deref().unwrap_or("-"),
        ms = ctx.started.elapsed().as_secs_f64() * 1000.0,
        id = ctx.request_id.to_str().unwrap_or("-"),
        err = e.map(|e| format!(" error=\"{}\"", e.etype().as_str())).unwrap_or_default(),
    );
}
