//! Upstream failures become the JSON error contract, promptly; weights shape the traffic.

mod support;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn refused_upstream_is_502_json_with_gateway_header() {
    let down = closed_port();
    let gw = Gateway::start(&format!(
        "upstreams: {{down: {{targets: [\"{down}\"], retries: 0}}}}\nroutes: [{{name: r, path_prefix: /, upstream: down}}]"
    ));
    let t = Instant::now();
    let r = gw.get("/x");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "bad_gateway");
    assert_eq!(r.header("x-gateway"), Some("tollgate"));
    assert!(t.elapsed() < Duration::from_secs(3), "answered promptly");
    // The message names the upstream, never its address.
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("down") && !msg.contains("127.0.0.1"), "{msg}");
}

#[test]
fn silent_upstream_is_504_within_the_read_timeout() {
    let silent = hang();
    let gw = Gateway::start(&format!(
        "upstreams: {{slow: {{targets: [\"{silent}\"], timeouts: {{read: 500ms}}}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: slow}}]"
    ));
    let t = Instant::now();
    let r = gw.get("/x");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.error_code(), "gateway_timeout");
    assert!(
        took >= Duration::from_millis(450),
        "waited for the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "did not hang: {took:?}");
}

#[test]
fn slow_echo_beyond_read_timeout_is_504_and_within_is_200() {
    let up = echo("slowish");
    let gw = Gateway::start(&format!(
        "upstreams: {{s: {{targets: [\"{up}\"], timeouts: {{read: 400ms}}}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: s}}]"
    ));
    assert_eq!(gw.get("/x?delay_ms=50").status, 200);
    assert_eq!(gw.get("/x?delay_ms=1500").status, 504);
}

#[test]
fn connect_failure_is_retried_on_another_backend() {
    let up = echo("alive");
    let down = closed_port();
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{down}\", \"{up}\"], retries: 1}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: u}}]"
    ));
    for _ in 0..6 {
        let r = gw.get("/x");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["service"], "alive");
    }
}

#[test]
fn upstream_status_codes_pass_through_untouched() {
    let up = echo("e");
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: r, path_prefix: /, upstream: u}}]"
    ));
    let r = gw.get("/x?status=503");
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json()["service"],
        "e",
        "the upstream's own body, not a gateway error"
    );
    assert_eq!(r.header("x-gateway"), Some("tollgate"));
}

#[test]
fn weighted_round_robin_splits_traffic_by_weight() {
    let a = echo("a");
    let b = echo("b");
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{a}\", {{address: \"{b}\", weight: 3}}]}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: u}}]"
    ));
    let n = 400;
    let b_hits = (0..n)
        .filter(|_| gw.get("/x").json()["service"] == "b")
        .count();
    let share = b_hits as f64 / n as f64;
    assert!(
        (share - 0.75).abs() < 0.05,
        "weight 3 of 4 should get ~75%, got {share}"
    );
}

#[test]
fn upstream_closing_without_answer_is_502_even_after_retries() {
    // Accepts, reads the request, closes without a response.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::Read;
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
        }
    });
    let gw = Gateway::start(&format!(
        "upstreams: {{u: {{targets: [\"{up}\"], retries: 2}}}}\nroutes: [{{name: r, path_prefix: /, upstream: u}}]"
    ));
    let r = gw.get("/x");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "bad_gateway");
}
