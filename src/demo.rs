//! The built-in sample upstreams: tiny HTTP/1.1 servers that answer with JSON echoing what
//! they received (method, path, query, headers, body size), so a user of `--demo` and the
//! tests both see exactly what the gateway forwarded.
//!
//! Two query parameters make them useful for trying failure handling: `delay_ms=N` waits
//! before answering, `status=N` answers with that status.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 64 * 1024;

/// Serve the echo upstream named `name` on an already-bound listener, forever.
pub async fn serve(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = connection(stream, name).await;
        });
    }
}

/// Bind `addr` and serve in the background of the current tokio runtime.
pub async fn spawn(addr: SocketAddr, name: &'static str) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    tokio::spawn(serve(l, name));
    Ok(local)
}

/// Start the demo upstreams on their own runtime thread (the gateway's runtimes belong to
/// Pingora).
pub fn start_background(upstreams: Vec<(SocketAddr, &'static str)>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listeners: Vec<_> = upstreams
        .into_iter()
        .map(|(addr, name)| std::net::TcpListener::bind(addr).map(|l| (l, name)))
        .collect::<std::io::Result<_>>()?;
    std::thread::Builder::new()
        .name("demo-upstreams".into())
        .spawn(move || {
            rt.block_on(async move {
                for (l, name) in listeners {
                    l.set_nonblocking(true).expect("set_nonblocking");
                    let l = TcpListener::from_std(l).expect("tokio listener");
                    tokio::spawn(serve(l, name));
                }
                std::future::pending::<()>().await
            })
        })?;
    Ok(())
}

async fn connection(mut s: TcpStream, name: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut served = 0u64;
    loop {
        served += 1;
        // Read one request head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut hdrs = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut hdrs);
        if req.parse(&buf[..head_end]).is_err() {
            s.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
        let method = req.method.unwrap_or("").to_owned();
        let target = req.path.unwrap_or("/").to_owned();
        let mut headers = Map::new();
        let mut content_length = 0usize;
        let mut chunked = false;
        let mut close = req.version == Some(0);
        for h in req.headers.iter() {
            let k = h.name.to_ascii_lowercase();
            let v = String::from_utf8_lossy(h.value).into_owned();
            match k.as_str() {
                "content-length" => content_length = v.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => close |= v.eq_ignore_ascii_case("close"),
                _ => {}
            }
            match headers.get_mut(&k) {
                Some(Value::Array(a)) => a.push(Value::String(v)),
                Some(old) => *old = Value::Array(vec![old.take(), Value::String(v)]),
                None => {
                    headers.insert(k, Value::String(v));
                }
            }
        }
        buf.drain(..head_end);
        let body = if chunked {
            read_chunked(&mut s, &mut buf).await?
        } else {
            while buf.len() < content_length {
                let mut chunk = [0u8; 8192];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..content_length).collect()
        };

        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.clone(), None),
        };
        let param = |key: &str| -> Option<u64> {
            query.as_deref()?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == key).then(|| v.parse().ok()).flatten()
            })
        };
        if let Some(ms) = param("delay_ms") {
            tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
        }
        let status = param("status")
            .filter(|s| (200..600).contains(s))
            .unwrap_or(200);
        // HEAD gets the headers GET would (RFC 9110 §9.3.2), Content-Length included (§8.6):
        // a client sizing a download or checking a cache by HEAD is told the truth. So the
        // length is that of the body a GET would carry, which names GET.
        let head_only = method == "HEAD";
        let reply = serde_json::json!({
            "service": name,
            "method": if head_only { "GET" } else { &method },
            "path": path,
            "query": query,
            "headers": headers,
            "body_bytes": body.len(),
            // 1 on a fresh connection; higher when the caller reuses its connections.
            "connection_requests": served,
            "body": String::from_utf8_lossy(&body[..body.len().min(4096)]),
        });
        let mut out = serde_json::to_vec_pretty(&reply).unwrap_or_default();
        out.push(b'\n');
        // 204 and 304 have no body (RFC 9110 §15.3.5, §15.4.5), and 204 no Content-Length.
        let bodiless = status == 204 || status == 304;
        if bodiless {
            out.clear();
        }
        let head = format!(
            "HTTP/1.1 {status} {}\r\n{}x-upstream: {name}\r\n{}\r\n",
            http::StatusCode::from_u16(status as u16)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Status"),
            if bodiless {
                String::new()
            } else {
                format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n",
                    out.len()
                )
            },
            if close { "connection: close\r\n" } else { "" },
        );
        // One write: a head and a body in two small segments would meet Nagle + delayed ACK.
        let mut msg = head.into_bytes();
        if !head_only {
            msg.extend_from_slice(&out);
        }
        s.write_all(&msg).await?;
        if close {
            return Ok(());
        }
    }
}

async fn read_chunked(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            fill(s, buf).await?;
        };
        let size_str = String::from_utf8_lossy(&buf[..line_end]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Skip trailers up to the empty line.
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return Ok(body);
                    }
                } else {
                    fill(s, buf).await?;
                }
            }
        }
        while buf.len() < size + 2 {
            fill(s, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HEAD is answered with exactly the head a GET of the same request gets, Content-Length
    /// included, and nothing after it: the GET behind it on the connection reads as its own.
    #[tokio::test]
    async fn head_gets_the_get_head_and_no_body() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), "echo").await.unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req =
            |method: &str| format!("{method} /thing?q=1 HTTP/1.1\r\nHost: demo\r\nX-A: b\r\n\r\n");
        s.write_all((req("HEAD") + &req("GET")).as_bytes())
            .await
            .unwrap();
        // The end of the requests: the server closes after answering both.
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();

        let head_end = find(&got, b"\r\n\r\n").unwrap() + 4;
        let (head, rest) = got.split_at(head_end);
        let head = String::from_utf8_lossy(head);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let get_end = find(rest, b"\r\n\r\n").unwrap() + 4;
        let (get_head, body) = rest.split_at(get_end);
        let get_head = String::from_utf8_lossy(get_head);
        assert_eq!(get_head, head);
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            (&body["method"], &body["path"]),
            (&"GET".into(), &"/thing".into())
        );
        assert_eq!(
            body["connection_requests"], 2,
            "the HEAD was answered first"
        );
    }

    /// `?status=204` and `?status=304` are answered without a body (and 204 without a
    /// Content-Length), so the request after them on the connection reads as its own.
    #[tokio::test]
    async fn bodiless_statuses_send_no_body() {
        let addr = spawn("127.0.0.1:0".parse().unwrap(), "echo").await.unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = |q: &str| format!("GET /x?status={q} HTTP/1.1\r\nHost: demo\r\n\r\n");
        s.write_all((req("204") + &req("304") + &req("200")).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8_lossy(&got);
        let heads: Vec<&str> = got.split("\r\n\r\n").collect();
        assert!(heads[0].starts_with("HTTP/1.1 204 No Content\r\n"), "{got}");
        assert!(!heads[0].contains("content-length"), "{got}");
        assert!(
            heads[1].starts_with("HTTP/1.1 304 Not Modified\r\n"),
            "{got}"
        );
        assert!(heads[2].starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }
}
