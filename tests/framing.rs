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

/// A gateway whose combined access log is its own file; the backend counts what reaches it.
fn logged_gateway() -> (Gateway, Backend, std::path::PathBuf, tempfile::TempDir) {
    let up = Backend::start("up");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        "upstreams: {{up: {{targets: [\"{}\"]}}}}\n\
         routes: [{{name: r, path_prefix: /, upstream: up}}]\n\
         access_log: {{format: combined, path: \"{}\"}}",
        up.addr,
        log.display()
    ));
    (gw, up, log, dir)
}

/// The access log's lines once it holds `n` (the writer flushes every 200 ms).
fn access_lines(log: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let enough = eventually(std::time::Duration::from_secs(5), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        lines = text.lines().map(str::to_owned).collect();
        lines.len() >= n
    });
    assert!(
        enough,
        "the access log has {} of {n} lines: {lines:#?}",
        lines.len()
    );
    lines
}

/// A request sample of the `/metrics` page, 0 when absent.
fn sample(gw: &Gateway, series: &str) -> u64 {
    let page = gw.admin_get("/metrics").body;
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Heads refused before they are a request, whichever parser refuses them (tollgate's own
/// codec for a head alone in its read, Pingora's for the rest, checked before its session
/// reads them): each is answered 400 in the JSON contract, never reaches the upstream (nor
/// does the request pipelined behind it), and is one access-log line, its request fields `-`,
/// and one request sample.
#[test]
fn every_refused_head_is_a_json_400_one_log_line_and_one_sample() {
    let (gw, up, log, _dir) = logged_gateway();
    let heads: &[(&str, &[u8])] = &[
        ("two Hosts alone", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("two Hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("space before colon", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("conflicting CL", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nAB"),
        ("CL +1", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nA"),
        ("TE gzip", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("TE on 1.0", b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("chunk size zz", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nA\r\n0\r\n\r\n"),
        ("empty chunk size", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nA\r\n0\r\n\r\n"),
        ("control byte", b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"),
        ("NUL", b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"),
        ("obs-fold", b"GET /x HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
        ("no colon", b"GET /x HTTP/1.1\r\nHost: a\r\nX\r\n\r\n"),
    ];
    for (i, (name, head)) in heads.iter().enumerate() {
        let (codes, text) = match i {
            0 => statuses_of(gw.addr, head),
            _ => statuses(&gw, head),
        };
        assert_eq!(codes, vec![400], "{name}: {text}");
        assert!(
            text.contains("Content-Type: application/json"),
            "{name}: {text}"
        );
        assert!(text.contains("\"error\":\"bad_request\""), "{name}: {text}");
    }
    let lines = access_lines(&log, heads.len());
    assert_eq!(lines.len(), heads.len(), "{lines:#?}");
    for line in &lines {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains("] \"- - -\" 400 "), "{line}");
        assert!(line.ends_with(" error=bad_request"), "{line}");
    }
    let refused = "tollgate_requests_total{route=\"-\",method=\"OTHER\",status=\"4xx\"}";
    assert_eq!(sample(&gw, refused), heads.len() as u64);
    assert_eq!(up.count(), 0, "{:?}", up.requests.lock().unwrap());
}

/// A hostile head (CR, LF and quotes where they do not belong) cannot write a line of its
/// own into the access log: each refused head is exactly one well-formed line.
#[test]
fn a_hostile_head_leaves_one_well_formed_log_line() {
    let (gw, _up, log, _dir) = logged_gateway();
    let hostile: &[&[u8]] = &[
        b"GET /\"x\" HTTP/1.1\r\nHost: a\r\nHost: \"b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX: \"a\rb\" 200 0 \"-\"\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: \"\n127.0.0.1 - - [x] \"GET /fake HTTP/1.1\" 200\r\n\r\n",
    ];
    let mut ids = Vec::new();
    for head in hostile {
        let r = request_bytes(gw.addr, head).unwrap();
        assert_eq!(r.status, 400, "{}: {r:?}", head.escape_ascii());
        ids.push(r.header("x-request-id").unwrap().to_owned());
    }
    let lines = access_lines(&log, hostile.len());
    assert_eq!(lines.len(), hostile.len(), "{lines:#?}");
    // Each its own line (lines of different worker threads come in batches, not in order).
    for id in &ids {
        let mine: Vec<_> = lines
            .iter()
            .filter(|l| l.contains(&format!(" request_id={id} ")))
            .collect();
        assert_eq!(mine.len(), 1, "{id}: {lines:#?}");
    }
    for line in &lines {
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(!line.contains("fake") && !line.contains("\"b"), "{line}");
    }
}

/// A chunked body whose first chunk-size line is empty (which Pingora's decoder would read
/// as the last chunk) is refused with 400 before anything is forwarded, as nginx does: the
/// upstream never sees the request, so no early answer of its can be relayed.
#[test]
fn an_empty_chunk_size_line_is_refused_up_front() {
    let (gw, up, _log, _dir) = logged_gateway();
    for body in ["\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n\r\n\r\n"] {
        let head = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let r = request(gw.addr, &format!("{head}{body}")).unwrap();
        assert_eq!(
            (r.status, r.error_code()),
            (400, "bad_request".to_owned()),
            "{r:?}"
        );
    }
    assert_eq!(up.count(), 0, "{:?}", up.requests.lock().unwrap());
}
