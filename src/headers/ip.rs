//! Addresses as header text (`X-Forwarded-For`, `X-Real-IP`, the access log, trace
//! attributes): IPv4, the common case, from a table of the octets' digits, without `fmt`.

use std::net::IpAddr;

use http::HeaderValue;

/// Each octet's decimal digits (up to three) and how many there are.
static OCTET_TEXT: [([u8; 3], u8); 256] = {
    let mut t = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        t[i] = if o >= 100 {
            ([b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10], 3)
        } else if o >= 10 {
            ([b'0' + o / 10, b'0' + o % 10, 0], 2)
        } else {
            ([b'0' + o, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// An IPv4 address in dotted decimal without `fmt`: the text is `buf[..n]`.
pub fn ipv4_text(v4: std::net::Ipv4Addr) -> ([u8; 15], usize) {
    // Room for a whole octet and its dot after the text so far: each step writes four bytes
    // at `n` and keeps the ones it needs.
    let mut buf = [0u8; 19];
    let mut n = 0;
    for octet in v4.octets() {
        let (digits, len) = OCTET_TEXT[usize::from(octet)];
        buf[n..n + 4].copy_from_slice(&[digits[0], digits[1], digits[2], b'.']);
        let len = usize::from(len);
        buf[n + len] = b'.';
        n += len + 1;
    }
    let mut text = [0u8; 15];
    text.copy_from_slice(&buf[..15]);
    (text, n - 1)
}

/// An IP address as a header value; IPv4 (the common case) without `fmt`.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let (buf, n) = ipv4_text(v4);
            HeaderValue::from_bytes(&buf[..n]).expect("digits and dots are a valid header value")
        }
        IpAddr::V6(_) => {
            HeaderValue::try_from(ip.to_string()).expect("an IPv6 address is a valid header value")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_octet_reads_as_display_does() {
        for o in 0..=255u8 {
            for v4 in [[o, 0, 0, 0], [1, o, 22, o], [255, 255, 255, o]] {
                let v4 = std::net::Ipv4Addr::from(v4);
                let (buf, n) = ipv4_text(v4);
                assert_eq!(&buf[..n], v4.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.199",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }
}
