//! A real gateway process: the binary on ephemeral ports with its own temp dir and log, its
//! config (`gateway_yaml`), and graceful upgrades; `check_config` runs `tollgate -t`.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{echo, eventually, free_port, request, request_bytes, request_within, Resp};

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
    /// `listen` entries after the plain one (kept by [`Gateway::upgrade`] and the like).
    extra_listen: String,
}

impl Gateway {
    /// Start the real binary with `body` (tollgate sections; the harness adds listen, admin,
    /// pid/upgrade paths and threads) and wait until it serves.
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with_env(body, &[])
    }

    /// As `start`, with extra environment variables for the gateway process.
    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_full(body, env, "", "")
    }

    /// As `start`, with the admin section's map form: `admin` its keys after `address`
    /// (`token: "..."`). `/health` stays open, so readiness is seen as before.
    pub fn start_with_admin(admin: &str, body: &str) -> Gateway {
        Gateway::start_full(body, &[], "", admin)
    }

    /// A gateway with one more listener on a fresh port, `entry(addr)` its YAML flow
    /// mapping, and an echo upstream `up` behind `/api`; returns once that listener accepts.
    pub fn with_api_listener(entry: impl Fn(SocketAddr) -> String) -> (Gateway, SocketAddr) {
        let up = echo("up");
        Gateway::with_listener(
            entry,
            &format!(
                "upstreams: {{up: {{targets: [\"{up}\"]}}}}\n\
                 routes: [{{name: api, path_prefix: /api, upstream: up}}]\n"
            ),
        )
    }

    /// A gateway running `body` with one more listener on a fresh port, `entry(addr)` its
    /// YAML flow mapping; returns once that listener accepts.
    pub fn with_listener(
        entry: impl Fn(SocketAddr) -> String,
        body: &str,
    ) -> (Gateway, SocketAddr) {
        // The extra port is drawn again with the others when a start finds one taken.
        let (gw, addr) = (0..4)
            .find_map(|_| {
                let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
                Self::try_start(body, &[], &entry(addr), "").map(|gw| (gw, addr))
            })
            .expect("tollgate found a port taken at every start");
        assert!(
            eventually(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "the listener {addr} never accepted:\n{}",
            gw.logs()
        );
        (gw, addr)
    }

    /// A port is free when `free_port` hands it out, but anything on the machine (another
    /// test's gateway or backend, a client's source port) may take it before the gateway
    /// binds it; the gateway then waits for it, and a test could talk to whatever holds it.
    /// Such a start is abandoned and made again on fresh ports.
    fn start_full(body: &str, env: &[(&str, &str)], extra_listen: &str, admin: &str) -> Gateway {
        for _ in 0..4 {
            if let Some(gw) = Self::try_start(body, env, extra_listen, admin) {
                return gw;
            }
        }
        panic!("tollgate found a port taken at every start");
    }

    fn try_start(
        body: &str,
        env: &[(&str, &str)],
        extra_listen: &str,
        admin_keys: &str,
    ) -> Option<Gateway> {
        let dir = tempfile::tempdir().unwrap();
        // Ports the extra listeners took are not free to take again, though they are unbound.
        let fresh = |taken: &str| loop {
            let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if !taken.contains(&a.to_string()) {
                return a;
            }
        };
        let addr = fresh(extra_listen);
        let admin = fresh(&format!("{extra_listen} {addr}"));
        let log = dir.path().join("stderr.log");
        let conf = dir.path().join("tollgate.yaml");
        let mut yaml = listening(
            gateway_yaml(dir.path(), addr, admin, body),
            addr,
            extra_listen,
        );
        if !admin_keys.is_empty() {
            let map = format!("admin: {{address: \"{admin}\", {admin_keys}}}\n");
            yaml = yaml.replace(&format!("admin: \"{admin}\"\n"), &map);
        }
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
            extra_listen: extra_listen.to_owned(),
        };
        gw.wait_ready().then_some(gw)
    }

    /// Whether the gateway came up on its own ports (`false`: one was taken; it is stopped).
    /// A taken port is looked for again after every probe and before giving up: while the
    /// gateway waits for its listener the admin port may accept without answering.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tollgate exited early ({status}):\n{}", self.logs());
            }
            if self.logs().contains(" is in use, will try again") {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            if health(self.admin) && listens_on(self.child.id(), self.addr.port()) {
                return true;
            }
            if Instant::now() >= deadline && !self.logs().contains(" is in use, will try again") {
                panic!("tollgate never became ready:\n{}", self.logs());
            }
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

impl Gateway {
    /// The config file the gateway runs.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.yaml")
    }

    /// The full YAML for `body` on this gateway's ports and paths.
    pub fn yaml_for(&self, body: &str) -> String {
        let yaml = gateway_yaml(self.dir.path(), self.addr, self.admin, body);
        listening(yaml, self.addr, &self.extra_listen)
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
    pub fn upgrade(&self, body: &str) -> Successor {
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
        Successor(child)
    }
}

/// The process [`Gateway::upgrade`] started: killed when dropped, so a test that fails
/// between the upgrade and its own clean-up leaves no gateway running.
pub struct Successor(Child);

impl std::ops::Deref for Successor {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Successor {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the process named by a pid file when dropped: a daemonized gateway is not the test's
/// child, so nothing else would stop it.
pub struct KillPidFile(pub std::path::PathBuf);

impl Drop for KillPidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.trim())
                .status();
        }
    }
}

