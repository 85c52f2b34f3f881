//! OpenTelemetry tracing end to end: the real gateway exports to a collector of the test's,
//! which decodes every batch with the official OTLP protobuf definitions
//! (`opentelemetry-proto`), and echo upstreams show the `traceparent` they received. Covers
//! the server and per-attempt client spans and their attributes, W3C propagation (continued,
//! unsampled, malformed), retries, the access log's trace id, the export metrics, and the
//! config errors.

mod support;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;

const KEY: &str = "supersecretapikey";

/// An OTLP/HTTP collector: every POST body decoded as `ExportTraceServiceRequest`.
#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<Received>>>,
}

/// One export as received: the request head, the decoded message, the raw body.
type Received = (String, ExportTraceServiceRequest, Vec<u8>);

impl Collector {
    fn start() -> (Collector, SocketAddr) {
        Collector::start_with(None, Duration::ZERO)
    }

    /// With `tls`, the collector speaks HTTPS, and takes `slow` to accept a connection's
    /// handshake.
    fn start_with(
        tls: Option<openssl::ssl::SslAcceptor>,
        slow: Duration,
    ) -> (Collector, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = Collector::default();
        let seen = c.clone();
        let tls = tls.map(Arc::new);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (seen, tls) = (seen.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(acceptor) => {
                        std::thread::sleep(slow);
                        if let Ok(mut s) = acceptor.accept(s) {
                            seen.serve(&mut s)
                        }
                    }
                    None => seen.serve(&mut { s }),
                });
            }
        });
        (c, addr)
    }

    fn serve(&self, s: &mut (impl Read + Write)) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len: usize = header_in(&head, "content-length").unwrap().parse().unwrap();
        while buf.len() < end + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end..end + len].to_vec();
        let req = ExportTraceServiceRequest::decode(&body[..]).expect("a valid OTLP export");
        self.requests.lock().unwrap().push((head, req, body));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }

    fn spans(&self) -> Vec<Span> {
        let reqs = self.requests.lock().unwrap();
        reqs.iter()
            .flat_map(|(_, r, _)| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    /// The spans of `trace`, once there are `n` of them.
    fn trace(&self, trace: &[u8], n: usize) -> Vec<Span> {
        let of = || -> Vec<Span> {
            self.spans()
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect()
        };
        assert!(
            eventually(Duration::from_secs(10), || of().len() >= n),
            "expected {n} spans of trace {}, have {:?}",
            hex::encode(trace),
            of()
        );
        of()
    }
}

fn attr(s: &Span, key: &str) -> Option<Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn text(s: &Span, key: &str) -> Option<String> {
    match attr(s, key)? {
        Value::StringValue(v) => Some(v),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key)? {
        Value::IntValue(v) => Some(v),
        other => panic!("{key} is not an int: {other:?}"),
    }
}

/// `traceparent` → (trace id, parent id, flags), all as bytes.
fn traceparent(v: &str) -> (Vec<u8>, Vec<u8>, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{v}");
    (
        hex::decode(parts[1]).unwrap(),
        hex::decode(parts[2]).unwrap(),
        parts[3].to_owned(),
    )
}

fn server(spans: &[Span]) -> Span {
    let s: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(s.len(), 1, "{spans:?}");
    s[0].clone()
}

fn clients(spans: &[Span]) -> Vec<Span> {
    let mut c: Vec<Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .cloned()
        .collect();
    c.sort_by_key(|s| s.start_time_unix_nano);
    c
}

/// A gateway tracing into `collector` with `tracing` keys `keys`; `/flaky` goes to a closed
/// port and an echo, in turn, with one retry.
fn gateway(collector: SocketAddr, keys: &str) -> Gateway {
    let up = echo("up");
    let down = closed_port();
    Gateway::start(&format!(
        r#"
tracing: {{otlp: {{endpoint: "http://{collector}", timeout: 2s}}, service_name: edge, {keys}}}
upstreams:
  up: {{targets: ["{up}"]}}
  flaky: {{targets: ["{down}", "{up}"], retries: 1}}
  down: {{targets: ["{down}"], retries: 0}}
consumers:
  alice: {{api_keys: ["{KEY}"]}}
auth:
  keys: {{type: api_key, header: X-Api-Key}}
rate_limits:
  per-client: {{requests: 100, per: 1m, key: consumer}}
  tight: {{requests: 1, per: 1m, burst: 1}}
routes:
  - {{name: private, path_prefix: /private, upstream: up, auth: [keys], rate_limit: per-client}}
  - {{name: public, path_prefix: /public, upstream: up}}
  - {{name: flaky, path_prefix: /flaky, upstream: flaky}}
  - {{name: tight, path_prefix: /tight, upstream: up, rate_limit: tight}}
  - {{name: down, path_prefix: /down, upstream: down}}
"#
    ))
}

#[test]
fn a_request_is_a_server_span_with_a_client_span_per_attempt() {
    let (collector, addr) = Collector::start();
    let gw = gateway(addr, "sample: 1.0");
    let r = gw.send(
        "GET",
        "/private/items?token=querysecret",
        &[("X-Api-Key", KEY)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r
        .upstream_header("traceparent")
        .expect("traceparent forwarded");
    let (trace, parent, flags) = traceparent(&seen);
    assert_eq!(flags, "01");
    let spans = collector.trace(&trace, 2);
    let (srv, cl) = (server(&spans), clients(&spans));
    assert_eq!(cl.len(), 1, "{spans:?}");
    let cl = cl[0].clone();
    // The upstream's parent is the attempt's span, whose parent is the server span.
    assert_eq!(cl.span_id, parent);
    assert_eq!(cl.parent_span_id, srv.span_id);
    assert!(srv.parent_span_id.is_empty(), "a new trace: {srv:?}");
    assert_eq!(srv.name, "GET private");
    assert_eq!(text(&srv, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(text(&srv, "url.path").as_deref(), Some("/private/items"));
    assert_eq!(int(&srv, "http.response.status_code"), Some(200));
    assert_eq!(text(&srv, "http.route").as_deref(), Some("/private"));
    assert_eq!(text(&srv, "tollgate.route").as_deref(), Some("private"));
    assert_eq!(text(&srv, "tollgate.consumer").as_deref(), Some("alice"));
    assert_eq!(
        text(&srv, "tollgate.rate_limit").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        text(&srv, "tollgate.rate_limit.policy").as_deref(),
        Some("per-client")
    );
    assert_eq!(text(&srv, "client.address").as_deref(), Some("127.0.0.1"));
    assert!(srv.start_time_unix_nano <= cl.start_time_unix_nano);
    assert!(cl.end_time_unix_nano <= srv.end_time_unix_nano);
    assert_eq!(int(&cl, "http.response.status_code"), Some(200));
    assert_eq!(text(&cl, "tollgate.upstream").as_deref(), Some("up"));
    assert_eq!(text(&cl, "server.address").as_deref(), Some("127.0.0.1"));
    assert!(int(&cl, "server.port").is_some());
    // The batch: OTLP/HTTP protobuf, the service named; no credential or query anywhere.
    let reqs = collector.requests.lock().unwrap();
    let (head, export, body) = &reqs[0];
    assert!(head.starts_with("POST /v1/traces HTTP/1.1"), "{head}");
    assert_eq!(
        header_in(head, "content-type").as_deref(),
        Some("application/x-protobuf")
    );
    let resource = export.resource_spans[0].resource.as_ref().unwrap();
    let service = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.clone()?.value);
    assert_eq!(service, Some(Value::StringValue("edge".into())));
    assert!(!body.is_empty());
    for (_, _, body) in reqs.iter() {
        let raw = String::from_utf8_lossy(body);
        assert!(!raw.contains(KEY) && !raw.contains("querysecret"), "{raw}");
    }
    drop(reqs);
    // The access-log line carries the trace id.
    let hex_trace = hex::encode(&trace);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .logs()
            .contains(&format!("trace_id={hex_trace}"))),
        "{}",
        gw.logs()
    );
    let metrics = gw.admin_get("/metrics").body;
    assert!(
        metrics.contains("tollgate_trace_spans_exported_total ")
            && !metrics.contains("tollgate_trace_spans_exported_total 0\n"),
        "{metrics}"
    );
}

/// The status and spans of a request sent with a sampled traceparent of a trace of its own
/// (a request's spans are exported together, so the first seen are all of them).
fn spans_of_answer(
    gw: &Gateway,
    c: &Collector,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<Span>) {
    let trace = format!("{:032x}", u128::from(id_of(path)));
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let mut all = headers.to_vec();
    all.push(("traceparent", &tp));
    let r = gw.send("GET", path, &all);
    (r.status, c.trace(&hex::decode(&trace).unwrap(), 1))
}

/// A distinct non-zero id per path.
fn id_of(path: &str) -> u64 {
    path.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn refusals_and_failures_are_traced_with_their_outcome() {
    let (collector, addr) = Collector::start();
    let gw = gateway(addr, "sample: 1.0");
    // No credential: 401, no consumer, no client span.
    let (status, spans) = spans_of_answer(&gw, &collector, "/private/a", &[]);
    assert_eq!(status, 401);
    let srv = server(&spans);
    assert_eq!(int(&srv, "http.response.status_code"), Some(401));
    assert_eq!(text(&srv, "tollgate.consumer"), None);
    assert!(clients(&spans).is_empty(), "{spans:?}");
    assert!(srv
        .status
        .as_ref()
        .is_none_or(|s| s.code != StatusCode::Error as i32));
    // Over the limit: 429, the decision and its policy.
    assert_eq!(gw.get("/tight/a").status, 200);
    let (status, spans) = spans_of_answer(&gw, &collector, "/tight/b", &[]);
    assert_eq!(status, 429);
    let srv = server(&spans);
    assert_eq!(
        text(&srv, "tollgate.rate_limit").as_deref(),
        Some("limited")
    );
    assert_eq!(
        text(&srv, "tollgate.rate_limit.policy").as_deref(),
        Some("tight")
    );
    // The backend refuses connections: 502, the server span an error, its attempt too.
    let (status, spans) = spans_of_answer(&gw, &collector, "/down/a", &[]);
    assert_eq!(status, 502);
    let srv = server(&spans);
    assert_eq!(srv.status.as_ref().unwrap().code, StatusCode::Error as i32);
    let cl = clients(&spans);
    assert_eq!(cl.len(), 1, "{spans:?}");
    assert_eq!(
        cl[0].status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert!(text(&cl[0], "error.type").is_some());
}

#[test]
fn a_sampled_client_parent_is_continued_even_at_sample_zero() {
    let (collector, addr) = Collector::start();
    let gw = gateway(addr, "sample: 0.0, parent_based: true");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{client_span}-01");
    let r = gw.send(
        "GET",
        "/public/a",
        &[("traceparent", &tp), ("tracestate", "vendor=abc")],
    );
    assert_eq!(r.status, 200);
    let (t, parent, flags) = traceparent(&r.upstream_header("traceparent").unwrap());
    assert_eq!((hex::encode(&t).as_str(), flags.as_str()), (trace, "01"));
    assert_eq!(
        r.upstream_header("tracestate").as_deref(),
        Some("vendor=abc")
    );
    let spans = collector.trace(&t, 2);
    let srv = server(&spans);
    assert_eq!(hex::encode(&srv.parent_span_id), client_span);
    assert_eq!(srv.trace_state, "vendor=abc");
    assert_eq!(clients(&spans)[0].span_id, parent);
    // Without a parent, sample 0 records nothing (a later sampled one shows the queue moved).
    let r = gw.get("/public/b");
    let (t, _, flags) = traceparent(&r.upstream_header("traceparent").unwrap());
    assert_eq!(flags, "00");
    let r = gw.send("GET", "/public/c", &[("traceparent", &tp)]);
    assert_eq!(r.status, 200);
    collector.trace(&hex::decode(trace).unwrap(), 4);
    assert!(collector.spans().iter().all(|s| s.trace_id != t));
}

#[test]
fn an_unsampled_client_parent_is_forwarded_and_not_recorded() {
    let (collector, addr) = Collector::start();
    let gw = gateway(addr, "sample: 1.0, parent_based: true");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{trace}-b7ad6b7169203331-00");
    let r = gw.send("GET", "/public/a", &[("traceparent", &tp)]);
    assert_eq!(r.status, 200);
    let (t, parent, flags) = traceparent(&r.upstream_header("traceparent").unwrap());
    assert_eq!((hex::encode(&t).as_str(), flags.as_str()), (trace, "00"));
    assert_ne!(hex::encode(parent), "0000000000000000");
    // A later sampled request's spans arrive; none of the unsampled trace came before them.
    let r = gw.get("/public/b");
    let (later, _, _) = traceparent(&r.upstream_header("traceparent").unwrap());
    collector.trace(&later, 2);
    assert!(collector.spans().iter().all(|s| s.trace_id != t));
    let hex_trace = trace.to_string();
    assert!(
        eventually(Duration::from_secs(5), || gw
            .logs()
            .contains(&format!("trace_id={hex_trace}"))),
        "the access log names the client's trace:\n{}",
        gw.logs()
    );
}

#[test]
fn a_malformed_traceparent_starts_a_new_trace() {
    let (collector, addr) = Collector::start();
    let gw = gateway(addr, "sample: 1.0");
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ] {
        let r = gw.send(
            "GET",
            "/public/a",
            &[("traceparent", bad), ("tracestate", "vendor=abc")],
        );
        assert_eq!(r.status, 200);
        let seen = r.upstream_header("traceparent").unwrap();
        let (t, _, flags) = traceparent(&seen);
        assert_ne!(hex::encode(&t), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
        assert_eq!(flags, "01");
        // The state of a parent that is not one goes with it.
        assert_eq!(r.upstream_header("tracestate"), None, "{bad}");
        let srv = server(&collector.trace(&t, 2));
        assert!(srv.parent_span_id.is_empty(), "{bad}: {srv:?}");
    }
}

#[test]
fn each_retry_is_its_own_client_span() {
    let (collector, addr) = Collector::start();
    let gw = gateway(addr, "sample: 1.0");
    // Round robin: within two requests, one tries the closed port first, then the echo.
    let retried = (0..4).find_map(|_| {
        let r = gw.get("/flaky/x");
        assert_eq!(r.status, 200, "{r:?}");
        let (t, parent, _) = traceparent(&r.upstream_header("traceparent").unwrap());
        // A request's spans are exported together: its server span comes with them.
        let spans = collector.trace(&t, 2);
        (clients(&spans).len() == 2).then_some((spans, parent))
    });
    let (spans, parent) = retried.expect("a request was retried");
    let srv = server(&spans);
    let cl = clients(&spans);
    assert_eq!(cl.len(), 2, "{spans:?}");
    assert!(cl.iter().all(|c| c.parent_span_id == srv.span_id));
    assert_ne!(cl[0].span_id, cl[1].span_id);
    let failed = cl[0]
        .status
        .as_ref()
        .expect("the refused attempt has a status");
    assert_eq!(failed.code, StatusCode::Error as i32, "{:?}", cl[0]);
    assert!(text(&cl[0], "error.type").is_some(), "{:?}", cl[0]);
    assert_eq!(int(&cl[0], "http.response.status_code"), None);
    assert_eq!(int(&cl[1], "http.response.status_code"), Some(200));
    assert_eq!(int(&cl[1], "http.request.resend_count"), Some(1));
    // The backend that answered saw the second attempt's span as its parent.
    assert_eq!(cl[1].span_id, parent);
    assert_eq!(int(&srv, "http.response.status_code"), Some(200));
}

#[test]
fn spans_go_to_an_https_collector_verified_against_the_trust_store() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, acceptor) = idp::ca_and_leaf(dir.path(), "collector");
    let (collector, addr) = Collector::start_with(Some(acceptor), Duration::ZERO);
    let up = echo("up");
    let body = format!(
        "tracing: {{otlp: {{endpoint: \"https://localhost:{}/otel\"}}}}\n\
         upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
         routes: [{{name: api, path_prefix: /api, upstream: up}}]\n",
        addr.port()
    );
    // Not trusting the collector's CA: nothing is sent, the spans are counted as dropped.
    let distrustful = Gateway::start_with_env(&body, &[("SSL_CERT_FILE", "/dev/null")]);
    assert_eq!(distrustful.get("/api/a").status, 200);
    assert!(
        eventually(Duration::from_secs(10), || dropped(&distrustful) >= 2),
        "{}",
        distrustful.admin_get("/metrics").body
    );
    assert!(collector.spans().is_empty());
    let gw = Gateway::start_with_env(&body, &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    let r = gw.get("/api/a");
    let (t, _, _) = traceparent(&r.upstream_header("traceparent").unwrap());
    let spans = collector.trace(&t, 2);
    assert_eq!(server(&spans).name, "GET api");
    let head = collector.requests.lock().unwrap()[0].0.clone();
    assert!(head.starts_with("POST /otel/v1/traces HTTP/1.1"), "{head}");
}

#[test]
fn spans_still_pending_are_sent_when_the_gateway_stops() {
    // A collector slow to take the connection: the export is still under way when the
    // gateway's own shutdown is over.
    let dir = tempfile::tempdir().unwrap();
    let (ca, acceptor) = idp::ca_and_leaf(dir.path(), "collector");
    let (collector, addr) = Collector::start_with(Some(acceptor), Duration::from_millis(500));
    let up = echo("up");
    let mut gw = Gateway::start_with_env(
        &format!(
            "tracing: {{otlp: {{endpoint: \"https://localhost:{}\"}}, sample: 1.0}}\n\
             upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
             routes: [{{name: api, path_prefix: /api, upstream: up}}]\n",
            addr.port()
        ),
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    );
    assert_eq!(gw.get("/api/last-words").status, 200);
    // SIGINT is Pingora's fast shutdown: the process is gone well before a batch would be due.
    let pid = gw.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        eventually(Duration::from_secs(15), || gw.exited()),
        "the gateway did not stop"
    );
    let paths: Vec<String> = collector
        .spans()
        .iter()
        .filter_map(|s| text(s, "url.path"))
        .collect();
    assert_eq!(paths, ["/api/last-words"], "{}", gw.logs());
}

/// `tollgate_trace_spans_dropped_total` now.
fn dropped(gw: &Gateway) -> u64 {
    let m = gw.admin_get("/metrics").body;
    m.lines()
        .find_map(|l| l.strip_prefix("tollgate_trace_spans_dropped_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

#[test]
fn export_failures_are_counted_and_never_fail_requests() {
    let gw = gateway(closed_port(), "sample: 1.0");
    for _ in 0..3 {
        assert_eq!(gw.get("/public/a").status, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || dropped(&gw) >= 6),
        "{}",
        gw.admin_get("/metrics").body
    );
}

#[test]
fn without_tracing_nothing_is_added_and_the_client_header_passes() {
    let up = echo("up");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: api, path_prefix: /api, upstream: up}}]\n"
    ));
    let r = gw.get("/api/a");
    assert_eq!(r.upstream_header("traceparent"), None);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.send("GET", "/api/a", &[("traceparent", tp)]);
    assert_eq!(r.upstream_header("traceparent").as_deref(), Some(tp));
    assert!(!gw.logs().contains("trace_id="), "{}", gw.logs());
}

