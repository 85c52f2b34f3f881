//! Active health checks (`http` or `tcp`), run as one Pingora background service that probes
//! every upstream at its own interval. Pingora's health registry applies the consecutive
//! thresholds and logs each state change once.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::tls::UpstreamTls;
use super::trust;
use super::{Members, Upstream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Http { path: String, status: u16 },
    Tcp,
}

/// The compiled `health_check` section. Defaults do not flap on one lost probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: usize,
    pub unhealthy: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: CheckKind::Http {
                path: "/".into(),
                status: 200,
            },
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        }
    }
}

impl HealthConfig {
    /// The checks' verdicts go to `verdicts`. A TLS upstream is probed over TLS, with its SNI
    /// and verification.
    pub(super) fn build(
        &self,
        upstream: &str,
        host: &str,
        verdicts: Verdicts,
        protocol: super::protocol::Protocol,
        tls: Option<&UpstreamTls>,
    ) -> Box<dyn HealthCheck + Send + Sync> {
        let observer = Box::new(verdicts);
        let system_store = trust::needs_system_store(tls);
        match &self.kind {
            CheckKind::Tcp => {
                // Pingora's TCP check does a TLS handshake when it has an SNI.
                let mut hc = trust::build_connectors(system_store, || match tls {
                    Some(t) if !t.sni.is_empty() => TcpHealthCheck::new_tls(&t.sni),
                    _ => TcpHealthCheck::new(),
                });
                if let Some(t) = tls {
                    t.verification(&mut hc.peer_template.options);
                }
                hc.consecutive_success = self.healthy;
                hc.consecutive_failure = self.unhealthy;
                hc.peer_template.options.connection_timeout = Some(self.timeout);
                hc.peer_template.options.total_connection_timeout = Some(self.timeout);
                hc.health_changed_callback = Some(observer);
                hc
            }
            CheckKind::Http { path, status } => {
                let mut hc = trust::build_connectors(system_store, || {
                    HttpHealthCheck::new(host, tls.is_some())
                });
                if let Some(t) = tls {
                    hc.peer_template.sni.clone_from(&t.sni);
                    t.verification(&mut hc.peer_template.options);
                }
                hc.consecutive_success = self.healthy;
                hc.consecutive_failure = self.unhealthy;
                let o = &mut hc.peer_template.options;
                o.connection_timeout = Some(self.timeout);
                o.total_connection_timeout = Some(self.timeout);
                o.read_timeout = Some(self.timeout);
                // An h2c-only backend answers no HTTP/1.1 probe.
                protocol.apply(o);
                if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                    let _ = req.append_header("Host", host);
                    let _ = req.append_header("User-Agent", "tollgate-health-check");
                    hc.req = req;
                }
                hc.health_changed_callback = Some(observer);
                let name = upstream.to_owned();
                hc.set_backend_summary(move |b| format!("upstream {name} backend {}", b.addr));
                let want = *status;
                hc.validator = Some(Box::new(move |resp| {
                    if resp.status.as_u16() == want {
                        Ok(())
                    } else {
                        pingora::Error::e_explain(
                            pingora::ErrorType::HTTPStatus(resp.status.as_u16()),
                            format!("health check expected status {want}"),
                        )
                    }
                }));
                Box::new(hc)
            }
        }
    }
}

/// Where the checks' verdicts go: each flip marks the backend in the current membership
/// snapshot (where the request path reads it) and is counted (`health_changes` on `/health`).
pub(super) struct Verdicts {
    pub changes: Arc<AtomicU64>,
    pub members: Arc<ArcSwap<Members>>,
}

#[async_trait]
impl HealthObserve for Verdicts {
    async fn observe(&self, target: &Backend, healthy: bool) {
        self.changes.fetch_add(1, Relaxed);
        // Keyed as Pingora keys health: address and weight.
        if let Some(b) = self.members.load().iter().find(|b| b.backend == *target) {
            b.healthy.store(healthy, Relaxed);
        }
    }
}

/// One background service probing all upstreams that have a `health_check`.
pub struct HealthService {
    pub upstreams: Vec<Arc<Upstream>>,
    /// Told when each upstream's first round of probes is over.
    pub first_round: FirstRound,
}

/// How many upstreams have not finished their first round of probes yet: what a service
/// manager's `READY=1` waits for ([`crate::notify`]), so a backend that is down is known
/// to be down before the first request.
#[derive(Clone)]
pub struct FirstRound(Arc<tokio::sync::watch::Sender<usize>>);

impl FirstRound {
    pub fn new(upstreams: usize) -> Self {
        FirstRound(Arc::new(tokio::sync::watch::Sender::new(upstreams)))
    }

    fn one_done(&self) {
        self.0.send_modify(|left| *left = left.saturating_sub(1));
    }

    /// Returns once every upstream has been probed once.
    pub async fn wait(&self) {
        let _ = self.0.subscribe().wait_for(|left| *left == 0).await;
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let loops = self.upstreams.iter().filter_map(|u| {
            let interval = u.health.as_ref()?.interval;
            let mut shutdown = shutdown.clone();
            let u = u.clone();
            let mut first = Some(self.first_round.clone());
            Some(async move {
                loop {
                    tokio::select! {
                        _ = u.run_health_check() => {}
                        _ = shutdown.changed() => return,
                    }
                    if let Some(first) = first.take() {
                        first.one_done();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            })
        });
        futures::future::join_all(loops).await;
    }
}
