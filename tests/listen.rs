//! Listener options: an `h2c` listener speaks HTTP/2 with prior knowledge and still HTTP/1.1.

mod support;
use std::net::SocketAddr;
use support::*;

fn h2c_gateway() -> (Gateway, SocketAddr) {
    Gateway::with_api_listener(|a| format!("{{address: \"{a}\", h2c: true}}"))
}

#[test]
fn h2c_prior_knowledge_reaches_an_http1_upstream() {
    let (gw, h2c) = h2c_gateway();
    let r = runtime()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
            h2client::get(tcp, "http://gw/api/hello?x=1").await
        })
        .unwrap_or_else(|e| panic!("h2c request failed: {e}\n{}", gw.logs()));
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["service"], "up", "{j}");
    assert_eq!(j["path"], "/hello", "{j}");
    assert_eq!(j["query"], "x=1", "{j}");
    assert_eq!(r.headers["x-gateway"], "tollgate");
}

#[test]
fn h2_cookie_crumbs_reach_an_http1_upstream_as_one_header() {
    let (gw, h2c) = h2c_gateway();
    // HTTP/2 clients (browsers, curl, nghttp2) send each cookie as its own `cookie` field,
    // for better header compression (RFC 9113 section 8.2.3).
    let req = http::Request::get("http://gw/api/crumbs")
        .header("cookie", "a=1")
        .header("cookie", "b=2; c=3")
        .header("cookie", "d=4")
        .body(())
        .unwrap();
    let r = runtime()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
            h2client::send(tcp, req).await
        })
        .unwrap_or_else(|e| panic!("h2c request failed: {e}\n{}", gw.logs()));
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(
        j["headers"]["cookie"], "a=1; b=2; c=3; d=4",
        "an HTTP/1 server reads one Cookie header, the crumbs joined with \"; \": {j}"
    );
}

#[test]
fn http1_still_works_on_an_h2c_listener() {
    let (_gw, h2c) = h2c_gateway();
    let r = request(
        h2c,
        "GET /api/one HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["service"], "up");
}

#[test]
fn plain_listeners_do_not_speak_h2c() {
    let (gw, _) = h2c_gateway();
    let r = runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        h2client::get(tcp, "http://gw/api/hello").await
    });
    assert!(r.is_err(), "a plain listener answered h2: {r:?}");
}

/// The voluntary context switches of each of the gateway's worker threads (named after the
/// service, `tollgate`, as the main thread is), by thread id.
fn worker_switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let path = task.path();
        if task.file_name().to_string_lossy() == pid.to_string() {
            continue;
        }
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "tollgate" {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.insert(task.file_name().to_string_lossy().into_owned(), switches);
    }
    out
}

/// Connections of a plain listener are spread over every worker thread (`threads: 2` here),
/// not all served by the thread that accepted them.
#[test]
fn plain_connections_are_served_by_every_worker_thread() {
    let up = echo("up");
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: r, path_prefix: /, upstream: u}}]"
    ));
    assert_eq!(gw.get("/warm").status, 200);
    let before = worker_switches(gw.pid());
    for i in 0..64 {
        assert_eq!(gw.get(&format!("/c{i}")).status, 200);
    }
    let after = worker_switches(gw.pid());
    // Threads of the service's runtime that took part (its blocking pool's, if any, do not).
    let busy: Vec<u64> = after
        .iter()
        .map(|(tid, n)| n - before.get(tid).copied().unwrap_or(0))
        .collect();
    assert!(
        busy.iter().filter(|&&n| n >= 4).count() >= 2,
        "both workers served some of 64 connections: {busy:?}"
    );
}
