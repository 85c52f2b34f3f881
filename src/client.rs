//! Who is calling: the client IP (believing `X-Forwarded-For` only from trusted proxies) and
//! the request id.

use std::net::IpAddr;

use http::header::HeaderMap;
use http::HeaderValue;
use ipnet::IpNet;

use crate::headers::names::X_FORWARDED_FOR;

/// The CIDRs whose `X-Forwarded-For` is believed.
#[derive(Debug, Default, Clone)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical(*ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the socket peer, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not itself trusted (the left-most entry if
    /// every hop is trusted). Entries a client could have forged sit to the left of the first
    /// untrusted hop and are never read.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.0.is_empty() || !self.contains(&peer) {
            return peer;
        }
        let mut last_trusted = peer;
        for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            let Ok(s) = value.to_str() else {
                return last_trusted;
            };
            for entry in s.rsplit(',') {
                let Some(ip) = parse_xff_entry(entry) else {
                    // Garbage in the chain: stop believing it at this point.
                    return last_trusted;
                };
                if !self.contains(&ip) {
                    return ip;
                }
                last_trusted = ip;
            }
        }
        last_trusted
    }
}

/// An XFF entry: an IP, possibly `[v6]` or `v4:port` as some proxies write it.
fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = e.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse().ok().map(canonical);
    }
    let (host, port) = e.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 client it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's request id when it is sane (1..=128 visible characters from a safe set), so a
/// trace can cross the gateway; otherwise `None` and the gateway makes one.
pub fn accept_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

/// A fresh request id: 128 random bits as 32 lower-case hex digits, from a per-thread PRNG
/// (no syscall, no lock).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn trusted(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::new(cidrs.iter().map(|c| c.parse().unwrap()).collect())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = trusted(&["10.0.0.0/8"]);
        let ip = t.client_ip("203.0.113.9".parse().unwrap(), &headers(&["1.2.3.4"]));
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        let ip = t.client_ip("10.0.0.2".parse().unwrap(), &h);
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn all_trusted_or_garbage_stops_at_last_trusted() {
        let t = trusted(&["10.0.0.0/8"]);
        let ip = t.client_ip("10.0.0.2".parse().unwrap(), &headers(&["10.9.9.9"]));
        assert_eq!(ip.to_string(), "10.9.9.9");
        let ip = t.client_ip("10.0.0.2".parse().unwrap(), &headers(&["1.1.1.1, junk"]));
        assert_eq!(ip.to_string(), "10.0.0.2");
    }

    #[test]
    fn request_ids() {
        assert!(accept_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!accept_request_id(&HeaderValue::from_static("")));
        assert!(!accept_request_id(&HeaderValue::from_static("a b")));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_request_id());
    }

    /// A request id is its 128 random bits, most significant first, as lower-case hex.
    #[test]
    fn a_request_id_is_its_random_bits_in_hex() {
        for seed in [0, 1, 0xdead_beef, u64::MAX] {
            fastrand::seed(seed);
            let want = format!("{:032x}", fastrand::u128(..));
            fastrand::seed(seed);
            assert_eq!(new_request_id().to_str().unwrap(), want);
        }
    }
}
