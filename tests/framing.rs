//! Ambiguous framing is refused with 400 and the connection closed, so nothing after it can
//! be read as a second (smuggled) request.

mod support;
use support::*;

fn gateway() -> Gateway {
    let up = echo("up");
    Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{up}\"]}}}}\nroutes: [{{name: r, path_prefix: /, upstream: up}}]"
    ))
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Send `head` followed by a pipelined request; return every status line seen and the bytes.
fn statuses(gw: &Gateway, head: &[u8]) -> (Vec<u16>, String) {
    statuses_of(gw.addr, &[head, SMUGGLED].concat())
}

#[test]
fn ambiguous_shapes_get_400_and_close() {
    let gw = gateway();
    let shapes: &[(&str, &[u8])] = &[
        ("CL+TE", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("duplicate CL", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nA"),
        ("conflicting CL", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nAB"),
        ("CL list", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nA"),
        ("CL +5", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nA"),
        ("CL -0", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -0\r\n\r\n"),
        ("CL hex", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\nA"),
        ("CL 1_0", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\nAAAAAAAAAA"),
        ("CL empty", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n"),
        ("TE gzip, chunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("TE twice", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE identity", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
        ("TE on HTTP/1.0", b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nA\r\n0\r\n\r\n"),
        ("chunk size +1", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+1\r\nA\r\n0\r\n\r\n"),
        ("no Host on 1.1", b"GET /x HTTP/1.1\r\n\r\n"),
        ("two Hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ];
    for (name, head) in shapes {
        let (codes, text) = statuses(&gw, head);
        assert_eq!(codes, vec![400], "{name}: {text}");
        assert!(
            !text.contains("/smuggled"),
            "{name}: the pipelined request reached the upstream"
        );
    }
}

#[test]
fn well_framed_requests_still_pass() {
    let gw = gateway();
    let ok: &[&[u8]] = &[
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        b"GET /x HTTP/1.0\r\n\r\n",
    ];
    for head in ok {
        let r = gw.raw(head);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(head));
    }
    let r = gw.raw(ok[1]);
    assert_eq!(r.json()["body"], "hello");
}

/// RFC 9112 §3.2: a server MUST answer 400 to a `Host` that is not a `host[:port]`. Forwarded,
/// `Host: gw/evil` would reach an upstream that builds URLs or routes on it. Sent alone in its
/// read (the head tollgate's own HTTP/1 codec serves) and with a request pipelined behind it
/// (handed to Pingora's), the answer is the JSON `bad_request`, the connection ends, and the
/// upstream never sees a request.
#[test]
fn an_invalid_host_gets_a_json_400_and_never_reaches_the_upstream() {
    let up = Backend::start("up");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{}\"]}}}}\nroutes: [{{name: r, path_prefix: /, upstream: up}}]",
        up.addr
    ));
    for host in ["gw/evil", "gw?x=1", "gw:http", "[::1]x", "ex%61mple.com"] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n");
        let r = request(gw.addr, &format!("{head}Connection: close\r\n\r\n")).unwrap();
        assert_eq!(r.status, 400, "{host}: {r:?}");
        assert_eq!(r.error_code(), "bad_request", "{host}");
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("Host"), "{host}: {message}");

        // Not told to close, the gateway ends the connection itself: the request behind is
        // never answered.
        let (codes, text) = statuses(&gw, format!("{head}\r\n").as_bytes());
        assert_eq!(codes, vec![400], "{host}: {text}");
        assert!(text.contains("\"bad_request\""), "{host}: {text}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.requests.lock().unwrap());
    // The same backend does count what it is sent: a host with a port goes through.
    let r = request(
        gw.addr,
        "GET /x HTTP/1.1\r\nHost: gw:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.unwrap().status, 200);
    assert_eq!(up.count(), 1);
}
