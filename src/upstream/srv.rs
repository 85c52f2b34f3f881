//! `targets: {srv: _http._tcp.svc.example}`: an upstream's backends from a DNS SRV record,
//! asked again when its TTL runs out.
//!
//! Of the records, the group with the lowest priority value that yields an address serves
//! (RFC 2782's order; the other groups are fallbacks only DNS can promote). Each record's
//! weight becomes its addresses' backend weight (0 counts as 1), its port their port. The
//! targets' addresses come from the answer's additional section, else from A/AAAA questions
//! to the same servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::dns::{Answer, Data, DnsClient, SRV};

/// The shortest wait before asking again, whatever the TTL (0 is common for local records).
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest wait, so a long TTL does not hide a change for hours.
pub const MAX_TTL: Duration = Duration::from_secs(600);
/// After a failed lookup (the last good set stays), the wait before asking again.
pub const RETRY: Duration = Duration::from_secs(5);

/// The backends (address, weight) an SRV name names now, sorted by address, and how long
/// the answer may be kept.
pub fn resolve(
    client: &DnsClient,
    name: &str,
) -> Result<(Vec<(SocketAddr, usize)>, Duration), String> {
    let answer = client
        .query(name, SRV)
        .map_err(|e| format!("SRV {name}: {e}"))?;
    let mut ttl = u32::MAX;
    let mut groups: BTreeMap<u16, Vec<(String, u16, u16)>> = BTreeMap::new();
    for r in &answer.answers {
        if let Data::Srv {
            priority,
            weight,
            port,
            target,
        } = &r.data
        {
            ttl = ttl.min(r.ttl);
            // "." (an empty target) says the service is not offered there.
            if !target.is_empty() {
                groups
                    .entry(*priority)
                    .or_default()
                    .push((target.clone(), *port, *weight));
            }
        }
    }
    if groups.is_empty() {
        return Err(format!("SRV {name}: no SRV record"));
    }
    let mut last = String::new();
    for records in groups.values() {
        let mut set: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (target, port, weight) in records {
            match addresses(client, &answer, target) {
                Ok((ips, t)) => {
                    ttl = ttl.min(t);
                    for ip in ips {
                        *set.entry(SocketAddr::new(ip, *port)).or_default() +=
                            usize::from(*weight).max(1);
                    }
                }
                Err(e) => last = e,
            }
        }
        if !set.is_empty() {
            let wait = Duration::from_secs(ttl.into()).clamp(MIN_TTL, MAX_TTL);
            return Ok((set.into_iter().collect(), wait));
        }
    }
    Err(format!(
        "SRV {name}: no target resolves to an address ({last})"
    ))
}

/// A target's addresses: from the additional section when the server sent them, else asked.
fn addresses(
    client: &DnsClient,
    answer: &Answer,
    target: &str,
) -> Result<(Vec<std::net::IpAddr>, u32), String> {
    let mut ttl = u32::MAX;
    let given: Vec<_> = answer
        .additional
        .iter()
        .filter(|r| r.name == target)
        .filter_map(|r| match r.data {
            Data::Ip(ip) => {
                ttl = ttl.min(r.ttl);
                Some(ip)
            }
            _ => None,
        })
        .collect();
    if !given.is_empty() {
        return Ok((given, ttl));
    }
    if let Ok(ip) = target.parse() {
        return Ok((vec![ip], u32::MAX));
    }
    match client.lookup_ips(target) {
        Ok((ips, _)) if ips.is_empty() => Err(format!("{target} has no address")),
        Ok(found) => Ok(found),
        Err(e) => Err(format!("{target}: {e}")),
    }
}
