//! Real discovery services for the discovery tests: `dnsmasq` answering SRV and A records
//! on a free port, and a one-member `etcd` on free ports. Both are installed by
//! scripts/install-deps.sh; a missing binary fails the test, never skips it.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, request, Backend, Gateway};

/// Upstream `up`'s backend addresses on `/health`, sorted.
pub fn backend_addresses(gw: &Gateway, up: &str) -> Vec<String> {
    let h = gw.admin_get("/health").json();
    let mut v: Vec<String> = h["upstreams"][up]["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| b["address"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// These backends' addresses, sorted (to compare with [`backend_addresses`]).
pub fn sorted(bs: &[&Backend]) -> Vec<String> {
    let mut v: Vec<String> = bs.iter().map(|b| b.addr.to_string()).collect();
    v.sort();
    v
}

/// `name` from PATH, else /usr/sbin (where Debian puts dnsmasq).
fn binary(name: &str, package: &str) -> String {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let p = std::path::Path::new(dir).join(name);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    panic!("{name} is not installed: run scripts/install-deps.sh (Debian package {package})");
}

/// A dnsmasq answering only for `example` from the records it was started with (TTL 1 s).
pub struct Dnsmasq {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// `records`: dnsmasq options such as `--srv-host=...` and `--host-record=...`.
    pub fn start(records: &[String]) -> Dnsmasq {
        let mut d = Dnsmasq {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        d.restart(records);
        d
    }

    /// Stop it and start it again on the same port with `records`.
    pub fn restart(&mut self, records: &[String]) {
        self.stop();
        let child = Command::new(binary("dnsmasq", "dnsmasq-base"))
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--pid-file=",
                &format!("--port={}", self.addr.port()),
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local=/example/",
                "--local-ttl=1",
            ])
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "dnsmasq never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers a question (any answer).
    fn answers(&self) -> bool {
        let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let q = [
            0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 7, b'e', b'x', b'a', b'm', b'p', b'l',
            b'e', 0, 0, 1, 0, 1,
        ];
        let mut buf = [0u8; 512];
        s.send_to(&q, self.addr).is_ok() && s.recv(&mut buf).is_ok()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A one-member etcd on free ports, its data in a temporary directory.
pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    /// With TLS: the certificate (its own CA) clients verify it with.
    ca: Option<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(false)
    }

    /// With `tls`, clients talk HTTPS to `localhost` (a self-signed certificate for it).
    pub fn start_with(tls: bool) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let client = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let peer = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (listen, advertise, mut extra) = if tls {
            let (cert, key) = super::tls_client::cert(dir.path(), "etcd", &["localhost"]);
            let files = vec![
                format!("--cert-file={}", cert.display()),
                format!("--key-file={}", key.display()),
            ];
            let port = client.port();
            (
                format!("https://{client}"),
                format!("https://localhost:{port}"),
                files,
            )
        } else {
            (
                format!("http://{client}"),
                format!("http://{client}"),
                Vec::new(),
            )
        };
        extra.push(format!("--advertise-client-urls={advertise}"));
        let child = Command::new(binary("etcd", "etcd-server"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(&extra)
            .args([
                "--listen-client-urls",
                &listen,
                "--listen-peer-urls",
                &format!("http://{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://{peer}"),
                "--initial-cluster",
                &format!("default=http://{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let e = Etcd {
            child: Some(child),
            client,
            ca: tls.then(|| dir.path().join("etcd.pem")),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !e.healthy() {
            assert!(Instant::now() < deadline, "etcd never became healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn healthy(&self) -> bool {
        if self.ca.is_some() {
            return self.ctl(&["endpoint", "health"]).status.success();
        }
        request(
            self.client,
            "GET /health HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
        )
        .is_ok_and(|r| r.status == 200 && r.body.contains("true"))
    }

    /// The client URL (`https://localhost:PORT` with TLS).
    pub fn url(&self) -> String {
        match self.ca {
            Some(_) => format!("https://localhost:{}", self.client.port()),
            None => format!("http://{}", self.client),
        }
    }

    /// The CA file that verifies it, with TLS.
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(binary("etcdctl", "etcd-client"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()));
        if let Some(ca) = &self.ca {
            cmd.arg(format!("--cacert={}", ca.display()));
        }
        cmd.args(args).output().expect("run etcdctl")
    }

    pub fn ctl_ok(&self, args: &[&str]) {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl_ok(&["put", key, value]);
    }

    pub fn del(&self, key: &str) {
        self.ctl_ok(&["del", key]);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
