//! `tollgate reload -c FILE`: reload the running instance with FILE, in process when it can.
//!
//! FILE is validated here first (a bad one is refused and nothing is signalled), and must be
//! the file the running process was started with (its `-c`, read from `/proc/PID/cmdline`):
//! `SIGHUP` makes a process read its own file again. The process itself decides whether the
//! change applies in process ([`crate::inplace`]); this command watches its admin `/health`
//! for the new generation or the error, and runs the graceful upgrade of [`crate::reload`]
//! (SIGQUIT) when the change needs one, or when the binary was replaced (a package upgrade).
//! Without an admin listener it cannot watch: it sends
//! `SIGHUP` and says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::reload::ReloadError;

/// How long the running process may take to answer a `SIGHUP` on `/health`.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// Reload the instance `pid` (or the one in FILE's `pid_file`) with `conf`; `upgrade` forces
/// the graceful upgrade. Returns what happened, for the operator.
pub fn run(conf: &str, pid: Option<i32>, upgrade: bool) -> Result<String, ReloadError> {
    let canonical = std::fs::canonicalize(conf)
        .map_err(|e| ReloadError(format!("cannot read config file {conf}: {e}")))?;
    let loaded = crate::gateway::load_file(&canonical.to_string_lossy()).map_err(|errs| {
        ReloadError(format!(
            "{conf}: {errs}refusing to reload: the running instance keeps serving"
        ))
    })?;
    let pid = match pid {
        Some(p) => p,
        None => crate::reload::read_pid(Path::new(&loaded.server.pid_file))?,
    };
    if !crate::reload::alive(pid) {
        return Err(ReloadError(format!("no running tollgate with pid {pid}")));
    }
    match running_conf(pid) {
        Some(running) if running == canonical => {}
        Some(running) => {
            return Err(ReloadError(format!(
                "pid {pid} runs {}, not {}: a process reloads the file it was started with",
                running.display(),
                canonical.display()
            )))
        }
        None => {
            return Err(ReloadError(format!(
                "cannot tell which config file pid {pid} runs (no -c in /proc/{pid}/cmdline)"
            )))
        }
    }
    let upgrade_now = |why: &str| -> Result<String, ReloadError> {
        let old = crate::reload::reload(conf, Some(pid))?;
        Ok(format!(
            "reloaded by upgrade ({why}): a new process took over from pid {old}, which is draining"
        ))
    };
    if upgrade {
        return upgrade_now("--upgrade");
    }
    // A package upgrade replaced the binary: only a new process runs the new one.
    if binary_changed(pid) {
        return upgrade_now("the tollgate binary changed");
    }
    let Some(admin) = loaded.gateway.admin.as_ref().map(|a| a.address.clone()) else {
        signal_hup(pid)?;
        return Ok(format!(
            "SIGHUP sent to pid {pid}; without an admin listener this cannot confirm the reload (see its log)"
        ));
    };
    let before = match health(&admin) {
        Some(h) if h["pid"].as_i64() == Some(i64::from(pid)) => h["config"].clone(),
        _ => return upgrade_now(&format!("pid {pid} does not answer on admin {admin}")),
    };
    let (generation, attempts) = (
        before["generation"].as_u64().unwrap_or(0),
        before["attempts"].as_u64().unwrap_or(0),
    );
    if generation == 0 {
        return Err(ReloadError(format!(
            "pid {pid} does not handle SIGHUP yet (no config on /health); try again"
        )));
    }
    signal_hup(pid)?;
    let deadline = Instant::now() + OUTCOME_TIMEOUT;
    loop {
        if let Some(c) = health(&admin).map(|h| h["config"].clone()) {
            let now = c["generation"].as_u64().unwrap_or(0);
            if now > generation {
                return Ok(format!(
                    "reloaded in process: pid {pid} runs generation {now}"
                ));
            }
            if c["attempts"].as_u64().unwrap_or(0) > attempts {
                let err = c["last_error"]
                    .as_str()
                    .unwrap_or("unknown error")
                    .to_owned();
                if let Some(why) = err.strip_prefix("needs an upgrade: ") {
                    return upgrade_now(why);
                }
                return Err(ReloadError(format!(
                    "pid {pid} refused the reload and keeps its config: {err}"
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(ReloadError(format!(
                "pid {pid} did not report the reload on admin {admin} within {OUTCOME_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal_hup(pid: i32) -> Result<(), ReloadError> {
    crate::reload::signal(pid, libc::SIGHUP)
        .map_err(|e| ReloadError(format!("cannot signal pid {pid}: {e}")))
}

/// Whether process `pid` runs another binary than this command (replaced or deleted since).
fn binary_changed(pid: i32) -> bool {
    let (Ok(running), Ok(own)) = (
        std::fs::read_link(format!("/proc/{pid}/exe")),
        std::env::current_exe(),
    ) else {
        return false;
    };
    let deleted = running.to_string_lossy().ends_with(" (deleted)");
    deleted || std::fs::canonicalize(&running).ok() != std::fs::canonicalize(own).ok()
}

/// The canonical path of the `-c`/`--conf` file process `pid` was started with.
pub fn running_conf(pid: i32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let file = conf_arg(&args)?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    std::fs::canonicalize(cwd.join(file)).ok()
}

/// The value of `-c FILE`, `-cFILE`, `--conf FILE` or `--conf=FILE`.
fn conf_arg(args: &[String]) -> Option<&str> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "-c" || a == "--conf" {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix("--conf=") {
            return Some(v);
        }
        if let Some(v) = a
            .strip_prefix("-c")
            .filter(|v| !v.is_empty() && !a.starts_with("--"))
        {
            return Some(v);
        }
    }
    None
}

/// The admin `/health` document, if it answers.
fn health(admin: &str) -> Option<serde_json::Value> {
    let a = crate::admin::client::request(admin, "GET", "/health", None, None).ok()?;
    (!a.json.is_null()).then_some(a.json)
}

#[cfg(test)]
mod tests {
    use super::conf_arg;

    #[test]
    fn finds_the_config_argument() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(conf_arg(&args(&["t", "-c", "a.yaml"])), Some("a.yaml"));
        assert_eq!(conf_arg(&args(&["t", "-u", "-ca.yaml"])), Some("a.yaml"));
        assert_eq!(conf_arg(&args(&["t", "--conf=b.yaml"])), Some("b.yaml"));
        assert_eq!(
            conf_arg(&args(&["t", "--conf", "c.yaml", "-d"])),
            Some("c.yaml")
        );
        assert_eq!(conf_arg(&args(&["t", "--demo"])), None);
    }
}
