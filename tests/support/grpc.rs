//! gRPC on the wire, with the `h2` crate: an upstream that speaks only HTTP/2 with prior
//! knowledge (h2c), as gRPC servers behind a gateway usually do, and an h2c client.
//!
//! The upstream answers by path:
//! - `…/Echo`: a unary method. It reads the length-prefixed request message and answers
//!   `echo:` + the message, then the trailers `grpc-status: 0`.
//! - `…/Missing`: headers, no message, then the trailers `grpc-status: 5` (NOT_FOUND) with a
//!   percent-encoded `grpc-message`.
//! - `…/Stall`: the response headers, then nothing until [`GrpcUpstream::release`] (a backend
//!   that stops answering mid-call), then the trailers `grpc-status: 0`.
//! - `…/Reset`: the response headers, then RST_STREAM (INTERNAL_ERROR): a backend that fails
//!   mid-call.
//! - `…/hold`: not gRPC; counted as open and held until [`GrpcUpstream::release`], so a test
//!   can keep several streams in flight at once.
//! - anything else: a plain HTTP answer `h2 METHOD PATH BODY-LENGTH`.
//!
//! It counts TCP connections, so a test sees whether concurrent requests shared one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::runtime;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    /// `:authority`.
    pub authority: Option<String>,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    conns: AtomicUsize,
    open: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A running h2c upstream.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    release: watch::Sender<bool>,
}

impl GrpcUpstream {
    pub fn start() -> GrpcUpstream {
        let listener = runtime()
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the gRPC upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (release, released) = watch::channel(false);
        let st = state.clone();
        runtime().spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                st.conns.fetch_add(1, SeqCst);
                tokio::spawn(serve(sock, st.clone(), released.clone()));
            }
        });
        GrpcUpstream {
            addr,
            state,
            release,
        }
    }

    /// TCP connections accepted so far.
    pub fn conns(&self) -> usize {
        self.state.conns.load(SeqCst)
    }

    /// `…/hold` requests being held right now.
    pub fn open(&self) -> usize {
        self.state.open.load(SeqCst)
    }

    /// Answer every held request, and the ones to come.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn serve(sock: TcpStream, st: Arc<State>, released: watch::Receiver<bool>) {
    let Ok(mut conn) = h2::server::handshake(sock).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(handle(req, respond, st.clone(), released.clone()));
    }
}

async fn read_all(body: &mut RecvStream) -> Vec<u8> {
    let mut data = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    data
}

/// A gRPC message: a zero compression flag, the 4-byte big-endian length, the bytes.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

/// The messages in a length-prefixed body (a truncated tail is ignored).
pub fn unframe(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        if body.len() < 5 + len {
            break;
        }
        out.push(body[5..5 + len].to_vec());
        body = &body[5 + len..];
    }
    out
}

fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

