//! Raw HTTP/1.1 on the client side: one request per connection ([`request`]), a keep-alive
//! client ([`KeepAlive`]), a raw connection read one response at a time ([`Client`]), and
//! the response parsers behind them.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    /// As received, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// For echo upstream answers: the request header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"]
            .get(name.to_ascii_lowercase())
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    }

    /// Assert the JSON error contract and return the code.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let j = self.json();
        assert!(
            j["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        assert_eq!(
            j["request_id"].as_str(),
            self.header("x-request-id"),
            "{self:?}"
        );
        j["error"].as_str().unwrap().to_owned()
    }
}

pub fn request(addr: SocketAddr, req: &str) -> std::io::Result<Resp> {
    request_bytes(addr, req.as_bytes())
}

pub fn request_bytes(addr: SocketAddr, req: &[u8]) -> std::io::Result<Resp> {
    request_within(addr, req, Duration::from_secs(20))
}

/// `req` sent on a new connection, its whole response read, each step given at most `limit`.
pub fn request_within(addr: SocketAddr, req: &[u8], limit: Duration) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.write_all(req)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> std::io::Result<Resp> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hdrs);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            return Err(std::io::Error::other(format!(
                "incomplete response: {:?}",
                String::from_utf8_lossy(buf)
            )))
        }
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let status = r.code.unwrap_or(0);
    let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
    let status_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    let rest = &buf[n..];
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = match len {
        Some(l) => &rest[..l.min(rest.len())],
        None => rest,
    };
    Ok(Resp {
        status_line,
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// A keep-alive HTTP/1.1 client on one connection, as a pooled client would use it: it
/// honours `Connection: close`, and retries an idempotent request once on a fresh connection
/// when a reused connection was closed before any response byte (RFC 9112 §9.3.1).
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> Self {
        KeepAlive {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Resp> {
        let reused = self.stream.is_some();
        match self.try_get(path) {
            Err(e) if reused && e.kind() != std::io::ErrorKind::TimedOut => {
                self.stream = None;
                self.try_get(path)
            }
            other => other,
        }
    }

    fn try_get(&mut self, path: &str) -> std::io::Result<Resp> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let s = self.stream.as_mut().unwrap();
        let sent = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        if let Err(e) = sent {
            self.stream = None;
            return Err(e);
        }
        loop {
            if let Some((resp, used)) = parse_one(&self.buf)? {
                self.buf.drain(..used);
                if resp
                    .header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                {
                    self.stream = None;
                }
                return Ok(resp);
            }
            let mut chunk = [0u8; 16384];
            let n = match self.stream.as_mut().unwrap().read(&mut chunk) {
                Ok(0) => {
                    self.stream = None;
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed before a response",
                    ));
                }
                Ok(n) => n,
                Err(e) => {
                    self.stream = None;
                    return Err(e);
                }
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One complete response with a Content-Length body, and how many bytes it used.
pub fn parse_one(buf: &[u8]) -> std::io::Result<Option<(Resp, usize)>> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hdrs);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < n + len {
        return Ok(None);
    }
    let resp = parse_response(&buf[..n + len])?;
    Ok(Some((resp, n + len)))
}

/// Write `bytes` on one connection and read until the gateway closes it (or 3 s pass): every
/// response status line seen, and the raw answer.
pub fn statuses_of(addr: SocketAddr, bytes: &[u8]) -> (Vec<u16>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let codes = text
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("HTTP/1.1 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect();
    (codes, text)
}

/// A request head for `Host: gw`: `extra` is more header lines, each ending in CRLF.
pub fn head(method: &str, path: &str, version: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/{version}\r\nHost: gw\r\n{extra}\r\n").into_bytes()
}

/// One raw client connection, read one response at a time by the framing its head declares.
pub struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        // Only a failure waits this long.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
        self.s.flush().unwrap();
    }

    /// `GET path` as HTTP/1.1 with `extra` header lines; its response.
    pub fn get(&mut self, path: &str, extra: &str) -> Resp {
        self.send(&head("GET", path, "1.1", extra));
        self.response(false)
    }

    /// More bytes from the gateway; false at the end of the connection.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => panic!("reading a response: {e}: {:?}", self.text()),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Take the next `n` bytes, reading until they are here.
    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "closed {} bytes short", n - self.buf.len());
        }
        self.buf.drain(..n).collect()
    }

    /// Take one CRLF-terminated line, without its CRLF.
    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2);
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            assert!(self.fill(), "closed mid-line: {:?}", self.text());
        }
    }

    /// The next response, which must be HTTP/1.1 (to every client, HTTP/1.0 ones too: RFC
    /// 9110 §2.5); see [`Self::read_response`].
    pub fn response(&mut self, head_request: bool) -> Resp {
        let r = self.read_response(head_request);
        assert!(r.status_line.starts_with("HTTP/1.1 "), "{r:?}");
        r
    }

    /// The next response, its body read by the framing its head declares (RFC 9112 §6.3) and
    /// decoded; `head_request`: the request was HEAD, so there is no body.
    pub fn read_response(&mut self, head_request: bool) -> Resp {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill(), "closed before a response: {:?}", self.text());
        };
        let mut resp = parse_response(&self.buf[..end]).unwrap();
        self.buf.drain(..end);
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        let length = resp.header("content-length").map(|v| v.parse().unwrap());
        let body = if head_request || matches!(resp.status, 204 | 304) {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let size = self.line();
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                if size == 0 {
                    while !self.line().is_empty() {}
                    break body;
                }
                body.extend(self.take(size));
                assert_eq!(self.line(), "", "CRLF after chunk data");
            }
        } else if let Some(n) = length {
            self.take(n)
        } else {
            while self.fill() {}
            std::mem::take(&mut self.buf)
        };
        resp.body = String::from_utf8(body).unwrap();
        resp
    }

    /// Send `bytes` and read their response, or `None` when the gateway had ended the
    /// connection (closed or reset it) and answers nothing.
    pub fn exchange(&mut self, bytes: &[u8], head_request: bool) -> Option<Resp> {
        let sent = self.s.write_all(bytes).and_then(|()| self.s.flush());
        if self.buf.is_empty() {
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if ended(&e) || sent.is_err() => return None,
                Err(e) => panic!("reading a response: {e}"),
            }
        }
        Some(self.read_response(head_request))
    }

    /// The gateway sends nothing more and ends the connection.
    pub fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "bytes after the response: {:?}",
            self.text()
        );
        let mut chunk = [0u8; 4096];
        match self.s.read(&mut chunk) {
            Ok(0) => {}
            Err(e) if ended(&e) => {}
            Ok(n) => panic!("more bytes: {:?}", String::from_utf8_lossy(&chunk[..n])),
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
}

/// A read error that means the peer ended the connection.
fn ended(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}
