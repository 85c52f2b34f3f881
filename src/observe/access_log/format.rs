//! One access-log line, written straight into the caller's buffer: no `format!`, no string
//! per field, the date formatted once a second.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Entry, Format};

/// The part of an RFC 3339 time that changes once a second (`2026-12-07T01:02:03`), kept by
/// each buffer so that a line only adds its milliseconds.
#[derive(Default)]
pub struct Clock {
    secs: u64,
    text: Vec<u8>,
}

impl Clock {
    fn write(&mut self, o: &mut Vec<u8>, t: SystemTime) {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.text.is_empty() || since.as_secs() != self.secs {
            self.secs = since.as_secs();
            let whole = UNIX_EPOCH + Duration::from_secs(self.secs);
            let s = humantime::format_rfc3339_seconds(whole).to_string();
            self.text = s.trim_end_matches('Z').as_bytes().to_vec();
        }
        o.extend_from_slice(&self.text);
        o.push(b'.');
        three_digits(o, since.subsec_millis());
        o.push(b'Z');
    }
}

/// Append `e`'s line in `format` to `o`.
pub fn line(o: &mut Vec<u8>, clock: &mut Clock, format: Format, e: &Entry) {
    match format {
        Format::Combined => combined(o, clock, e),
        Format::Json => json(o, clock, e),
    }
}

/// nginx's `combined`, then tollgate's fields as `key=value`.
fn combined(o: &mut Vec<u8>, clock: &mut Clock, e: &Entry) {
    match e.client_ip {
        Some(ip) => ip_addr(o, ip),
        None => o.push(b'-'),
    }
    o.extend_from_slice(b" - ");
    match e.consumer {
        Some(c) if !c.is_empty() => escape(o, c, true),
        _ => o.push(b'-'),
    }
    o.extend_from_slice(b" [");
    clock.write(o, e.time);
    o.extend_from_slice(b"] \"");
    o.extend_from_slice(e.method.as_bytes());
    o.push(b' ');
    escape(o, e.path, false);
    o.push(b' ');
    o.extend_from_slice(e.version.as_bytes());
    o.extend_from_slice(b"\" ");
    int(o, e.status);
    o.push(b' ');
    int(o, e.bytes_out);
    o.extend_from_slice(b" \"");
    escape(o, e.referer.unwrap_or("-"), false);
    o.extend_from_slice(b"\" \"");
    escape(o, e.user_agent.unwrap_or("-"), false);
    o.extend_from_slice(b"\" request_id=");
    o.extend_from_slice(e.request_id.as_bytes());
    o.extend_from_slice(b" route=");
    o.extend_from_slice(e.route.unwrap_or("-").as_bytes());
    o.extend_from_slice(b" upstream=");
    match e.upstream {
        Some(a) => socket_addr(o, a),
        None => o.push(b'-'),
    }
    o.extend_from_slice(b" upstream_ms=");
    match e.upstream_time {
        Some(d) => millis(o, d),
        None => o.push(b'-'),
    }
    o.extend_from_slice(b" total_ms=");
    millis(o, e.total);
    o.extend_from_slice(b" bytes_in=");
    int(o, e.bytes_in);
    o.extend_from_slice(b" rate_limit=");
    match e.rate_limit {
        Some(r) => {
            o.extend_from_slice(r.outcome().as_bytes());
            o.push(b':');
            int(o, r.remaining);
        }
        None => o.push(b'-'),
    }
    if let Some(d) = e.websocket {
        o.extend_from_slice(b" websocket_ms=");
        millis(o, d);
    }
    if let Some(x) = e.error {
        o.extend_from_slice(b" error=");
        o.extend_from_slice(x.as_bytes());
    }
    if let Some(g) = e.grpc_status {
        o.extend_from_slice(b" grpc_status=");
        int(o, g);
    }
    if let Some(t) = e.trace_id {
        o.extend_from_slice(b" trace_id=");
        crate::trace::context::hex_into(o, t);
    }
    o.push(b'\n');
}

/// One JSON object per line, the fields always present (`null` when unknown).
fn json(o: &mut Vec<u8>, clock: &mut Clock, e: &Entry) {
    o.extend_from_slice(b"{\"time\":\"");
    clock.write(o, e.time);
    o.push(b'"');
    key(o, "request_id");
    string(o, Some(e.request_id));
    key(o, "client_ip");
    quoted_or_null(o, e.client_ip, ip_addr);
    key(o, "consumer");
    string(o, e.consumer);
    key(o, "method");
    string(o, Some(e.method));
    key(o, "path");
    string(o, Some(e.path));
    key(o, "protocol");
    string(o, Some(e.version));
    key(o, "route");
    string(o, e.route);
    key(o, "status");
    int(o, e.status);
    key(o, "bytes_in");
    int(o, e.bytes_in);
    key(o, "bytes_out");
    int(o, e.bytes_out);
    key(o, "upstream");
    quoted_or_null(o, e.upstream, socket_addr);
    key(o, "upstream_ms");
    or_null(o, e.upstream_time, millis);
    key(o, "total_ms");
    millis(o, e.total);
    key(o, "websocket_ms");
    or_null(o, e.websocket, millis);
    key(o, "rate_limit");
    or_null(o, e.rate_limit, |o, r| {
        o.extend_from_slice(b"{\"outcome\":\"");
        o.extend_from_slice(r.outcome().as_bytes());
        o.extend_from_slice(b"\",\"remaining\":");
        int(o, r.remaining);
        o.push(b'}');
    });
    key(o, "user_agent");
    string(o, e.user_agent);
    key(o, "error");
    string(o, e.error);
    key(o, "grpc_status");
    or_null(o, e.grpc_status, int);
    key(o, "trace_id");
    quoted_or_null(o, e.trace_id, |o, t| crate::trace::context::hex_into(o, t));
    o.extend_from_slice(b"}\n");
}

