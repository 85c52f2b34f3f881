//! The PROXY protocol (HAProxy's, v1 text and v2 binary) on `listen[i].proxy_protocol`
//! listeners: an L4 balancer in front writes the client's address before the connection's
//! first byte of TLS or HTTP, and that address becomes the connection's peer for everything
//! after (client IP and forwarding headers, access log, rate-limit keys, `ip_allow`/`ip_deny`,
//! the per-IP connection cap).
//!
//! Every connection of such a listener must come from a `trusted_proxies` address and start
//! with a well-formed header within `limits.head_timeout`; otherwise it is closed without an
//! answer, logged at debug and counted (`tollgate_proxy_protocol_refused_total{reason}`). A
//! `LOCAL` (v2) or `UNKNOWN` (v1) header, as a balancer's health check sends, keeps the
//! socket's peer. The header is read exactly: no byte after it is taken from the connection.
//! Where: tollgate's own accept loop ([`ProxyProtocol::tcp`]), Pingora's cleartext listeners
//! at the gate ([`ProxyProtocol::l4`]) and Pingora's TLS listeners before the handshake
//! ([`PreTls`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::client::TrustedProxies;

/// A v1 header's most bytes, CRLF included (the spec's 107).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What is read of a header before its addresses are known: a whole v1 line, or v2's fixed
/// 16 bytes and its IPv6 address block (36). TLVs and longer blocks are skipped unbuffered.
const BUF: usize = 128;

/// Why a connection was refused, the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The socket's peer is not in `trusted_proxies`.
    Untrusted,
    /// No whole header within `limits.head_timeout`.
    Timeout,
    /// The connection ended before a whole header.
    Closed,
    /// Not a PROXY header, or a malformed one.
    Invalid,
}

impl Refused {
    pub const ALL: [Refused; 4] = [
        Refused::Untrusted,
        Refused::Timeout,
        Refused::Closed,
        Refused::Invalid,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::Untrusted => "untrusted",
            Refused::Timeout => "timeout",
            Refused::Closed => "closed",
            Refused::Invalid => "invalid",
        }
    }
}

/// The PROXY protocol settings of the proxy-protocol listeners (one per process).
pub struct ProxyProtocol {
    trusted: TrustedProxies,
    timeout: Duration,
    /// Counts a refusal (`tollgate_proxy_protocol_refused_total`).
    count: Box<dyn Fn(Refused) + Send + Sync>,
}

impl ProxyProtocol {
    pub fn new(
        trusted: TrustedProxies,
        timeout: Duration,
        count: impl Fn(Refused) + Send + Sync + 'static,
    ) -> Self {
        ProxyProtocol {
            trusted,
            timeout,
            count: Box::new(count),
        }
    }

    /// The client's address for a connection `tcp` accepted from `peer` by tollgate's own
    /// loop, its header read; `None`: refused (the caller drops the connection).
    pub(super) async fn tcp(&self, tcp: &mut TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
        self.accept(Source::Tcp(tcp), peer).await
    }

    /// The same for a stream of Pingora's listener, before TLS if any; its socket digest then
    /// names the client as its peer.
    pub async fn l4(&self, l4: &mut L4Stream) -> Option<SocketAddr> {
        let peer = l4
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let Some(peer) = peer else {
            self.refuse(Refused::Untrusted, None);
            return None;
        };
        let client = self.accept(Source::L4(l4), peer).await?;
        if client != peer {
            let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
            let _ = digest.peer_addr.set(Some(client.into()));
            l4.set_socket_digest(digest);
        }
        Some(client)
    }

    async fn accept(&self, src: Source<'_>, peer: SocketAddr) -> Option<SocketAddr> {
        let outcome = if !self.trusted.contains(&peer.ip()) {
            Err(Refused::Untrusted)
        } else {
            match tokio::time::timeout(self.timeout, read(src)).await {
                Ok(Ok(client)) => Ok(client.unwrap_or(peer)),
                Ok(Err(r)) => Err(r),
                Err(_) => Err(Refused::Timeout),
            }
        };
        outcome.map_err(|r| self.refuse(r, Some(peer))).ok()
    }

    fn refuse(&self, why: Refused, peer: Option<SocketAddr>) {
        log::debug!(
            "PROXY protocol: closed the connection from {peer:?}: {}",
            why.label()
        );
        (self.count)(why);
    }
}