/// `yaml` with `extra` (YAML flow items) after the plain listener `addr`.
fn listening(yaml: String, addr: SocketAddr, extra: &str) -> String {
    if extra.is_empty() {
        return yaml;
    }
    yaml.replacen(
        &format!("listen: [\"{addr}\"]"),
        &format!("listen: [\"{addr}\", {extra}]"),
        1,
    )
}

/// Run `tollgate reload`; its output goes to a file, since the daemon it starts inherits
/// stderr and a pipe would stay open as long as the daemon lives.
pub fn reload_cmd(conf: &std::path::Path, pid: u32, extra: &[&str]) -> (i32, String) {
    reload_cmd_of(std::path::Path::new(bin()), conf, pid, extra)
}

/// [`reload_cmd`] run by the binary at `binary`.
pub fn reload_cmd_of(
    binary: &std::path::Path,
    conf: &std::path::Path,
    pid: u32,
    extra: &[&str],
) -> (i32, String) {
    let out = conf.with_extension("out");
    let status = Command::new(binary)
        .args(["reload", "-c"])
        .arg(conf)
        .args(["--pid", &pid.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::options().append(true).open(&out).unwrap())
        .status()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&out).unwrap_or_default(),
    )
}

/// Whether the admin endpoint answers `GET /health` with 200 within a second.
fn health(admin: SocketAddr) -> bool {
    const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    request_within(admin, HEALTH, Duration::from_secs(1)).is_ok_and(|r| r.status == 200)
}

/// Whether process `pid` itself holds a listening TCP socket on `port` (so a connection there
/// reaches it, not whatever else took the port): its socket inodes against /proc/net/tcp.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = format!(":{port:04X}");
    tcp.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local address, state (0A: LISTEN), inode
        f.len() > 9 && f[1].ends_with(&port) && f[3] == "0A" && inodes.iter().any(|i| i == f[9])
    })
}

pub fn start_fails(body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("tollgate.yaml");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(&conf, gateway_yaml(dir.path(), addr, admin, body)).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(bin())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "tollgate kept running:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    err
}

/// Run `tollgate -t -c` on `yaml`; returns (exit code, stdout + stderr).
pub fn check_config(yaml: &str) -> (i32, String) {
    check_config_with_env(yaml, &[])
}

/// As [`check_config`], with these environment variables set for `tollgate -t`.
pub fn check_config_with_env(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("t.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let out = Command::new(bin())
        .envs(env.iter().copied())
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
/// periods (a test reload should not wait Pingora's defaults), and `fast_path: false` in a
/// run without the own engine ([`own_engine`]) unless `body` says which engine it wants.
pub fn gateway_yaml(
    dir: &std::path::Path,
    addr: SocketAddr,
    admin: SocketAddr,
    body: &str,
) -> String {
    let engine = if own_engine() || body.contains("fast_path:") {
        ""
    } else {
        "fast_path: false\n"
    };
    format!(
        "version: 1\nthreads: 2\npid_file: {d}/tollgate.pid\nupgrade_sock: {d}/upgrade.sock\n\
         grace_period_seconds: 3\ngraceful_shutdown_timeout_seconds: 1\n\
         listen: [\"{addr}\"]\nadmin: \"{admin}\"\n{engine}{body}\n",
        d = dir.display()
    )
}

/// Whether this run serves with tollgate's own HTTP/1 engine (the default), or forces
/// Pingora's path everywhere (`TOLLGATE_FAST_PATH=0`, CI's second run).
pub fn own_engine() -> bool {
    std::env::var("TOLLGATE_FAST_PATH").map_or(true, |v| v != "0")
}

/// For a test about the own engine itself: `true` (and a note on stderr) when this run has
/// it off, so the test returns early there.
pub fn skip_without_own_engine(test: &str) -> bool {
    let skip = !own_engine();
    if skip {
        eprintln!("{test}: about tollgate's own HTTP/1 engine; skipped with TOLLGATE_FAST_PATH=0");
    }
    skip
}
