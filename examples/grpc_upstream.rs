//! The load harness's gRPC backend (`benches/load/run.sh` with `GRPC=1`): an h2c server that
//! answers every call as a unary gRPC method would, with a 64-byte answer (the 5-byte message
//! prefix and 59 bytes of message) and `grpc-status: 0` in trailers. The request message is
//! read and dropped. One thread, as the harness pins it to the load generator's core.
//!
//! `cargo run --release --example grpc_upstream -- 127.0.0.1:50051`

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::{TcpListener, TcpStream};

/// The answer's DATA: a gRPC message frame (not compressed, 59 bytes) of 64 bytes in all.
fn answer() -> Bytes {
    let mut b = vec![0u8, 0, 0, 0, 59];
    b.extend(std::iter::repeat_n(b'x', 59));
    Bytes::from(b)
}

async fn serve(sock: TcpStream, body: Bytes) {
    let _ = sock.set_nodelay(true);
    let Ok(mut conn) = h2::server::handshake(sock).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let body = body.clone();
        tokio::spawn(async move {
            let mut recv = req.into_body();
            while let Some(Ok(chunk)) = recv.data().await {
                let _ = recv.flow_control().release_capacity(chunk.len());
            }
            let head = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .expect("a static head");
            let Ok(mut tx) = respond.send_response(head, false) else {
                return;
            };
            let _ = tx.send_data(body, false);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send_trailers(trailers);
        });
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        eprintln!("grpc_upstream listening on {addr}");
        let body = answer();
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock, body.clone()));
        }
    });
}
