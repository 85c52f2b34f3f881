//! OpenTelemetry tracing (`tracing:`): a W3C `traceparent` accepted from the client or a new
//! trace, a SERVER span per request and a CLIENT span per upstream attempt, `traceparent`
//! forwarded upstream (always, sampled or not), spans exported over OTLP/HTTP in batches off
//! the request path ([`export`]). Without the section nothing here runs.

pub mod config;
pub mod context;
pub mod export;
pub mod proto;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};

use export::Sink;
use proto::{Attrs, Kind, Value};

pub use crate::headers::names::{TRACEPARENT, TRACESTATE};

/// The compiled `tracing` section and its exporter.
#[derive(Debug)]
pub struct Tracer {
    exporter: export::Exporter,
}

/// One request's trace: its ids, whether it is sampled, and (sampled) its spans so far.
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The server span's id; unsampled, the parent id forwarded upstream.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// The client's `tracestate`, passed on with a valid `traceparent`.
    pub state: Option<HeaderValue>,
    /// The client sent a `tracestate` without a valid `traceparent`: it is not passed on.
    pub stale_state: bool,
    rec: Option<Recording>,
}

/// A sampled request's spans.
struct Recording {
    /// Wall clock at the request's start, in ns since the epoch; later times are taken from
    /// the monotonic clock relative to it (`start_mono`).
    start_ns: u64,
    start_mono: u64,
    sink: Arc<Sink>,
    attempt: Option<Attempt>,
    attempts: i64,
    /// The next attempt's span id, drawn ahead: a request head built before its backend is
    /// picked already names the span its first attempt will have.
    next_span: [u8; 8],
}

/// The upstream attempt under way.
struct Attempt {
    span_id: [u8; 8],
    start_ns: u64,
    addr: SocketAddr,
    upstream: Arc<str>,
    status: Option<u16>,
}

/// What the server span says about the request, at its end.
pub struct Finished<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: Option<(&'a str, &'a str)>,
    pub consumer: Option<&'a str>,
    /// The rate-limit decision: allowed, and the policy's name.
    pub rate_limit: Option<(bool, &'a str)>,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
    pub error: Option<&'a str>,
}

/// A trace id and the server span's id.
type Ids<'a> = (&'a [u8; 16], &'a [u8; 8]);

/// An address as text; IPv4 (the common case) on the stack, without `fmt`.
enum IpText {
    V4([u8; 15], usize),
    Other(String),
}

impl IpText {
    fn of(ip: IpAddr) -> IpText {
        match ip {
            IpAddr::V4(v4) => {
                let (buf, n) = crate::headers::ipv4_text(v4);
                IpText::V4(buf, n)
            }
            ip => IpText::Other(ip.to_string()),
        }
    }

    fn value(&self) -> Value<'_> {
        match self {
            IpText::V4(buf, n) => Value::Ascii(&buf[..*n]),
            IpText::Other(s) => Value::Str(s),
        }
    }
}

/// A random id that is not all zeros (the W3C invalid value); a plain draw, as a range's
/// rejection sampling costs more than the one-in-2^64 redraw.
fn nonzero() -> u64 {
    loop {
        let n = fastrand::u64(..);
        if n != 0 {
            return n;
        }
    }
}

fn span_id() -> [u8; 8] {
    nonzero().to_be_bytes()
}

fn trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&nonzero().to_be_bytes());
    id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    id
}

impl Tracer {
    pub fn new(conf: config::Config) -> Tracer {
        Tracer {
            exporter: export::Exporter::new(conf),
        }
    }

