//! What an idle keep-alive client connection holds in tollgate, beyond its socket: the sizes of
//! the futures Pingora keeps alive per connection while it waits for the next request head.
//! Backs the memory numbers of the load harness (`benches/load/run.sh`, part `memory`).
//!
//!     cargo run --release --example conn_memory
//!
//! Pingora's HTTP/1 loop (`HttpServerApp::process_new`) allocates the per-request future
//! (`process_new_http`, boxed by async-trait) before it reads a request head, so every idle
//! connection would carry it, plus that loop's own future and a 4 KiB head buffer. tollgate's
//! `Gate` runs the HTTP/1 loop itself (`src/conn/keepalive.rs`), so the per-request futures
//! exist while a request does. Behind Pingora's listener (TLS, h2c) an idle connection still
//! keeps that listener's task (2,560 bytes, sized for a TLS handshake), Pingora's boxed stream
//! and socket digest and the gate's future; a cleartext listener is tollgate's own
//! (`src/conn/accept.rs`), whose idle connection is one task holding the cleartext future
//! below plus tokio's task header and its socket's registration (256 bytes) for its first
//! second idle, and after that only its entry in its service's table of idle sockets
//! (`src/conn/park.rs`, the last line). Heap per idle connection, attributed with
//! `benches/load/idle_rss.sh` under heaptrack: 4,480 bytes behind Pingora's listener, 1,280 on
//! the own one before its wait was slimmed; parked, the entry and a 24-byte deadline.

use std::sync::Arc;

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4;
use pingora::protocols::Stream;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let loaded = tollgate::gateway::load_str(
            "upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\nroutes: [{name: r, path_prefix: /, upstream: u}]\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let gw = Arc::new(loaded.gateway);
        let conf = Arc::new(loaded.server);
        let obs = Arc::new(tollgate::observe::Observe {
            metrics: tollgate::observe::metrics::Metrics::with_layout(
                tollgate::observe::metrics::Layout::of(gw.router.routes(), &gw.rate_limits),
            ),
            access_log: Arc::new(tollgate::observe::access_log::AccessLog::new(gw.access_log.clone())),
            refusals: Arc::new(tollgate::observe::refusals::Refusals::new(0)),
        });
        let proxy = || pingora::proxy::http_proxy(&conf, tollgate::proxy::Tollgate::new(gw.clone(), obs.clone(), &conf));
        let app = Arc::new(proxy());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = |c| -> Stream { Box::new(L4::from(c)) };
        let (_tx, shutdown) = tokio::sync::watch::channel(false);

        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let session = ServerSession::new_http1(stream(c));
        println!("ServerSession (HTTP/1):                {:>6} bytes", std::mem::size_of_val(&session));
        let per_request = HttpServerApp::process_new_http(&app, session, &shutdown);
        println!("process_new_http future (per request): {:>6} bytes", std::mem::size_of_val(&*per_request));
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let per_conn = app.process_new(stream(c), &shutdown);
        println!("Pingora's process_new future:          {:>6} bytes", std::mem::size_of_val(&*per_conn));
        drop(per_conn);
        let guards = tollgate::conn::Guards::new(tollgate::conn::ConnLimits {
            head_timeout: std::time::Duration::from_secs(10),
            keepalive_timeout: std::time::Duration::from_secs(60),
            max_connections_per_ip: None,
        });
        let gate = Arc::new(tollgate::conn::Gate::new(proxy(), &guards));
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let idle = gate.process_new(stream(c), &shutdown);
        println!("tollgate's Gate::process_new future:   {:>6} bytes (an idle TLS connection, beside Pingora's task and stream)", std::mem::size_of_val(&*idle));
        drop(idle);
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let plain = tollgate::conn::plain_connection_future_size(tollgate::conn::Gate::new(proxy(), &guards), c, shutdown.clone());
        println!("cleartext connection's task future:    {:>6} bytes (what a cleartext connection holds in its first second idle, beside tokio's task header and socket registration)", plain);
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        println!("  of which: tokio TcpStream {} B, Sleep {} B, readable() {} B, watch changed() {} B, HttpPersistentSettings {} B",
            std::mem::size_of_val(&c),
            std::mem::size_of_val(&tokio::time::sleep(std::time::Duration::from_secs(1))),
            std::mem::size_of_val(&c.readable()),
            std::mem::size_of_val(&shutdown.clone().changed()),
            std::mem::size_of::<pingora::apps::HttpPersistentSettings>());
        let own = Arc::new(tollgate::proxy::Tollgate::new(gw.clone(), obs.clone(), &conf));
        let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut s = stream(c);
        let serve = own.serve(&mut s, bytes::BytesMut::new(), false);
        println!("own codec's per-request future:        {:>6} bytes (boxed per request, written into its box as it is made)", std::mem::size_of_val(&serve));
        drop(serve);
        let who = tollgate::policy::limit::Caller { client_ip: None, identity: None };
        let h = http::HeaderMap::new();
        let check = gw.rate_limits.check(&[], "r", who, &h);
        println!("  of which Limits::check:              {:>6} bytes", std::mem::size_of_val(&check));
        drop(check);
        println!("cleartext connection idle > 1 s:       {:>6} bytes (its entry in the listener's table of idle sockets: no task, no registration)", tollgate::conn::parked_connection_size());
    });
}
