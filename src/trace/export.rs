//! The exporter: requests hand their finished spans (already encoded) to a bounded queue
//! without waiting; a background thread batches them (up to [`BATCH_SPANS`] spans, or what
//! came within [`BATCH_DELAY`]) and POSTs each batch to the collector as OTLP/HTTP protobuf.
//! A full queue or a failed export drops spans, counted, never blocking a request.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::config::Config;
use super::proto::{self, Value};

/// Spans in one export at most.
const BATCH_SPANS: usize = 512;
/// How long a span waits for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Requests' span groups the queue holds before it drops.
const QUEUE: usize = 2048;

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

/// One request's spans, each encoded as a `ScopeSpans.spans` field.
pub struct Spans {
    pub bytes: Vec<u8>,
    pub count: u64,
}

/// The sending side. The thread starts with the first spans, so it is born after Pingora
/// daemonizes (threads do not survive the fork) and `tollgate -t` starts none.
pub struct Exporter {
    conf: Config,
    queue: OnceLock<Option<SyncSender<Spans>>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("conf", &self.conf)
            .finish()
    }
}

impl Exporter {
    pub fn new(conf: Config) -> Exporter {
        Exporter {
            conf,
            queue: OnceLock::new(),
        }
    }

    pub fn conf(&self) -> &Config {
        &self.conf
    }

    /// Queue a request's spans; dropped (and counted) when the queue is full.
    pub fn send(&self, spans: Spans) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE);
            let conf = self.conf.clone();
            std::thread::Builder::new()
                .name("tollgate-otlp".into())
                .spawn(move || run(conf, rx))
                .map_err(|e| log::error!("cannot start the trace exporter: {e}"))
                .ok()
                .map(|_| tx)
        });
        let count = spans.count;
        let sent = match queue {
            Some(q) => q.try_send(spans),
            None => Err(TrySendError::Disconnected(spans)),
        };
        if sent.is_err() {
            DROPPED.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// The exporter thread: batch, send, until the gateway (every sender) is gone.
fn run(conf: Config, rx: Receiver<Spans>) {
    let mut batch = Vec::new();
    let mut count = 0u64;
    let mut since: Option<Instant> = None;
    let mut last_warned: Option<Instant> = None;
    // Built at the first export over TLS, with the system trust store (`SSL_CERT_FILE`).
    let mut tls = None;
    loop {
        let wait = since.map_or(Duration::from_secs(3600), |t| {
            BATCH_DELAY.saturating_sub(t.elapsed())
        });
        let gone = match rx.recv_timeout(wait) {
            Ok(s) => {
                batch.extend_from_slice(&s.bytes);
                count += s.count;
                since.get_or_insert_with(Instant::now);
                if count < BATCH_SPANS as u64 {
                    continue;
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if count > 0 {
            match export(&conf, &mut tls, &batch) {
                Ok(()) => EXPORTED.fetch_add(count, Ordering::Relaxed),
                Err(e) => {
                    if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        log::warn!(
                            "trace export to {}://{}{} failed, {count} spans dropped: {e}",
                            if conf.endpoint.tls { "https" } else { "http" },
                            conf.endpoint.authority,
                            conf.endpoint.path
                        );
                        last_warned = Some(Instant::now());
                    }
                    DROPPED.fetch_add(count, Ordering::Relaxed)
                }
            };
        }
        batch.clear();
        count = 0;
        since = None;
        if gone {
            return;
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
    let body = proto::request(&resource, ("tollgate", env!("CARGO_PKG_VERSION")), spans);
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
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\nUser-Agent: tollgate/{}\r\nConnection: close\r\n\r\n",
        ep.path,
        ep.authority,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    let exchange = |s: &mut dyn ReadWrite| -> Result<Vec<u8>, String> {
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(&body))
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
