//! Response caching seen from a client: a real origin that counts what reaches it, and the
//! gateway's `X-Cache-Status`, `Age` and bodies. Each test fails without the `cache` feature
//! (the origin would see every request, and no response would say HIT).

mod support;
use std::io::Write;
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
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn serve(
    mut s: std::net::TcpStream,
    heads: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
) {
    let mut buf = Vec::new();
    while let Some(head) = next_head(&mut s, &mut buf) {
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

/// Sends `GET path` twice: the second answer.
fn again(gw: &Gateway, path: &str) -> Resp {
    gw.get(path);
    gw.get(path)
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

/// Sends `path` until it is answered with `want` (or fails after 5 s): time passing, polled.
fn until_status(gw: &Gateway, path: &str, want: &str) -> Resp {
    let mut last = None;
    let seen = eventually(Duration::from_secs(5), || {
        let r = gw.get(path);
        let ok = status(&r) == want;
        last = Some(r);
        ok
    });
    let last = last.unwrap();
    assert!(seen, "never {want}: {last:?}");
    last
}

#[test]
fn upstream_cache_control_decides_what_is_stored() {
    let (gw, o) = gateway("ttl: 60s");
    for (path, cc) in [
        ("/c/ns", "no-store"),
        ("/c/pv", "private"),
        ("/c/ma0", "max-age=0"),
    ] {
        let p = format!("{path}?cc={cc}");
        assert_eq!(status(&gw.get(&p)), "MISS");
        let again = gw.get(&p);
        assert_ne!(status(&again), "HIT", "{cc}: {again:?}");
    }
    assert_eq!(o.hits("/ns?"), 2);
    assert_eq!(o.hits("/pv?"), 2);
    assert_eq!(o.hits("/ma0?"), 2);
    // s-maxage (a shared cache's) wins over max-age.
    assert_eq!(status(&again(&gw, "/c/s?cc=max-age=0,s-maxage=60")), "HIT");
    // max-age over the route's ttl: stale after a second, fetched again (EXPIRED).
    assert_eq!(status(&again(&gw, "/c/short?cc=max-age=1")), "HIT");
    until_status(&gw, "/c/short?cc=max-age=1", "EXPIRED");
    assert!(o.hits("/short?") >= 2);
}

#[test]
fn no_cache_from_the_upstream_revalidates_every_time() {
    let (gw, o) = gateway("");
    let p = "/c/nc?cc=no-cache&etag=v1";
    assert_eq!(status(&gw.get(p)), "MISS");
    let r = gw.get(p);
    assert_eq!((r.status, status(&r)), (200, "REVALIDATED"), "{r:?}");
    assert!(r.body.starts_with("hit 1 "), "the stored body: {r:?}");
    assert!(
        o.last_head().contains("If-None-Match: \"v1\"")
            || o.last_head()
                .to_ascii_lowercase()
                .contains("if-none-match: \"v1\"")
    );
    assert_eq!(o.hits("/nc?"), 2);
}

#[test]
fn expires_and_ttl_give_freshness_when_cache_control_does_not() {
    let (gw, o) = gateway("ttl: 1s");
    assert_eq!(status(&again(&gw, "/c/fut?expires=future")), "HIT");
    assert_ne!(status(&again(&gw, "/c/past?expires=past")), "HIT");
    assert_eq!(o.hits("/past?"), 2);
    // Nothing said: the route's ttl (1 s), then fetched again.
    assert_eq!(status(&again(&gw, "/c/ttl")), "HIT");
    until_status(&gw, "/c/ttl", "EXPIRED");
}

#[test]
fn statuses_limit_what_is_stored() {
    let (gw, o) = gateway("");
    // 404 is heuristically cacheable (the default list), 500 is not.
    let r = again(&gw, "/c/nf?status=404");
    assert_eq!((r.status, status(&r)), (404, "HIT"));
    let r = again(&gw, "/c/err?status=500");
    assert_eq!((r.status, status(&r)), (500, "MISS"));
    assert_eq!(o.hits("/err?"), 2);
    let (gw, o) = gateway("statuses: [200]");
    assert_eq!(status(&again(&gw, "/c/nf?status=404")), "MISS");
    assert_eq!(o.hits("/nf?"), 2);
}

#[test]
fn head_is_served_from_the_get_entry_and_post_is_never_cached() {
    let (gw, o) = gateway("");
    let get = gw.get("/c/h");
    assert_eq!(status(&get), "MISS");
    let head = gw.send("HEAD", "/c/h", &[]);
    assert_eq!((head.status, status(&head)), (200, "HIT"), "{head:?}");
    assert!(head.body.is_empty());
    assert_eq!(o.hits("/h "), 1);
    for _ in 0..2 {
        let post = gw.send("POST", "/c/h", &[("Content-Length", "0")]);
        assert_eq!((post.status, status(&post)), (200, "BYPASS"), "{post:?}");
    }
    assert_eq!(o.hits("POST /h "), 2);
}

#[test]
fn set_cookie_responses_are_stored_only_when_allowed() {
    let (gw, o) = gateway("");
    let r = again(&gw, "/c/k?cookie");
    assert_eq!(status(&r), "MISS");
    assert_eq!(o.hits("/k?"), 2);
    let (gw, o) = gateway("store_set_cookie: true");
    assert_eq!(status(&again(&gw, "/c/k?cookie")), "HIT");
    assert_eq!(o.hits("/k?"), 1);
}

#[test]
fn each_vary_variant_is_its_own_entry() {
    let (gw, o) = gateway("");
    let p = "/c/v?vary=Accept-Language";
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    assert_eq!(status(&gw.send("GET", p, &en)), "MISS");
    let r = gw.send("GET", p, &fr);
    assert_eq!(status(&r), "MISS", "another variant");
    assert!(r.body.ends_with("lang=fr"), "{r:?}");
    let r = gw.send("GET", p, &en);
    assert_eq!(status(&r), "HIT");
    assert!(r.body.ends_with("lang=en"), "{r:?}");
    let r = gw.send("GET", p, &fr);
    assert_eq!(status(&r), "HIT");
    assert!(r.body.ends_with("lang=fr"), "{r:?}");
    assert_eq!(o.hits("/v?"), 2);
    // Vary: * is never stored.
    assert_eq!(status(&again(&gw, "/c/star?vary=*")), "MISS");
}

#[test]
fn the_key_holds_host_path_query_and_the_configured_parts() {
    let (gw, o) = gateway("key: [\"header:X-Tenant\"]");
    gw.get("/c/q?a=1");
    assert_eq!(status(&gw.get("/c/q?a=2")), "MISS", "another query");
    assert_eq!(status(&gw.get("/c/q?a=1")), "HIT");
    let other_host = gw.send("GET", "/c/q?a=1", &[("Host", "other.example")]);
    assert_eq!(status(&other_host), "MISS", "another Host");
    let t1 = gw.send("GET", "/c/q?a=1", &[("X-Tenant", "t1")]);
    assert_eq!(status(&t1), "MISS", "another X-Tenant");
    assert_eq!(
        status(&gw.send("GET", "/c/q?a=1", &[("X-Tenant", "t1")])),
        "HIT"
    );
    assert_eq!(o.hits("/q?"), 4);
}

#[test]
fn auth_routes_key_by_consumer_unless_shared_and_refusals_say_nothing() {
    let auth = "consumers:\n  alice: {api_keys: [\"alice-key-0123456789\"]}\n  bob: {api_keys: [\"bob-key-0123456789\"]}\n\
                auth: {keys: {type: api_key}}\n\
                rate_limits: {two: {requests: 2, per: 1m, key: consumer}}\n";
    let o = Origin::start();
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n{auth}\
         routes:\n\
         - {{name: own, path_prefix: /own, upstream: o, auth: [keys], cache: {{}}}}\n\
         - {{name: pub, path_prefix: /pub, upstream: o, auth: [keys], cache: {{shared: true}}}}\n\
         - {{name: lim, path_prefix: /lim, upstream: o, auth: [keys], rate_limit: two, cache: {{}}}}\n",
        o.addr
    ));
    let alice = [("X-Api-Key", "alice-key-0123456789")];
    let bob = [("X-Api-Key", "bob-key-0123456789")];
    assert_eq!(status(&gw.send("GET", "/own/x", &alice)), "MISS");
    assert_eq!(
        status(&gw.send("GET", "/own/x", &bob)),
        "MISS",
        "bob never gets alice's"
    );
    assert_eq!(status(&gw.send("GET", "/own/x", &alice)), "HIT");
    assert_eq!(o.hits("/x "), 2);
    assert_eq!(status(&gw.send("GET", "/pub/y", &alice)), "MISS");
    assert_eq!(status(&gw.send("GET", "/pub/y", &bob)), "HIT", "shared");
    // Refused before the cache step: no X-Cache-Status, never from the cache.
    let r = gw.get("/own/x");
    assert_eq!((r.status, r.header("x-cache-status")), (401, None), "{r:?}");
    let r = gw.get("/nowhere");
    assert_eq!((r.status, r.header("x-cache-status")), (404, None), "{r:?}");
    // A hit spends the caller's budget: the third is 429 though the answer is cached.
    assert_eq!(status(&gw.send("GET", "/lim/z", &alice)), "MISS");
    assert_eq!(status(&gw.send("GET", "/lim/z", &alice)), "HIT");
    let r = gw.send("GET", "/lim/z", &alice);
    assert_eq!((r.status, r.header("x-cache-status")), (429, None), "{r:?}");
}

#[test]
fn the_client_path_before_strip_and_rewrite_is_the_key() {
    // Two routes whose upstream paths are the same (`/c/same` and `/d/same` both go to
    // `/same`): each keeps its own entry, keyed by what the client asked for.
    let o = Origin::start();
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
         routes:\n\
         - {{name: c, path_prefix: /c, upstream: o, cache: {{}}}}\n\
         - {{name: d, path_prefix: /d, upstream: o, cache: {{}}}}\n",
        o.addr
    ));
    let c = gw.get("/c/same");
    let d = gw.get("/d/same");
    assert_eq!((status(&c), status(&d)), ("MISS", "MISS"));
    assert_eq!(o.hits("/same "), 2);
}