async fn handle(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    st: Arc<State>,
    mut released: watch::Receiver<bool>,
) {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let data = read_all(&mut body).await;
    st.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        headers: parts.headers,
    });
    let grpc = |status: u16| {
        Response::builder()
            .status(status)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    if path.ends_with("/Echo") {
        let msg = unframe(&data).pop().unwrap_or_default();
        let Ok(mut tx) = respond.send_response(grpc(200), false) else {
            return;
        };
        let _ = tx.send_data(frame(&[b"echo:", &msg[..]].concat()), false);
        let _ = tx.send_trailers(trailers(&[("grpc-status", "0")]));
    } else if path.ends_with("/Missing") {
        let Ok(mut tx) = respond.send_response(grpc(200), false) else {
            return;
        };
        let _ = tx.send_trailers(trailers(&[
            ("grpc-status", "5"),
            ("grpc-message", "no%20such%20thing%3A%20%E2%9C%97"),
        ]));
    } else if path.ends_with("/Reset") {
        if let Ok(mut tx) = respond.send_response(grpc(200), false) {
            tx.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    } else if path.ends_with("/Stall") {
        let Ok(mut tx) = respond.send_response(grpc(200), false) else {
            return;
        };
        st.open.fetch_add(1, SeqCst);
        let _ = released.wait_for(|r| *r).await;
        st.open.fetch_sub(1, SeqCst);
        let _ = tx.send_trailers(trailers(&[("grpc-status", "0")]));
    } else {
        if path.ends_with("/hold") {
            st.open.fetch_add(1, SeqCst);
            let _ = released.wait_for(|r| *r).await;
            st.open.fetch_sub(1, SeqCst);
        }
        let text = format!("h2 {} {} {}", parts.method, path, data.len());
        let resp = Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .header("content-length", text.len())
            .body(())
            .unwrap();
        if let Ok(mut tx) = respond.send_response(resp, false) {
            let _ = tx.send_data(Bytes::from(text), true);
        }
    }
}

/// A gRPC call's outcome as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    /// The response messages, unframed.
    pub messages: Vec<Vec<u8>>,
    pub trailers: Option<HeaderMap>,
    /// The response HEADERS frame ended the stream: a gRPC trailers-only answer.
    pub trailers_only: bool,
    /// The stream ended with an error (RST_STREAM, GOAWAY) instead of trailers.
    pub reset: Option<String>,
}

impl Reply {
    /// `grpc-status` from the trailers, or from the headers of a trailers-only answer.
    pub fn grpc_status(&self) -> Option<u32> {
        self.grpc_field("grpc-status")?.parse().ok()
    }

    pub fn grpc_message(&self) -> Option<String> {
        self.grpc_field("grpc-message")
    }

    fn grpc_field(&self, name: &str) -> Option<String> {
        let v = match &self.trailers {
            Some(t) if t.contains_key(name) => t.get(name),
            _ => self.headers.get(name),
        };
        v.and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One unary gRPC call over a fresh h2c connection to `addr`: `POST path` with `msg` framed,
/// the gRPC headers (`content-type: application/grpc` unless `extra` names another), and
/// `extra` headers.
pub fn call(addr: SocketAddr, path: &str, extra: &[(&str, &str)], msg: &[u8]) -> Reply {
    call_within(addr, path, extra, msg, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{path}: no end of the call in 30s"))
}

/// [`call`], given up (`None`) when it has not ended `within` that time.
pub fn call_within(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
    msg: &[u8],
    within: Duration,
) -> Option<Reply> {
    let ct = extra
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map_or("application/grpc", |(_, v)| *v);
    let call = async {
        let sock = TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        let (client, conn) = h2::client::handshake(sock).await.expect("h2c handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method("POST")
            .uri(format!("http://gw{path}"))
            .header("content-type", ct)
            .header("te", "trailers");
        for (k, v) in extra
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header(*k, *v);
        }
        let mut client = client.ready().await.expect("h2 stream slot");
        let (resp, mut tx) = client
            .send_request(req.body(()).unwrap(), false)
            .expect("send the request");
        // A refusal may end the stream before the message is read: not an error here.
        let _ = tx.send_data(frame(msg), true);
        let resp = resp.await.expect("a response");
        let (parts, mut body) = resp.into_parts();
        // True only if END_STREAM came on the HEADERS frame: even an empty DATA frame that
        // ends the stream is queued as an event until read.
        let trailers_only = body.is_end_stream();
        let data = read_all(&mut body).await;
        let (trailers, reset) = match body.trailers().await {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e.to_string())),
        };
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            messages: unframe(&data),
            trailers,
            trailers_only,
            reset,
        }
    };
    runtime().block_on(async { tokio::time::timeout(within, call).await.ok() })
}

/// A gateway with `body` and, besides the harness's plain listener, an h2c listener; returns
/// it with the h2c address once that accepts.
pub fn gateway_h2c(body: &str) -> (super::Gateway, SocketAddr) {
    super::Gateway::with_listener(|h2c| format!("{{address: \"{h2c}\", h2c: true}}"), body)
}
