//! A route's `mirror`: a sampled copy of its requests sent to a shadow upstream, fire and
//! forget. The copy leaves beside the real request and nothing of it comes back: its answer
//! is read and dropped, its failures are counted, and a slow or dead shadow never delays or
//! fails the client's request. Copies in flight are bounded; one past the bound is dropped
//! and counted. A body is copied up to `max_body`; a larger one is mirrored without it.
//!
//! The shadow is reached with the own engine's HTTP/1 client, so it must be a plaintext
//! HTTP/1 upstream; its backends, health checks and breaker are its own.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::{ConfigErrors, Dur, Size};
use crate::fastpath::h1::client::Conn;
use crate::upstream::Upstream;

/// `mirror: {upstream: shadow, sample: 0.1, timeout: 2s, max_body: 64KiB}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    pub upstream: String,
    #[serde(default)]
    pub sample: Option<f64>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub max_body: Option<Size>,
}

/// Copies in flight at most, per route.
const IN_FLIGHT: usize = 256;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_MAX_BODY: u64 = 64 * 1024;

/// What became of mirrored copies, the `outcome` label of `tollgate_mirror_requests_total`.
pub const OUTCOMES: [&str; 8] = [
    "sent",
    "dropped",
    "failed",
    "status_1XX",
    "status_2XX",
    "status_3XX",
    "status_4XX",
    "status_5XX",
];

/// A compiled `mirror`.
#[derive(Debug)]
pub struct Mirror {
    pub upstream: Arc<Upstream>,
    pub sample: f64,
    pub timeout: Duration,
    pub max_body: u64,
    slots: Arc<Semaphore>,
    counts: Arc<[AtomicU64; OUTCOMES.len()]>,
    /// Bodies larger than `max_body`, mirrored without them.
    pub truncated: AtomicU64,
}

impl Mirror {
    /// `f` at key `base` (`routes[i].mirror`), against the compiled upstreams.
    pub fn compile(
        base: &str,
        f: MirrorFile,
        upstreams: &[Arc<Upstream>],
        errs: &mut ConfigErrors,
    ) -> Option<Mirror> {
        let Some(up) = upstreams.iter().find(|u| *u.name == *f.upstream) else {
            let known: Vec<_> = upstreams.iter().map(|u| &*u.name).collect();
            errs.push(
                format!("{base}.upstream"),
                format!(
                    "unknown upstream {:?} (known: {})",
                    f.upstream,
                    known.join(", ")
                ),
            );
            return None;
        };
        if !crate::fastpath::relays_to(up) {
            errs.push(
                format!("{base}.upstream"),
                format!(
                    "{:?} is not a plaintext HTTP/1 upstream, the only kind a mirror sends to",
                    f.upstream
                ),
            );
            return None;
        }
        let sample = f.sample.unwrap_or(1.0);
        if !(sample > 0.0 && sample <= 1.0) {
            errs.push(format!("{base}.sample"), "must be above 0 and at most 1");
            return None;
        }
        let timeout = f.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            errs.push(format!("{base}.timeout"), "must be greater than 0");
            return None;
        }
        Some(Mirror {
            upstream: up.clone(),
            sample,
            timeout,
            max_body: f.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            counts: Arc::new(Default::default()),
            truncated: AtomicU64::new(0),
        })
    }

    /// Whether this request is one of the sample.
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || fastrand::f64() < self.sample
    }

    /// Send a copy: `head` is the upstream request head as the real request's (with its
    /// framing headers left out), `body` what was kept of the body (`None`: none, or more
    /// than `max_body`). Returns at once.
    pub fn send(&self, head: &[u8], body: Option<Bytes>) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.count(1);
            return;
        };
        let mut wire = Vec::with_capacity(head.len() + 32 + body.as_ref().map_or(0, |b| b.len()));
        // The head ends with its empty line: the length goes before it.
        wire.extend_from_slice(&head[..head.len().saturating_sub(2)]);
        let len = body.as_ref().map_or(0, |b| b.len());
        if len > 0 {
            wire.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        if let Some(b) = &body {
            wire.extend_from_slice(b);
        }
        let (up, counts, timeout) = (self.upstream.clone(), self.counts.clone(), self.timeout);
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(timeout, exchange(&up, &wire)).await {
                Ok(Some(status)) => 3 + usize::from(status / 100).clamp(1, 5) - 1,
                _ => 2,
            };
            counts[0].fetch_add(1, Relaxed);
            counts[outcome].fetch_add(1, Relaxed);
            drop(slot);
        });
    }

    fn count(&self, outcome: usize) {
        self.counts[outcome].fetch_add(1, Relaxed);
    }

    /// Copies by outcome, in [`OUTCOMES`]' order.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OUTCOMES
            .iter()
            .zip(self.counts.iter())
            .map(|(o, c)| (*o, c.load(Relaxed)))
    }
}

/// One copy on a backend of the shadow: its status, or `None` when it failed.
async fn exchange(up: &Arc<Upstream>, wire: &[u8]) -> Option<u16> {
    let mut attempt = up.select(b"", &[])?;
    let result = async {
        let mut conn = Conn::get(attempt.addr(), &up.timeouts).await.ok()?;
        conn.send(wire).await.ok()?;
        let (resp, mut body) = conn.response(false, |_| false).await.ok()?;
        while conn.body(&mut body).await.ok()?.is_some() {}
        conn.release(1);
        Some(resp.status.as_u16())
    }
    .await;
    match result {
        Some(s) if !up.is_failure_status(s) => attempt.success(),
        _ => attempt.failure(),
    }
    result
}

/// A copy waiting for its request's body (Pingora's path reads a body piece by piece).
pub struct Pending {
    mirror: Arc<Mirror>,
    head: Vec<u8>,
    body: Option<bytes::BytesMut>,
}

impl Pending {
    pub fn new(mirror: Arc<Mirror>, head: Vec<u8>) -> Pending {
        Pending {
            mirror,
            head,
            body: Some(bytes::BytesMut::new()),
        }
    }
}

impl crate::ctx::BodyCopy for Pending {
    /// At the body's end the copy goes, with the body unless it outgrew `max_body`.
    fn piece(&mut self, piece: Option<&[u8]>, end: bool) -> bool {
        if let (Some(b), Some(piece)) = (self.body.as_mut(), piece) {
            if (b.len() + piece.len()) as u64 > self.mirror.max_body {
                self.body = None;
                self.mirror.truncated.fetch_add(1, Relaxed);
            } else {
                b.extend_from_slice(piece);
            }
        }
        if end {
            let body = self.body.take().map(|b| b.freeze());
            self.mirror.send(&self.head, body);
        }
        !end
    }
}
