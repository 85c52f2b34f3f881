//! The last requests tollgate refused or failed, kept for the admin dashboard: the answer to
//! "why was this request refused" without searching logs. Only refusals are kept (a status
//! check per request otherwise), never a credential or a query string.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

/// One refused request.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub at: SystemTime,
    pub status: u16,
    pub method: Box<str>,
    /// The path, never its query.
    pub path: Box<str>,
    pub route: Option<Box<str>>,
    pub client_ip: Option<IpAddr>,
    pub consumer: Option<Box<str>>,
    /// What refused it, as a stable word and its subject (`rate_limited policy=per-ip`).
    pub reason: String,
    pub request_id: Box<str>,
}

/// The last `kept` refusals, oldest first.
pub struct Refusals {
    kept: usize,
    ring: Mutex<VecDeque<Refusal>>,
}

/// The answers the dashboard lists: refusals by policy (401, 403, 404, 405, 413, 429) and
/// every 5xx.
pub fn is_refusal(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 405 | 413 | 429 | 500..=599)
}

impl Refusals {
    /// Keeps the last `kept`; 0 keeps none (no admin listener to show them).
    pub fn new(kept: usize) -> Self {
        Refusals {
            kept,
            ring: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether refusals are kept at all: when not, the caller need not describe them.
    pub fn enabled(&self) -> bool {
        self.kept > 0
    }

    pub fn record(&self, r: Refusal) {
        if self.kept == 0 {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == self.kept {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// The kept refusals, newest first.
    pub fn recent(&self) -> Vec<Refusal> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(n: u16) -> Refusal {
        Refusal {
            at: SystemTime::UNIX_EPOCH,
            status: n,
            method: "GET".into(),
            path: "/".into(),
            route: None,
            client_ip: None,
            consumer: None,
            reason: String::new(),
            request_id: "".into(),
        }
    }

    #[test]
    fn keeps_the_last_ones_newest_first() {
        let r = Refusals::new(3);
        for s in [401, 403, 404, 429] {
            r.record(refusal(s));
        }
        let statuses: Vec<u16> = r.recent().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 404, 403]);
        let none = Refusals::new(0);
        none.record(refusal(401));
        assert!(none.recent().is_empty());
        assert!(is_refusal(502) && is_refusal(401) && !is_refusal(400) && !is_refusal(200));
    }
}
