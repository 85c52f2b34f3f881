//! etcd's JSON gateway (the v3 API over HTTP/1.1, keys base64) on Pingora's HTTP/1 client:
//! reading a prefix, holding a watch on it, and a token when etcd wants users.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;

use super::{backends, Endpoint, Etcd, Snapshot};

/// Each connect, read and write of a range or an authentication.
const STEP: Duration = Duration::from_secs(3);
/// A watch with no event is closed and the prefix read again after this long.
const WATCH_FOR: Duration = Duration::from_secs(300);
/// The largest range answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

impl Etcd {
    /// Read the whole prefix from the first endpoint that answers, and resolve its values.
    pub async fn snapshot(&self, c: &Connector) -> Result<Snapshot, String> {
        let body = serde_json::json!({
            "key": B64.encode(&self.prefix),
            "range_end": B64.encode(prefix_end(self.prefix.as_bytes())),
        });
        let answer = self.call(c, "/v3/kv/range", &body).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| format!("etcd answered no JSON: {e}"))?;
        let revision = int(&v["header"]["revision"]);
        let mut values = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let key = decode(&kv["key"]);
            let value = decode(&kv["value"]);
            values.push((key, value));
        }
        let resolver = self.resolver.clone();
        let prefix = self.prefix.clone();
        let set = tokio::task::spawn_blocking(move || backends(&prefix, &*resolver, values))
            .await
            .map_err(|e| format!("resolving failed: {e}"))?;
        Ok((set, revision))
    }

    /// Hold a watch on the prefix from `revision`: returns at its first event (or after
    /// [`WATCH_FOR`]), an error when the stream cannot be opened or breaks.
    pub async fn watch(&self, c: &Connector, revision: i64) -> Result<(), String> {
        let body = serde_json::json!({"create_request": {
            "key": B64.encode(&self.prefix),
            "range_end": B64.encode(prefix_end(self.prefix.as_bytes())),
            "start_revision": revision.to_string(),
        }});
        let mut last = String::new();
        for e in &self.endpoints {
            let mut s = match self.open(c, e, "/v3/watch", &body, None).await {
                Ok(s) => s,
                Err(m) => {
                    last = m;
                    continue;
                }
            };
            let events = async {
                let mut seen = Vec::new();
                loop {
                    match s.read_body_ref().await {
                        Ok(Some(chunk)) => {
                            seen.extend_from_slice(chunk);
                            // An event, or the watch cancelled (a compacted revision):
                            // either way, read the prefix again.
                            let hit = |w: &[u8]| memchr::memmem::find(&seen, w).is_some();
                            if hit(b"\"events\"") || hit(b"\"canceled\"") {
                                return Ok(());
                            }
                            if seen.len() > MAX_ANSWER {
                                seen.clear();
                            }
                        }
                        Ok(None) => return Err("the watch ended".to_owned()),
                        Err(e) => return Err(format!("the watch broke: {e}")),
                    }
                }
            };
            let r = tokio::time::timeout(WATCH_FOR, events)
                .await
                .unwrap_or(Ok(()));
            s.shutdown().await;
            return r;
        }
        Err(last)
    }

    /// POST `body` to `path` on each endpoint in turn until one answers 200.
    async fn call(
        &self,
        c: &Connector,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, String> {
        let mut last = String::from("no endpoint");
        for e in &self.endpoints {
            let exchange = async {
                let mut s = self.open(c, e, path, body, Some(STEP)).await?;
                read_all(&mut s, MAX_ANSWER).await
            };
            match tokio::time::timeout(STEP * 3, exchange).await {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(m)) => last = format!("{}: {m}", e.authority),
                Err(_) => last = format!("{}: no answer in time", e.authority),
            }
        }
        Err(last)
    }

    /// Connect to `e`, authenticate when configured, send the request and read the answer's
    /// head: a session whose body is the answer (only a 200 is one).
    async fn open(
        &self,
        c: &Connector,
        e: &Endpoint,
        path: &str,
        body: &serde_json::Value,
        step: Option<Duration>,
    ) -> Result<HttpSession, String> {
        let token = match &self.credentials {
            None => None,
            Some((user, pass)) => {
                let auth = serde_json::json!({"name": user, "password": pass});
                let mut s = self
                    .send(c, e, "/v3/auth/authenticate", &auth, None, Some(STEP))
                    .await?;
                let answer = read_all(&mut s, 64 * 1024).await?;
                let v: serde_json::Value = serde_json::from_slice(&answer)
                    .map_err(|_| "authentication answered no JSON".to_owned())?;
                match v["token"].as_str() {
                    Some(t) => Some(t.to_owned()),
                    None => return Err("authentication gave no token".into()),
                }
            }
        };
        self.send(c, e, path, body, token.as_deref(), step).await
    }

    /// A connection to `e`: each address its host resolves to in turn (a name such as
    /// `localhost` may resolve to an address etcd does not listen on).
    async fn connect(
        &self,
        c: &Connector,
        e: &Endpoint,
        step: Option<Duration>,
    ) -> Result<HttpSession, String> {
        let addrs = tokio::net::lookup_host((e.host.as_str(), e.port))
            .await
            .map_err(|err| format!("cannot resolve {}: {err}", e.host))?;
        let mut last = format!("{} has no address", e.host);
        for addr in addrs {
            let mut peer = HttpPeer::new(addr, e.tls, e.host.clone());
            let o = &mut peer.options;
            o.verify_cert = true;
            o.verify_hostname = true;
            o.ca.clone_from(&self.ca);
            o.connection_timeout = Some(STEP);
            o.total_connection_timeout = Some(STEP);
            o.read_timeout = step;
            o.write_timeout = Some(STEP);
            match c.get_http_session(&peer).await {
                Ok((s, _)) => return Ok(s),
                Err(err) => last = format!("cannot connect to {}: {err}", e.authority),
            }
        }
        Err(last)
    }

    async fn send(
        &self,
        c: &Connector,
        e: &Endpoint,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
        step: Option<Duration>,
    ) -> Result<HttpSession, String> {
        let mut s = self.connect(c, e, step).await?;
        let bytes = body.to_string();
        let len = bytes.len().to_string();
        let mut req =
            RequestHeader::build("POST", path.as_bytes(), None).map_err(|err| err.to_string())?;
        let mut headers = vec![
            ("Host", e.authority.as_str()),
            ("Content-Type", "application/json"),
            ("Content-Length", len.as_str()),
            ("Connection", "close"),
        ];
        if let Some(t) = token {
            headers.push(("Authorization", t));
        }
        for (k, v) in headers {
            req.insert_header(k, v).map_err(|err| err.to_string())?;
        }
        let io = |err: Box<pingora::Error>| format!("{}: {err}", e.authority);
        s.write_request_header(Box::new(req)).await.map_err(io)?;
        s.write_body(bytes.as_bytes()).await.map_err(io)?;
        s.finish_body().await.map_err(io)?;
        s.read_response().await.map_err(io)?;
        match s.get_status().map_or(0, |s| s.as_u16()) {
            200 => Ok(s),
            status => {
                let why = read_all(&mut s, 4096).await.unwrap_or_default();
                let why = String::from_utf8_lossy(&why);
                Err(format!("{path} answered {status} {}", why.trim()))
            }
        }
    }
}

