//! One access-log line per request, written off the hot path as nginx's `buffer=`/`flush=`.
//!
//! A request formats its line straight into its thread's buffer (no allocation, no lock
//! anyone else holds but for a swap). A buffer past [`BATCH`] bytes is handed whole to a
//! writer thread, which also collects every buffer each [`FLUSH_EVERY`]: one `write` and at
//! most one cross-thread wake per batch, never per line. When the writer falls behind (the
//! queue of batches is full) or the destination refuses a write, the lines are counted in
//! `tollgate_access_log_dropped_total` and the count is logged, never lost silently;
//! [`AccessLog::flush`] writes everything held when the server stops. The query string is
//! never logged (it may carry credentials), nor any credential header: the caller appears
//! only as its consumer name.

mod format;

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

/// A thread's buffer is handed to the writer past this many bytes.
const BATCH: usize = 32 * 1024;
/// Every buffer reaches the file at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Batches that may wait for the writer before new ones are dropped (8 MiB).
const QUEUE: usize = 256;
/// Buffers, one per thread that logs (threads beyond this share).
const SHARDS: usize = 64;

/// `access_log:` in the config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    #[serde(default)]
    pub format: Format,
    /// A file path (appended to), or `stderr`.
    #[serde(default = "stderr")]
    pub path: String,
    /// `false` turns the access log off.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn stderr() -> String {
    "stderr".to_owned()
}
fn yes() -> bool {
    true
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile {
            format: Format::Combined,
            path: stderr(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// nginx's `combined`, followed by tollgate's fields as `key=value`.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// The rate-limit decision of a limited route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitEntry {
    pub allowed: bool,
    /// Requests left in the reported policy's bucket.
    pub remaining: u64,
}

impl RateLimitEntry {
    fn outcome(self) -> &'static str {
        if self.allowed {
            "allowed"
        } else {
            "limited"
        }
    }
}

/// Everything one line says.
pub struct Entry<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub consumer: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub version: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub upstream: Option<std::net::SocketAddr>,
    /// From the upstream request to its response head (`upstream_ms`).
    pub upstream_time: Option<Duration>,
    /// From the request head to the end of the answer (`total_ms`).
    pub total: Duration,
    /// How long the connection was a WebSocket tunnel, from the 101 to its close
    /// (`websocket_ms`).
    pub websocket: Option<Duration>,
    pub rate_limit: Option<RateLimitEntry>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub error: Option<&'a str>,
    /// A gRPC call's `grpc-status` (ours or the backend's).
    pub grpc_status: Option<u8>,
    /// The request's trace id, when `tracing` is configured.
    pub trace_id: Option<&'a [u8; 16]>,
}

/// The sending side, shared by every request. The writer thread starts on first use, so that
/// it is born after Pingora daemonizes (threads do not survive the fork).
pub struct AccessLog {
    conf: AccessLogFile,
    sink: OnceLock<Option<Arc<Sink>>>,
}

/// A thread's buffer and the lines in it.
#[derive(Default)]
struct Shard {
    buf: Vec<u8>,
    lines: u64,
    clock: format::Clock,
}

/// What the writer thread is sent.
enum Msg {
    Batch(Vec<u8>, u64),
    /// Write every buffer now, then answer.
    Flush(SyncSender<()>),
    /// Write every buffer, then open the destination again.
    Reopen,
}

struct Sink {
    shards: Box<[Mutex<Shard>]>,
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
}

impl AccessLog {
    pub fn new(conf: AccessLogFile) -> Self {
        AccessLog {
            conf,
            sink: OnceLock::new(),
        }
    }

    /// Check at load that the destination can be opened for appending.
    pub fn check(conf: &AccessLogFile) -> std::io::Result<()> {
        if conf.enabled && conf.path != "stderr" {
            open(&conf.path)?;
        }
        Ok(())
    }

    fn sink(&self) -> Option<&Arc<Sink>> {
        self.sink
            .get_or_init(|| match start(&self.conf) {
                Ok(sink) => sink,
                Err(e) => {
                    log::error!("access log {} cannot be written: {e}", self.conf.path);
                    None
                }
            })
            .as_ref()
    }

    /// The section this log was started from.
    pub fn conf(&self) -> &AccessLogFile {
        &self.conf
    }

    pub fn enabled(&self) -> bool {
        self.conf.enabled
    }

    /// Lines dropped because the writer could not keep up or the destination refused them.
    pub fn dropped(&self) -> u64 {
        let sink = self.sink.get().and_then(Option::as_ref);
        sink.map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }

