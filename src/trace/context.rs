//! W3C Trace Context (`traceparent`): the strict parse of what a client sends and the value
//! forwarded upstream. Only version `00` is produced; a higher version is read by its first
//! four fields, as the spec asks; anything else malformed is ignored (a new trace starts).

/// A parent a client named: its trace, its span, and whether it sampled the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// `traceparent` as the client sent it: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, trace and
/// span ids not all zero, version not `ff`; `None` for anything else.
pub fn parse(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    // Version 00 is exactly 55 bytes; a later version may append fields after a dash.
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if version != 0 && value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
    }
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Two lowercase hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// Lowercase hex of `bytes` into `out`, which is twice as long.
fn hex_to(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Lowercase hex of `bytes` onto `out`.
pub fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let at = out.len();
    out.resize(at + 2 * bytes.len(), 0);
    hex_to(&mut out[at..], bytes);
}

/// The `traceparent` value for the upstream: version 00, this trace, `span_id` as the parent.
pub fn format(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> http::HeaderValue {
    // 00-<32 hex>-<16 hex>-<2 hex>
    let mut v = *b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-00";
    hex_to(&mut v[3..35], trace_id);
    hex_to(&mut v[36..52], span_id);
    if sampled {
        v[54] = b'1';
    }
    http::HeaderValue::from_bytes(&v).expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let p = parse(GOOD.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(format(&p.trace_id, &p.span_id, true), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse(unsampled.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        let bad = [
            GOOD.to_uppercase(),
            GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            GOOD.replace("00f067aa0ba902b7", &"0".repeat(16)),
            GOOD.replacen("00-", "ff-", 1),
            format!("{GOOD}-extra"),
            GOOD[..54].to_owned(),
            GOOD.replace('-', "_"),
            GOOD.replacen("4b", "4g", 1),
            String::new(),
        ];
        for b in bad {
            assert_eq!(parse(b.as_bytes()), None, "{b}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = format!("{}-what-comes-next", GOOD.replacen("00-", "01-", 1));
        assert!(parse(later.as_bytes()).is_some());
        let glued = format!("{}x", GOOD.replacen("00-", "01-", 1));
        assert!(parse(glued.as_bytes()).is_none());
    }
}