/// Pingora's pre-TLS hook of a service whose TLS listeners want a PROXY header.
pub struct PreTls(pub Arc<ProxyProtocol>);

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        match self.0.l4(stream).await {
            Some(_) => Ok(()),
            None => Err(pingora::Error::explain(
                pingora::ErrorType::HandshakeError,
                "PROXY protocol header refused",
            )),
        }
    }
}

/// Where a header is read from: bytes looked at are taken only as far as the header goes.
enum Source<'a> {
    /// Looked at with `MSG_PEEK`.
    Tcp(&'a mut TcpStream),
    /// Read, and what follows the header given back (`rewind`).
    L4(&'a mut L4Stream),
}

impl Source<'_> {
    /// The next bytes, not taken yet: 0 at the end of the stream.
    async fn look(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Tcp(t) => t.peek(buf).await,
            Source::L4(s) => s.read(buf).await,
        }
    }

    /// Take the first `n` bytes of `seen`, what the last `look` returned.
    async fn take(&mut self, seen: &[u8], n: usize) -> std::io::Result<()> {
        match self {
            Source::Tcp(t) => t.read_exact(&mut [0u8; BUF][..n]).await.map(drop),
            Source::L4(s) => {
                s.rewind(&seen[n..]);
                Ok(())
            }
        }
    }

    /// Read and drop `n` more bytes.
    async fn skip(&mut self, mut n: usize) -> std::io::Result<()> {
        let mut scratch = [0u8; BUF];
        while n > 0 {
            let want = n.min(BUF);
            let got = match self {
                Source::Tcp(t) => t.read(&mut scratch[..want]).await?,
                Source::L4(s) => s.read(&mut scratch[..want]).await?,
            };
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            n -= got;
        }
        Ok(())
    }
}

/// Read one header off `src`: the client's address, or `None` to keep the socket's peer.
async fn read(mut src: Source<'_>) -> Result<Option<SocketAddr>, Refused> {
    let mut buf = [0u8; BUF];
    let mut have = 0;
    loop {
        let n = src
            .look(&mut buf[have..])
            .await
            .map_err(|_| Refused::Closed)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        let seen = have..have + n;
        match parse(&buf[..have + n]) {
            Parsed::Header { len, client } => {
                let here = (len - have).min(n);
                src.take(&buf[seen], here)
                    .await
                    .map_err(|_| Refused::Closed)?;
                src.skip(len - have - here)
                    .await
                    .map_err(|_| Refused::Closed)?;
                return Ok(client);
            }
            Parsed::More => {
                src.take(&buf[seen], n).await.map_err(|_| Refused::Closed)?;
                have += n;
                if have == BUF {
                    return Err(Refused::Invalid);
                }
            }
            Parsed::Invalid => return Err(Refused::Invalid),
        }
    }
}

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes (v2: TLVs included, which may not all be here yet).
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// A header's beginning.
    More,
    Invalid,
}

/// Parse the start of a connection as a v1 or v2 header.
#[doc(hidden)]
pub fn parse(b: &[u8]) -> Parsed {
    let sig = b.len().min(V2_SIG.len());
    if b[..sig] == V2_SIG[..sig] {
        return v2(b);
    }
    let prefix = b"PROXY ";
    let p = b.len().min(prefix.len());
    if b[..p] != prefix[..p] {
        return Parsed::Invalid;
    }
    match b.iter().position(|&c| c == b'\n') {
        Some(end) if end >= 1 && b[end - 1] == b'\r' && end < V1_MAX => {
            match v1(&b[prefix.len()..end - 1]) {
                Some(client) => Parsed::Header {
                    len: end + 1,
                    client,
                },
                None => Parsed::Invalid,
            }
        }
        Some(_) => Parsed::Invalid,
        None if b.len() >= V1_MAX => Parsed::Invalid,
        None => Parsed::More,
    }
}

