//! The test harness: real gateway processes on ephemeral ports, real upstream servers, and a
//! raw HTTP/1.1 client, so every test reads like a sentence:
//!
//! ```ignore
//! let up = echo("public");
//! let gw = Gateway::start(&format!("upstreams: {{u: {{targets: [\"{up}\"]}}}}\nroutes: [...]"));
//! assert_eq!(gw.get("/public/x").status, 200);
//! ```
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod grpc;
pub mod h2client;
pub mod in_process;
pub mod ws;

/// The runtime the test upstreams live on (one per test binary).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A free loopback port (bound then released; the window for a clash is tiny).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

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

/// An address where nothing listens (connections are refused).
pub fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// A running gateway process with its own temp dir, ports and log file.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Gateway {
    /// Start the real binary with `body` (tollgate sections; the harness adds listen, admin,
    /// pid/upgrade paths and threads) and wait until it serves.
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with_env(body, &[])
    }

    /// As `start`, with extra environment variables for the gateway process.
    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_full(body, env, "")
    }

    /// As `start`, with more `listen` entries (YAML flow items, e.g.
    /// `{address: "127.0.0.1:1234", h2c: true}`) after the harness's plain listener.
    pub fn start_listening(extra_listen: &str, body: &str) -> Gateway {
        Gateway::start_full(body, &[], extra_listen)
    }

    /// A gateway with one more listener on a fresh port, `entry(addr)` its YAML flow
    /// mapping, and an echo upstream `up` behind `/api`; returns once that listener accepts.
    pub fn with_api_listener(entry: impl FnOnce(SocketAddr) -> String) -> (Gateway, SocketAddr) {
        let up = echo("up");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let gw = Gateway::start_listening(
            &entry(addr),
            &format!(
                "upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
                 routes: [{{name: api, path_prefix: /api, upstream: up}}]\n"
            ),
        );
        assert!(
            eventually(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "the listener {addr} never accepted:\n{}",
            gw.logs()
        );
        (gw, addr)
    }

    fn start_full(body: &str, env: &[(&str, &str)], extra_listen: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("stderr.log");
        let conf = dir.path().join("tollgate.yaml");
        let yaml = gateway_yaml(dir.path(), addr, admin, body);
        let yaml = if extra_listen.is_empty() {
            yaml
        } else {
            yaml.replacen(
                &format!("listen: [\"{addr}\"]"),
                &format!("listen: [\"{addr}\", {extra_listen}]"),
                1,
            )
        };
        std::fs::write(&conf, yaml).unwrap();
        let child = Command::new(bin())
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tollgate");
        let mut gw = Gateway {
            child,
            addr,
            admin,
            dir,
            log,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tollgate exited early ({status}):\n{}", self.logs());
            }
            let admin_ok = request(
                self.admin,
                "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .map(|r| r.status == 200)
            .unwrap_or(false);
            if admin_ok && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tollgate never became ready:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` with a Host header.
    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[])
    }

    /// A request with extra header lines; `Host: gw` unless given.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("Host: gw\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        self.raw(req.as_bytes())
    }

    /// Send raw bytes, read until the gateway closes, parse the (first) response.
    pub fn raw(&self, bytes: &[u8]) -> Resp {
        request_bytes(self.addr, bytes)
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.logs()))
    }

    pub fn admin_get(&self, path: &str) -> Resp {
        request(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// Run `tollgate -t -c` on `yaml`; returns (exit code, stdout + stderr).
pub fn check_config(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("t.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let out = Command::new(bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The YAML the harness runs: `body` plus listen/admin/pid/upgrade paths and short grace
/// periods (a test reload should not wait Pingora's defaults).
pub fn gateway_yaml(
    dir: &std::path::Path,
    addr: SocketAddr,
    admin: SocketAddr,
    body: &str,
) -> String {
    format!(
        "version: 1\nthreads: 2\npid_file: {d}/tollgate.pid\nupgrade_sock: {d}/upgrade.sock\n\
         grace_period_seconds: 3\ngraceful_shutdown_timeout_seconds: 1\n\
         listen: [\"{addr}\"]\nadmin: \"{admin}\"\n{body}\n",
        d = dir.display()
    )
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

impl Gateway {
    /// The config file the gateway runs.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.yaml")
    }

    /// The full YAML for `body` on this gateway's ports and paths.
    pub fn yaml_for(&self, body: &str) -> String {
        gateway_yaml(self.dir.path(), self.addr, self.admin, body)
    }

    /// Write the full YAML for `body` to `name` in this gateway's directory; its path.
    pub fn write_conf(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, self.yaml_for(body)).unwrap();
        path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Graceful upgrade: start `tollgate -u` with `body` on the same ports, wait until it
    /// listens on the upgrade socket, then SIGQUIT this process. Returns the new process; this
    /// one keeps draining until it exits on its own.
    pub fn upgrade(&self, body: &str) -> Child {
        let conf = self.dir.path().join("tollgate-next.yaml");
        std::fs::write(&conf, self.yaml_for(body)).unwrap();
        let sock = self.dir.path().join("upgrade.sock");
        let log = std::fs::File::create(self.dir.path().join("next-stderr.log")).unwrap();
        let child = Command::new(bin())
            .arg("-u")
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tollgate -u");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tollgate::reload::unix_socket_listening(&sock) {
            assert!(
                Instant::now() < deadline,
                "the new process never listened on {sock:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let ok = Command::new("kill")
            .arg("-QUIT")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        child
    }
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
        let (name, conns, reqs, tasks) = (
            self.name,
            self.connections.clone(),
            self.requests.clone(),
            self.tasks.clone(),
        );
        let tasks2 = tasks.clone();
        let h = runtime().spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reqs = reqs.clone();
                let h = tokio::spawn(backend_conn(s, name, reqs));
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
        let status = param("status").unwrap_or(200);
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
pub async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
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

/// Poll `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
