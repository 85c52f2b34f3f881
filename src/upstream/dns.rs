//! A small DNS stub client for discovery: A, AAAA and SRV questions to the servers of the
//! top-level `dns: {servers}` (else those of `/etc/resolv.conf`), with each answer's TTL.
//!
//! Blocking, like the [`Resolver`] it implements: discovery asks on Tokio's blocking pool,
//! config loading directly. One UDP question per server in order (EDNS0, 1232-byte answers),
//! again over TCP when the answer comes back truncated. No cache: discovery asks again when
//! the TTL runs out, which is what a cache would do.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use super::discovery::Resolver;

/// How long one server has to answer one question.
const TIMEOUT: Duration = Duration::from_secs(2);
const UDP_SIZE: u16 = 1232;
pub const A: u16 = 1;
pub const AAAA: u16 = 28;
pub const SRV: u16 = 33;

/// One answer record the discovery cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Ip(IpAddr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

/// An answer: the answer section, the additional section (where SRV servers often put the
/// targets' addresses). A name that does not exist answers with both empty.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    pub answers: Vec<Record>,
    pub additional: Vec<Record>,
}

/// Asks `servers`, first to last, until one answers.
#[derive(Debug, Clone)]
pub struct DnsClient {
    pub servers: Vec<SocketAddr>,
}

impl DnsClient {
    /// The servers of `/etc/resolv.conf` (`127.0.0.1:53` when it names none, as glibc does).
    pub fn system() -> DnsClient {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut servers: Vec<SocketAddr> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
        if servers.is_empty() {
            servers.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53));
        }
        DnsClient { servers }
    }

    /// Ask for `qtype` records of `name`.
    pub fn query(&self, name: &str, qtype: u16) -> Result<Answer, String> {
        let name = name.trim_end_matches('.');
        let mut last = String::from("no DNS server configured");
        for server in &self.servers {
            match ask(*server, name, qtype) {
                Ok(a) => return Ok(a),
                Err(e) => last = format!("DNS server {server}: {e}"),
            }
        }
        Err(last)
    }

    /// Every A and AAAA address of `host`, and the lowest TTL among them.
    pub fn lookup_ips(&self, host: &str) -> Result<(Vec<IpAddr>, u32), String> {
        let mut ips = Vec::new();
        let mut ttl = u32::MAX;
        let mut errors = Vec::new();
        for qtype in [A, AAAA] {
            match self.query(host, qtype) {
                Ok(a) => {
                    for r in a.answers {
                        if let Data::Ip(ip) = r.data {
                            ips.push(ip);
                            ttl = ttl.min(r.ttl);
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.len() == 2 {
            return Err(errors.swap_remove(0));
        }
        Ok((ips, ttl))
    }
}

impl Resolver for DnsClient {
    fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        self.lookup_ips(host)
            .map(|(ips, _)| ips)
            .map_err(io::Error::other)
    }
}

fn ask(server: SocketAddr, name: &str, qtype: u16) -> Result<Answer, String> {
    let id = fastrand::u16(..);
    let q = question(id, name, qtype)?;
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    sock.send(&q).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let n = sock.recv(&mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("no answer within {TIMEOUT:?}")
            }
            _ => e.to_string(),
        })?;
        // A stray datagram (another question's late answer) is not ours: wait on.
        if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            if std::time::Instant::now() > deadline {
                return Err(format!("no answer within {TIMEOUT:?}"));
            }
            continue;
        }
        if buf[2] & 0x02 != 0 {
            return ask_tcp(server, &q);
        }
        return parse(&buf[..n]);
    }
}

