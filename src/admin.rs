//! The admin listener: `/health` and `/metrics`, a separate Pingora service so that
//! data-plane load never hides the gateway's own health.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::gateway::Gateway;
use crate::headers::names::{GATEWAY_NAME, X_GATEWAY};
use crate::observe::Observe;

pub struct Admin {
    started: Instant,
    gw: Arc<Gateway>,
    obs: Arc<Observe>,
}

impl Admin {
    pub fn new(gw: Arc<Gateway>, obs: Arc<Observe>) -> Self {
        Admin {
            started: Instant::now(),
            gw,
            obs,
        }
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let routes = self.gw.router.routes();
        let mirrors: Vec<_> = routes
            .iter()
            .zip(&self.gw.mirrors)
            .filter_map(|(r, m)| Some((&*r.name, &**m.as_ref()?)))
            .collect();
        let gw = &self.gw;
        let body = self
            .obs
            .render(&gw.auth, &gw.rate_limits, &gw.upstreams, &mirrors)
            .into_bytes();
        Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .header(&X_GATEWAY, GATEWAY_NAME.clone())
            .body(body)
            .expect("static response parts are valid")
    }

    fn health(&self) -> (u16, serde_json::Value) {
        let upstreams: serde_json::Map<_, _> = self
            .gw
            .upstreams
            .iter()
            .map(|u| (u.name.to_string(), crate::upstream::health_json(u)))
            .collect();
        // 503 when some route has no usable backend, so an L4 balancer can use it.
        let down: Vec<&str> = self
            .gw
            .router
            .routes()
            .iter()
            .filter(|r| !self.gw.upstreams[r.upstream].available())
            .map(|r| &*r.name)
            .collect();
        let status = if down.is_empty() { 200 } else { 503 };
        (
            status,
            serde_json::json!({
                "status": if down.is_empty() { "ok" } else { "degraded" },
                "version": env!("CARGO_PKG_VERSION"),
                // Which process answers: tells the two apart during a graceful upgrade.
                "pid": std::process::id(),
                "uptime_seconds": self.started.elapsed().as_secs(),
                "routes": self.gw.router.routes().len(),
                "routes_down": down,
                "upstreams": upstreams,
            }),
        )
    }
}

fn json(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header(&X_GATEWAY, GATEWAY_NAME.clone())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/health" => {
                let (status, v) = self.health();
                json(status, &v)
            }
            "/metrics" => self.metrics(),
            _ => json(
                404,
                &serde_json::json!({"error": "no_route", "message": "admin endpoints: /health, /metrics", "request_id": ""}),
            ),
        }
    }
}