#[test]
fn a_stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let (gw, o) = gateway("");
    let p = "/c/rv?cc=max-age=1&etag=e1";
    assert_eq!(status(&gw.get(p)), "MISS");
    let r = until_status(&gw, p, "REVALIDATED");
    assert!(
        r.body.starts_with("hit 1 "),
        "the stored body, refreshed: {r:?}"
    );
    // Refreshed: fresh again for a second.
    assert_eq!(status(&gw.get(p)), "HIT");
    assert_eq!(o.hits("/rv?"), 2);
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_once_in_the_background() {
    let (gw, o) = gateway("stale_while_revalidate: 30s");
    let p = "/c/swr?cc=max-age=1&delay_ms=300";
    gw.get(p);
    // Once stale: the stale answer comes at once (no 300 ms upstream wait), and one
    // background request refreshes it.
    let started = std::time::Instant::now();
    let r = until_status(&gw, p, "UPDATING");
    assert!(r.body.starts_with("hit 1 "), "{r:?}");
    let _ = started;
    let t = std::time::Instant::now();
    let again = gw.get(p);
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "served at once: {again:?}"
    );
    assert!(eventually(Duration::from_secs(5), || o.hits("/swr?") == 2));
    let fresh = until_status(&gw, p, "HIT");
    assert!(fresh.body.starts_with("hit 2 "), "{fresh:?}");
    assert_eq!(o.hits("/swr?"), 2, "one background refresh");
}

