//! Active health checks (`http` or `tcp`), run as one background service that probes every
//! upstream at its own interval with Pingora's checks. The verdicts are tollgate's own, kept on
//! each backend ([`Judged`]): they apply the consecutive thresholds, log each state change once,
//! and carry over an in-process reload ([`carry`]) for backends that stay.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use log::{info, warn};

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
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
    /// The checks, whose results `judge` takes. A TLS upstream is probed over TLS, with its
    /// SNI and verification.
    pub(super) fn build(
        &self,
        upstream: &str,
        host: &str,
        judge: Judge,
        protocol: super::protocol::Protocol,
        tls: Option<&UpstreamTls>,
    ) -> Box<dyn HealthCheck + Send + Sync> {
        Box::new(Judged {
            probe: self.probe(host, protocol, tls),
            healthy: self.healthy,
            unhealthy: self.unhealthy,
            upstream: upstream.to_owned(),
            judge,
        })
    }

    fn probe(
        &self,
        host: &str,
        protocol: super::protocol::Protocol,
        tls: Option<&UpstreamTls>,
    ) -> Box<dyn HealthCheck + Send + Sync> {
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
                hc.peer_template.options.connection_timeout = Some(self.timeout);
                hc.peer_template.options.total_connection_timeout = Some(self.timeout);
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

/// Where the checks' results go: the backends of the current membership snapshot (where the
/// request path reads the verdict), and the count of verdict changes (`health_changes` on
/// `/health`).
pub(super) struct Judge {
    pub changes: Arc<AtomicU64>,
    pub members: Arc<ArcSwap<Members>>,
}

/// A Pingora check whose every result is judged on the backend, by the upstream's thresholds.
/// Pingora's own registry is told a threshold it never reaches, so it neither flips nor logs:
/// the verdict lives only on the backend, where a reload can hand it on.
struct Judged {
    probe: Box<dyn HealthCheck + Send + Sync>,
    healthy: usize,
    unhealthy: usize,
    upstream: String,
    judge: Judge,
}

#[async_trait]
impl HealthCheck for Judged {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.probe.check(target).await;
        let ok = result.is_ok();
        let threshold = if ok { self.healthy } else { self.unhealthy };
        // Keyed as Pingora keys health: address and weight.
        let members = self.judge.members.load();
        if let Some(b) = members.iter().find(|b| b.backend == *target) {
            if b.observe(ok, threshold) {
                self.judge.changes.fetch_add(1, Relaxed);
                let who = format!("upstream {} backend {}", self.upstream, b.addr);
                match &result {
                    Ok(()) => info!("{who} becomes healthy"),
                    Err(e) => warn!("{who} becomes unhealthy, {e}"),
                }
            }
        }
        result
    }

    fn health_threshold(&self, _success: bool) -> usize {
        usize::MAX
    }
}

/// Hand the verdicts of `old` (the running config) to the backends of `new` (the next one)
/// that stay: same upstream name, same address, and a `health_check` in both. Backends new to
/// the config, and upstreams that had no checks, start healthy as at start. Returns how many
/// backends took a verdict over.
pub fn carry(old: &[Arc<Upstream>], new: &[Arc<Upstream>]) -> usize {
    let mut carried = 0;
    for u in new.iter().filter(|u| u.health.is_some()) {
        let Some(before) = old.iter().find(|o| o.name == u.name && o.health.is_some()) else {
            continue;
        };
        let before = before.backends();
        for b in u.backends().iter() {
            if let Some(o) = before.iter().find(|o| o.addr == b.addr) {
                b.set_health(o.health());
                carried += 1;
            }
        }
    }
    carried
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Spec;
    use std::sync::atomic::AtomicBool;

    /// A probe that passes while `up` is set.
    struct Fake(Arc<AtomicBool>);

    #[async_trait]
    impl HealthCheck for Fake {
        async fn check(&self, _: &Backend) -> pingora::Result<()> {
            if self.0.load(Relaxed) {
                Ok(())
            } else {
                pingora::Error::e_explain(pingora::ErrorType::ConnectRefused, "down")
            }
        }
        fn health_threshold(&self, _: bool) -> usize {
            1
        }
    }

    fn upstream(name: &str, addrs: &[&str], checked: bool) -> Arc<Upstream> {
        Arc::new(Upstream::new(
            name,
            Spec {
                targets: addrs.iter().map(|a| (a.parse().unwrap(), 1)).collect(),
                health: checked.then(HealthConfig::default),
                ..Default::default()
            },
        ))
    }

    fn judged(u: &Upstream, up: &Arc<AtomicBool>) -> Judged {
        Judged {
            probe: Box::new(Fake(up.clone())),
            healthy: 2,
            unhealthy: 3,
            upstream: u.name.to_string(),
            judge: Judge {
                changes: u.health_changes.clone(),
                members: u.members.clone(),
            },
        }
    }

    #[tokio::test]
    async fn verdicts_flip_after_the_thresholds_and_count_once() {
        let u = upstream("u", &["10.0.0.1:80"], true);
        let up = Arc::new(AtomicBool::new(false));
        let hc = judged(&u, &up);
        let b = u.backends()[0].clone();
        for _ in 0..2 {
            assert!(hc.check(&b.backend).await.is_err());
        }
        assert!(b.healthy(), "two failures of three");
        up.store(true, Relaxed);
        assert!(hc.check(&b.backend).await.is_ok());
        up.store(false, Relaxed);
        for _ in 0..2 {
            let _ = hc.check(&b.backend).await;
        }
        assert!(b.healthy(), "a success in between restarts the count");
        let _ = hc.check(&b.backend).await;
        assert!(!b.healthy());
        assert_eq!(u.health_changes.load(Relaxed), 1);
        up.store(true, Relaxed);
        let _ = hc.check(&b.backend).await;
        assert!(!b.healthy(), "one success of two");
        let _ = hc.check(&b.backend).await;
        assert!(b.healthy());
        assert_eq!(u.health_changes.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn carry_hands_verdicts_to_backends_that_stay_under_checks() {
        let old = upstream("u", &["10.0.0.1:80", "10.0.0.2:80"], true);
        let up = Arc::new(AtomicBool::new(false));
        let hc = judged(&old, &up);
        let down = old.backends()[1].clone();
        for _ in 0..3 {
            let _ = hc.check(&down.backend).await;
        }
        let other = upstream("other", &["10.0.0.2:80"], true);
        let unchecked = upstream("plain", &["10.0.0.2:80"], false);
        let plain_before = upstream("plain", &["10.0.0.2:80"], true);
        plain_before.backends()[0].set_health((false, 0));
        let next = upstream("u", &["10.0.0.2:80", "10.0.0.3:80"], true);
        let carried = carry(
            &[old.clone(), plain_before],
            &[next.clone(), other.clone(), unchecked.clone()],
        );
        assert_eq!(carried, 1, "only u's 10.0.0.2 stays under checks");
        assert!(!next.backends()[0].healthy(), "down stays down");
        assert!(next.backends()[1].healthy(), "a new backend starts healthy");
        assert!(other.backends()[0].healthy(), "matched by upstream name");
        assert!(unchecked.backends()[0].healthy(), "no checks now: healthy");
        // The next config's checks bring it back after `healthy` successes.
        up.store(true, Relaxed);
        let hc = judged(&next, &up);
        let b = next.backends()[0].clone();
        let _ = hc.check(&b.backend).await;
        assert!(!b.healthy());
        let _ = hc.check(&b.backend).await;
        assert!(b.healthy());
    }
}
