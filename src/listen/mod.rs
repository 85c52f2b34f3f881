//! `listen:` — where the data plane accepts connections and what it speaks there.
//!
//! An entry is either the plain `"IP:port"` (HTTP/1.1) or an object that adds protocol
//! options: `{address: "IP:port", h2c: true}` also accepts HTTP/2 with prior knowledge in
//! cleartext, and `tls: {...}` terminates TLS there ([`tls`]: certificates chosen by SNI,
//! HTTP/2 offered by ALPN; [`client_auth`]: client certificates); `proxy_protocol: true`
//! wants a PROXY protocol header from a trusted balancer before anything else
//! (`crate::conn::proxy_protocol`). Pingora sets h2c and the pre-TLS hook per service, not per
//! listener, so [`Listener::service_key`] tells `server.rs` which listeners can share one
//! service.

pub mod client_auth;
pub mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml::Value;

use crate::config::ConfigErrors;

/// Where the gateway listens when the file says nothing.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// One `listen` entry as the file writes it.
#[derive(Debug)]
pub enum ListenFile {
    Addr(String),
    Full(Box<ListenerFile>),
}

/// `{address: "IP:port", h2c: true}` or `{address: "IP:port", tls: {...}}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub address: String,
    #[serde(default)]
    pub h2c: bool,
    #[serde(default)]
    pub tls: Option<tls::TlsFile>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a trusted proxy.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Only to say where it belongs: under `tls`.
    #[serde(default)]
    pub client_auth: Option<Value>,
}

/// A validated listening endpoint.
#[derive(Debug, Clone)]
pub struct Listener {
    /// `IP:port`, exactly as written: a graceful upgrade matches inherited sockets by this
    /// string.
    pub addr: String,
    /// Cleartext HTTP/2 with prior knowledge is accepted besides HTTP/1.1.
    pub h2c: bool,
    /// TLS is terminated here, with these certificates.
    pub tls: Option<Arc<tls::ServerTls>>,
    /// Each connection starts with a PROXY protocol header, whose client address is the
    /// connection's peer from then on.
    pub proxy_protocol: bool,
}

/// What a Pingora service must be configured with to serve a listener: listeners with equal
/// keys share one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub h2c: bool,
    pub proxy_protocol: bool,
}

impl Listener {
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            h2c: self.h2c,
            proxy_protocol: self.proxy_protocol,
        }
    }
}

/// Read the `listen` section: a list whose entries keep their file index (`None` where an
/// entry failed to parse).
pub fn read(v: Value, errs: &mut ConfigErrors) -> Option<Vec<Option<ListenFile>>> {
    let items = match v {
        Value::Sequence(items) => items,
        Value::Null => return None,
        _ => {
            errs.push(
                "listen",
                "must be a list of \"IP:port\" or {address: \"IP:port\", ...} entries",
            );
            return Some(Vec::new());
        }
    };
    let entries = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("listen[{i}]");
            match item {
                Value::String(s) => Some(ListenFile::Addr(s)),
                m @ Value::Mapping(_) => {
                    let f = crate::config::parse(&path, m, errs);
                    f.map(|f| ListenFile::Full(Box::new(f)))
                }
                _ => {
                    errs.push(
                        path,
                        "a listener is \"IP:port\" or {address: \"IP:port\", h2c: true} or {address: \"IP:port\", tls: {...}}",
                    );
                    None
                }
            }
        })
        .collect();
    Some(entries)
}

