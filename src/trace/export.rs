//! The exporter: a request writes each finished span straight into the pending batch (one
//! short lock, no allocation, no wake-up); a background thread sleeps until a batch starts,
//! gives it [`BATCH_DELAY`] to fill (or until it holds [`BATCH_SPANS`] spans), and POSTs it to
//! the collector as OTLP/HTTP protobuf. Spans beyond [`PENDING_SPANS`] (a collector slower than
//! the traffic) or of a failed export are dropped, counted, never blocking a request. When the
//! gateway stops, what is pending is sent before the process exits ([`Exporter::flush`]).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::config::Config;
use super::proto::{self, Value};

/// Spans in one export at most.
const BATCH_SPANS: u64 = 512;
/// How long a span waits for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Spans waiting for the exporter at most; more are dropped.
const PENDING_SPANS: u64 = 4096;

/// Spans exported (the collector answered 2xx), and dropped (queue full or export failed),
/// for `/metrics`; process-wide.
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans exported and dropped so far.
pub fn counts() -> (u64, u64) {
    (
        EXPORTED.load(Ordering::Relaxed),
        DROPPED.load(Ordering::Relaxed),
    )
}

/// The spans waiting for the exporter thread, each encoded as a `ScopeSpans.spans` field.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    count: u64,
    /// The gateway is stopping: the thread sends what is here and ends.
    closed: bool,
}

/// Where requests put their spans; shared with the exporter thread.
pub struct Sink {
    conf: Config,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The thread, started with the first span: after Pingora daemonizes (threads do not
    /// survive the fork), and never for `tollgate -t`.
    thread: OnceLock<Mutex<Option<JoinHandle<()>>>>,
}

/// The compiled exporter; its [`Sink`] is what a sampled request records into.
pub struct Exporter {
    sink: Arc<Sink>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("conf", &self.sink.conf)
            .finish()
    }
}

impl Exporter {
    pub fn new(conf: Config) -> Exporter {
        Exporter {
            sink: Arc::new(Sink {
                conf,
                pending: Mutex::new(Pending::default()),
                wake: Condvar::new(),
                thread: OnceLock::new(),
            }),
        }
    }

    pub fn conf(&self) -> &Config {
        &self.sink.conf
    }

    pub fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }

    pub fn flusher(&self) -> Flusher {
        Flusher(self.sink.clone())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.sink.close();
    }
}

/// Sends what is pending when the gateway stops.
pub struct Flusher(Arc<Sink>);

impl Flusher {
    /// Send what is pending and stop the thread, waiting at most for one export (its
    /// `timeout`). Spans recorded afterwards are dropped.
    pub fn flush(self) {
        self.0.close();
        let handle = self.0.thread.get().and_then(|t| t.lock().take());
        if let Some(h) = handle {
            h.join().ok();
        }
    }
}

impl Sink {
    fn close(&self) {
        self.pending.lock().closed = true;
        self.wake.notify_one();
    }

    /// Append one finished span to the pending batch; dropped (and counted) when too many
    /// wait or the gateway is stopping.
    pub fn record(self: &Arc<Self>, span: &proto::Span) {
        self.thread.get_or_init(|| {
            let sink = self.clone();
            let spawned = std::thread::Builder::new()
                .name("tollgate-otlp".into())
                .spawn(move || sink.run())
                .map_err(|e| log::error!("cannot start the trace exporter: {e}"));
            Mutex::new(spawned.ok())
        });
        let mut p = self.pending.lock();
        if p.count >= PENDING_SPANS || p.closed {
            drop(p);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        proto::span(&mut p.bytes, span);
        p.count += 1;
        // The thread sleeps until a batch starts, then until it is full or old enough.
        if p.count == 1 || p.count == BATCH_SPANS {
            self.wake.notify_one();
        }
    }

    /// The exporter thread: wait for a batch, send it, until the gateway stops.
    fn run(self: Arc<Self>) {
        let mut spare = Vec::new();
        let mut last_warned: Option<Instant> = None;
        // Built at the first export over TLS, with the system trust store (`SSL_CERT_FILE`).
        let mut tls = None;
        loop {
            let (batch, count, closed) = {
                let mut p = self.pending.lock();
                while p.count == 0 && !p.closed {
                    self.wake.wait(&mut p);
                }
                let deadline = Instant::now() + BATCH_DELAY;
                while p.count < BATCH_SPANS && !p.closed {
                    if self.wake.wait_until(&mut p, deadline).timed_out() {
                        break;
                    }
                }
                let batch = std::mem::replace(&mut p.bytes, std::mem::take(&mut spare));
                (batch, std::mem::take(&mut p.count), p.closed)
            };
            if count > 0 {
                match export(&self.conf, &mut tls, &batch) {
                    Ok(()) => EXPORTED.fetch_add(count, Ordering::Relaxed),
                    Err(e) => {
                        if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            let ep = &self.conf.endpoint;
                            log::warn!(
                                "trace export to {}://{}{} failed, {count} spans dropped: {e}",
                                if ep.tls { "https" } else { "http" },
                                ep.authority,
                                ep.path
                            );
                            last_warned = Some(Instant::now());
                        }
                        DROPPED.fetch_add(count, Ordering::Relaxed)
                    }
                };
            }
            if closed {
                return;
            }
            spare = batch;
            spare.clear();
        }
    }
}

/// POST one batch; `Ok` when the collector answered 2xx within the timeout.
fn export(
    conf: &Config,
    tls: &mut Option<openssl::ssl::SslConnector>,
    spans: &[u8],
) -> Result<(), String> {
    let resource = [
        ("service.name", Value::Str(&conf.service_name)),
        ("service.version", Value::Str(env!("CARGO_PKG_VERSION"))),
        ("telemetry.sdk.name", Value::Str("tollgate")),
        ("telemetry.sdk.language", Value::Str("rust")),
    ];
    let body_head = proto::request_head(
        &resource,
        ("tollgate", env!("CARGO_PKG_VERSION")),
        spans.len(),
    );
    let ep = &conf.endpoint;
    let deadline = Instant::now() + conf.timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_string())
    };
    let addrs = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?;
    let mut stream = None;
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("connect to {a}: {e}"),
        }
    }
    let tcp = stream.ok_or(last)?;
    tcp.set_nodelay(true).ok();
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\nUser-Agent: tollgate/{}\r\nConnection: close\r\n\r\n",
        ep.path,
        ep.authority,
        body_head.len() + spans.len(),
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    head.extend_from_slice(&body_head);
    let exchange = |s: &mut dyn ReadWrite| -> Result<Vec<u8>, String> {
        s.write_all(&head)
            .and_then(|_| s.write_all(spans))
            .and_then(|_| s.flush())
            .map_err(|e| format!("send: {e}"))?;
        // The status line is all that is needed: read until it is complete.
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.contains(&b'\n') {
            let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok(answer)
    };
    tcp.set_write_timeout(Some(left()?)).ok();
    tcp.set_read_timeout(Some(left()?)).ok();
    let answer = if ep.tls {
        let connector = match tls {
            Some(c) => c,
            None => tls.insert(
                openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
                    .map_err(|e| format!("TLS: {e}"))?
                    .build(),
            ),
        };
        let mut tls = connector
            .connect(&ep.host, tcp)
            .map_err(|e| format!("TLS handshake: {e}"))?;
        exchange(&mut tls)?
    } else {
        let mut tcp = tcp;
        exchange(&mut tcp)?
    };
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP answer".to_string())?;
    match status {
        200..=299 => Ok(()),
        s => Err(format!("the collector answered {s}")),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
