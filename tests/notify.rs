//! systemd `Type=notify`: the real gateway talks to a service manager played by the test, a
//! datagram socket named by `NOTIFY_SOCKET` that reads each sender's pid from the kernel
//! (SO_PASSCRED), as systemd does.
//!
//! `READY=1` comes once the listeners accept and the first health check has answered;
//! `WATCHDOG=1` at half of `WATCHDOG_USEC`; `STOPPING=1` on SIGTERM; across `tollgate reload`,
//! `RELOADING=1` (with `MONOTONIC_USEC`) from the old process, then `MAINPID=` and `READY=1`
//! from the new one, which keeps the watchdog fed, and no `STOPPING=1` from the old one while
//! it drains (systemd would take it as the whole service stopping).

mod support;

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use support::*;

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// Every message so far: (sender pid, text).
    seen: Vec<(u32, String)>,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
        Manager {
            sock,
            path,
            _dir: dir,
            seen: Vec::new(),
        }
    }

    fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    /// One datagram and its sender's pid, or `None` once `deadline` passed.
    fn recv(&mut self, deadline: Instant) -> Option<(u32, String)> {
        let left = deadline.checked_duration_since(Instant::now())?;
        self.sock
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg writes into the buffers msg points to, within their given lengths.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return None;
        }
        let mut pid = 0;
        // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within
        // msg_controllen; an SCM_CREDENTIALS payload is one ucred.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    pid = cred.pid as u32;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
        self.seen.push((pid, text.clone()));
        Some((pid, text))
    }

    /// The first message (from now on) for which `want` holds; panics with everything seen
    /// when none comes within `timeout`.
    fn expect(
        &mut self,
        timeout: Duration,
        what: &str,
        want: impl Fn(u32, &str) -> bool,
    ) -> (u32, String) {
        let deadline = Instant::now() + timeout;
        while let Some((pid, text)) = self.recv(deadline) {
            if want(pid, &text) {
                return (pid, text);
            }
        }
        panic!("no {what} within {timeout:?}; seen: {:?}", self.seen);
    }
}

/// The value of `KEY=` in a notification.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn mono_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

fn body(up: std::net::SocketAddr, health: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  up:\n    targets: [\"{up}\"]\n{health}\
         routes:\n  - {{name: api, path_prefix: /api, upstream: up}}\n{extra}"
    )
}

/// How long the backend takes to answer a health probe: `READY=1` must wait for it.
const PROBE_MS: u64 = 1000;

#[test]
fn ready_comes_after_the_listeners_accept_and_the_first_health_check_answered() {
    let mut mgr = Manager::new();
    let up = Backend::start("up");
    let health = format!(
        "    health_check: {{type: http, path: \"/probe?delay_ms={PROBE_MS}\", interval: 30s, timeout: 5s, healthy: 1, unhealthy: 1}}\n"
    );
    let started = Instant::now();
    let gw = Gateway::start_with_env(&body(up.addr, &health, ""), &[mgr.env()]);
    let (pid, ready) = mgr.expect(Duration::from_secs(15), "READY=1", |_, t| {
        field(t, "READY") == Some("1")
    });
    let waited = started.elapsed();
    assert_eq!(pid, gw.pid(), "{ready}");
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(gw.pid().to_string().as_str())
    );
    assert!(
        up.count_of("/probe") >= 1,
        "READY=1 before any health probe: {:?}",
        mgr.seen
    );
    assert!(
        waited >= Duration::from_millis(PROBE_MS),
        "READY=1 after {waited:?}, before the first probe (answered after {PROBE_MS} ms) was done"
    );
    assert!(TcpStream::connect(gw.addr).is_ok() && TcpStream::connect(gw.admin).is_ok());
    assert_eq!(gw.get("/api/x").status, 200);
    // Before it only MAINPID (said at once), and no watchdog without WATCHDOG_USEC.
    assert_eq!(
        mgr.seen.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        [format!("MAINPID={}", gw.pid()).as_str(), ready.as_str()]
    );
}