    /// The trace a request joins or starts, and whether it is sampled: by the client's
    /// sampled flag under `parent_based`, else by `sample`.
    pub fn start(&self, headers: &HeaderMap) -> Trace {
        let conf = self.exporter.conf();
        let parent = headers
            .get(&TRACEPARENT)
            .and_then(|v| context::parse(v.as_bytes()));
        let sampled = match parent {
            Some(p) if conf.parent_based => p.sampled,
            _ => conf.sample > 0.0 && fastrand::f64() < conf.sample,
        };
        let rec = sampled.then(|| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            Recording {
                start_ns: now,
                start_mono: crate::clock::mono_nanos(),
                sink: self.exporter.sink().clone(),
                attempt: None,
                attempts: 0,
                next_span: span_id(),
            }
        });
        Trace {
            trace_id: parent.map_or_else(trace_id, |p| p.trace_id),
            span_id: span_id(),
            parent: parent.map(|p| p.span_id),
            state: parent.and_then(|_| headers.get(&TRACESTATE).cloned()),
            stale_state: parent.is_none() && headers.contains_key(&TRACESTATE),
            rec,
        }
    }

    /// The request is over: its server span (and an attempt still open) go to the exporter.
    pub fn finish(&self, t: &mut Trace, f: &Finished, upstream_error: Option<&str>) {
        let Some(rec) = t.rec.as_mut() else {
            return;
        };
        rec.end_attempt((&t.trace_id, &t.span_id), f.method, upstream_error);
        let mut attrs = Attrs::<12>::default();
        attrs.push("http.request.method", Value::Str(f.method));
        attrs.push("url.path", Value::Str(f.path));
        if f.status > 0 {
            attrs.push("http.response.status_code", Value::Int(f.status.into()));
        }
        if let Some((name, prefix)) = f.route {
            attrs.push("http.route", Value::Str(prefix));
            attrs.push("tollgate.route", Value::Str(name));
        }
        if let Some(c) = f.consumer {
            attrs.push("tollgate.consumer", Value::Str(c));
        }
        if let Some((allowed, policy)) = f.rate_limit {
            let outcome = if allowed { "allowed" } else { "limited" };
            attrs.push("tollgate.rate_limit", Value::Str(outcome));
            attrs.push("tollgate.rate_limit.policy", Value::Str(policy));
        }
        let ip = f.client_ip.map(IpText::of);
        if let Some(a) = &ip {
            attrs.push("client.address", a.value());
        }
        attrs.push("tollgate.request_id", Value::Str(f.request_id));
        if let Some(e) = f.error {
            attrs.push("error.type", Value::Str(e));
        }
        let name = (f.method, f.route.map(|(route, _)| route));
        let error = (f.status >= 500 || (f.status == 0 && f.error.is_some()))
            .then(|| f.error.unwrap_or("server error"));
        rec.sink.record(&proto::Span {
            trace_id: &t.trace_id,
            span_id: &t.span_id,
            parent_span_id: t.parent.as_ref(),
            trace_state: t.state.as_ref().map(|s| s.as_bytes()),
            name,
            kind: Kind::Server,
            start_ns: rec.start_ns,
            end_ns: rec.now(),
            attributes: attrs.as_slice(),
            error,
        });
        t.rec = None;
    }

    /// What sends the spans still pending when the gateway stops.
    pub fn flusher(&self) -> export::Flusher {
        self.exporter.flusher()
    }
}

impl Recording {
    fn now(&self) -> u64 {
        self.start_ns + crate::clock::mono_nanos().saturating_sub(self.start_mono)
    }

    /// Close the attempt under way (if any) as a CLIENT span; `error`: how it failed.
    fn end_attempt(&mut self, ids: Ids, method: &str, error: Option<&str>) {
        let (trace_id, server_span) = ids;
        let Some(a) = self.attempt.take() else {
            return;
        };
        let end_ns = self.now();
        let server_ip = IpText::of(a.addr.ip());
        let mut attrs = Attrs::<7>::default();
        attrs.push("http.request.method", Value::Str(method));
        attrs.push("server.address", server_ip.value());
        attrs.push("server.port", Value::Int(a.addr.port().into()));
        attrs.push("tollgate.upstream", Value::Str(&a.upstream));
        if self.attempts > 1 {
            attrs.push("http.request.resend_count", Value::Int(self.attempts - 1));
        }
        if let Some(s) = a.status {
            attrs.push("http.response.status_code", Value::Int(s.into()));
        }
        if let Some(e) = error {
            attrs.push("error.type", Value::Str(e));
        }
        self.sink.record(&proto::Span {
            trace_id,
            span_id: &a.span_id,
            parent_span_id: Some(server_span),
            trace_state: None,
            name: (method, Some(&*a.upstream)),
            kind: Kind::Client,
            start_ns: a.start_ns,
            end_ns,
            attributes: attrs.as_slice(),
            error,
        });
    }
}

impl Trace {
    /// Whether this request's spans are recorded (and exported).
    pub fn sampled(&self) -> bool {
        self.rec.is_some()
    }

    /// The `traceparent` for the upstream: sampled, the current attempt's span as the parent
    /// (before a backend is picked, the span the first attempt will have);
    /// not sampled, this request's id with the flag off, so the backend joins the trace.
    pub fn upstream_header(&self) -> HeaderValue {
        match &self.rec {
            Some(rec) => {
                let id = rec.attempt.as_ref().map_or(&rec.next_span, |a| &a.span_id);
                context::format(&self.trace_id, id, true)
            }
            None => context::format(&self.trace_id, &self.span_id, false),
        }
    }

    /// A backend was picked: a new CLIENT span starts (one still open ends first).
    pub fn attempt(&mut self, method: &str, addr: SocketAddr, upstream: &Arc<str>) {
        let Some(rec) = self.rec.as_mut() else {
            return;
        };
        rec.end_attempt((&self.trace_id, &self.span_id), method, None);
        rec.attempts += 1;
        rec.attempt = Some(Attempt {
            span_id: std::mem::replace(&mut rec.next_span, span_id()),
            start_ns: rec.now(),
            addr,
            upstream: upstream.clone(),
            status: None,
        });
    }

    /// The backend answered with `status`.
    pub fn answered(&mut self, status: u16) {
        if let Some(a) = self.rec.as_mut().and_then(|r| r.attempt.as_mut()) {
            a.status = Some(status);
        }
    }

    /// The attempt under way failed (`error`: its kind); its span ends.
    pub fn attempt_failed(&mut self, method: &str, error: &str) {
        if let Some(rec) = self.rec.as_mut() {
            rec.end_attempt((&self.trace_id, &self.span_id), method, Some(error));
        }
    }
}
