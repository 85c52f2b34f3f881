//! The few OTLP protobuf messages tollgate writes (opentelemetry-proto's
//! `collector/trace/v1/trace_service.proto`, `trace/v1/trace.proto`, `common/v1/common.proto`),
//! encoded by hand: a span is written once, when it ends, and a batch is the spans' bytes
//! wrapped in `ExportTraceServiceRequest { ResourceSpans { Resource, ScopeSpans } }`.
//! The tests decode these with the official generated types.

/// A span's kind (`Span.SpanKind`).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// An attribute's value (`AnyValue`).
#[derive(Clone, Copy)]
pub enum Value<'a> {
    Str(&'a str),
    /// A string value already as bytes (ASCII text such as an address).
    Ascii(&'a [u8]),
    Int(i64),
}

/// One span, ready to encode.
pub struct Span<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: &'a [u8; 8],
    pub parent_span_id: Option<&'a [u8; 8]>,
    pub trace_state: Option<&'a [u8]>,
    /// The name, as parts joined by a space (`GET orders`).
    pub name: (&'a str, Option<&'a str>),
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: &'a [(&'a str, Value<'a>)],
    /// `Status.code` ERROR, with this message.
    pub error: Option<&'a str>,
}

/// A span's attributes, gathered on the stack (at most `N`; more are not recorded).
pub struct Attrs<'a, const N: usize> {
    items: [(&'a str, Value<'a>); N],
    len: usize,
}

impl<const N: usize> Default for Attrs<'_, N> {
    fn default() -> Self {
        Attrs {
            items: [("", Value::Int(0)); N],
            len: 0,
        }
    }
}

impl<'a, const N: usize> Attrs<'a, N> {
    pub fn push(&mut self, key: &'a str, value: Value<'a>) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (key, value);
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[(&'a str, Value<'a>)] {
        &self.items[..self.len]
    }
}

#[inline]
fn varint(o: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        o.push((v as u8) | 0x80);
        v >>= 7;
    }
    o.push(v as u8);
}

