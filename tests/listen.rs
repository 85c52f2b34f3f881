//! Listener options: an `h2c` listener speaks HTTP/2 with prior knowledge and still HTTP/1.1.

mod support;
use std::net::SocketAddr;
use support::*;

fn h2c_gateway() -> (Gateway, SocketAddr) {
    Gateway::with_api_listener(|a| format!("{{address: \"{a}\", h2c: true}}"))
}

#[test]
fn h2c_prior_knowledge_reaches_an_http1_upstream() {
    let (gw, h2c) = h2c_gateway();
    let r = runtime()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(h2c).await.unwrap();
            h2client::get(tcp, "http://gw/api/hello?x=1").await
        })
        .unwrap_or_else(|e| panic!("h2c request failed: {e}\n{}", gw.logs()));
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["service"], "up", "{j}");
    assert_eq!(j["path"], "/hello", "{j}");
    assert_eq!(j["query"], "x=1", "{j}");
    assert_eq!(r.headers["x-gateway"], "tollgate");
}

#[test]
fn http1_still_works_on_an_h2c_listener() {
    let (_gw, h2c) = h2c_gateway();
    let r = request(
        h2c,
        "GET /api/one HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["service"], "up");
}

#[test]
fn plain_listeners_do_not_speak_h2c() {
    let (gw, _) = h2c_gateway();
    let r = runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        h2client::get(tcp, "http://gw/api/hello").await
    });
    assert!(r.is_err(), "a plain listener answered h2: {r:?}");
}