fn ask_tcp(server: SocketAddr, q: &[u8]) -> Result<Answer, String> {
    let mut s = TcpStream::connect_timeout(&server, TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(q);
    s.write_all(&msg).map_err(|e| e.to_string())?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    parse(&buf)
}

/// A recursive question for `name`, with an EDNS0 record offering [`UDP_SIZE`] answers.
fn question(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(name.len() + 32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a valid DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    // OPT: root name, type 41, class = UDP payload size, TTL 0, no data.
    q.extend_from_slice(&[0, 0, 41]);
    q.extend_from_slice(&UDP_SIZE.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(q)
}

/// Parse an answer; a server error (other than "no such name") is an error.
pub fn parse(m: &[u8]) -> Result<Answer, String> {
    let short = || "a truncated DNS answer".to_owned();
    if m.len() < 12 {
        return Err(short());
    }
    let rcode = m[3] & 0x0f;
    match rcode {
        0 => {}
        3 => return Ok(Answer::default()),
        2 => return Err("SERVFAIL".into()),
        5 => return Err("REFUSED".into()),
        n => return Err(format!("DNS error code {n}")),
    }
    let count = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]) as usize;
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let mut at = 12;
    for _ in 0..qd {
        at = name(m, at)?.1 + 4;
    }
    let mut out = Answer::default();
    for i in 0..an + ns + ar {
        let (owner, next) = name(m, at)?;
        let head = m.get(next..next + 10).ok_or_else(short)?;
        let rtype = u16::from_be_bytes([head[0], head[1]]);
        let ttl = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let len = u16::from_be_bytes([head[8], head[9]]) as usize;
        let start = next + 10;
        let rdata = m.get(start..start + len).ok_or_else(short)?;
        at = start + len;
        let data = match (rtype, len) {
            (A, 4) => Data::Ip(IpAddr::from(<[u8; 4]>::try_from(rdata).unwrap_or_default())),
            (AAAA, 16) => Data::Ip(IpAddr::from(
                <[u8; 16]>::try_from(rdata).unwrap_or_default(),
            )),
            (SRV, 7..) => Data::Srv {
                priority: u16::from_be_bytes([rdata[0], rdata[1]]),
                weight: u16::from_be_bytes([rdata[2], rdata[3]]),
                port: u16::from_be_bytes([rdata[4], rdata[5]]),
                target: name(m, start + 6)?.0,
            },
            _ => Data::Other,
        };
        let r = Record {
            name: owner,
            ttl,
            data,
        };
        if i < an {
            out.answers.push(r);
        } else if i >= an + ns {
            out.additional.push(r);
        }
    }
    Ok(out)
}

/// The (lower-case, dot-separated) name at `at`, following compression pointers, and
/// where the record continues after it.
fn name(m: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let bad = || "a malformed name in a DNS answer".to_owned();
    let mut out = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *m.get(at).ok_or_else(bad)? as usize;
        match len {
            0 => return Ok((out, end.unwrap_or(at + 1))),
            0xc0.. => {
                let low = *m.get(at + 1).ok_or_else(bad)? as usize;
                end.get_or_insert(at + 2);
                at = ((len & 0x3f) << 8) | low;
            }
            1..=63 => {
                let label = m.get(at + 1..at + 1 + len).ok_or_else(bad)?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
                at += 1 + len;
            }
            _ => return Err(bad()),
        }
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a server would write it: one SRV answer pointing back into the
    /// question, and the target's A record in the additional section.
    #[test]
    fn parses_srv_with_compression_and_additional_records() {
        let mut m = question(7, "_http._tcp.svc.example", SRV).unwrap();
        m.truncate(m.len() - 11); // no OPT in the answer
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 1; // one answer
        m[11] = 1; // one additional
                   // "svc.example" starts after the header and "_http", "_tcp" (12 + 6 + 5).
        let svc = 23;
        m.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 30, 0, 10]);
        m.extend_from_slice(&[0, 10, 0, 5, 0x1f, 0x90, 1, b'b', 0xc0, svc]);
        m.extend_from_slice(&[1, b'b', 0xc0, svc, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&[10, 0, 0, 7]);
        let a = parse(&m).unwrap();
        assert_eq!(
            a.answers,
            vec![Record {
                name: "_http._tcp.svc.example".into(),
                ttl: 30,
                data: Data::Srv {
                    priority: 10,
                    weight: 5,
                    port: 8080,
                    target: "b.svc.example".into()
                }
            }]
        );
        assert_eq!(a.additional[0].name, "b.svc.example");
        assert_eq!(a.additional[0].data, Data::Ip("10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn no_such_name_is_an_empty_answer_and_servfail_an_error() {
        let mut m = question(1, "x.example", A).unwrap();
        m[3] = 3;
        assert!(parse(&m).unwrap().answers.is_empty());
        m[3] = 2;
        assert_eq!(parse(&m).unwrap_err(), "SERVFAIL");
        assert!(question(1, "a..b", A).is_err());
    }

    #[test]
    fn a_pointer_loop_is_refused() {
        let m = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0, 12];
        assert!(name(&m, 12).is_err());
    }
}
