//! `mirror`: a sampled copy of a route's requests to a shadow upstream, fire and forget.

mod support;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

/// A shadow upstream: every request it gets (head, body) goes to `seen`; it answers 200 only
/// once the test sends on `release` (one send per request), so a test can hold it.
struct Shadow {
    addr: SocketAddr,
    seen: mpsc::Receiver<(String, Vec<u8>)>,
    release: mpsc::Sender<()>,
}

impl Shadow {
    fn start() -> Shadow {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (seen_tx, seen) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break 0,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                if end == 0 {
                    continue;
                }
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = header_in(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + len {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = buf[end..].to_vec();
                if seen_tx.send((head, body)).is_err() || release_rx.recv().is_err() {
                    return;
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Shadow {
            addr,
            seen,
            release,
        }
    }

    fn next(&self) -> (String, Vec<u8>) {
        self.seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the shadow got no copy")
    }
}

fn gw(shadow: SocketAddr, mirror: &str) -> (Gateway, Backend) {
    let real = Backend::start("real");
    let gw = Gateway::start(&format!(
        "upstreams:\n\
         \x20 real: {{targets: [\"{}\"]}}\n\
         \x20 shadow: {{targets: [\"{shadow}\"]}}\n\
         routes:\n\
         \x20 - {{name: r, path_prefix: /r, upstream: real, mirror: {mirror}}}\n",
        real.addr
    ));
    (gw, real)
}

fn mirror_count(gw: &Gateway, outcome: &str) -> u64 {
    let m = gw.admin_get("/metrics").body;
    let m = m.as_bytes();
    let want = format!("tollgate_mirror_requests_total{{route=\"r\",outcome=\"{outcome}\"}} ");
    String::from_utf8_lossy(m)
        .lines()
        .find_map(|l| l.strip_prefix(&want).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn the_shadow_gets_a_copy_and_the_client_never_waits_for_it() {
    let shadow = Shadow::start();
    let (gw, real) = gw(shadow.addr, "{upstream: shadow}");
    // The shadow holds its answer: the client has its own all the same.
    let r = gw.send("GET", "/r/items?a=1", &[("X-Trace", "t1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["service"], "real");
    let (head, _) = shadow.next();
    assert!(head.starts_with("GET /items?a=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_in(&head, "x-trace").as_deref(), Some("t1"), "{head}");
    assert!(header_in(&head, "x-forwarded-for").is_some(), "{head}");
    assert_eq!(real.count(), 1);
    shadow.release.send(()).unwrap();
    assert!(eventually(Duration::from_secs(10), || mirror_count(
        &gw,
        "status_2XX"
    ) == 1));
    assert_eq!(mirror_count(&gw, "sent"), 1);
}

#[test]
fn a_dead_shadow_changes_nothing_for_the_client() {
    let (gw, real) = gw(closed_port(), "{upstream: shadow}");
    for _ in 0..20 {
        assert_eq!(gw.get("/r/x").status, 200);
    }
    assert_eq!(real.count(), 20);
    assert!(eventually(Duration::from_secs(10), || mirror_count(
        &gw, "failed"
    ) == 20));
}

#[test]
fn only_the_sample_is_copied() {
    let shadow = Shadow::start();
    let (gw, _real) = gw(shadow.addr, "{upstream: shadow, sample: 0.5}");
    for _ in 0..400 {
        shadow.release.send(()).unwrap();
    }
    let mut c = KeepAlive::new(gw.addr);
    for _ in 0..400 {
        assert_eq!(c.get("/r/x").unwrap().status, 200);
    }
    assert!(eventually(Duration::from_secs(10), || {
        mirror_count(&gw, "sent") == mirror_count(&gw, "status_2XX")
    }));
    let sent = mirror_count(&gw, "sent");
    assert!(
        (140..=260).contains(&sent),
        "{sent} of 400 copied at sample 0.5"
    );
}

#[test]
fn a_body_is_copied_up_to_max_body() {
    let shadow = Shadow::start();
    let (gw, _real) = gw(shadow.addr, "{upstream: shadow, max_body: 16}");
    let post = |body: &str| {
        let req = format!(
            "POST /r/x HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        gw.raw(req.as_bytes())
    };
    assert_eq!(post("hello shadow").status, 200);
    let (head, body) = shadow.next();
    assert_eq!(body, b"hello shadow", "{head}");
    assert_eq!(header_in(&head, "content-length").as_deref(), Some("12"));
    shadow.release.send(()).unwrap();

    assert_eq!(post("a body longer than sixteen bytes").status, 200);
    let (head, body) = shadow.next();
    assert!(head.starts_with("POST /x HTTP/1.1\r\n"), "{head}");
    assert!(
        body.is_empty() && header_in(&head, "content-length").is_none(),
        "{head}"
    );
    shadow.release.send(()).unwrap();
    let m = gw.admin_get("/metrics").body;
    assert!(
        m.contains("tollgate_mirror_bodies_too_large_total{route=\"r\"} 1"),
        "{m}"
    );
}

#[test]
fn mirror_settings_are_checked_with_their_key_path() {
    let check = |mirror: &str| {
        let (code, out) = check_config(&format!(
            "upstreams:\n  a: {{targets: [\"127.0.0.1:1\"]}}\n  s: {{targets: [\"127.0.0.1:2\"]}}\n  h2: {{targets: [\"127.0.0.1:3\"], protocol: h2}}\n\
             routes:\n  - {{name: r, path_prefix: /r, upstream: a, mirror: {mirror}}}\n"
        ));
        assert_ne!(code, 0, "{mirror} accepted");
        out
    };
    let out = check("{upstream: nope}");
    assert!(
        out.contains("routes[0].mirror.upstream: unknown upstream \"nope\""),
        "{out}"
    );
    let out = check("{upstream: s, sample: 0}");
    assert!(out.contains("routes[0].mirror.sample: "), "{out}");
    let out = check("{upstream: s, sample: 1.5}");
    assert!(out.contains("routes[0].mirror.sample: "), "{out}");
    let out = check("{upstream: h2}");
    assert!(
        out.contains("routes[0].mirror.upstream: \"h2\" is not a plaintext HTTP/1"),
        "{out}"
    );
    let out = check("{upstream: s, every: 2}");
    assert!(out.contains("routes[0].mirror"), "{out}");
}

#[test]
fn explain_says_a_route_is_mirrored() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("t.yaml");
    std::fs::write(
        &conf,
        "upstreams:\n  a: {targets: [\"127.0.0.1:1\"]}\n  s: {targets: [\"127.0.0.1:2\"]}\n\
         routes:\n  - {name: r, path_prefix: /r, upstream: a, mirror: {upstream: s, sample: 0.25}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["explain", "-c", conf.to_str().unwrap(), "GET", "/r/x"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("mirror:   a copy of 25% to upstream s (timeout 2s, body up to 65536 bytes)"),
        "{out}"
    );
}
