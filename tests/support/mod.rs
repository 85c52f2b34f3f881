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
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let yaml = format!(
            "version: 1\nthreads: 2\npid_file: {d}/tollgate.pid\nupgrade_sock: {d}/upgrade.sock\n\
             listen: [\"{addr}\"]\nadmin: \"{admin}\"\n{body}\n",
            d = dir.path().display()
        );
        let conf = dir.path().join("tollgate.yaml");
        std::fs::write(&conf, yaml).unwrap();
        let log = dir.path().join("stderr.log");
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
