//! Idle upstream connections: kept for reuse for the upstream's `timeouts.idle`, then closed by
//! the gateway on its own, whether or not the backend gets another request (one that DNS
//! discovery dropped gets none). On both engines, and with either runtime layout.

mod support;
use support::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A raw keep-alive backend that records, per accepted connection, when its last response
/// went out and when the gateway closed the connection.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
}

#[derive(Clone, Copy, Default)]
struct Conn {
    answered: Option<Instant>,
    closed: Option<Instant>,
}

impl Recorder {
    fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let all = conns.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let i = {
                    let mut all = all.lock().unwrap();
                    all.push(Conn::default());
                    all.len() - 1
                };
                let all = all.clone();
                std::thread::spawn(move || serve(s, i, &all));
            }
        });
        Recorder { addr, conns }
    }

    fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }
}

fn serve(mut s: TcpStream, i: usize, all: &Mutex<Vec<Conn>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            all.lock().unwrap()[i].answered = Some(Instant::now());
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    all.lock().unwrap()[i].closed = Some(Instant::now());
}

const IDLE: Duration = Duration::from_millis(600);

fn gateway(up: &Recorder, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "{extra}upstreams: {{u: {{targets: [\"{}\"], timeouts: {{idle: {}ms}}}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: u}}]",
        up.addr,
        IDLE.as_millis()
    ))
}

/// One request, then no traffic at all: the backend sees its connection closed by the gateway
/// once it has been idle for `timeouts.idle` (not before, and not much later).
fn closed_after_idle(extra: &str) {
    let up = Recorder::start();
    let gw = gateway(&up, extra);
    let r = gw.get("/x");
    assert_eq!(r.status, 200, "{}", r.body);
    let margin = Duration::from_secs(2);
    assert!(
        eventually(IDLE + margin, || up
            .conns()
            .iter()
            .all(|c| c.closed.is_some())),
        "an idle upstream connection is still open {:?} after its last request",
        IDLE + margin
    );
    let conns = up.conns();
    assert_eq!(conns.len(), 1, "one request, one connection");
    let (answered, closed) = (conns[0].answered.unwrap(), conns[0].closed.unwrap());
    let idle = closed - answered;
    // Kept for reuse meanwhile (a little slack for the clocks of two processes).
    assert!(
        idle >= IDLE - Duration::from_millis(100),
        "closed after only {idle:?} idle (timeouts.idle is {IDLE:?})"
    );
    assert!(idle <= IDLE + margin, "closed after {idle:?} idle");
}

#[test]
fn an_idle_upstream_connection_is_closed_when_its_timeout_passes() {
    closed_after_idle("");
}

#[test]
fn an_idle_upstream_connection_is_closed_in_time_with_a_work_stealing_runtime() {
    closed_after_idle("work_stealing: true\n");
}

#[test]
fn a_connection_used_again_before_its_timeout_is_kept() {
    let up = Recorder::start();
    let gw = gateway(&up, "");
    let mut c = Client::connect(gw.addr);
    for _ in 0..3 {
        assert_eq!(c.get("/x", "").status, 200);
    }
    // The three requests rode one upstream connection (one client connection, one thread).
    assert_eq!(up.conns().len(), 1);
    assert!(eventually(IDLE + Duration::from_secs(2), || up
        .conns()
        .iter()
        .all(|c| c.closed.is_some())));
}

#[test]
fn the_idle_timeout_is_checked() {
    for bad in ["0s", "5ms", "2h"] {
        let (code, out) = check_config(&format!(
            "upstreams: {{u: {{targets: [\"127.0.0.1:1\"], timeouts: {{idle: {bad}}}}}}}\n\
             routes: [{{name: r, path_prefix: /, upstream: u}}]"
        ));
        assert_eq!(code, 1, "idle: {bad}\n{out}");
        assert!(
            out.contains("upstreams.u.timeouts.idle") && out.contains("between 10ms and 1h"),
            "idle: {bad}\n{out}"
        );
    }
}
