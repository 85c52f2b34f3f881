//! `tollgate reload`: a zero-downtime config reload that cannot take a working gateway down.
//!
//! The new config is validated in this process first; a bad one is refused and the running
//! instance is never signalled. Then the dance of DESIGN §4: start `tollgate -u -d -c FILE`,
//! wait until it listens on the upgrade socket, and only then SIGQUIT the old process, which
//! hands its listening sockets over and drains.
//!
//! Under systemd (`Type=notify`, `NotifyAccess=all`) this runs as `ExecReload`: the new process
//! inherits `$NOTIFY_SOCKET` and takes the old one's `WATCHDOG_USEC`, and reports its own pid
//! as `MAINPID=` with `READY=1` ([`crate::notify`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::gateway;

/// How long the new process may take to be ready for the sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a reload did not happen; the old instance is untouched in every case.
#[derive(Debug)]
pub struct ReloadError(pub String);

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reload the instance `pid` (or the one in the config's `pid_file`) with the config `conf`.
/// Returns the pid that was signalled.
pub fn reload(conf: &str, pid: Option<i32>) -> Result<i32, ReloadError> {
    let conf_path = std::fs::canonicalize(conf)
        .map_err(|e| ReloadError(format!("cannot read config file {conf}: {e}")))?;
    let loaded = gateway::load_file(&conf_path.to_string_lossy()).map_err(|errs| {
        ReloadError(format!(
            "{conf}: {errs}refusing to reload: the running instance keeps serving"
        ))
    })?;
    let old = match pid {
        Some(p) => p,
        None => read_pid(Path::new(&loaded.server.pid_file))?,
    };
    if !alive(old) {
        return Err(ReloadError(format!("no running tollgate with pid {old}")));
    }
    let sock = PathBuf::from(&loaded.server.upgrade_sock);
    let exe =
        std::env::current_exe().map_err(|e| ReloadError(format!("cannot find own binary: {e}")))?;
    let mut cmd = Command::new(exe);
    // The watchdog is the new process's duty once it is the main one; `WATCHDOG_PID` (this
    // command's, if systemd set it) would tell it the duty is someone else's.
    cmd.env_remove("WATCHDOG_PID");
    if let Some(usec) = watchdog_usec(old) {
        cmd.env("WATCHDOG_USEC", usec);
    }
    let mut child = cmd
        .arg("-u")
        .arg("-d")
        .arg("-c")
        .arg(&conf_path)
        // The daemon keeps stderr for its logs (journald under systemd) unless `error_log` is
        // set; it must not hold a caller's stdout open.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| ReloadError(format!("cannot start the new process: {e}")))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !unix_socket_listening(&sock) {
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() {
                return Err(ReloadError(format!(
                    "the new process exited with {status} before taking over; the old one keeps serving"
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(ReloadError(format!(
                "the new process did not listen on {} within {READY_TIMEOUT:?}; the old one keeps serving",
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
    if unsafe { libc::kill(old, libc::SIGQUIT) } != 0 {
        return Err(ReloadError(format!(
            "cannot signal pid {old}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let _ = child.wait();
    Ok(old)
}

/// The service manager's watchdog interval for the successor of `old`: this command's own
/// `WATCHDOG_USEC`, else the one `old` runs with (from its environment).
fn watchdog_usec(old: i32) -> Option<String> {
    if let Ok(v) = std::env::var("WATCHDOG_USEC") {
        return Some(v);
    }
    let env = std::fs::read(format!("/proc/{old}/environ")).ok()?;
    env.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"WATCHDOG_USEC="))
        .and_then(|v| String::from_utf8(v.to_vec()).ok())
}

pub fn read_pid(path: &Path) -> Result<i32, ReloadError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ReloadError(format!(
            "cannot read pid file {}: {e} (pass --pid)",
            path.display()
        ))
    })?;
    text.trim()
        .parse()
        .map_err(|_| ReloadError(format!("pid file {} does not hold a pid", path.display())))
}

pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Whether a Unix socket at `path` is listening, read from /proc/net/unix: connecting to it
/// would steal the accept meant for the old process.
pub fn unix_socket_listening(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .any(|l| l.ends_with(&*p) && l.split_whitespace().nth(5) == Some("01"))
}

/// Ignore `SIGHUP` (whose default ends the process) until the reload service handles it.
pub fn ignore_hangup() {
    // SAFETY: signal(2) with a valid signal number and SIG_IGN has no memory-safety
    // preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Send `sig` to `pid`.
pub fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid and a signal number has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