#[inline]
fn varint_len(v: u64) -> usize {
    // Lengths and small numbers (the usual values) take one or two bytes.
    match v {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        _ => (64 - v.leading_zeros() as usize).div_ceil(7),
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

#[inline]
fn tag(o: &mut Vec<u8>, field: u8, wire: u8) {
    o.push(field << 3 | wire);
}

/// A field's tag and a varint (its value, or its length).
#[inline]
fn head(o: &mut Vec<u8>, field: u8, wire: u8, v: u64) {
    tag(o, field, wire);
    varint(o, v);
}

#[inline]
fn bytes(o: &mut Vec<u8>, field: u8, b: &[u8]) {
    head(o, field, LEN, b.len() as u64);
    o.extend_from_slice(b);
}

/// The encoded size of a length-delimited field of `len` bytes (one-byte tag).
#[inline]
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// The size of `AnyValue { string_value = 1 | int_value = 3 }`.
fn any_len(value: &Value) -> usize {
    match value {
        Value::Str(s) => len_field(s.len()),
        Value::Ascii(s) => len_field(s.len()),
        Value::Int(i) => 1 + varint_len(*i as u64),
    }
}

/// The size of `KeyValue { key = 1; AnyValue value = 2 }`.
fn key_value_len(key: &str, value: &Value) -> usize {
    len_field(key.len()) + len_field(any_len(value))
}

fn key_value(o: &mut Vec<u8>, field: u8, key: &str, value: &Value) {
    let any = any_len(value);
    let kv = len_field(key.len()) + len_field(any);
    // Every length below 128 (the usual attribute) is one byte: the framing is written in
    // short runs rather than byte by byte.
    let short = kv < 128;
    if short {
        o.extend_from_slice(&[field << 3 | LEN, kv as u8, 1 << 3 | LEN, key.len() as u8]);
        o.extend_from_slice(key.as_bytes());
    } else {
        head(o, field, LEN, kv as u64);
        bytes(o, 1, key.as_bytes());
    }
    let text = match value {
        Value::Str(s) => s.as_bytes(),
        Value::Ascii(s) => s,
        Value::Int(i) => {
            head(o, 2, LEN, any as u64);
            return head(o, 3, VARINT, *i as u64);
        }
    };
    if short {
        o.extend_from_slice(&[2 << 3 | LEN, any as u8, 1 << 3 | LEN, text.len() as u8]);
        o.extend_from_slice(text);
    } else {
        head(o, 2, LEN, any as u64);
        bytes(o, 1, text);
    }
}

fn name_len(name: (&str, Option<&str>)) -> usize {
    match name {
        (a, None) => a.len(),
        (a, Some(c)) => a.len() + 1 + c.len(),
    }
}

/// The size of a `Span` message's fields.
fn span_len(s: &Span) -> usize {
    let mut n = len_field(16) + len_field(8) + 2 + 9 + 9 + len_field(name_len(s.name));
    if let Some(ts) = s.trace_state {
        n += len_field(ts.len());
    }
    if s.parent_span_id.is_some() {
        n += len_field(8);
    }
    for (k, v) in s.attributes {
        n += len_field(key_value_len(k, v));
    }
    if let Some(msg) = s.error {
        n += len_field(len_field(msg.len()) + 2);
    }
    n
}

/// `ScopeSpans.spans` (field 2): one `Span` message, appended to `o`, sized first so it is
/// written in place.
pub fn span(o: &mut Vec<u8>, s: &Span) {
    let len = span_len(s);
    o.reserve(len_field(len));
    head(o, 2, LEN, len as u64);
    bytes(o, 1, s.trace_id);
    bytes(o, 2, s.span_id);
    if let Some(ts) = s.trace_state {
        bytes(o, 3, ts);
    }
    if let Some(p) = s.parent_span_id {
        bytes(o, 4, p);
    }
    head(o, 5, LEN, name_len(s.name) as u64);
    o.extend_from_slice(s.name.0.as_bytes());
    if let Some(c) = s.name.1 {
        o.push(b' ');
        o.extend_from_slice(c.as_bytes());
    }
    head(o, 6, VARINT, s.kind as u64);
    tag(o, 7, FIXED64);
    o.extend_from_slice(&s.start_ns.to_le_bytes());
    tag(o, 8, FIXED64);
    o.extend_from_slice(&s.end_ns.to_le_bytes());
    for (k, v) in s.attributes {
        key_value(o, 9, k, v);
    }
    // Status { message = 2; code = 3 }: ERROR (2), or left unset.
    if let Some(msg) = s.error {
        head(o, 15, LEN, (len_field(msg.len()) + 2) as u64);
        bytes(o, 2, msg.as_bytes());
        head(o, 3, VARINT, 2);
    }
}

/// The head of an `ExportTraceServiceRequest` whose last bytes are `spans_len` bytes of spans
/// already encoded as `ScopeSpans.spans` fields: the spans are sent after it as they are.
pub fn request_head(resource: &[(&str, Value)], scope: (&str, &str), spans_len: usize) -> Vec<u8> {
    let mut res = Vec::new();
    for (k, v) in resource {
        key_value(&mut res, 1, k, v);
    }
    let mut scope_msg = Vec::new();
    bytes(&mut scope_msg, 1, scope.0.as_bytes());
    bytes(&mut scope_msg, 2, scope.1.as_bytes());
    let scope_spans = len_field(scope_msg.len()) + spans_len;
    let resource_spans = len_field(res.len()) + len_field(scope_spans);
    let mut o = Vec::with_capacity(resource_spans - spans_len + 16);
    tag(&mut o, 1, LEN);
    varint(&mut o, resource_spans as u64);
    bytes(&mut o, 1, &res);
    tag(&mut o, 2, LEN);
    varint(&mut o, scope_spans as u64);
    bytes(&mut o, 1, &scope_msg);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_as_long_as_its_size_says() {
        let attrs = [
            ("a", Value::Str("b")),
            ("address", Value::Ascii(b"10.0.0.1")),
            ("n", Value::Int(-1)),
            ("long", Value::Str(&"x".repeat(300))),
        ];
        let s = Span {
            trace_id: &[1; 16],
            span_id: &[2; 8],
            parent_span_id: Some(&[3; 8]),
            trace_state: Some(b"k=v"),
            name: ("GET", Some("orders")),
            kind: Kind::Server,
            start_ns: 1,
            end_ns: u64::MAX,
            attributes: &attrs,
            error: Some("boom"),
        };
        let mut o = Vec::new();
        span(&mut o, &s);
        assert_eq!(o.len(), len_field(span_len(&s)));
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut o = Vec::new();
            varint(&mut o, v);
            assert_eq!(o.len(), varint_len(v), "{v}");
        }
    }
}
