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
//! relays each request itself over a pool of its own (tokio streams, no idle-watch task, no
//! Pingora client codec) and answers through the session: what keeping Pingora's client side
//! and replacing only its upstream leg would cost. That mode relays bodiless requests and
//! `Content-Length` responses only, and answers 502 for anything else.
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
use tokio::net::TcpStream;

// tollgate's allocator (src/main.rs), so the floor is not glibc malloc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    /// The upstream as tollgate's `Upstream::peer` makes it: its timeouts and idle timeout.
    peer: HttpPeer,
    /// `--own-upstream`: idle upstream connections of the hybrid's own pool (one thread, so
    /// the lock is never contended).
    own: Option<parking_lot::Mutex<Vec<TcpStream>>>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> pingora::Result<bool> {
        let Some(pool) = &self.own else {
            return Ok(false);
        };
        if let Err(e) = hybrid::relay(session, pool, &self.peer).await {
            let _ = session.respond_error(502).await;
            return Err(pingora::Error::because(
                pingora::ErrorType::ReadError,
                "own upstream leg",
                e,
            ));
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

/// The hybrid's upstream leg.
mod hybrid {
    use std::io;
    use std::time::Duration;

    use bytes::{Buf, BytesMut};
    use pingora::http::ResponseHeader;
    use pingora::proxy::Session;
    use pingora::upstreams::peer::{HttpPeer, Peer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::timeout;

    const HEAD: usize = 4096;
    const HOP: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ];

    fn invalid() -> io::Error {
        io::ErrorKind::InvalidData.into()
    }

    pub async fn relay(
        session: &mut Session,
        pool: &parking_lot::Mutex<Vec<TcpStream>>,
        peer: &HttpPeer,
    ) -> io::Result<()> {
        let o = &peer.options;
        let (read, write) = (
            o.read_timeout.unwrap_or(Duration::MAX),
            o.write_timeout.unwrap_or(Duration::MAX),
        );
        // The request head, written anew without its hop-by-hop headers.
        let req = session.req_header();
        let mut out = Vec::with_capacity(HEAD);
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.raw_path());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in req.headers.iter() {
            if HOP.contains(&name.as_str()) {
                continue;
            }
            if name == http::header::CONTENT_LENGTH && value.as_bytes() != b"0" {
                return Err(invalid()); // bodiless requests only
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");

        let pooled = {
            let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
            let mut idle = pool.lock();
            loop {
                match idle.pop() {
                    Some(up) if up.poll_read_ready(&mut cx).is_pending() => break Some(up),
                    Some(_) => continue,
                    None => break None,
                }
            }
        };
        let mut up = match pooled {
            Some(up) => up,
            None => {
                let connect = o.connection_timeout.unwrap_or(Duration::MAX);
                let addr = *peer.address().as_inet().ok_or_else(invalid)?;
                let up = timeout(connect, TcpStream::connect(addr)).await??;
                up.set_nodelay(true)?;
                up
            }
        };
        timeout(write, up.write_all(&out)).await??;

        // The response head, then a Content-Length body.
        let mut buf = BytesMut::with_capacity(HEAD);
        let (resp, len, keep) = loop {
            if timeout(read, up.read_buf(&mut buf)).await?? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&buf).map_err(|_| invalid())? {
                httparse::Status::Complete(n) => {
                    let code = parsed.code.ok_or_else(invalid)?;
                    let mut resp = ResponseHeader::build(code, Some(parsed.headers.len()))
                        .map_err(|_| invalid())?;
                    let (mut len, mut keep) = (None, parsed.version == Some(1));
                    for h in parsed.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value).map_err(|_| invalid())?;
                            len = Some(v.parse::<usize>().map_err(|_| invalid())?);
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            keep &= !h.value.eq_ignore_ascii_case(b"close");
                            continue;
                        } else if HOP.iter().any(|hop| h.name.eq_ignore_ascii_case(hop)) {
                            return Err(invalid()); // chunked, upgrades: not here
                        }
                        let value =
                            http::HeaderValue::from_bytes(h.value).map_err(|_| invalid())?;
                        resp.append_header(h.name.to_owned(), value)
                            .map_err(|_| invalid())?;
                    }
                    buf.advance(n);
                    break (resp, len.ok_or_else(invalid)?, keep);
                }
                httparse::Status::Partial if buf.len() < 1 << 20 => buf.reserve(HEAD),
                httparse::Status::Partial => return Err(invalid()),
            }
        };
        while buf.len() < len {
            buf.reserve(len - buf.len());
            if timeout(read, up.read_buf(&mut buf)).await?? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        if buf.len() > len {
            return Err(invalid());
        }
        if keep {
            pool.lock().push(up);
        }
        let to_client = |e: Box<pingora::Error>| io::Error::other(e.to_string());
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(to_client)?;
        session
            .write_response_body(Some(buf.freeze()), true)
            .await
            .map_err(to_client)
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
    let loaded = tollgate::config::load_str(&format!(
        "threads: 1\nupstreams: {{u: {{targets: [\"{upstream}\"]}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: u}}]\n"
    ))
    .unwrap_or_else(|e| {
        eprintln!("bare_pingora: {e:?}");
        std::process::exit(2);
    });
    let peer = loaded.gateway.upstreams[0].peer(upstream);
    let mut server = Server::new_with_opt_and_conf(None, loaded.server);
    server.bootstrap();
    let own = match own.as_deref() {
        None => None,
        Some("--own-upstream") => Some(parking_lot::Mutex::new(Vec::new())),
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