#[test]
fn stale_if_error_serves_the_stale_entry_while_the_upstream_fails() {
    let (gw, o) = gateway("stale_if_error: 5m");
    let p = "/c/sie?cc=max-age=1";
    gw.get(p);
    o.failing.store(true, SeqCst);
    let r = until_status(&gw, p, "STALE");
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("hit 1 "), "{r:?}");
    // must-revalidate forbids it: the error goes through.
    let (gw, o) = gateway("stale_if_error: 5m");
    let p = "/c/mr?cc=max-age=1,must-revalidate";
    gw.get(p);
    o.failing.store(true, SeqCst);
    assert!(eventually(Duration::from_secs(5), || gw.get(p).status == 503));
}

/// The upstream's process gone (its connections refused): the stale entry is served, not the
/// gateway's 502.
#[test]
fn stale_if_error_serves_the_stale_entry_when_the_upstream_is_gone() {
    let b = Backend::start("gone");
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
         routes: [{{name: c, path_prefix: /c, upstream: o, cache: {{stale_if_error: 5m}}}}]\n",
        b.addr
    ));
    let p = "/c/gone?cc=max-age=1";
    let first = gw.get(p);
    assert_eq!((first.status, status(&first)), (200, "MISS"), "{first:?}");
    b.kill();
    let r = until_status(&gw, p, "STALE");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, first.body);
    assert_eq!(b.count_of("/gone"), 1);
}

