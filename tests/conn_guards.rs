//! Connection guards: a client trickling its request head is cut at `limits.head_timeout`
//! however often it sends a byte; a client holding too many connections gets 503 on the next;
//! an idle HTTP/1 connection is closed at `limits.keepalive_timeout`, and the keep-alive loop
//! (which reads a head's first bytes before Pingora does) loses none of a head or its body.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

fn gateway(limits: &str) -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        "limits: {{{limits}}}\nupstreams: {{u: {{targets: [\"{up}\"]}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: u}}]"
    ))
}

/// Send `head` one byte every 100 ms; returns how long until the gateway closed the
/// connection (EOF, reset, or an answer), or `None` if it was still open after `give_up`.
fn trickle(gw: &Gateway, head: &[u8], give_up: Duration) -> Option<Duration> {
    trickle_on(&mut TcpStream::connect(gw.addr).unwrap(), head, give_up)
}

/// [`trickle`] on a connection already open.
fn trickle_on(s: &mut TcpStream, head: &[u8], give_up: Duration) -> Option<Duration> {
    // The trickle itself is the behaviour under test: a byte, then a 100 ms pause (the read).
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    for b in head.iter().cycle() {
        if start.elapsed() > give_up {
            return None;
        }
        if s.write_all(&[*b]).is_err() {
            return Some(start.elapsed());
        }
        match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            _ => return Some(start.elapsed()),
        }
    }
    unreachable!()
}

/// A raw connection to the gateway; a read waits up to 10 s (only a failure waits that long).
fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request on an open connection; the whole response.
fn exchange(s: &mut TcpStream, path: &str) -> Resp {
    s.write_all(format!("GET {path} HTTP/1.1\r\n").as_bytes())
        .unwrap();
    finish(s)
}

/// Send the rest of a head begun with a request line; the whole response.
fn finish(s: &mut TcpStream) -> Resp {
    s.write_all(b"Host: gw\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((r, _)) = parse_one(&buf).unwrap() {
            return r;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the gateway closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_trickled_request_head_is_cut_at_head_timeout() {
    let gw = std::sync::Arc::new(gateway("head_timeout: 1s"));
    // Endless header lines, one byte per 100 ms: each read is quick, the head never ends.
    let slow = {
        let gw = gw.clone();
        std::thread::spawn(move || {
            trickle(
                &gw,
                b"GET / HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                Duration::from_secs(8),
            )
        })
    };
    // Meanwhile a normal client on another connection is served promptly.
    let start = Instant::now();
    assert_eq!(gw.get("/x").status, 200);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    let took = slow
        .join()
        .unwrap()
        .expect("the gateway never cut a head trickled for 8 s");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}, expected about 1 s"
    );
    assert_eq!(gw.get("/x").status, 200);
}

/// The next head on a busy connection (which keeps the last request's stream for it) is
/// timed as the first was.
#[test]
fn a_head_trickled_right_after_a_request_is_cut_at_head_timeout() {
    let gw = gateway("head_timeout: 1s");
    let mut s = connect(&gw);
    assert_eq!(exchange(&mut s, "/a").status, 200);
    let head = b"GET /b HTTP/1.1\r\nHost: gw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let took = trickle_on(&mut s, head, Duration::from_secs(8))
        .expect("the gateway never cut a second head trickled for 8 s");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut after {took:?}, expected about 1 s"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_not_cut_by_the_head_timeout() {
    let gw = gateway("head_timeout: 1s");
    let mut s = connect(&gw);
    assert_eq!(exchange(&mut s, "/a").status, 200);
    // Idle between requests is the keep-alive timeout's business, not the head deadline's:
    // the idle time is what is under test here.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        exchange(&mut s, "/b").status,
        200,
        "same connection, second request"
    );
    // And the deadline is re-armed for the next head: a slow but in-time one passes.
    s.write_all(b"GET /c HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(finish(&mut s).status, 200);
}