/// Validate the entries: addresses parse and are unique, and a `proxy_protocol` listener has
/// balancers to trust (`trusted_proxies`: some are listed).
pub fn compile(
    l: Option<Vec<Option<ListenFile>>>,
    trusted_proxies: bool,
    errs: &mut ConfigErrors,
) -> Vec<Listener> {
    let l = l.unwrap_or_else(|| vec![Some(ListenFile::Addr(DEFAULT_LISTEN.to_owned()))]);
    if l.is_empty() {
        errs.push(
            "listen",
            "needs at least one address, e.g. [\"0.0.0.0:8080\"]",
        );
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(l.len());
    for (i, entry) in l.into_iter().enumerate() {
        let Some(entry) = entry else { continue };
        let (addr, path, h2c, tls, proxy_protocol) = match entry {
            ListenFile::Addr(a) => (a, format!("listen[{i}]"), false, None, false),
            ListenFile::Full(f) => {
                let f = *f;
                if f.client_auth.is_some() {
                    errs.push(
                        format!("listen[{i}].client_auth"),
                        "client certificates need TLS: give this listener \
                         tls: {cert, key, client_auth: {ca, required}}",
                    );
                }
                if f.proxy_protocol && !trusted_proxies {
                    errs.push(
                        format!("listen[{i}].proxy_protocol"),
                        "proxy_protocol needs trusted_proxies: the addresses of the balancers \
                         allowed to send it",
                    );
                }
                let (a, p) = (f.address, format!("listen[{i}].address"));
                (a, p, f.h2c, f.tls, f.proxy_protocol)
            }
        };
        if check_socket_addr(&path, &addr, errs) && !seen.insert(addr.clone()) {
            errs.push(path, format!("{addr} is listed twice"));
        }
        if h2c && tls.is_some() {
            errs.push(
                format!("listen[{i}].h2c"),
                "is for cleartext listeners; over TLS, HTTP/2 is offered by ALPN (tls.http2)",
            );
        }
        let tls = tls
            .and_then(|t| tls::ServerTls::compile(&format!("listen[{i}].tls"), t, errs))
            .map(Arc::new);
        out.push(Listener {
            addr,
            h2c,
            tls,
            proxy_protocol,
        });
    }
    out
}

/// `a` is an `IP:port`; otherwise an error at `path`.
pub fn check_socket_addr(path: &str, a: &str, errs: &mut ConfigErrors) -> bool {
    match a.parse::<SocketAddr>() {
        Ok(_) => true,
        Err(_) => {
            errs.push(
                path,
                format!("{a:?} is not an IP:port address (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")"),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(yaml: &str) -> Result<Vec<Listener>, Vec<String>> {
        let mut errs = ConfigErrors::default();
        let l = read(serde_yaml::from_str(yaml).unwrap(), &mut errs);
        let out = compile(l, true, &mut errs);
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs.0.iter().map(|e| e.to_string()).collect())
        }
    }

    #[test]
    fn strings_and_objects() {
        let l = listeners("[\"127.0.0.1:1\", {address: \"127.0.0.1:2\", h2c: true}]").unwrap();
        let shape: Vec<_> = l
            .iter()
            .map(|l| (l.addr.as_str(), l.h2c, l.tls.is_some()))
            .collect();
        assert_eq!(
            shape,
            [("127.0.0.1:1", false, false), ("127.0.0.1:2", true, false)]
        );
        assert_ne!(l[0].service_key(), l[1].service_key());
    }

    #[test]
    fn errors_name_the_entry() {
        let e = listeners(
            "[{address: \"127.0.0.1:1\", h2: true}, {address: nope}, 5, \"127.0.0.1:3\", \"127.0.0.1:3\"]",
        )
        .unwrap_err();
        let has = |p: &str| e.iter().any(|m| m.starts_with(p));
        assert!(has("listen[0].h2: unknown field `h2`"), "{e:?}");
        assert!(
            has("listen[1].address: \"nope\" is not an IP:port"),
            "{e:?}"
        );
        assert!(has("listen[2]: a listener is"), "{e:?}");
        assert!(has("listen[4]: 127.0.0.1:3 is listed twice"), "{e:?}");
        assert_eq!(e.len(), 4, "{e:?}");
    }

    #[test]
    fn proxy_protocol_is_its_own_service_and_needs_trusted_proxies() {
        let yaml = "[\"127.0.0.1:1\", {address: \"127.0.0.1:2\", proxy_protocol: true}]";
        let l = listeners(yaml).unwrap();
        assert!(!l[0].proxy_protocol && l[1].proxy_protocol);
        assert_ne!(l[0].service_key(), l[1].service_key());
        let mut errs = ConfigErrors::default();
        let entries = read(serde_yaml::from_str(yaml).unwrap(), &mut errs);
        compile(entries, false, &mut errs);
        let e: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            e,
            [
                "listen[1].proxy_protocol: proxy_protocol needs trusted_proxies: the addresses \
              of the balancers allowed to send it"
            ]
        );
    }
}