#[test]
fn bad_tracing_settings_are_config_errors_with_their_key() {
    let base = "upstreams: {up: {targets: [\"127.0.0.1:8081\"]}}\nroutes: [{name: r, path_prefix: /r, upstream: up}]\n";
    let cases = [
        (
            "tracing: {otlp: {endpoint: \"collector:4318\"}}",
            "tracing.otlp.endpoint",
        ),
        (
            "tracing: {otlp: {endpoint: \"ftp://c\"}}",
            "tracing.otlp.endpoint",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\", timeout: soon}}",
            "tracing.otlp.timeout",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\", timeout: 2}}",
            "tracing.otlp.timeout",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\"}, sample: 1.5}",
            "tracing.sample",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\"}, sample: -0.1}",
            "tracing.sample",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\"}, service_name: \" \"}",
            "tracing.service_name",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\"}, parent_based: maybe}",
            "tracing.parent_based",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\"}, sampler: 1}",
            "tracing.sampler: unknown field",
        ),
        (
            "tracing: {otlp: {endpoint: \"http://c:4318\", headers: {}}}",
            "tracing.otlp.headers: unknown field",
        ),
        ("tracing: {sample: 1}", "tracing: missing field `otlp`"),
    ];
    for (section, needle) in cases {
        let (code, out) = check_config(&format!("{base}{section}\n"));
        assert_eq!(code, 1, "{section}: {out}");
        assert!(
            out.contains(needle),
            "{section}: expected {needle:?} in\n{out}"
        );
    }
    let ok = format!("{base}tracing: {{otlp: {{endpoint: \"https://otel.example.com/base\", timeout: 2s}}, sample: 0.01, parent_based: true, service_name: tollgate}}\n");
    let (code, out) = check_config(&ok);
    assert_eq!(code, 0, "{out}");
    let owned = "upstreams: {up: {targets: [\"127.0.0.1:8081\"]}}\nroutes: [{name: r, path_prefix: /r, upstream: up, request_headers: {set: {traceparent: x}}}]\n";
    let (code, out) = check_config(owned);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("routes[0].request_headers"), "{out}");
}