/// The whole answer body (at most `max` bytes); the connection is closed after it.
async fn read_all(s: &mut HttpSession, max: usize) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    while let Some(chunk) = s
        .read_body_ref()
        .await
        .map_err(|e| format!("the answer was cut: {e}"))?
    {
        if answer.len() + chunk.len() > max {
            return Err("the answer is too large".to_owned());
        }
        answer.extend_from_slice(chunk);
    }
    s.shutdown().await;
    Ok(answer)
}

pub(super) fn endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "{url:?} must be http://host:port or https://host:port"
            ))
        }
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{url:?}: give the endpoint without a path"));
    }
    let Some(auth) = uri.authority() else {
        return Err(format!("{url:?} has no host"));
    };
    if auth.as_str().contains('@') {
        return Err(format!(
            "{url:?}: credentials go in username and password, not the URL"
        ));
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    if tls && host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{url:?} names an IP address: etcd's certificate is checked against a host \
             name, so use a name its certificate carries"
        ));
    }
    Ok(Endpoint {
        tls,
        host: host.to_owned(),
        port: auth.port_u16().unwrap_or(2379),
        authority: auth.as_str().to_owned(),
    })
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(v: &serde_json::Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

fn decode(v: &serde_json::Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_prefixed_one() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn endpoints_are_http_or_https_urls_without_a_path() {
        let e = endpoint("http://127.0.0.1:2379").unwrap();
        assert_eq!((e.tls, e.port, e.host.as_str()), (false, 2379, "127.0.0.1"));
        assert!(endpoint("https://etcd.internal:2379").unwrap().tls);
        for bad in [
            "127.0.0.1:2379",
            "ftp://x:1",
            "http://x:1/v3",
            "https://10.0.0.1:2379",
            "http://u:p@x:1",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }
}