#[test]
fn the_lock_lets_one_of_a_hundred_concurrent_misses_reach_the_upstream() {
    let (gw, o) = gateway("lock: 5s");
    let gw = Arc::new(gw);
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || gw.get("/c/storm?delay_ms=500"))
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(answers
        .iter()
        .all(|r| r.status == 200 && r.body.starts_with("hit 1 ")));
    assert_eq!(o.hits("/storm?"), 1);
    let m = gw.admin_get("/metrics").body;
    let waits: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_cache_lock_waits_total{route=\"c\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(waits > 0, "{m}");
}

#[test]
fn max_size_evicts_and_max_object_is_never_stored() {
    let o = Origin::start();
    let gw = Gateway::start(&format!(
        "caches: {{small: {{max_size: 10KiB}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
         routes:\n\
         - {{name: c, path_prefix: /c, upstream: o, cache: {{max_object: 4KiB}}}}\n",
        o.addr
    ));
    for i in 0..6 {
        assert_eq!(status(&gw.get(&format!("/c/e{i}?size=3000"))), "MISS");
    }
    // Pingora drops what the LRU evicts in a task of its own: polled.
    let metric = |name: &str| {
        let m = gw.admin_get("/metrics").body;
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{store=\"small\"}} ")))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || {
        metric("tollgate_cache_evictions_total") >= 3 && metric("tollgate_cache_bytes") <= 10 * 1024
    }));
    // The oldest went first; the newest is still there.
    assert_eq!(status(&gw.get("/c/e5?size=3000")), "HIT");
    assert_eq!(status(&gw.get("/c/e0?size=3000")), "MISS");
    // Larger than max_object: served, never stored.
    let r = again(&gw, "/c/big?size=5000");
    assert_eq!((r.status, r.body.len(), status(&r)), (200, 5000, "MISS"));
}

