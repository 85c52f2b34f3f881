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
pub enum Value<'a> {
    Str(&'a str),
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

fn varint(o: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        o.push((v as u8) | 0x80);
        v >>= 7;
    }
    o.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn tag(o: &mut Vec<u8>, field: u8, wire: u8) {
    o.push(field << 3 | wire);
}

/// A field's tag and a varint (its value, or its length).
fn head(o: &mut Vec<u8>, field: u8, wire: u8, v: u64) {
    tag(o, field, wire);
    varint(o, v);
}

fn bytes(o: &mut Vec<u8>, field: u8, b: &[u8]) {
    head(o, field, LEN, b.len() as u64);
    o.extend_from_slice(b);
}

/// The encoded size of a length-delimited field of `len` bytes (one-byte tag).
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value = 1 | int_value = 3 }`.
fn key_value(o: &mut Vec<u8>, field: u8, key: &str, value: &Value) {
    let any = match value {
        Value::Str(s) => len_field(s.len()),
        Value::Int(i) => 1 + varint_len(*i as u64),
    };
    head(
        o,
        field,
        LEN,
        (len_field(key.len()) + len_field(any)) as u64,
    );
    bytes(o, 1, key.as_bytes());
    head(o, 2, LEN, any as u64);
    match value {
        Value::Str(s) => bytes(o, 1, s.as_bytes()),
        Value::Int(i) => head(o, 3, VARINT, *i as u64),
    }
}

/// `ScopeSpans.spans` (field 2): one `Span` message, appended to `o`. `scratch` is reused.
pub fn span(o: &mut Vec<u8>, scratch: &mut Vec<u8>, s: &Span) {
    scratch.clear();
    let b = scratch;
    bytes(b, 1, s.trace_id);
    bytes(b, 2, s.span_id);
    if let Some(ts) = s.trace_state {
        bytes(b, 3, ts);
    }
    if let Some(p) = s.parent_span_id {
        bytes(b, 4, p);
    }
    match s.name {
        (a, None) => bytes(b, 5, a.as_bytes()),
        (a, Some(c)) => {
            head(b, 5, LEN, (a.len() + 1 + c.len()) as u64);
            b.extend_from_slice(a.as_bytes());
            b.push(b' ');
            b.extend_from_slice(c.as_bytes());
        }
    }
    head(b, 6, VARINT, s.kind as u64);
    tag(b, 7, FIXED64);
    b.extend_from_slice(&s.start_ns.to_le_bytes());
    tag(b, 8, FIXED64);
    b.extend_from_slice(&s.end_ns.to_le_bytes());
    for (k, v) in s.attributes {
        key_value(b, 9, k, v);
    }
    // Status { message = 2; code = 3 }: ERROR (2), or left unset.
    if let Some(msg) = s.error {
        head(b, 15, LEN, (len_field(msg.len()) + 2) as u64);
        bytes(b, 2, msg.as_bytes());
        head(b, 3, VARINT, 2);
    }
    bytes(o, 2, b);
}

/// `ExportTraceServiceRequest` around spans already encoded as `ScopeSpans.spans` fields.
pub fn request(resource: &[(&str, Value)], scope: (&str, &str), spans: &[u8]) -> Vec<u8> {
    let mut res = Vec::new();
    for (k, v) in resource {
        key_value(&mut res, 1, k, v);
    }
    let mut scope_msg = Vec::new();
    bytes(&mut scope_msg, 1, scope.0.as_bytes());
    bytes(&mut scope_msg, 2, scope.1.as_bytes());
    let scope_spans = len_field(scope_msg.len()) + spans.len();
    let resource_spans = len_field(res.len()) + len_field(scope_spans);
    let mut o = Vec::with_capacity(resource_spans + 16);
    tag(&mut o, 1, LEN);
    varint(&mut o, resource_spans as u64);
    bytes(&mut o, 1, &res);
    tag(&mut o, 2, LEN);
    varint(&mut o, scope_spans as u64);
    bytes(&mut o, 1, &scope_msg);
    o.extend_from_slice(spans);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut o = Vec::new();
            varint(&mut o, v);
            assert_eq!(o.len(), varint_len(v), "{v}");
        }
    }
}
