//! A route's `split`: a weighted choice among upstreams, for canary releases. A `sticky` key
//! sends the same caller to the same branch for as long as the weights and the branches'
//! health stay as they are; without one (or when the request has no such key) a branch is
//! drawn at random by weight. With `failover` (the default), a branch with no healthy backend
//! yields to the others, in proportion to their weights.

use std::hash::Hasher;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use super::router::UpstreamId;
use crate::config::ConfigErrors;

/// `split: [{upstream: api-v2, weight: 90}, ...]`: one branch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchFile {
    pub upstream: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// What keeps a caller on one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    ClientIp,
    Consumer,
    Header(HeaderName),
    Cookie(String),
}

impl Sticky {
    /// `client_ip`, `consumer`, `header:NAME` or `cookie:NAME`, at key `path`.
    pub fn parse(path: &str, v: &str, errs: &mut ConfigErrors) -> Option<Sticky> {
        let bad = |errs: &mut ConfigErrors, why: &str| {
            errs.push(path, format!("{v:?}: {why}"));
            None
        };
        match v.split_once(':') {
            None if v == "client_ip" => Some(Sticky::ClientIp),
            None if v == "consumer" => Some(Sticky::Consumer),
            Some(("header", name)) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => Some(Sticky::Header(n)),
                Err(_) => bad(errs, "not a valid header name"),
            },
            Some(("cookie", name)) if crate::headers::valid_cookie_name(name) => {
                Some(Sticky::Cookie(name.to_owned()))
            }
            Some(("cookie", _)) => bad(errs, "not a valid cookie name"),
            _ => bad(
                errs,
                "expected client_ip, consumer, header:NAME or cookie:NAME",
            ),
        }
    }
}

/// A compiled `split`.
#[derive(Debug, Clone)]
pub struct Split {
    /// Each branch's upstream and weight (every weight > 0).
    pub branches: Vec<(UpstreamId, u32)>,
    pub sticky: Option<Sticky>,
    pub failover: bool,
}

/// What a request offers as its sticky key.
pub struct Caller<'a> {
    pub client_ip: Option<IpAddr>,
    pub consumer: Option<&'a [u8]>,
    pub headers: &'a HeaderMap,
}

impl Split {
    /// The hash of the request's sticky key, if the split has one and the request carries it.
    pub fn key(&self, c: &Caller) -> Option<u64> {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(0x746f_6c6c, 0x6761_7465);
        match self.sticky.as_ref()? {
            Sticky::ClientIp => match c.client_ip? {
                IpAddr::V4(v4) => h.write(&v4.octets()),
                IpAddr::V6(v6) => h.write(&v6.octets()),
            },
            Sticky::Consumer => h.write(c.consumer?),
            Sticky::Header(name) => h.write(c.headers.get(name)?.as_bytes()),
            Sticky::Cookie(name) => h.write(cookie(c.headers, name)?),
        }
        Some(h.finish())
    }

    /// The branch for a request whose sticky key hashes to `key` (`None`: no key, a random
    /// draw), among the branches `available` says can serve.
    pub fn choose(&self, key: Option<u64>, available: impl Fn(UpstreamId) -> bool) -> UpstreamId {
        let live = |&&(up, _): &&(UpstreamId, u32)| !self.failover || available(up);
        let total: u64 = self
            .branches
            .iter()
            .filter(live)
            .map(|b| u64::from(b.1))
            .sum();
        // No branch left (or failover off and a dead branch drawn): the weights alone decide,
        // and the upstream answers for itself (503 when it has no backend).
        let (total, live_only) = match total {
            0 => (self.branches.iter().map(|b| u64::from(b.1)).sum(), false),
            t => (t, true),
        };
        let mut at = match key {
            Some(k) => k % total,
            None => fastrand::u64(..total),
        };
        for b in self.branches.iter().filter(|b| !live_only || live(b)) {
            match at.checked_sub(u64::from(b.1)) {
                Some(rest) => at = rest,
                None => return b.0,
            }
        }
        self.branches[0].0
    }

    /// Every upstream the split may send a request to.
    pub fn upstreams(&self) -> impl Iterator<Item = UpstreamId> + '_ {
        self.branches.iter().map(|b| b.0)
    }
}

/// The value of cookie `name` in the request's `Cookie` header(s), if any.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    crate::headers::cookies(headers).find_map(|(k, v)| (k == name.as_bytes()).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32], failover: bool) -> Split {
        Split {
            branches: weights.iter().copied().enumerate().collect(),
            sticky: Some(Sticky::Consumer),
            failover,
        }
    }

    #[test]
    fn keys_spread_by_weight_and_stick() {
        let s = split(&[90, 10], true);
        let mut counts = [0usize; 2];
        for i in 0..10_000u64 {
            let k = s.key(&Caller {
                client_ip: None,
                consumer: Some(format!("c{i}").as_bytes()),
                headers: &HeaderMap::new(),
            });
            let b = s.choose(k, |_| true);
            assert_eq!(b, s.choose(k, |_| true), "same key, same branch");
            counts[b] += 1;
        }
        assert!((8_800..=9_200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn a_dead_branch_yields_unless_failover_is_off() {
        let s = split(&[50, 50], true);
        for k in 0..100 {
            assert_eq!(s.choose(Some(k), |u| u == 1), 1);
        }
        let s = split(&[50, 50], false);
        assert!((0..100).any(|k| s.choose(Some(k), |u| u == 1) == 0));
        // Nothing alive: the weights decide.
        let s = split(&[50, 50], true);
        assert!((0..100).any(|k| s.choose(Some(k), |_| false) == 0));
    }

    #[test]
    fn sticky_keys_are_read_from_the_request() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; beta=yes".parse().unwrap());
        h.append("x-user", "u1".parse().unwrap());
        assert_eq!(cookie(&h, "beta"), Some(&b"yes"[..]));
        assert_eq!(cookie(&h, "b"), None);
        let mut errs = ConfigErrors::default();
        let by = |v| Sticky::parse("s", v, &mut ConfigErrors::default());
        assert_eq!(by("cookie:beta"), Some(Sticky::Cookie("beta".into())));
        assert!(Sticky::parse("routes[0].sticky", "cookie:", &mut errs).is_none());
        assert!(Sticky::parse("routes[0].sticky", "session", &mut errs).is_none());
        assert_eq!(errs.0.len(), 2);
        assert!(errs.0[0].to_string().starts_with("routes[0].sticky: "));
        let c = |s: Sticky| Split {
            branches: vec![(0, 1), (1, 1)],
            sticky: Some(s),
            failover: true,
        };
        let caller = Caller {
            client_ip: None,
            consumer: None,
            headers: &h,
        };
        assert!(c(Sticky::Cookie("beta".into())).key(&caller).is_some());
        assert!(c(Sticky::Header(HeaderName::from_static("x-user")))
            .key(&caller)
            .is_some());
        assert!(c(Sticky::Consumer).key(&caller).is_none());
        assert!(c(Sticky::ClientIp).key(&caller).is_none());
    }
}
