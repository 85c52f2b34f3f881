//! Response caching seen from a client: a real origin that counts what reaches it, and the
//! gateway's `X-Cache-Status`, `Age` and bodies. Each test fails without the `cache` feature
//! (the origin would see every request, and no response would say HIT).

mod support;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// An origin that counts requests and answers by query: `cc=` Cache-Control, `vary=` Vary,
/// `cookie` a Set-Cookie, `expires=past|future`, `status=N`, `etag=V` (a matching
/// `If-None-Match` gets 304), `delay_ms=N`, `size=N` a body of N bytes. The body is
/// `hit N path` (N: this origin's request count) unless `size`. `failing` makes it answer 503.
struct Origin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

impl Origin {
    fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let o = Origin {
            addr: l.local_addr().unwrap(),
            heads: Default::default(),
            count: Default::default(),
            failing: Default::default(),
        };
        let (heads, count, failing) = (o.heads.clone(), o.count.clone(), o.failing.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (heads, count, failing) = (heads.clone(), count.clone(), failing.clone());
                std::thread::spawn(move || serve(s, heads, count, failing));
            }
        });
        o
    }

    /// Requests whose request line contains `needle` (the path as forwarded: `/c` stripped).
    fn hits(&self, needle: &str) -> usize {
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .filter(|h| h.lines().next().is_some_and(|l| l.contains(needle)))
            .count()
    }

    fn last_head(&self) -> String {
        self.heads.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

fn serve(
    mut s: std::net::TcpStream,
    heads: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let n = count.fetch_add(1, SeqCst) + 1;
        heads.lock().unwrap().push(head.clone());
        let line = head.lines().next().unwrap_or("").to_owned();
        let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let q = |k: &str| {
            query.split('&').find_map(|kv| {
                let (a, b) = kv.split_once('=').unwrap_or((kv, ""));
                (a == k).then(|| b.replace("%20", " ").replace("%2C", ","))
            })
        };
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        if let Some(ms) = q("delay_ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut status: u16 = q("status").and_then(|v| v.parse().ok()).unwrap_or(200);
        if failing.load(SeqCst) {
            status = 503;
        }
        let mut extra = String::new();
        if let Some(cc) = q("cc") {
            extra += &format!("Cache-Control: {cc}\r\n");
        }
        if let Some(v) = q("vary") {
            extra += &format!("Vary: {v}\r\n");
        }
        if q("cookie").is_some() {
            extra += "Set-Cookie: session=s3cret\r\n";
        }
        match q("expires").as_deref() {
            Some("past") => extra += "Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\n",
            Some("future") => extra += "Expires: Fri, 01 Jan 2100 00:00:00 GMT\r\n",
            _ => {}
        }
        if let Some(tag) = q("etag") {
            extra += &format!("ETag: \"{tag}\"\r\n");
            if status == 200 && header("if-none-match").as_deref() == Some(&format!("\"{tag}\"")) {
                status = 304;
            }
        }
        let lang = header("accept-language").unwrap_or_default();
        let body = match q("size").and_then(|v| v.parse::<usize>().ok()) {
            Some(size) => "x".repeat(size),
            None => format!("hit {n} {path} lang={lang}"),
        };
        let body = if status == 304 { String::new() } else { body };
        let length = match status {
            304 => String::new(),
            _ => format!("Content-Length: {}\r\n", body.len()),
        };
        let head_only = line.starts_with("HEAD ");
        let answer = format!(
            "HTTP/1.1 {status} X\r\n{length}{extra}\r\n{}",
            if head_only { "" } else { &body }
        );
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A gateway with one caching route `/c` (`cache` its flow-mapping keys) in front of a fresh
/// origin, and `/plain` without a cache.
fn gateway(cache: &str) -> (Gateway, Origin) {
    gateway_with(cache, "")
}

fn gateway_with(cache: &str, extra: &str) -> (Gateway, Origin) {
    let o = Origin::start();
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
         {extra}\n\
         routes:\n\
         - {{name: c, path_prefix: /c, upstream: o, cache: {{{cache}}}}}\n\
         - {{name: plain, path_prefix: /plain, upstream: o}}\n",
        o.addr
    ));
    (gw, o)
}

fn status(r: &Resp) -> &str {
    r.header("x-cache-status").unwrap_or("-")
}

#[test]
fn a_miss_then_hits_with_age_and_one_upstream_request() {
    let (gw, o) = gateway("");
    let first = gw.get("/c/a");
    assert_eq!((first.status, status(&first)), (200, "MISS"), "{first:?}");
    assert!(first.header("age").is_none(), "{first:?}");
    let second = gw.get("/c/a");
    assert_eq!((second.status, status(&second)), (200, "HIT"), "{second:?}");
    assert!(second.header("age").is_some(), "{second:?}");
    assert_eq!(second.body, first.body);
    assert_eq!(o.hits("/a "), 1);
    // The gateway's own headers are per response, not stored.
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
    // A route without a cache says nothing and is never served from one.
    let p = gw.get("/plain/p");
    assert!(p.header("x-cache-status").is_none(), "{p:?}");
    gw.get("/plain/p");
    assert_eq!(o.hits("/p "), 2);
    // Metrics and the access log see the hit.
    let m = gw.admin_get("/metrics").body;
    assert!(
        m.contains("tollgate_requests_total{route=\"c\",method=\"GET\",status=\"2xx\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_cache_requests_total{route=\"c\",status=\"HIT\"} 1"),
        "{m}"
    );
}
