//! State that survives a graceful upgrade: the old process hands its local rate-limit buckets and
//! circuit breakers to the new one, so a reload neither frees a limited client nor sends traffic
//! to a backend whose circuit is open.
//!
//! Every process serves a snapshot on a Unix socket beside the upgrade socket
//! (`<upgrade_sock>.state`, [`state_sock_path`]). A process started with `-u` fetches it once
//! Pingora has handed it the listening sockets (the old process, told to quit, still serves for
//! Pingora's `CLOSE_TIMEOUT` and keeps its state), imports it, and only then serves and binds that
//! socket itself. Limiter keys are hashes of names and request data (never of config positions),
//! and both stores keep CLOCK_MONOTONIC time ([`crate::clock`]), so values cross as they are;
//! requests the old process admits after the snapshot are not counted by the new one. Wire
//! format: `TGSTATE1`, a little-endian `u32` length and a JSON [`Header`], then that many
//! `(key u64, tat u64)` little-endian pairs; bounded by [`MAX_SNAPSHOT_BYTES`], and rejected
//! whole if malformed (the new process then starts empty).

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};

use crate::gateway::Gateway;
use crate::upstream::breaker::{Saved, State};

const MAGIC: &[u8; 8] = b"TGSTATE1";

/// The largest limiter snapshot: the local store's key bound times 16 bytes, plus room for
/// the header.
pub const MAX_SNAPSHOT_BYTES: usize =
    crate::policy::limit::local::DEFAULT_MAX_KEYS * 16 + (1 << 20);

/// How long a new process waits for the old one's snapshot before starting empty.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The state socket of an instance whose `upgrade_sock` is `upgrade_sock`.
pub fn state_sock_path(upgrade_sock: &str) -> PathBuf {
    PathBuf::from(format!("{upgrade_sock}.state"))
}

/// One backend's breaker, named by upstream and address (indices move between configs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerEntry {
    pub upstream: String,
    pub backend: SocketAddr,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub failures: u32,
    pub opened_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    breakers: Vec<BreakerEntry>,
    limit_keys: u64,
}

/// A process's handed-over state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Local limiter keys and their TATs (CLOCK_MONOTONIC nanoseconds).
    pub limits: Vec<(u64, u64)>,
    pub breakers: Vec<BreakerEntry>,
}

/// What an import took over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub limit_keys: usize,
    pub breakers: usize,
}

impl Snapshot {
    /// Read the live state of `gw`. Each limiter shard is locked once, for the copy.
    pub fn take(gw: &Gateway) -> Snapshot {
        let limits = gw.rate_limits.export_local(crate::clock::mono_nanos());
        let mut breakers = Vec::new();
        for u in gw.upstreams.iter().filter(|u| u.breaker.is_some()) {
            for b in u.backends().iter() {
                let s = b.breaker.save();
                breakers.push(BreakerEntry {
                    upstream: u.name.to_string(),
                    backend: b.addr,
                    state: s.state.as_str().to_owned(),
                    failures: s.failures,
                    opened_at_ms: s.opened_at_ms,
                });
            }
        }
        Snapshot { limits, breakers }
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&Header {
            breakers: self.breakers.clone(),
            limit_keys: self.limits.len() as u64,
        })
        .expect("plain data serialises");
        let mut out = Vec::with_capacity(12 + header.len() + self.limits.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for (k, t) in &self.limits {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
        }
        out
    }

    /// Parse a snapshot; anything short, long, oversized or unknown is an error.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(format!("{} bytes is over the bound", bytes.len()));
        }
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a tollgate state snapshot (bad magic)")?;
        let (len, rest) = rest.split_first_chunk::<4>().ok_or("truncated header")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("truncated header".into());
        }
        let (header, entries) = rest.split_at(len);
        let header: Header =
            serde_json::from_slice(header).map_err(|e| format!("bad header: {e}"))?;
        if (entries.len() as u64) != header.limit_keys.saturating_mul(16) {
            return Err(format!(
                "{} bytes of limiter entries for {} keys",
                entries.len(),
                header.limit_keys
            ));
        }
        for b in &header.breakers {
            parse_state(&b.state)?;
        }
        let limits = entries
            .chunks_exact(16)
            .map(|c| {
                let (k, t) = c.split_at(8);
                (
                    u64::from_le_bytes(k.try_into().expect("8 bytes")),
                    u64::from_le_bytes(t.try_into().expect("8 bytes")),
                )
            })
            .collect();
        Ok(Snapshot {
            limits,
            breakers: header.breakers,
        })
    }

    /// Apply to a gateway that has not started serving. Breakers of upstreams or backends
    /// that no longer exist, or that no longer have a `circuit_breaker`, are dropped.
    pub fn restore(&self, gw: &Gateway) -> Restored {
        let limit_keys = gw
            .rate_limits
            .import_local(&self.limits, crate::clock::mono_nanos());
        let mut breakers = 0;
        for e in &self.breakers {
            let Ok(state) = parse_state(&e.state) else {
                continue;
            };
            let Some(u) = gw
                .upstreams
                .iter()
                .find(|u| *u.name == *e.upstream && u.breaker.is_some())
            else {
                continue;
            };
            if let Some(b) = u.backends().iter().find(|b| b.addr == e.backend) {
                b.breaker.restore(Saved {
                    state,
                    failures: e.failures,
                    opened_at_ms: e.opened_at_ms,
                });
                breakers += 1;
            }
        }
        Restored {
            limit_keys,
            breakers,
        }
    }
}

