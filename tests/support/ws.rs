//! WebSocket on both ends of the gateway, by hand over TCP: an echo upstream that completes
//! the RFC 6455 handshake and echoes every data frame back unmasked, and a client that sends
//! the handshake and masked frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{parse_one, parse_response, runtime, Resp};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65";
pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{key}{GUID}"))
        .digest()
        .bytes();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// A WebSocket echo upstream. Answers a request without `Upgrade: websocket` with a plain
/// 200 `ok`. Every request head it received is kept.
pub struct WsEcho {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
}

impl WsEcho {
    pub fn start() -> WsEcho {
        let l = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = l.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        runtime().spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(ws_conn(s, seen.clone()));
            }
        });
        WsEcho { addr, heads }
    }

    pub fn handshakes(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

async fn ws_conn(mut s: tokio::net::TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let Some(end) = super::read_head(&mut s, &mut buf).await else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    heads.lock().unwrap().push(head.clone());
    let header = |name: &str| super::header_in(&head, name);
    let upgrade = header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let Some(key) = header("sec-websocket-key").filter(|_| upgrade) else {
        let _ = s
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
            )
            .await;
        return;
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    if s.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let Some((opcode, payload, used)) = parse_frame(&buf) else {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        buf.drain(..used);
        // Pongs are swallowed: a client may send them unasked, and then only it talks.
        if opcode == PONG {
            continue;
        }
        if s.write_all(&frame(opcode, &payload, None)).await.is_err() || opcode == CLOSE {
            return;
        }
    }
}

/// One frame (FIN set), masked with `mask` when given (client to server).
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A complete frame at the start of `buf`: (opcode, unmasked payload, bytes used), or `None`
/// when more bytes are needed.
pub fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let parsed = parse_frame_masked(buf)?;
    Some((parsed.0, parsed.1, parsed.3))
}

/// As [`parse_frame`], also saying whether the frame was masked.
pub fn parse_frame_masked(buf: &[u8]) -> Option<(u8, Vec<u8>, bool, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(k)
    } else {
        None
    };
    let data = buf.get(at..at + len)?;
    let payload = match key {
        Some(k) => data.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => data.to_vec(),
    };
    Some((opcode, payload, masked, at + len))
}

/// The client side of one WebSocket connection through the gateway.
pub struct WsClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// The client's `Sec-WebSocket-Key` (any 16 bytes, base64).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Send a WebSocket handshake for `path` with extra header lines; the response head, and
/// the connection when it switched protocols. Without a switch the whole answer is read.
pub fn handshake(gw: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (Resp, Option<WsClient>) {
    let mut s = TcpStream::connect(gw).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_response(&buf[..i + 4]).unwrap();
            if head.status != 101 {
                // The whole answer (by its Content-Length: the connection may stay open).
                while parse_one(&buf).unwrap().is_none() {
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "closed inside a response");
                    buf.extend_from_slice(&chunk[..n]);
                }
                return (parse_one(&buf).unwrap().unwrap().0, None);
            }
            buf.drain(..i + 4);
            return (head, Some(WsClient { stream: s, buf }));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl WsClient {
    /// Send one masked frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        self.stream
            .write_all(&frame(opcode, payload, Some(mask)))
            .unwrap();
    }

    /// The next frame: (opcode, payload, masked).
    pub fn recv(&mut self) -> (u8, Vec<u8>, bool) {
        loop {
            if let Some((op, payload, masked, used)) = parse_frame_masked(&self.buf) {
                self.buf.drain(..used);
                return (op, payload, masked);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read a frame");
            assert!(n > 0, "the connection closed before a frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Wait (at most `limit`) for the gateway to close the connection; `true` if it did.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