/// A v1 line after `PROXY ` without its CRLF: `TCP4 src dst sport dport`, the same with
/// `TCP6`, or `UNKNOWN` and anything.
fn v1(line: &[u8]) -> Option<Option<SocketAddr>> {
    let line = std::str::from_utf8(line).ok()?;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Some(None);
    }
    let mut parts = line.split(' ');
    let family = parts.next()?;
    let (src, dst, sport, dport) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let ip: IpAddr = match family {
        "TCP4" => IpAddr::V4(src.parse::<Ipv4Addr>().ok()?),
        "TCP6" => IpAddr::V6(src.parse::<Ipv6Addr>().ok()?),
        _ => return None,
    };
    // Ports: 0..=65535 in decimal digits only (no sign, no spaces).
    let port = |p: &str| {
        let digits = !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        digits.then(|| p.parse::<u16>().ok()).flatten()
    };
    let (sport, _) = (port(sport)?, port(dport)?);
    if dst.parse::<IpAddr>().ok()?.is_ipv4() != ip.is_ipv4() {
        return None;
    }
    Some(Some(SocketAddr::new(ip, sport)))
}

/// A v2 header: signature, version and command, family and transport, length, addresses,
/// TLVs (skipped).
fn v2(b: &[u8]) -> Parsed {
    if b.len() < 16 {
        return Parsed::More;
    }
    let (version, command) = (b[12] >> 4, b[12] & 0x0f);
    if version != 2 || command > 1 {
        return Parsed::Invalid;
    }
    let len = 16 + usize::from(u16::from_be_bytes([b[14], b[15]]));
    // Only TCP over IPv4 or IPv6 names a client; anything else (LOCAL, UNSPEC, UNIX,
    // datagrams) keeps the socket's peer.
    let need = match (command, b[13]) {
        (1, 0x11) => 12,
        (1, 0x21) => 36,
        _ => 0,
    };
    if len < 16 + need {
        return Parsed::Invalid;
    }
    let Some(a) = b.get(16..16 + need) else {
        return Parsed::More;
    };
    let client = match need {
        12 => {
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        36 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    };
    Parsed::Header { len, client }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(cmd: u8, fam: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.extend([0x20 | cmd, fam]);
        h.extend(((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend(addrs);
        h.extend(tlvs);
        h
    }

    fn header(len: usize, client: &str) -> Parsed {
        Parsed::Header {
            len,
            client: Some(client.parse().unwrap()),
        }
    }

    #[test]
    fn v1_lines() {
        let l = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 8080\r\nGET /";
        assert_eq!(parse(l), header(44, "203.0.113.7:40000"));
        let l = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n";
        assert_eq!(parse(l), header(l.len(), "[2001:db8::7]:40000"));
        let unknown = Parsed::Header {
            len: 15,
            client: None,
        };
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), unknown);
        for partial in [&b"P"[..], b"PROXY", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"] {
            assert_eq!(parse(partial), Parsed::More, "{partial:?}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            &[b'P', b'R', b'O', b'X', b'Y', b' ', 0xff, b'\r', b'\n'],
        ] {
            assert_eq!(parse(bad), Parsed::Invalid, "{bad:?}");
        }
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 100]].concat();
        assert_eq!(parse(&long), Parsed::Invalid);
    }

    #[test]
    fn v2_headers() {
        let v4 = [203, 0, 113, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90];
        let tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
        let h = v2_header(1, 0x11, &v4, &tlv);
        assert_eq!(parse(&h), header(34, "203.0.113.7:40000"));
        assert_eq!(parse(&h[..20]), Parsed::More);
        assert_eq!(parse(&h[..28]), header(34, "203.0.113.7:40000"));
        let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8];
        v6.extend([0; 11]);
        v6.push(7);
        v6.extend([0; 16]);
        v6.extend([0x9c, 0x40, 0x01, 0xbb]);
        let h = v2_header(1, 0x21, &v6, &[]);
        assert_eq!(parse(&h), header(52, "[2001:db8::7]:40000"));
        let local = v2_header(0, 0x00, &[], &[]);
        let kept = |len| Parsed::Header { len, client: None };
        assert_eq!(parse(&local), kept(16));
        assert_eq!(parse(&v2_header(1, 0x31, &[0; 216], &[])), kept(232));
        assert_eq!(parse(&h[..10]), Parsed::More);
        let mut bad_version = v2_header(1, 0x11, &v4, &[]);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Parsed::Invalid);
        let mut short = v2_header(1, 0x11, &v4, &[]);
        short[15] = 4;
        assert_eq!(parse(&short), Parsed::Invalid);
    }
}
