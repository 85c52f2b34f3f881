//! The floor under tollgate: Pingora 0.9.1's proxy with hooks that do nothing but name the
//! upstream, tuned as tollgate tunes it (one thread, no work stealing, the same upstream pool
//! and peer timeouts, the same client read buffer, the same allocator). The load harness and
//! `benches/instructions.sh` measure it beside nginx and tollgate, so the part of tollgate's
//! cost that is Pingora's own HTTP engine, and the part that is tollgate's, can be told apart
//! in one run.
//!
//!     cargo build --release --example bare_pingora
//!     target/release/examples/bare_pingora 127.0.0.1:8085 127.0.0.1:8081
//!
//! With `--own-upstream` (the hybrid), Pingora still serves the client, but `request_filter`
//! relays each request through tollgate's own upstream client (`src/fastpath/h1/client.rs`, the one
//! tollgate's fast path uses) and answers through the session: Pingora's client side with
//! tollgate's upstream leg, and no policy. Bodiless requests only.
//!
//!     target/release/examples/bare_pingora 127.0.0.1:8085 127.0.0.1:8081 --own-upstream
//!
//! Not a product: no routing, no headers, no error contract; it answers Pingora's own 502
//! when the upstream is down.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora::services::listening::Service;
use pingora::upstreams::peer::HttpPeer;
use tollgate::fastpath::h1::client::{self as h1, Conn};

// tollgate's allocator (src/main.rs), so the floor is not glibc malloc's.
#[global_allocator]
static GLOBAL: tollgate::alloc::Mimalloc = tollgate::alloc::Mimalloc;

struct Bare {
    /// The upstream as tollgate's `Upstream::peer` makes it: its timeouts and idle timeout.
    peer: HttpPeer,
    /// `--own-upstream`: relay with tollgate's own upstream client, with these timeouts.
    own: Option<Own>,
}

struct Own {
    addr: SocketAddr,
    timeouts: tollgate::upstream::Timeouts,
    pool: usize,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> pingora::Result<bool> {
        let Some(own) = &self.own else {
            return Ok(false);
        };
        own.relay(session).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

impl Own {
    /// The request head as received (hooks that do nothing change nothing), then the response
    /// through tollgate's `fastpath::h1::client`, as its fast path relays it, without the policy.
    /// Bodiless requests only; a failure is Pingora's 502.
    async fn relay(&self, session: &mut Session) -> pingora::Result<()> {
        let req = session.req_header();
        let kept = req
            .headers
            .iter()
            .filter(|(n, _)| *n != http::header::CONNECTION);
        let head = h1::request_head(&req.method, req.raw_path(), kept, req.headers.len());
        let head_request = req.method == http::Method::HEAD;
        let mut conn = Conn::get(self.addr, &self.timeouts).await?;
        conn.send(&head).await?;
        let (resp, mut body) = conn.response(head_request, |_| false).await?;
        session
            .write_response_header(Box::new(resp), body.is_done())
            .await?;
        while !body.is_done() {
            let piece = conn.body(&mut body).await?;
            session.write_response_body(piece, body.is_done()).await?;
        }
        conn.release(self.pool);
        Ok(())
    }
}

/// tollgate's client read side (no buffer under Pingora's); writes keep Pingora's one-segment
/// buffer, which tollgate replaces by its connection wrapper's (`conn::Guarded`), not had here.
fn buffers() -> L4BufferSettings {
    L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), own) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR [--own-upstream]");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bare_pingora: upstream {upstream:?}: {e}");
        std::process::exit(2);
    });

    // Pingora's settings exactly as tollgate's config loader makes them (its defaults for the
    // pool, work stealing, grace periods), from the load harness's `threads: 1`, and the
    // upstream peer as tollgate builds it (connect, read and write timeouts, which Pingora
    // times on every read and write); the route only satisfies the loader.
    let loaded = tollgate::gateway::load_str(&format!(
        "threads: 1\nupstreams: {{u: {{targets: [\"{upstream}\"]}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: u}}]\n"
    ))
    .unwrap_or_else(|e| {
        eprintln!("bare_pingora: {e:?}");
        std::process::exit(2);
    });
    let peer = loaded.gateway.upstreams[0].peer(upstream);
    let pool = loaded.server.upstream_keepalive_pool_size;
    let mut server = Server::new_with_opt_and_conf(None, loaded.server);
    server.bootstrap();
    let own = match own.as_deref() {
        None => None,
        Some("--own-upstream") => Some(Own {
            addr: upstream,
            timeouts: loaded.gateway.upstreams[0].timeouts,
            pool,
        }),
        Some(other) => {
            eprintln!("bare_pingora: unknown option {other:?}");
            std::process::exit(2);
        }
    };
    let app = pingora::proxy::http_proxy(&server.configuration, Bare { peer, own });
    let mut service = Service::new("bare pingora".to_owned(), app);
    // tollgate's client sockets: no 64 KiB read buffer per connection.
    service.add_listener(ListenerConfig::tcp(&listen).l4_buffer(buffers()));
    server.add_service(service);
    server.run_forever();
}