/// `,"name":`, before every member but the first.
fn key(o: &mut Vec<u8>, name: &str) {
    o.extend_from_slice(b",\"");
    o.extend_from_slice(name.as_bytes());
    o.extend_from_slice(b"\":");
}

/// `v` as `write` puts it, or `null`.
fn or_null<T>(o: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => write(o, v),
        None => o.extend_from_slice(b"null"),
    }
}

/// `v` as `write` puts it, between quotes (text that needs no escaping), or `null`.
fn quoted_or_null<T>(o: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    or_null(o, v, |o, v| {
        o.push(b'"');
        write(o, v);
        o.push(b'"');
    });
}

fn int(o: &mut Vec<u8>, n: impl itoa::Integer) {
    o.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn three_digits(o: &mut Vec<u8>, n: u32) {
    o.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// A duration in milliseconds with three decimals (microseconds, rounded half up).
fn millis(o: &mut Vec<u8>, d: Duration) {
    let micros = d.as_secs() * 1_000_000 + u64::from(d.subsec_nanos() + 500) / 1000;
    int(o, micros / 1000);
    o.push(b'.');
    three_digits(o, (micros % 1000) as u32);
}

/// As `SocketAddr`'s `Display` (`[v6]:port` for IPv6).
fn socket_addr(o: &mut Vec<u8>, a: std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V4(v4) => ip_addr(o, IpAddr::V4(*v4.ip())),
        std::net::SocketAddr::V6(v6) => {
            o.push(b'[');
            ip_addr(o, IpAddr::V6(*v6.ip()));
            o.push(b']');
        }
    }
    o.push(b':');
    int(o, a.port());
}

fn ip_addr(o: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let (text, n) = crate::headers::ipv4_text(v4);
            o.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(o, "{v6}");
        }
    }
}

/// A JSON string (or `null`), escaped as `serde_json` does.
fn string(o: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            // Writing into a vector cannot fail.
            let _ = serde_json::to_writer(&mut *o, s);
        }
        None => o.extend_from_slice(b"null"),
    }
}

/// A combined-format field with `"` and `\` escaped by a backslash and control characters
/// (and, when `spaces`, spaces) as `\xHH`, as nginx escapes its variables.
fn escape(o: &mut Vec<u8>, s: &str, spaces: bool) {
    // Per byte: 1 passes as it is, 2 only where spaces pass (the space), 0 needs a look.
    const PLAIN: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut b = b'!';
        while b <= b'~' {
            t[b as usize] = 1;
            b += 1;
        }
        t[b'"' as usize] = 0;
        t[b'\\' as usize] = 0;
        t[b' ' as usize] = 2;
        t
    };
    let pass = if spaces { 1 } else { 3 };
    if s.bytes().all(|b| PLAIN[b as usize] & pass != 0) {
        o.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push(b'\\');
                o.push(c as u8);
            }
            c if c.is_control() || (spaces && c == ' ') => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                let n = c as u32;
                o.extend_from_slice(b"\\x");
                if n > 0xff {
                    o.push(HEX[(n >> 12) as usize & 15]);
                    o.push(HEX[(n >> 8) as usize & 15]);
                }
                o.push(HEX[(n >> 4) as usize & 15]);
                o.push(HEX[n as usize & 15]);
            }
            c => {
                let mut utf8 = [0; 4];
                o.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut o = Vec::new();
        f(&mut o);
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn addresses_as_their_display() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(with(|o| ip_addr(o, ip)), ip.to_string());
            let a = std::net::SocketAddr::new(ip, 8080);
            assert_eq!(with(|o| socket_addr(o, a)), a.to_string());
        }
    }

    #[test]
    fn millis_have_three_decimals() {
        let cases = [
            (0, "0.000"),
            (1_499, "0.001"),
            (1_500, "0.002"),
            (2_250_000, "2.250"),
        ];
        for (nanos, text) in cases {
            assert_eq!(with(|o| millis(o, Duration::from_nanos(nanos))), text);
        }
        assert_eq!(with(|o| millis(o, Duration::from_secs(90))), "90000.000");
    }

    #[test]
    fn escapes_as_nginx() {
        let esc = |s: &str, spaces| with(|o| escape(o, s, spaces));
        assert_eq!(esc("/a b", false), "/a b");
        assert_eq!(esc("ci bot", true), "ci\\x20bot");
        assert_eq!(esc("a\"b\\c", false), "a\\\"b\\\\c");
        assert_eq!(esc("x\ty\u{7f}", false), "x\\x09y\\x7F");
        assert_eq!(esc("caf\u{e9}\u{85}", false), "caf\u{e9}\\x85");
    }

    #[test]
    fn the_time_is_rfc3339_with_milliseconds() {
        let mut clock = Clock::default();
        let t = UNIX_EPOCH + Duration::from_millis(1_765_000_000_123);
        let a = with(|o| clock.write(o, t));
        let b = with(|o| clock.write(o, t + Duration::from_millis(5)));
        let c = with(|o| clock.write(o, t + Duration::from_secs(1)));
        assert_eq!(a, humantime::format_rfc3339_millis(t).to_string());
        assert_eq!(
            b,
            humantime::format_rfc3339_millis(t + Duration::from_millis(5)).to_string()
        );
        assert_eq!(
            c,
            humantime::format_rfc3339_millis(t + Duration::from_secs(1)).to_string()
        );
    }
}