fn parse_state(s: &str) -> Result<State, String> {
    match s {
        "closed" => Ok(State::Closed),
        "open" => Ok(State::Open),
        "half_open" => Ok(State::HalfOpen),
        other => Err(format!("unknown breaker state {other:?}")),
    }
}

/// Read the old process's snapshot from `path` (bounded in time and size).
pub fn fetch(path: &Path, timeout: Duration) -> Result<Snapshot, String> {
    let deadline = Instant::now() + timeout;
    let mut s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no complete snapshot within {timeout:?}"))?;
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_SNAPSHOT_BYTES {
                    return Err(format!("snapshot over {MAX_SNAPSHOT_BYTES} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Snapshot::decode(&buf)
}

/// On a graceful upgrade, before serving: take over the old process's state, or start empty.
/// Logs one line either way.
pub fn take_over(gw: &Gateway, path: &Path) -> Restored {
    match fetch(path, FETCH_TIMEOUT) {
        Ok(snap) => {
            let r = snap.restore(gw);
            info!(
                "took over state from the previous process: {} rate-limit keys, {} circuit breakers",
                r.limit_keys, r.breakers
            );
            r
        }
        Err(e) => {
            warn!("no state taken over from the previous process ({e}): rate limits and circuit breakers start empty");
            Restored::default()
        }
    }
}

/// The background service that serves this process's snapshot to its successor.
pub struct StateServer {
    pub live: crate::live::Live,
    pub path: PathBuf,
}

#[async_trait]
impl BackgroundService for StateServer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The predecessor's socket (if any) was read before this process started serving;
        // a stale file from a crashed instance is replaced the same way.
        let _ = std::fs::remove_file(&self.path);
        let listener = match tokio::net::UnixListener::bind(&self.path) {
            Ok(l) => l,
            Err(e) => {
                warn!(
                    "cannot listen on the state socket {}: {e}; a reload will not carry rate-limit and breaker state",
                    self.path.display()
                );
                return;
            }
        };
        // Only the gateway's own user may read its state (the same trust as upgrade_sock).
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let Ok((mut conn, _)) = r else { continue };
                    let bytes = Snapshot::take(self.live.current().gateway()).encode();
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let _ = tokio::time::timeout(FETCH_TIMEOUT, conn.write_all(&bytes)).await;
                        let _ = conn.shutdown().await;
                    });
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            limits: vec![(1, 2), (u64::MAX, 7)],
            breakers: vec![BreakerEntry {
                upstream: "up".into(),
                backend: "127.0.0.1:9".parse().unwrap(),
                state: "open".into(),
                failures: 3,
                opened_at_ms: 12,
            }],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
        assert_eq!(
            Snapshot::decode(&Snapshot::default().encode()).unwrap(),
            Snapshot::default()
        );
    }

    #[test]
    fn fetch_reads_a_served_snapshot_and_refuses_absent_or_garbage_ones() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock.state");
        assert!(
            fetch(&path, FETCH_TIMEOUT).is_err(),
            "no socket: start empty"
        );
        for (payload, ok) in [(sample().encode(), true), (b"garbage".to_vec(), false)] {
            let _ = std::fs::remove_file(&path);
            let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let t = std::thread::spawn(move || {
                let (mut c, _) = l.accept().unwrap();
                c.write_all(&payload).unwrap();
            });
            let got = fetch(&path, FETCH_TIMEOUT);
            t.join().unwrap();
            assert_eq!(got.is_ok(), ok, "{got:?}");
            if ok {
                assert_eq!(got.unwrap(), sample());
            }
        }
    }

    #[test]
    fn rejects_malformed_snapshots_without_panicking() {
        let good = sample().encode();
        for n in 0..good.len() {
            assert!(Snapshot::decode(&good[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(Snapshot::decode(&extra).is_err());
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(Snapshot::decode(&bad_magic).is_err());
        let mut huge_len = good.clone();
        huge_len[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Snapshot::decode(&huge_len).is_err());
        let bad_state = Snapshot {
            breakers: vec![BreakerEntry {
                state: "ajar".into(),
                ..sample().breakers[0].clone()
            }],
            ..Snapshot::default()
        };
        assert!(Snapshot::decode(&bad_state.encode()).is_err());
        // A header claiming more keys than there are bytes.
        let mut lying = Vec::from(&MAGIC[..]);
        let h = br#"{"breakers":[],"limit_keys":18446744073709551615}"#;
        lying.extend_from_slice(&(h.len() as u32).to_le_bytes());
        lying.extend_from_slice(h);
        assert!(Snapshot::decode(&lying).is_err());
    }
}
