//! One access-log line per request, written off the hot path.
//!
//! The request's task only formats its line and hands it to a bounded channel; a dedicated
//! thread writes through a buffer and flushes at least every 200 ms. When the disk is slower
//! than the traffic the channel fills, and further lines are dropped and counted instead of
//! stalling requests. The query string is never logged: it may carry credentials. Nor is
//! any credential header: the caller appears only as its consumer name.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// How many lines may wait for the writer before new ones are dropped.
const QUEUE: usize = 64 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

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
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    /// How long the connection was a WebSocket tunnel (from the 101 to its close).
    pub websocket_ms: Option<f64>,
    pub rate_limit: Option<RateLimitEntry>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub error: Option<&'a str>,
    /// A gRPC call's `grpc-status` (ours or the backend's).
    pub grpc_status: Option<u8>,
}

/// The sending side, shared by every request. The writer thread starts on first use, so that
/// it is born after Pingora daemonizes (threads do not survive the fork).
pub struct AccessLog {
    conf: AccessLogFile,
    tx: OnceLock<Option<SyncSender<Vec<u8>>>>,
    dropped: AtomicU64,
}

impl AccessLog {
    pub fn new(conf: AccessLogFile) -> Self {
        AccessLog {
            conf,
            tx: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Check at load that the destination can be opened for appending.
    pub fn check(conf: &AccessLogFile) -> std::io::Result<()> {
        if conf.enabled && conf.path != "stderr" {
            open(&conf.path)?;
        }
        Ok(())
    }

    fn sender(&self) -> Option<&SyncSender<Vec<u8>>> {
        self.tx
            .get_or_init(|| match start(&self.conf) {
                Ok(tx) => tx,
                Err(e) => {
                    log::error!("access log {} cannot be written: {e}", self.conf.path);
                    None
                }
            })
            .as_ref()
    }

    pub fn enabled(&self) -> bool {
        self.conf.enabled
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn write(&self, e: &Entry) {
        if !self.conf.enabled {
            return;
        }
        let Some(tx) = self.sender() else { return };
        let line = match self.conf.format {
            Format::Combined => combined(e),
            Format::Json => json(e),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Open the destination and start the writer thread.
fn start(conf: &AccessLogFile) -> std::io::Result<Option<SyncSender<Vec<u8>>>> {
    if !conf.enabled {
        return Ok(None);
    }
    let out: Box<dyn Write + Send> = if conf.path == "stderr" {
        Box::new(std::io::stderr())
    } else {
        Box::new(open(&conf.path)?)
    };
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
            loop {
                match rx.recv_timeout(FLUSH_EVERY) {
                    Ok(line) => {
                        let _ = w.write_all(&line);
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = w.flush();
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = w.flush();
                        return;
                    }
                }
            }
        })?;
    Ok(Some(tx))
}

fn dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// An unquoted combined-format field: spaces, quotes and control bytes escaped, `-` if empty.
fn bare(s: &str) -> String {
    if s.is_empty() {
        return "-".to_owned();
    }
    escape(s, true)
}

/// Quote a value for the combined format (escape `"` and `\` and control bytes like nginx).
fn quoted(s: &str) -> String {
    escape(s, false)
}

fn escape(s: &str, spaces: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            c if c.is_control() || (spaces && c == ' ') => {
                o.push_str(&format!("\\x{:02X}", c as u32))
            }
            c => o.push(c),
        }
    }
    o
}

fn combined(e: &Entry) -> Vec<u8> {
    let line = format!(
        "{ip} - {consumer} [{time}] \"{method} {path} {version}\" {status} {out} \"{referer}\" \"{ua}\" \
         request_id={rid} route={route} upstream={up} upstream_ms={ums} total_ms={tms:.3} bytes_in={bin} rate_limit={rl}{ws}{err}{grpc}\n",
        ip = dash(e.client_ip),
        consumer = e.consumer.map_or_else(|| "-".to_owned(), bare),
        time = humantime::format_rfc3339_millis(e.time),
        method = e.method,
        path = quoted(e.path),
        version = e.version,
        status = e.status,
        out = e.bytes_out,
        referer = quoted(e.referer.unwrap_or("-")),
        ua = quoted(e.user_agent.unwrap_or("-")),
        rid = e.request_id,
        route = e.route.unwrap_or("-"),
        up = dash(e.upstream),
        ums = e.upstream_ms.map_or_else(|| "-".to_owned(), |m| format!("{m:.3}")),
        tms = e.total_ms,
        bin = e.bytes_in,
        rl = e
            .rate_limit
            .map_or_else(|| "-".to_owned(), |r| format!("{}:{}", r.outcome(), r.remaining)),
        ws = e
            .websocket_ms
            .map(|m| format!(" websocket_ms={m:.3}"))
            .unwrap_or_default(),
        err = e.error.map(|x| format!(" error={x}")).unwrap_or_default(),
        grpc = e
            .grpc_status
            .map(|g| format!(" grpc_status={g}"))
            .unwrap_or_default(),
    );
    line.into_bytes()
}

fn json(e: &Entry) -> Vec<u8> {
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.time).to_string(),
        "request_id": e.request_id,
        "client_ip": e.client_ip.map(|i| i.to_string()),
        "consumer": e.consumer,
        "method": e.method,
        "path": e.path,
        "protocol": e.version,
        "route": e.route,
        "status": e.status,
        "bytes_in": e.bytes_in,
        "bytes_out": e.bytes_out,
        "upstream": e.upstream.map(|u| u.to_string()),
        "upstream_ms": e.upstream_ms,
        "total_ms": e.total_ms,
        "websocket_ms": e.websocket_ms,
        "rate_limit": e.rate_limit.map(|r| serde_json::json!({
            "outcome": r.outcome(),
            "remaining": r.remaining,
        })),
        "user_agent": e.user_agent,
        "error": e.error,
        "grpc_status": e.grpc_status,
    });
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
            upstream_ms: Some(1.5),
            total_ms: 2.25,
            websocket_ms: None,
            rate_limit: None,
            user_agent: Some("curl"),
            referer: None,
            error: None,
            grpc_status: None,
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
        e.websocket_ms = Some(1500.0);
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
    fn grpc_status_in_both_formats() {
        let mut e = entry();
        e.grpc_status = Some(16);
        let l = String::from_utf8(combined(&e)).unwrap();
        assert!(l.ends_with(" rate_limit=- grpc_status=16\n"), "{l}");
        let v: serde_json::Value = serde_json::from_slice(&json(&e)).unwrap();
        assert_eq!(v["grpc_status"], 16);
    }
}
