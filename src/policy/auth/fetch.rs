//! One HTTPS GET for an identity provider's documents (a JWKS, an OpenID discovery document).
//!
//! Pingora's own HTTP/1 client, so no second HTTP stack is linked: TLS verified against the
//! system roots, or only against a `ca` bundle, with the URL's host as SNI and the verified
//! name. Bounded in time ([`TIMEOUT`] for the whole exchange) and size ([`MAX_DOCUMENT`]).
//! A document's connection is not kept (it is fetched every few minutes at most); a form
//! POST's is (token introspection asks on the request path).

use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;

/// The longest one fetch (resolve, connect, handshake, request, whole answer) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest document accepted.
pub const MAX_DOCUMENT: usize = 1024 * 1024;
/// Each step (connect, read, write) on its own.
const STEP: Duration = Duration::from_secs(5);

/// An `https://host[:port]/path` URL, checked once at load.
#[derive(Debug, Clone)]
pub struct HttpsUrl {
    /// As written, for messages.
    pub text: String,
    pub host: String,
    pub port: u16,
    /// `host[:port]` for the `Host` header.
    authority: String,
    path: String,
}

impl HttpsUrl {
    /// The URL, or what is wrong with it.
    pub fn parse(url: &str) -> Result<HttpsUrl, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{url:?} must be an https:// URL: what it answers decides who gets in, so it \
                 is asked over verified TLS"
            ));
        }
        let Some(auth) = uri.authority() else {
            return Err(format!("{url:?} has no host"));
        };
        if auth.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        // Pingora's TLS connector checks the certificate against the host as a DNS name
        // (`X509_VERIFY_PARAM_add1_host`), which never matches an IP address SAN: such a URL
        // could never be verified.
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!(
                "{url:?} names an IP address: the identity provider's certificate is checked \
                 against a host name, so use a name its certificate carries"
            ));
        }
        Ok(HttpsUrl {
            text: url.to_owned(),
            host: host.to_owned(),
            port: auth.port_u16().unwrap_or(443),
            authority: auth.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// A client for one trust setting: the system roots, or a `ca` bundle.
pub struct Client {
    connector: Connector,
    ca: Option<Arc<CaType>>,
}

/// How long a connection kept for the next POST may stay unused.
const KEEP_IDLE: Duration = Duration::from_secs(60);

impl Client {
    /// A client trusting `ca`, else the system roots. At startup (before the server's
    /// threads) pass `startup`: a client with a `ca` then never loads the system store
    /// ([`crate::upstream::trust`]).
    pub fn new(ca: Option<Arc<CaType>>, startup: bool) -> Client {
        let build = || Connector::new(None);
        let connector = if startup {
            crate::upstream::trust::build_connectors(ca.is_none(), build)
        } else {
            build()
        };
        Client { connector, ca }
    }

    /// GET `url`: the body of a `200` answer, or what went wrong. A new connection, closed
    /// after the answer.
    pub async fn get(&self, url: &HttpsUrl) -> Result<Vec<u8>, String> {
        let exchange = async {
            let mut last = format!("{} resolved to no address", url.host);
            for addr in resolve(url).await? {
                let peer = self.peer(addr, url, STEP);
                match self.connector.get_http_session(&peer).await {
                    Ok((mut session, _)) => {
                        let r = request(&mut session, url, "GET", &[], b"").await;
                        session.shutdown().await;
                        return match r? {
                            (200, body) => Ok(body),
                            (status, _) => Err(format!("answered {status}, not 200")),
                        };
                    }
                    Err(e) => last = format!("cannot connect to {addr}: {e}"),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no complete answer within {}s", TIMEOUT.as_secs())),
        }
    }

    /// POST a form to `url` (`authorization`: the header's value): the status and body.
    /// The connection is kept for the next call (a stale kept one is replaced once); the
    /// caller bounds the whole call in time, `step` each connect, read and write.
    pub async fn post_form(
        &self,
        url: &HttpsUrl,
        authorization: Option<&str>,
        form: &str,
        step: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(a) = authorization {
            headers.push(("Authorization", a));
        }
        let mut last = format!("{} resolved to no address", url.host);
        for addr in resolve(url).await? {
            let peer = self.peer(addr, url, step);
            for _ in 0..2 {
                let (mut session, reused) = match self.connector.get_http_session(&peer).await {
                    Ok(s) => s,
                    Err(e) => {
                        last = format!("cannot connect to {addr}: {e}");
                        break;
                    }
                };
                match request(&mut session, url, "POST", &headers, form.as_bytes()).await {
                    Ok(answer) => {
                        self.connector
                            .release_http_session(session, &peer, Some(KEEP_IDLE))
                            .await;
                        return Ok(answer);
                    }
                    // A kept connection the server had closed: once more on a new one.
                    Err(e) if reused => last = e,
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last)
    }

    fn peer(&self, addr: std::net::SocketAddr, url: &HttpsUrl, step: Duration) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, url.host.clone());
        let o = &mut peer.options;
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca.clone_from(&self.ca);
        o.connection_timeout = Some(step);
        o.total_connection_timeout = Some(step);
        o.read_timeout = Some(step);
        o.write_timeout = Some(step);
        peer
    }
}

async fn resolve(url: &HttpsUrl) -> Result<Vec<std::net::SocketAddr>, String> {
    Ok(tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect())
}

/// One exchange on `s`: the answer's status and whole body. A GET says `Connection: close`.
async fn request(
    s: &mut pingora::protocols::http::v1::client::HttpSession,
    url: &HttpsUrl,
    method: &str,
    headers: &[(&'static str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut req = RequestHeader::build(method, url.path.as_bytes(), None)
        .map_err(|e| format!("bad request target {:?}: {e}", url.path))?;
    let length = body.len().to_string();
    let framing = if method == "GET" {
        ("Connection", "close")
    } else {
        ("Content-Length", length.as_str())
    };
    for (k, v) in [
        ("Host", url.authority.as_str()),
        ("Accept", "application/json"),
        ("User-Agent", "tollgate"),
        framing,
    ]
    .iter()
    .chain(headers)
    {
        req.insert_header(*k, *v)
            .map_err(|e| format!("bad header {k}: {e}"))?;
    }
    s.write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    if !body.is_empty() {
        s.write_body(body)
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        s.finish_body()
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
    }
    s.read_response()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = s.get_status().map_or(0, |s| s.as_u16());
    let mut body = Vec::new();
    while let Some(chunk) = s
        .read_body_ref()
        .await
        .map_err(|e| format!("the answer was cut: {e}"))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!(
                "the answer is larger than {} KiB",
                MAX_DOCUMENT / 1024
            ));
        }
        body.extend_from_slice(chunk);
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_address_hosts_are_refused_with_the_reason() {
        for url in ["https://127.0.0.1:8443/jwks", "https://[::1]/jwks"] {
            let e = HttpsUrl::parse(url).unwrap_err();
            assert!(e.contains("names an IP address"), "{e}");
        }
    }

    #[test]
    fn only_https_urls_with_a_host() {
        let u = HttpsUrl::parse("https://idp.example:8443/keys?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("idp.example", 8443));
        assert_eq!(u.path, "/keys?x=1");
        assert_eq!(u.authority, "idp.example:8443");
        let u = HttpsUrl::parse("https://idp.example").unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, "/"));
        for bad in [
            "http://idp.example/keys",
            "idp.example/keys",
            "https:///keys",
            "https://user:pw@idp.example/",
            "not a url",
        ] {
            assert!(HttpsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