/// `POST /cache/purge` on the admin listener.
fn purge(gw: &Gateway, body: &str) -> Resp {
    request(
        gw.admin,
        &format!(
            "POST /cache/purge HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

#[test]
fn purge_removes_a_path_or_a_prefix_across_hosts_queries_and_variants() {
    let (gw, o) = gateway("");
    for p in ["/c/a?x=1", "/c/a?x=2", "/c/a/b", "/c/ab"] {
        gw.get(p);
    }
    gw.send("GET", "/c/a?x=1", &[("Host", "other.example")]);
    let r = purge(&gw, r#"{"route": "c", "path": "/c/a"}"#);
    assert_eq!(
        (r.status, r.json()["purged"].as_u64()),
        (200, Some(3)),
        "{r:?}"
    );
    assert_eq!(status(&gw.get("/c/a?x=1")), "MISS");
    assert_eq!(status(&gw.get("/c/a/b")), "HIT");
    let r = purge(&gw, r#"{"route": "c", "prefix": "/c/a"}"#);
    assert_eq!(
        r.json()["purged"].as_u64(),
        Some(2),
        "/c/a?x=1 and /c/a/b, not /c/ab"
    );
    assert_eq!(status(&gw.get("/c/ab")), "HIT");
    assert_eq!(status(&gw.get("/c/a/b")), "MISS");
    let r = purge(&gw, r#"{"route": "plain", "path": "/x"}"#);
    assert_eq!(r.status, 404);
    let r = purge(&gw, r#"{"route": "c"}"#);
    assert_eq!(r.status, 400);
    let _ = o;
}

#[test]
fn bad_cache_config_is_refused_with_key_paths() {
    let base = "upstreams: {o: {targets: [\"127.0.0.1:1\"]}}\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {store: nope}}]",
            "routes[0].cache.store",
            "no store \"nope\"",
        ),
        (
            "caches: {a: {max_size: 1MiB}, b: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {}}]",
            "routes[0].cache.store",
            "several stores",
        ),
        (
            "routes: [{name: r, path_prefix: /r, upstream: o, cache: {}}]",
            "routes[0].cache",
            "no store",
        ),
        ("caches: {a: {max_size: 0}}", "caches.a.max_size", "greater than 0"),
        ("caches: {a: {max_size: 2TiB}}", "caches.a.max_size", "larger than 1TiB"),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {ttl: 0s}}]",
            "routes[0].cache.ttl",
            "greater than 0",
        ),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {max_object: 2MiB}}]",
            "routes[0].cache.max_object",
            "larger than the store",
        ),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {methods: [GET, POST]}}]",
            "routes[0].cache.methods[1]",
            "only GET and HEAD",
        ),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {statuses: [99]}}]",
            "routes[0].cache.statuses[0]",
            "not a status",
        ),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {key: [cookie:x]}}]",
            "routes[0].cache.key[0]",
            "header:NAME or claim:NAME",
        ),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {key: [\"claim:sub\"]}}]",
            "routes[0].cache.key[0]",
            "needs a route with auth",
        ),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {shared: true}}]",
            "routes[0].cache.shared",
            "route with auth",
        ),
        (
            "caches: {a: {max_size: 1MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, cache: {tll: 1s}}]",
            "routes[0]",
            "unknown field `tll`",
        ),
    ];
    for (yaml, path, why) in cases {
        let (code, out) = check_config(&format!("{base}{yaml}\n"));
        assert_eq!(code, 1, "{yaml}: {out}");
        assert!(
            out.contains(path) && out.contains(why),
            "{yaml}: want {path}: {why} in {out}"
        );
    }
    let ok = "caches: {a: {max_size: 256MiB}}\nroutes: [{name: r, path_prefix: /r, upstream: o, \
              cache: {store: a, ttl: 60s, methods: [GET, HEAD], statuses: [200, 301, 404], \
              key: [\"header:Accept-Language\"], store_set_cookie: false, \
              honour_client_no_cache: false, stale_while_revalidate: 10s, stale_if_error: 5m, \
              lock: 2s, max_object: 8MiB}}]";
    let (code, out) = check_config(&format!("{base}{ok}\n"));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_client_no_cache_forces_a_revalidation_only_when_honoured() {
    let no_cache = [("Cache-Control", "no-cache")];
    let (gw, o) = gateway("");
    gw.get("/c/n?etag=a");
    assert_eq!(status(&gw.send("GET", "/c/n?etag=a", &no_cache)), "HIT");
    assert_eq!(o.hits("/n?"), 1);
    let (gw, o) = gateway("honour_client_no_cache: true");
    gw.get("/c/n?etag=a");
    let r = gw.send("GET", "/c/n?etag=a", &no_cache);
    assert_eq!(status(&r), "REVALIDATED", "{r:?}");
    assert_eq!(o.hits("/n?"), 2);
}

#[test]
fn a_range_request_is_served_from_the_full_cached_object() {
    let (gw, o) = gateway("");
    // A miss fetches the whole object (Range is not forwarded) and answers the range from it.
    let r = gw.send("GET", "/c/r?size=100", &[("Range", "bytes=0-9")]);
    assert_eq!(
        (r.status, r.body.len(), status(&r)),
        (206, 10, "MISS"),
        "{r:?}"
    );
    assert!(!o.last_head().to_ascii_lowercase().contains("range:"));
    let r = gw.send("GET", "/c/r?size=100", &[("Range", "bytes=90-")]);
    assert_eq!(
        (r.status, r.body.len(), status(&r)),
        (206, 10, "HIT"),
        "{r:?}"
    );
    assert_eq!(r.header("content-range"), Some("bytes 90-99/100"));
    assert_eq!(o.hits("/r?"), 1);
}