    pub fn write(&self, e: &Entry) {
        if !self.conf.enabled {
            return;
        }
        let Some(sink) = self.sink() else { return };
        let mut shard = sink.shards[shard_index()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let shard = &mut *shard;
        format::line(&mut shard.buf, &mut shard.clock, self.conf.format, e);
        shard.lines += 1;
        if shard.buf.len() >= BATCH {
            let buf = std::mem::replace(&mut shard.buf, Vec::with_capacity(BATCH + BATCH / 4));
            let lines = std::mem::take(&mut shard.lines);
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                sink.tx.try_send(Msg::Batch(buf, lines))
            {
                sink.dropped.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }

    /// Write every line held, then open the file again by its path (`SIGUSR1`, after logrotate
    /// renamed it): the lines after go to the new file. Nothing to do for `stderr`.
    pub fn reopen(&self) {
        if let Some(sink) = self.sink.get().and_then(Option::as_ref) {
            let _ = sink.tx.send(Msg::Reopen);
        }
    }

    /// Write every line held, and wait until it is written (at most a few seconds): when the
    /// server stops, after its last request.
    pub fn flush(&self) {
        let Some(sink) = self.sink.get().and_then(Option::as_ref) else {
            return;
        };
        let (ack, done) = sync_channel(1);
        if sink.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// A log no config uses any more (a reload changed `access_log`): the lines its threads still
/// hold go to the writer, which writes them before it ends.
impl Drop for AccessLog {
    fn drop(&mut self) {
        let Some(sink) = self.sink.get().and_then(Option::as_ref) else {
            return;
        };
        for shard in sink.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            if s.buf.is_empty() {
                continue;
            }
            let (buf, lines) = (std::mem::take(&mut s.buf), std::mem::take(&mut s.lines));
            if sink.tx.try_send(Msg::Batch(buf, lines)).is_err() {
                sink.dropped.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }
}

/// This thread's buffer: threads take the next one the first time they log.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

fn open(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Open the destination and start the writer thread.
fn start(conf: &AccessLogFile) -> std::io::Result<Option<Arc<Sink>>> {
    if !conf.enabled {
        return Ok(None);
    }
    let out: Box<dyn Write + Send> = if conf.path == "stderr" {
        Box::new(std::io::stderr())
    } else {
        Box::new(open(&conf.path)?)
    };
    let (tx, rx) = sync_channel::<Msg>(QUEUE);
    let sink = Arc::new(Sink {
        shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        tx,
        dropped: AtomicU64::new(0),
    });
    let writer = Writer {
        sink: Arc::downgrade(&sink),
        out,
        path: conf.path.clone(),
        reported: 0,
        reported_at: None,
    };
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer.run(rx))?;
    Ok(Some(sink))
}

/// The writer thread's side.
struct Writer {
    sink: std::sync::Weak<Sink>,
    out: Box<dyn Write + Send>,
    path: String,
    /// The dropped count last logged, and when.
    reported: u64,
    reported_at: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            match rx.recv_timeout(FLUSH_EVERY) {
                Ok(Msg::Batch(buf, lines)) => self.put(&buf, lines),
                Ok(Msg::Flush(ack)) => {
                    // What was queued before the flush was asked for is written first.
                    while let Ok(Msg::Batch(buf, lines)) = rx.try_recv() {
                        self.put(&buf, lines);
                    }
                    self.collect();
                    let _ = ack.send(());
                }
                Ok(Msg::Reopen) => {
                    while let Ok(Msg::Batch(buf, lines)) = rx.try_recv() {
                        self.put(&buf, lines);
                    }
                    self.collect();
                    self.reopen();
                }
                Err(RecvTimeoutError::Timeout) => self.collect(),
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.report();
        }
    }

    /// Write every thread's buffer.
    fn collect(&mut self) {
        let Some(sink) = self.sink.upgrade() else {
            return;
        };
        for shard in sink.shards.iter() {
            let (buf, lines) = {
                let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
                if s.buf.is_empty() {
                    continue;
                }
                (std::mem::take(&mut s.buf), std::mem::take(&mut s.lines))
            };
            self.put(&buf, lines);
        }
    }

    fn reopen(&mut self) {
        if self.path == "stderr" {
            return;
        }
        let _ = self.out.flush();
        match open(&self.path) {
            Ok(f) => {
                self.out = Box::new(f);
                log::info!("access log {} reopened", self.path);
            }
            Err(e) => log::error!("access log {} cannot be reopened: {e}", self.path),
        }
    }

    fn put(&mut self, buf: &[u8], lines: u64) {
        if self.out.write_all(buf).is_err() {
            if let Some(sink) = self.sink.upgrade() {
                sink.dropped.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }

    /// Log the dropped count when it grew, at most once a second.
    fn report(&mut self) {
        let Some(sink) = self.sink.upgrade() else {
            return;
        };
        let dropped = sink.dropped.load(Ordering::Relaxed);
        let due = self
            .reported_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if dropped > self.reported && due {
            log::warn!(
                "access log {}: {} lines dropped so far (the writer fell behind or the destination refused them)",
                self.path,
                dropped
            );
            self.reported = dropped;
            self.reported_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn combined(e: &Entry) -> Vec<u8> {
        let mut o = Vec::new();
        format::line(&mut o, &mut format::Clock::default(), Format::Combined, e);
        o
    }

    fn json(e: &Entry) -> Vec<u8> {
        let mut o = Vec::new();
        format::line(&mut o, &mut format::Clock::default(), Format::Json, e);
        o
    }

    fn entry() -> Entry<'static> {
        Entry {
            time: SystemTime::UNIX_EPOCH,
            request_id: "rid",
            client_ip: Some("10.0.0.1".parse().unwrap()),
            consumer: None,
            method: "GET",
            path: "/a\"b",
            version: "HTTP/1.1",
            route: Some("api"),
            status: 200,
            bytes_in: 0,
            bytes_out: 12,
            upstream: None,
            upstream_time: Some(Duration::from_micros(1500)),
            total: Duration::from_micros(2250),
            websocket: None,
            rate_limit: None,
            user_agent: Some("curl"),
            referer: None,
            error: None,
            grpc_status: None,
            trace_id: None,
        }
    }

    #[test]
    fn combined_line() {
        let l = String::from_utf8(combined(&entry())).unwrap();
        assert_eq!(
            l,
            "10.0.0.1 - - [1970-01-01T00:00:00.000Z] \"GET /a\\\"b HTTP/1.1\" 200 12 \"-\" \"curl\" \
             request_id=rid route=api upstream=- upstream_ms=1.500 total_ms=2.250 bytes_in=0 rate_limit=-\n"
        );
    }

    #[test]
    fn json_line() {
        let v: serde_json::Value = serde_json::from_slice(&json(&entry())).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["consumer"], serde_json::Value::Null);
        assert_eq!(v["rate_limit"], serde_json::Value::Null);
    }

    #[test]
    fn consumer_and_rate_limit_in_both_formats() {
        let mut e = entry();
        e.consumer = Some("ci bot");
        e.rate_limit = Some(RateLimitEntry {
            allowed: false,
            remaining: 0,
        });
        let l = String::from_utf8(combined(&e)).unwrap();
        assert!(l.starts_with("10.0.0.1 - ci\\x20bot ["), "{l}");
        assert!(l.contains(" rate_limit=limited:0"), "{l}");
        e.websocket = Some(Duration::from_millis(1500));
        let l = String::from_utf8(combined(&e)).unwrap();
        assert!(
            l.contains(" rate_limit=limited:0 websocket_ms=1500.000\n"),
            "{l}"
        );
        e.rate_limit = Some(RateLimitEntry {
            allowed: true,
            remaining: 7,
        });
        let v: serde_json::Value = serde_json::from_slice(&json(&e)).unwrap();
        assert_eq!(v["consumer"], "ci bot");
        assert_eq!(v["rate_limit"]["outcome"], "allowed");
        assert_eq!(v["rate_limit"]["remaining"], 7);
    }

    #[test]
    fn trace_id_in_both_formats() {
        let mut e = entry();
        let v: serde_json::Value = serde_json::from_slice(&json(&e)).unwrap();
        assert_eq!(v["trace_id"], serde_json::Value::Null);
        let id = [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36,
        ];
        e.trace_id = Some(&id);
        let l = String::from_utf8(combined(&e)).unwrap();
        assert!(
            l.ends_with(" rate_limit=- trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n"),
            "{l}"
        );
        let v: serde_json::Value = serde_json::from_slice(&json(&e)).unwrap();
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn grpc_status_in_both_formats() {
        let mut e = entry();
        e.grpc_status = Some(16);
        let l = String::from_utf8(combined(&e)).unwrap();
        assert!(l.ends_with(" rate_limit=- grpc_status=16\n"), "{l}");
        let v: serde_json::Value = serde_json::from_slice(&json(&e)).unwrap();
        assert_eq!(v["grpc_status"], 16);
    }
}
