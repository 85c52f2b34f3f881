//! The admin dashboard as an operator meets it: refusals of every kind made on a running
//! gateway show up with their reasons (and without credentials or query strings) in
//! `/api/status`, the admin token guards every admin path but `/health`, and a real browser
//! (headless Chromium) loading `/` with the token shows the backends and the refusal rows
//! its script drew. The run leaves a screenshot of the page in the test's target directory.

mod support;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use support::*;

const TOKEN: &str = "dashboard-test-token-0123456789";
const KEY: &str = "dashboard-alice-key-0123";

/// A gateway with a keyed route, a limited one, one whose only backend is down behind a
/// circuit breaker, and a GET-only one; and the address nobody listens on.
fn gateway() -> (Gateway, SocketAddr) {
    let up = echo("up");
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start_with_admin(
        &format!("token: \"{TOKEN}\", refusals_kept: 50"),
        &format!(
            r#"
consumers:
  alice: {{api_keys: ["{KEY}"]}}
auth:
  keys: {{type: api_key}}
rate_limits:
  one: {{requests: 1, per: 1m, burst: 1}}
upstreams:
  up: {{targets: ["{up}"]}}
  flaky:
    targets: ["{dead}"]
    retries: 0
    circuit_breaker: {{failures: 1, open_for: 1m}}
routes:
  - {{name: api, path_prefix: /api, upstream: up, auth: [keys]}}
  - {{name: limited, path_prefix: /limited, upstream: up, auth: [keys], rate_limit: one}}
  - {{name: down, path_prefix: /down, upstream: flaky}}
  - {{name: reads, path_prefix: /reads, upstream: up, methods: [GET]}}
"#
        ),
    );
    (gw, dead)
}

/// Refusals of each kind: what each should be listed as.
fn refuse_in_every_way(gw: &Gateway, dead: SocketAddr) -> Vec<(u16, String)> {
    let key = [("X-API-Key", KEY)];
    let mut want = Vec::new();
    let r = gw.send("GET", "/api/x?api_key=query-secret-value", &[]);
    want.push((r.status, "missing".to_owned()));
    let r = gw.send("GET", "/api/x", &[("X-API-Key", "wrong-key-value-42")]);
    want.push((r.status, "invalid_key".to_owned()));
    assert_eq!(gw.send("GET", "/limited/x", &key).status, 200);
    let r = gw.send("GET", "/limited/x", &key);
    want.push((r.status, "rate_limited policy=one".to_owned()));
    let r = gw.send("GET", "/down/x", &[]);
    want.push((r.status, format!("upstream_unreachable backend={dead}")));
    let r = gw.send("GET", "/down/x", &[]);
    want.push((r.status, format!("circuit_open backend={dead}")));
    let r = gw.send("GET", "/nowhere", &[]);
    want.push((r.status, "no_route".to_owned()));
    let r = gw.send("POST", "/reads/x", &[]);
    want.push((r.status, "method_not_allowed".to_owned()));
    let statuses: Vec<u16> = want.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [401, 401, 429, 502, 503, 404, 405]);
    want
}