#[test]
fn the_watchdog_is_fed_at_half_its_interval() {
    let mut mgr = Manager::new();
    let up = echo("up");
    let gw = Gateway::start_with_env(&body(up, "", ""), &[mgr.env(), ("WATCHDOG_USEC", "200000")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pings = Vec::new();
    while pings.len() < 4 {
        let Some((pid, text)) = mgr.recv(deadline) else {
            panic!("{} WATCHDOG=1 in 10 s: {:?}", pings.len(), mgr.seen);
        };
        if text == "WATCHDOG=1" {
            assert_eq!(pid, gw.pid());
            pings.push(Instant::now());
        }
    }
    // Every 100 ms, give or take scheduling: well inside the 200 ms systemd would allow.
    let span = pings[3] - pings[0];
    assert!(
        span >= Duration::from_millis(250) && span < Duration::from_millis(1500),
        "three watchdog intervals took {span:?}"
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let mut mgr = Manager::new();
    let up = echo("up");
    let _gw = Gateway::start_with_env(
        &body(up, "", ""),
        &[
            mgr.env(),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    mgr.expect(Duration::from_secs(15), "READY=1", |_, t| {
        field(t, "READY") == Some("1")
    });
    let quiet = Instant::now() + Duration::from_millis(500);
    while mgr.recv(quiet).is_some() {}
    assert!(
        mgr.seen.iter().all(|(_, t)| !t.contains("WATCHDOG")),
        "{:?}",
        mgr.seen
    );
}

#[test]
fn sigterm_says_stopping() {
    let mut mgr = Manager::new();
    let up = echo("up");
    let mut gw = Gateway::start_with_env(&body(up, "", ""), &[mgr.env()]);
    mgr.expect(Duration::from_secs(15), "READY=1", |_, t| {
        field(t, "READY") == Some("1")
    });
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let (pid, _) = mgr.expect(Duration::from_secs(10), "STOPPING=1", |_, t| {
        field(t, "STOPPING") == Some("1")
    });
    assert_eq!(pid, gw.pid());
    assert!(
        eventually(Duration::from_secs(20), || gw.exited()),
        "the gateway never exited after SIGTERM"
    );
}

#[test]
fn reload_says_reloading_then_the_new_process_takes_main_pid_and_the_watchdog() {
    let mut mgr = Manager::new();
    let up = echo("up");
    let mut gw =
        Gateway::start_with_env(&body(up, "", ""), &[mgr.env(), ("WATCHDOG_USEC", "400000")]);
    let old = gw.pid();
    mgr.expect(Duration::from_secs(15), "READY=1", |_, t| {
        field(t, "READY") == Some("1")
    });
    // The running file, reloaded by a new process (`--upgrade`: the change would apply in
    // process otherwise, with no new process to tell systemd about).
    let next = gw.conf_path();
    std::fs::write(
        &next,
        gw.yaml_for(&body(
            up,
            "",
            "  - {name: new, path_prefix: /new, upstream: up}\n",
        )),
    )
    .unwrap();
    let before = mono_usec();
    // As systemd runs ExecReload under NotifyAccess=all: with NOTIFY_SOCKET, without the
    // watchdog variables (the new process takes them from the old one).
    let out = next.with_extension("out");
    let status = std::process::Command::new(bin())
        .args(["reload", "-c"])
        .arg(&next)
        .args(["--pid", &old.to_string(), "--upgrade"])
        .env("NOTIFY_SOCKET", &mgr.path)
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::options().append(true).open(&out).unwrap())
        .status()
        .unwrap();
    let _daemon = KillPidFile(gw.dir.path().join("tollgate.pid"));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );

    let (pid, reloading) = mgr.expect(Duration::from_secs(10), "RELOADING=1", |_, t| {
        field(t, "RELOADING") == Some("1")
    });
    assert_eq!(pid, old, "RELOADING=1 must come from the old process");
    let at: u64 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"));
    assert!(
        at >= before && at <= mono_usec(),
        "MONOTONIC_USEC={at} is not between {before} and now"
    );

    let (new, ready) = mgr.expect(
        Duration::from_secs(15),
        "READY=1 of the new process",
        |p, t| p != old && field(t, "READY") == Some("1"),
    );
    assert_eq!(field(&ready, "MAINPID"), Some(new.to_string().as_str()));
    // The old process still accepts on the shared sockets for a few seconds.
    assert!(
        eventually(Duration::from_secs(10), || gw.get("/new/x").status == 200),
        "the new config never served"
    );
    mgr.expect(
        Duration::from_secs(5),
        "WATCHDOG=1 of the new process",
        |p, t| p == new && t == "WATCHDOG=1",
    );

    // The old process drains and exits without saying STOPPING=1.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gw.exited() {
        assert!(Instant::now() < deadline, "the old process never exited");
        mgr.recv(Instant::now() + Duration::from_millis(100));
    }
    while mgr
        .recv(Instant::now() + Duration::from_millis(50))
        .is_some()
    {}
    let from_old: Vec<_> = mgr.seen.iter().filter(|(p, _)| *p == old).collect();
    assert!(
        from_old.iter().all(|(_, t)| field(t, "STOPPING").is_none()),
        "the old process said STOPPING=1 while handing over: {from_old:?}"
    );
    assert!(mgr.seen.iter().any(|(p, t)| *p == new && t == "WATCHDOG=1"));
    assert_eq!(gw.get("/api/x").status, 200);
    let shown: Vec<String> = mgr
        .seen
        .iter()
        .filter(|(_, t)| t != "WATCHDOG=1")
        .map(|(p, t)| {
            format!(
                "{} {}",
                if *p == old { "old" } else { "new" },
                t.replace('\n', " ")
            )
        })
        .collect();
    eprintln!(
        "notifications (watchdog pings left out):\n{}",
        shown.join("\n")
    );
}
