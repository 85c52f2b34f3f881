//! Raw HTTP/1.1 on the client side: one request per connection ([`request`]), a keep-alive
//! client ([`KeepAlive`]), and the response parsers behind them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
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
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
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