fn admin(gw: &Gateway, path: &str, auth: Option<&str>) -> Resp {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    request(
        gw.admin,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n"),
    )
    .unwrap()
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[test]
fn refusals_are_listed_with_their_reasons_and_no_secrets() {
    let (gw, dead) = gateway();
    let want = refuse_in_every_way(&gw, dead);
    let r = admin(&gw, "/api/status", Some(&bearer()));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("query-secret-value"), "{}", r.body);
    assert!(!r.body.contains("wrong-key-value-42"), "{}", r.body);
    assert!(!r.body.contains(KEY), "{}", r.body);
    let s = r.json();
    assert_eq!(s["refusals_kept"], 50);
    let listed: Vec<(u16, String)> = s["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["status"].as_u64().unwrap() as u16,
                f["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Newest first.
    let expected: Vec<_> = want.into_iter().rev().collect();
    assert_eq!(listed, expected);
    let newest = &s["refusals"][0];
    // A method no route at the path takes: no route was chosen.
    assert_eq!(newest["route"], serde_json::Value::Null);
    assert_eq!(newest["method"], "POST");
    assert_eq!(newest["client_ip"], "127.0.0.1");
    assert_eq!(newest["request_id"].as_str().unwrap().len(), 32);
    let limited = &s["refusals"][4];
    assert_eq!(limited["consumer"], "alice", "{limited}");
    assert_eq!(limited["route"], "limited", "{limited}");
    assert_eq!(
        s["refusals"][6]["path"], "/api/x",
        "the query is never kept"
    );
    // The routes' counters and the backends' state.
    let route = |name: &str| {
        s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(route("api")["requests"]["4xx"], 2);
    assert_eq!(route("limited")["requests"]["2xx"], 1);
    assert_eq!(
        route("limited")["rate_limits"][0]
            .as_str()
            .unwrap()
            .split(':')
            .next(),
        Some("one")
    );
    let flaky = s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "flaky")
        .unwrap();
    let backend = &flaky["backends"][0];
    assert_eq!(backend["address"], dead.to_string());
    assert_eq!(backend["circuit"], "open");
    assert_eq!(
        (backend["answered"].as_u64(), backend["failed"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn the_admin_token_guards_every_path_but_health() {
    let (gw, _) = gateway();
    for path in ["/", "/api/status", "/metrics"] {
        let r = admin(&gw, path, None);
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic ")),
            "{r:?}"
        );
        assert_eq!(
            admin(&gw, path, Some("Bearer not-the-token-at-all")).status,
            401
        );
        assert_eq!(admin(&gw, path, Some(&bearer())).status, 200, "{path}");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"));
        assert_eq!(
            admin(&gw, path, Some(&format!("Basic {basic}"))).status,
            200,
            "{path}"
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:x"));
        assert_eq!(
            admin(&gw, path, Some(&format!("Basic {wrong}"))).status,
            401,
            "{path}"
        );
    }
    // Load balancers keep probing without it.
    assert_eq!(admin(&gw, "/health", None).status, 200);
    let page = admin(&gw, "/", Some(&bearer()));
    assert!(page
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/html")));
    // Nothing to fetch from elsewhere: no source, no link, and a policy that allows none.
    assert!(
        !page.body.contains("src=") && !page.body.contains("<link"),
        "{}",
        page.body
    );
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
}

#[test]
fn admin_settings_are_checked_at_load() {
    let base = "upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\nroutes: [{name: r, path_prefix: /, upstream: u}]\n";
    for (admin, want) in [
        (
            "{address: \"127.0.0.1:9\", token: short}",
            "admin.token: is 5 bytes: an admin token must have at least 16",
        ),
        (
            "{address: \"127.0.0.1:9\", token: {env: TOLLGATE_NO_SUCH_VAR}}",
            "admin.token.env: environment variable TOLLGATE_NO_SUCH_VAR is not set",
        ),
        (
            "{address: \"127.0.0.1:9\", refusals_kept: 0}",
            "admin.refusals_kept: must be at least 1",
        ),
        ("{address: \"nowhere\"}", "admin.address"),
        (
            "{address: \"127.0.0.1:9\", tokens: x}",
            "unknown field `tokens`",
        ),
    ] {
        let (code, out) = check_config(&format!("admin: {admin}\n{base}"));
        assert_eq!(code, 1, "{admin}: {out}");
        assert!(out.contains(want), "{admin}: expected {want:?} in:\n{out}");
    }
    let (code, out) = check_config(&format!("admin: \"0.0.0.0:9\"\n{base}"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("not a loopback address and has no token"),
        "{out}"
    );
    let (code, out) = check_config(&format!(
        "admin: {{address: \"0.0.0.0:9\", token: \"{TOKEN}\"}}\n{base}"
    ));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("no token"), "{out}");
}

/// A Chromium on this machine (Debian's `chromium`; `scripts/install-deps.sh` installs it).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("no chromium in PATH: scripts/install-deps.sh installs it (apt: chromium)");
}

/// Run headless Chromium on `url` with `args`, waiting for it to end (its virtual time
/// budget lets the page's scripts run their polls first); its stdout.
fn browse(url: &str, args: &[&str], profile: &Path) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,860",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    assert!(
        eventually(deadline - Instant::now(), || child
            .try_wait()
            .unwrap()
            .is_some()),
        "chromium did not finish"
    );
    reader.join().unwrap()
}

#[test]
fn a_browser_shows_the_backends_and_the_refusals() {
    let (gw, dead) = gateway();
    refuse_in_every_way(&gw, dead);
    let profile = tempfile::tempdir().unwrap();
    // Basic credentials in the address: the browser sends them, then its page's requests
    // carry them too.
    let url = format!("http://ops:{TOKEN}@{}/", gw.admin);
    let dom = browse(&url, &["--dump-dom"], profile.path());
    assert!(dom.contains(&format!("data-backend=\"{dead}\"")), "{dom}");
    assert!(dom.contains("class=\"refusal\""), "{dom}");
    assert!(
        dom.contains(&format!("circuit_open backend={dead}")),
        "{dom}"
    );
    assert!(dom.contains("rate_limited policy=one"), "{dom}");
    assert!(dom.contains("data-route=\"limited\""), "{dom}");
    assert!(!dom.contains("query-secret-value"), "{dom}");
    assert!(
        dom.contains("<span id=\"state\" class=\"\">updated"),
        "{dom}"
    );
    // Without the token the page has nothing to show.
    let bare = browse(
        &format!("http://{}/", gw.admin),
        &["--dump-dom"],
        profile.path(),
    );
    assert!(!bare.contains("class=\"refusal\""), "{bare}");

    // The screenshot: in the test's target directory, and in `TOLLGATE_SCREENSHOT_DIR` when
    // given (`docs/img` to refresh the README's).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &url,
        &[&format!("--screenshot={}", shot.display())],
        profile.path(),
    );
    let png = std::fs::read(&shot).expect("chromium wrote a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(dir) = std::env::var("TOLLGATE_SCREENSHOT_DIR") {
        std::fs::copy(&shot, Path::new(&dir).join("dashboard.png")).unwrap();
    }
}