#[test]
fn the_cli_purges_through_the_admin_listener() {
    let (gw, _o) = gateway("");
    assert_eq!(status(&again(&gw, "/c/cli")), "HIT");
    let out = std::process::Command::new(bin())
        .args(["cache", "purge", "-c"])
        .arg(gw.conf_path())
        .args(["--route", "c", "--path", "/c/cli"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "{\"purged\": 1}");
    assert_eq!(status(&gw.get("/c/cli")), "MISS");
}

#[test]
fn explain_says_whether_a_request_is_cached_and_its_key() {
    let (gw, _o) = gateway("key: [\"header:X-Tenant\"]");
    let explain = |method: &str| {
        let out = std::process::Command::new(bin())
            .args(["explain", "-c"])
            .arg(gw.conf_path())
            .args([method, "http://shop.example/c/a?x=1", "-H", "X-Tenant: t1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = explain("GET");
    assert!(out.contains("cache:    store mem"), "{out}");
    assert!(out.contains("cached (from"), "{out}");
    assert!(out.contains("host=12:shop.example"), "{out}");
    assert!(out.contains("target=8:/c/a?x=1"), "{out}");
    assert!(out.contains("header:x-tenant=2:t1"), "{out}");
    let out = explain("POST");
    assert!(out.contains("not cached: POST"), "{out}");
}

#[test]
fn a_hit_reads_and_discards_the_request_body_before_the_next_request() {
    let (gw, o) = gateway("");
    gw.get("/c/body");
    // A GET with a body that looks like a request, answered from the cache: the body is not
    // read as the connection's next request (CVE-2025-4366 class).
    let smuggled = "GET /c/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut c = Client::connect(gw.addr);
    c.send(
        format!(
            "GET /c/body HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    );
    let r = c.response(false);
    assert_eq!((r.status, status(&r)), (200, "HIT"), "{r:?}");
    let next = c.get("/c/body", "");
    assert_eq!((next.status, status(&next)), (200, "HIT"), "{next:?}");
    assert_eq!(o.hits("/smuggled"), 0);
}

#[test]
fn a_head_miss_stores_the_get_object_and_a_failed_miss_says_miss() {
    let (gw, o) = gateway("");
    let head = gw.send("HEAD", "/c/hm", &[]);
    assert_eq!(
        (head.status, status(&head), head.body.as_str()),
        (200, "MISS", "")
    );
    assert!(
        o.last_head().starts_with("GET /hm "),
        "HEAD fetched as GET: {}",
        o.last_head()
    );
    let get = gw.get("/c/hm");
    assert_eq!((get.status, status(&get)), (200, "HIT"), "{get:?}");
    assert!(get.body.starts_with("hit 1 "), "{get:?}");
    // The upstream is down: the gateway's 502 still says the cache step missed.
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
         routes: [{{name: c, path_prefix: /c, upstream: o, cache: {{}}}}]\n",
        closed_port()
    ));
    let r = gw.get("/c/down");
    assert_eq!((r.status, status(&r)), (502, "MISS"), "{r:?}");
}

#[test]
fn a_split_route_keys_each_branch_apart() {
    let (a, b) = (Origin::start(), Origin::start());
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         upstreams: {{a: {{targets: [\"{}\"]}}, b: {{targets: [\"{}\"]}}}}\n\
         routes:\n\
         - name: s\n  path_prefix: /s\n  cache: {{}}\n  sticky: header:X-User\n  \
         split: [{{upstream: a, weight: 50}}, {{upstream: b, weight: 50}}]\n",
        a.addr, b.addr
    ));
    // Users spread over both branches; each branch's answer is cached apart, so each user
    // gets the answer of its own branch.
    for user in 0..20 {
        let h = [("X-User", format!("u{user}"))];
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let first = gw.send("GET", "/s/x", &h);
        let again = gw.send("GET", "/s/x", &h);
        assert_eq!(status(&again), "HIT", "{again:?}");
        assert_eq!(first.body, again.body);
    }
    assert_eq!((a.hits("/x "), b.hits("/x ")), (1, 1));
}

#[test]
fn the_access_log_has_a_line_for_every_cached_answer() {
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("access.log");
    let extra = format!("access_log: {{format: json, path: \"{}\"}}", path.display());
    let (gw, o) = gateway_with("", &extra);
    for _ in 0..3 {
        assert_eq!(gw.get("/c/logged").status, 200);
    }
    assert_eq!(o.hits("/logged "), 1);
    let mut entries = Vec::new();
    let written = eventually(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        entries = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["path"] == "/c/logged")
            .collect();
        entries.len() == 3
    });
    assert!(written, "{entries:?}");
    assert!(entries
        .iter()
        .all(|e| e["status"] == 200 && e["route"] == "c"));
}

#[test]
fn a_background_refresh_spends_no_rate_limit_budget() {
    let o = Origin::start();
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
         rate_limits: {{three: {{requests: 3, per: 1m}}}}\n\
         routes: [{{name: c, path_prefix: /c, upstream: o, rate_limit: three, \
         cache: {{stale_while_revalidate: 1m}}}}]\n",
        o.addr
    ));
    // Stored already stale (max-age=0): each later request is answered stale at once and
    // starts one background refresh.
    let p = "/c/bg?cc=max-age=0";
    assert_eq!(status(&gw.get(p)), "MISS");
    assert_eq!(status(&gw.get(p)), "UPDATING");
    assert!(eventually(Duration::from_secs(5), || o.hits("/bg?") == 2));
    // Two of three spent by the caller; the refresh took none.
    let r = gw.get(p);
    assert_eq!((r.status, status(&r)), (200, "UPDATING"), "{r:?}");
    let r = gw.get(p);
    assert_eq!(r.status, 429, "{r:?}");
}

#[test]
fn http2_clients_share_the_cache_with_http1_clients() {
    let o = Origin::start();
    let (gw, h2c) = Gateway::with_listener(
        |a| format!("{{address: \"{a}\", h2c: true}}"),
        &format!(
            "caches: {{mem: {{max_size: 1MiB}}}}\n\
             upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
             routes: [{{name: c, path_prefix: /c, upstream: o, cache: {{}}}}]\n",
            o.addr
        ),
    );
    let h2 = |path: &'static str| {
        runtime()
            .block_on(async {
                let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
                h2client::get(tcp, &format!("http://gw{path}")).await
            })
            .unwrap()
    };
    let first = h2("/c/two");
    assert_eq!(first.headers.get("x-cache-status").unwrap(), "MISS");
    let second = h2("/c/two");
    assert_eq!(second.headers.get("x-cache-status").unwrap(), "HIT");
    assert!(second.headers.contains_key("age"));
    assert_eq!(second.body, first.body);
    let h1 = gw.get("/c/two");
    assert_eq!(
        (status(&h1), h1.body.as_str()),
        ("HIT", first.body.as_str())
    );
    assert_eq!(o.hits("/two "), 1);
}

#[test]
fn a_claim_in_the_key_splits_entries_by_the_verified_token() {
    const SECRET: &str = "cache-claim-test-hmac-secret-0123456789";
    let o = Origin::start();
    let gw = Gateway::start(&format!(
        "caches: {{mem: {{max_size: 1MiB}}}}\n\
         auth: {{tokens: {{type: jwt, algorithms: [HS256], secret: \"{SECRET}\"}}}}\n\
         upstreams: {{o: {{targets: [\"{}\"]}}}}\n\
         routes:\n\
         - {{name: t, path_prefix: /t, upstream: o, auth: [tokens],\n\
         \x20   cache: {{shared: true, key: [\"claim:tenant\"]}}}}\n",
        o.addr
    ));
    let token = |sub: &str, tenant: &str| {
        let claims = serde_json::json!({"sub": sub, "tenant": tenant, "exp": 4_102_444_800u64});
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        format!("Bearer {t}")
    };
    let get = |sub: &str, tenant: &str| {
        let auth = token(sub, tenant);
        // `public`: a response to a request with `Authorization` shared between callers must
        // say so (RFC 9111 §3.5).
        let r = gw.send("GET", "/t/report?cc=public", &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{r:?}");
        status(&r).to_owned()
    };
    assert_eq!(get("alice", "acme"), "MISS");
    // Another caller of the same tenant shares the entry (`shared`); another tenant does not.
    assert_eq!(get("bob", "acme"), "HIT");
    assert_eq!(get("carol", "globex"), "MISS");
    assert_eq!(get("carol", "globex"), "HIT");
    assert_eq!(o.hits("/report?"), 2);
}