/// Block until the gateway ends the connection (EOF or reset); how long that took.
fn until_closed(s: &mut TcpStream, since: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match s.read(&mut [0u8; 64]) {
        Ok(0) => since.elapsed(),
        Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            since.elapsed()
        }
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

/// Assert that the gateway ends `s` about `secs` seconds after `since` (the keep-alive
/// timeout): not 100 ms sooner, and before `by` seconds.
fn closed_about(which: &str, s: &mut TcpStream, since: Instant, secs: u64, by: u64) {
    let took = until_closed(s, since);
    let at = Duration::from_secs(secs);
    assert!(
        took >= at - Duration::from_millis(100) && took < Duration::from_secs(by),
        "{which}: closed after {took:?}, expected about {secs} s"
    );
}

#[test]
fn an_idle_connection_is_closed_at_the_keepalive_timeout() {
    let gw = gateway("keepalive_timeout: 1s");
    let mut used = connect(&gw);
    assert_eq!(exchange(&mut used, "/a").status, 200);
    let start = Instant::now();
    // A connection that never sends a request waits no longer than one between requests.
    let mut silent = TcpStream::connect(gw.addr).unwrap();
    for (which, s) in [("after a request", &mut used), ("never used", &mut silent)] {
        closed_about(which, s, start, 1, 5);
    }
    // Requests on a connection that keeps talking are not cut by it: each moves the
    // deadline, and the wait after a later one is the whole timeout again, not what the
    // first one's had left (the idle time is what is under test).
    let mut busy = connect(&gw);
    assert_eq!(exchange(&mut busy, "/b0").status, 200);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(exchange(&mut busy, "/b1").status, 200);
    closed_about("after a later request", &mut busy, Instant::now(), 1, 5);
}

#[test]
fn a_head_larger_than_the_first_read_and_its_body_arrive_whole() {
    let gw = gateway("head_timeout: 5s");
    let mut s = connect(&gw);
    for (size, body) in [(6000, 10_000), (100, 3)] {
        // Head and body in one write: the first read takes 4 KiB of it at most.
        let big = "a".repeat(size);
        let mut req = format!(
            "POST /big HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\nContent-Length: {body}\r\n\r\n"
        )
        .into_bytes();
        req.extend(std::iter::repeat_n(b'z', body));
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let r = loop {
            if let Some((r, _)) = parse_one(&buf).unwrap() {
                break r;
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the gateway closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert_eq!(r.status, 200, "{}", r.body);
        let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(echoed["headers"]["x-big"], big.as_str());
        assert_eq!(echoed["body_bytes"], body);
    }
}

#[test]
fn connections_over_the_per_ip_cap_get_503() {
    let gw = gateway("max_connections_per_ip: 2");
    let mut a = KeepAlive::new(gw.addr);
    let mut b = KeepAlive::new(gw.addr);
    assert_eq!(a.get("/a").unwrap().status, 200);
    assert_eq!(b.get("/b").unwrap().status, 200);
    let r = gw.get("/c");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "unavailable");
    assert_eq!(
        r.header("Content-Length").and_then(|v| v.parse().ok()),
        Some(r.body.len()),
        "a well-framed answer: {r:?}"
    );
    assert!(r.json()["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(r.header("Retry-After"), Some("1"), "{r:?}");
    // The refusal is logged and counted like any answer the gateway makes itself.
    let id = r.json()["request_id"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(5), || gw.logs().lines().any(|l| l
            .contains(&format!("request_id={id} "))
            && l.contains("\"- - -\" 503 "))),
        "no access-log line for the 503: {}",
        gw.logs()
    );
    let metrics = gw.admin_get("/metrics").body;
    assert!(
        metrics.contains("tollgate_local_answers_total{error=\"unavailable\"} 1"),
        "{metrics}"
    );
    // And listed among the dashboard's refusals, with why.
    let status = gw.admin_get("/api/status").json();
    let refusal = &status["refusals"][0];
    assert_eq!(refusal["reason"], "connection_cap", "{status}");
    assert_eq!(
        (refusal["status"].as_u64(), refusal["request_id"].as_str()),
        (Some(503), Some(&*id))
    );
    // Closing one gives its slot back.
    drop(a);
    assert!(
        eventually(Duration::from_secs(5), || gw.get("/d").status == 200),
        "the slot of a closed connection was never given back"
    );
    assert_eq!(b.get("/e").unwrap().status, 200);
}

/// Idle longer than this, a cleartext connection leaves its task for the listener's table
/// of idle sockets (`src/conn/park.rs`, one second); these tests idle past it.
const PARKED: Duration = Duration::from_millis(1500);

#[test]
fn a_long_idle_connection_is_served_and_still_closed_at_the_keepalive_timeout() {
    let gw = gateway("keepalive_timeout: 3s");
    let mut used = connect(&gw);
    assert_eq!(exchange(&mut used, "/a").status, 200);
    let mut late_first = connect(&gw);
    let start = Instant::now();
    let mut silent = TcpStream::connect(gw.addr).unwrap();
    // The idle time is what is under test.
    std::thread::sleep(PARKED);
    assert_eq!(exchange(&mut used, "/b").status, 200, "after a long idle");
    let since_b = Instant::now();
    assert_eq!(
        exchange(&mut late_first, "/c").status,
        200,
        "a first request after a long silence"
    );
    // A head that begins after the long idle and arrives in pieces is read whole.
    std::thread::sleep(PARKED);
    used.write_all(b"GET /d HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(finish(&mut used).status, 200, "a head sent in two parts");
    let since_d = Instant::now();

    closed_about("never used", &mut silent, start, 3, 6);
    closed_about("after a request", &mut used, since_d, 3, 6);
    closed_about("after a late first request", &mut late_first, since_b, 3, 6);
}

#[test]
fn a_long_idle_connection_keeps_its_per_ip_slot_until_it_ends() {
    let gw = gateway("max_connections_per_ip: 2, keepalive_timeout: 30s");
    // Raw clients: no silent reconnect that would hide a dropped connection.
    let mut held = Client::connect(gw.addr);
    assert_eq!(held.get("/a", "").status, 200);
    let mut other = Client::connect(gw.addr);
    assert_eq!(other.get("/a", "").status, 200);
    std::thread::sleep(PARKED);
    assert_eq!(
        gw.get("/b").status,
        503,
        "the idle connections hold the slots"
    );
    assert_eq!(held.get("/c", "").status, 200, "same connection");
    std::thread::sleep(PARKED);
    drop(held);
    assert!(
        eventually(Duration::from_secs(5), || gw.get("/d").status == 200),
        "the slot of a closed idle connection was never given back"
    );
    assert_eq!(other.get("/e", "").status, 200, "same connection");
}

#[test]
fn many_long_idle_connections_all_serve_their_next_request() {
    let gw = gateway("keepalive_timeout: 30s");
    let mut conns: Vec<Client> = (0..300).map(|_| Client::connect(gw.addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.get(&format!("/a{i}"), "").status, 200);
    }
    std::thread::sleep(PARKED);
    // More readiness events at once than one call takes, on sockets idle together.
    for c in &mut conns {
        c.send(b"GET /b HTTP/1.1\r\nHost: gw\r\n\r\n");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c.response(false);
        assert_eq!(r.status, 200, "connection {i}: {r:?}");
    }
}
