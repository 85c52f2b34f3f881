//! What an idle keep-alive client connection holds in tollgate, beyond its socket: the sizes of
//! the futures Pingora keeps alive per connection while it waits for the next request head.
//! Backs the memory numbers of the load harness (`benches/load/run.sh`, part `memory`).
//!
//!     cargo run --release --example conn_memory
//!
//! Pingora's HTTP/1 loop (`HttpServerApp::process_new`) allocates the per-request future
//! (`process_new_http`, boxed by async-trait) before it reads a request head, so every idle
//! connection carries it, plus the connection task's own future and a 4 KiB head buffer.

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
        let loaded = tollgate::config::load_str(
            "upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\nroutes: [{name: r, path_prefix: /, upstream: u}]\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let gw = Arc::new(loaded.gateway);
        let conf = Arc::new(loaded.server);
        let obs = Arc::new(tollgate::observe::Observe {
            metrics: tollgate::observe::metrics::Metrics::with_layout(
                tollgate::observe::metrics::Layout::of(&gw),
            ),
            access_log: tollgate::observe::access_log::AccessLog::new(gw.access_log.clone()),
        });
        let app = Arc::new(pingora::proxy::http_proxy(
            &conf,
            tollgate::proxy::Tollgate::new(gw.clone(), obs),
        ));
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
        println!("process_new future (per connection):   {:>6} bytes", std::mem::size_of_val(&*per_conn));
    });
}
