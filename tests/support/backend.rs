//! Upstream servers for the tests: the demo's echo upstream, one that never answers, a closed
//! port, [`scripted`] for answers of exact shapes, and [`Backend`], a backend the test controls.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::{free_port, runtime};

/// An echo upstream (the demo's): answers JSON describing the request it received.
pub fn echo(name: &'static str) -> SocketAddr {
    runtime()
        .block_on(tollgate::demo::spawn("127.0.0.1:0".parse().unwrap(), name))
        .expect("start echo upstream")
}

/// An upstream that accepts connections and never answers.
pub fn hang() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

/// A raw HTTP/1 backend for answers of exact shapes: each request head (bodies are not read)
/// is answered with the bytes `script(method, path)` returns, and the connection is closed
/// after them when it also returns `true`.
pub fn scripted(script: fn(&str, &str) -> (Vec<u8>, bool)) -> SocketAddr {
    use std::io::Write;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut s, &mut buf) {
                    let mut words = head.split(' ');
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let (answer, close) = script(method, path);
                    if s.write_all(&answer).is_err() || close {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The next request head on a blocking connection (bodies are not read), `buf` holding what
/// was read past it; `None` at the end of the connection.
pub fn next_head(s: &mut impl std::io::Read, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An address where nothing listens (connections are refused).
pub fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A test backend the test controls: it can be killed (listener and every open connection
/// closed) and restored on the same address, and it counts connections and requests.
/// Answers `{"service": name}`; `?delay_ms=N` waits, `?status=N` answers N, `?reset` sends
/// half the promised body and then resets the connection. For compression: `?size=N` pads the
/// body to N bytes, `?ctype=T` sets its Content-Type, `?ce=X` a Content-Encoding and `?cc=X`
/// a Cache-Control.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Set by [`Backend::fail_health`]: `/hc` answers 503 (everything else as usual).
    sick: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    pub fn start(name: &'static str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0".parse().unwrap()).expect("bind a test backend")
    }

    /// A backend on a given address (`127.0.0.2:0` for another loopback IP).
    pub fn start_at(name: &'static str, addr: SocketAddr) -> std::io::Result<Backend> {
        let l = runtime().block_on(tokio::net::TcpListener::bind(addr))?;
        let b = Backend {
            addr: l.local_addr().unwrap(),
            name,
            connections: Default::default(),
            requests: Default::default(),
            sick: Default::default(),
            tasks: Default::default(),
        };
        b.run(l);
        Ok(b)
    }

    /// Backends on `127.0.0.1`, `127.0.0.2`, ... sharing one port, as the addresses of one
    /// DNS name behind a `name:port` target would.
    pub fn same_port(names: &[&'static str]) -> Vec<Backend> {
        'port: for _ in 0..50 {
            let mut out = Vec::new();
            let port = free_port();
            for (i, name) in names.iter().enumerate() {
                let addr = SocketAddr::from(([127, 0, 0, i as u8 + 1], port));
                match Backend::start_at(name, addr) {
                    Ok(b) => out.push(b),
                    Err(_) => continue 'port,
                }
            }
            return out;
        }
        panic!("no port free on every loopback address");
    }

    /// Requests received so far (request lines).
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Requests whose request line contains `needle` (to leave health probes out of a count).
    pub fn count_of(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn conns(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fail (`true`) or pass (`false`) health checks on `/hc` from now on, serving the rest.
    pub fn fail_health(&self, sick: bool) {
        self.sick.store(sick, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stop listening and cut every open connection.
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        // Wait until the port really refuses.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.addr).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Listen again on the same address.
    pub fn restore(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let l = loop {
            match runtime().block_on(tokio::net::TcpListener::bind(self.addr)) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("rebind {}: {e}", self.addr),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.run(l);
    }

    fn run(&self, l: tokio::net::TcpListener) {
        let (name, conns, reqs, tasks, sick) = (
            self.name,
            self.connections.clone(),
            self.requests.clone(),
            self.tasks.clone(),
            self.sick.clone(),
        );
        let tasks2 = tasks.clone();
        let h = runtime().spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let h = tokio::spawn(backend_conn(s, name, reqs.clone(), sick.clone()));
                tasks2.lock().unwrap().push(h.abort_handle());
            }
        });
        tasks.lock().unwrap().push(h.abort_handle());
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn backend_conn(
    mut s: tokio::net::TcpStream,
    name: &'static str,
    reqs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    sick: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + len);
        let line = head.lines().next().unwrap_or("").to_string();
        reqs.lock().unwrap().push(line.clone());
        let target = line.split(' ').nth(1).unwrap_or("/");
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let param = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(ms) = param("delay_ms") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let failing = target.starts_with("/hc") && sick.load(std::sync::atomic::Ordering::SeqCst);
        let status = if failing {
            503
        } else {
            param("status").unwrap_or(200)
        };
        let text = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
        };
        let pad = param("size").map_or(64, |n| (n as usize).saturating_sub(name.len() + 27));
        let padding: String = "tollgate compresses text "
            .chars()
            .cycle()
            .take(pad)
            .collect();
        let body = format!("{{\"service\":\"{name}\",\"padding\":\"{padding}\"}}");
        let mut extra = String::new();
        for (k, header) in [("ce", "content-encoding"), ("cc", "cache-control")] {
            if let Some(v) = text(k) {
                extra.push_str(&format!("{header}: {v}\r\n"));
            }
        }
        let ctype = text("ctype").unwrap_or("application/json");
        if query.split('&').any(|kv| kv == "reset") {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body.as_bytes()[..body.len() / 2]).await;
            let _ = s.flush().await;
            // Reset rather than close: SO_LINGER 0, then drop (drop does not block with 0).
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            return;
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        // `?close`: drop the connection after answering, without saying so (a stale
        // keep-alive connection for whoever pooled it).
        if query.split('&').any(|kv| kv == "close") {
            return;
        }
    }
}

/// Read from `s` into `buf` until it holds a request head; where the head ends, or `None`
/// when the connection ended first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of header `name` in a request head (the first, trimmed).
pub fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}
