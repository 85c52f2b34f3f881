//! TLS termination on a listener: certificates loaded and checked at config time, chosen per
//! connection by SNI.
//!
//! Every file is read when the config is compiled (start, `check`, `explain`, and the new
//! process of a reload), so a missing file, bad PEM or a key that does not belong to its
//! certificate is a config error with the key's path, never a failed handshake later. The
//! names a certificate answers for are its own SAN DNS names (its CN when it has no SAN);
//! Pingora asks [`CertPicker`] for a certificate in the middle of each handshake, and, on a
//! listener with `client_auth` ([`super::client_auth`]), hands it the client's certificate
//! after.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{TlsAccept, ALPN};
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::nid::Nid;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::{NameType, SslVersion};
use pingora::tls::x509::X509;
use serde::Deserialize;

use super::client_auth::{ClientAuth, ClientAuthFile, PeerCert};
use crate::config::ConfigErrors;

/// `tls: {cert, key}` or `tls: {certificates: [{cert, key}, ...]}`, with `min_version` and
/// `http2`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub certificates: Option<Vec<CertFile>>,
    /// `"1.2"` or `"1.3"`; YAML may also read an unquoted `1.2` as a number.
    #[serde(default)]
    pub min_version: Option<serde_yaml::Value>,
    #[serde(default)]
    pub http2: Option<bool>,
    /// Ask clients for a certificate (`{ca, required}`).
    #[serde(default)]
    pub client_auth: Option<ClientAuthFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: String,
    pub key: String,
}

/// One certificate with its chain, key and the host names it serves.
struct Cert {
    chain: Vec<X509>,
    key: PKey<Private>,
    names: Vec<String>,
}

/// A listener's compiled TLS settings.
pub struct ServerTls {
    certs: Vec<Cert>,
    /// Exact names (lower case) to the index of the first certificate naming them.
    exact: HashMap<String, usize>,
    /// Wildcard suffixes (`.example.com` for `*.example.com`) to a certificate index.
    wildcard: HashMap<String, usize>,
    tls13_only: bool,
    http2: bool,
    /// Client certificates asked for and verified.
    pub client_auth: Option<ClientAuth>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let names: Vec<_> = self.certs.iter().map(|c| &c.names).collect();
        f.debug_struct("ServerTls")
            .field("certificates", &names)
            .field("tls13_only", &self.tls13_only)
            .field("http2", &self.http2)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

impl ServerTls {
    /// Load and check every file of `tls` (at `base`, e.g. `listen[1].tls`).
    pub fn compile(base: &str, tls: TlsFile, errs: &mut ConfigErrors) -> Option<ServerTls> {
        let before = errs.0.len();
        let pairs: Vec<(String, CertFile)> = match (tls.cert, tls.key, tls.certificates) {
            (Some(cert), Some(key), None) => vec![(base.to_owned(), CertFile { cert, key })],
            (None, None, Some(list)) if !list.is_empty() => list
                .into_iter()
                .enumerate()
                .map(|(i, c)| (format!("{base}.certificates[{i}]"), c))
                .collect(),
            (None, None, Some(_)) => {
                errs.push(
                    format!("{base}.certificates"),
                    "must list at least one {cert, key}",
                );
                return None;
            }
            (Some(_), None, None) => {
                errs.push(format!("{base}.key"), "is required with cert");
                return None;
            }
            (None, Some(_), None) => {
                errs.push(format!("{base}.cert"), "is required with key");
                return None;
            }
            _ => {
                errs.push(
                    base,
                    "give either {cert: FILE, key: FILE} or {certificates: [{cert: FILE, key: FILE}, ...]}",
                );
                return None;
            }
        };
        let tls13_only = match tls.min_version.as_ref().map(version_text).as_deref() {
            None | Some("1.2") => false,
            Some("1.3") => true,
            Some(v) => {
                errs.push(
                    format!("{base}.min_version"),
                    format!("{v:?} is not allowed: \"1.2\" (the default) or \"1.3\"; older TLS versions are refused"),
                );
                false
            }
        };
        let client_auth = tls
            .client_auth
            .and_then(|c| ClientAuth::compile(&format!("{base}.client_auth"), c, errs));
        let mut certs = Vec::with_capacity(pairs.len());
        for (i, (path, c)) in pairs.into_iter().enumerate() {
            if let Some(cert) = load(&path, &c, errs) {
                if cert.names.is_empty() && i > 0 {
                    errs.push(
                        format!("{path}.cert"),
                        "names no host (no SAN DNS name or CN), so SNI can never select it",
                    );
                }
                certs.push(cert);
            }
        }
        if errs.0.len() > before {
            return None;
        }
        let mut t = ServerTls::index(certs, tls13_only, tls.http2.unwrap_or(true));
        t.client_auth = client_auth;
        Some(t)
    }

    /// Index the certificates' names; on a name given twice, the first certificate wins.
    fn index(certs: Vec<Cert>, tls13_only: bool, http2: bool) -> ServerTls {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                match n.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        wildcard.entry(suffix.to_owned()).or_insert(i);
                    }
                    _ => {
                        exact.entry(n.clone()).or_insert(i);
                    }
                }
            }
        }
        ServerTls {
            certs,
            exact,
            wildcard,
            tls13_only,
            http2,
            client_auth: None,
        }
    }

    /// The certificate for a client's SNI: an exact name, then a wildcard one label deep,
    /// else the first certificate.
    fn select(&self, sni: Option<&str>) -> &Cert {
        let i = sni.and_then(|s| {
            let s = s.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&s).copied().or_else(|| {
                let dot = s.find('.')?;
                self.wildcard.get(&s[dot..]).copied()
            })
        });
        &self.certs[i.unwrap_or(0)]
    }

    /// The certificates and keys as loaded (DER): a reload compares them, since a listener's
    /// certificates are set up once per process.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.certs {
            for x in &c.chain {
                out.extend(x.to_der().unwrap_or_default());
            }
            out.extend(c.key.private_key_to_der().unwrap_or_default());
        }
        out
    }

    /// Whether `other` has the same settings that are set up once per listener (versions,
    /// ALPN, client certificates): its certificates may then replace these in place.
    pub fn same_settings(&self, other: &ServerTls) -> bool {
        self.tls13_only == other.tls13_only
            && self.http2 == other.http2
            && self.client_auth.as_ref().map(|c| c.fingerprint())
                == other.client_auth.as_ref().map(|c| c.fingerprint())
    }

    /// Pingora's settings for this listener: Mozilla's intermediate profile, our minimum
    /// version, ALPN, the SNI picker and client certificates. The picker reads the returned
    /// [`Certs`], which a reload replaces (certificate renewal without a new process).
    pub fn settings(self: &Arc<Self>) -> pingora::Result<(TlsSettings, Certs)> {
        let certs: Certs = Arc::new(arc_swap::ArcSwap::new(self.clone()));
        let mut s = TlsSettings::with_callbacks(Box::new(CertPicker(certs.clone())))?;
        let min = if self.tls13_only {
            SslVersion::TLS1_3
        } else {
            SslVersion::TLS1_2
        };
        s.set_min_proto_version(Some(min)).map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InternalError, "TLS minimum version", e)
        })?;
        s.set_alpn(if self.http2 { ALPN::H2H1 } else { ALPN::H1 });
        // A record's header and its body in one read from the socket, not two (and what the
        // client sent after it, decrypted when asked for).
        s.set_read_ahead(true);
        if let Some(ca) = &self.client_auth {
            ca.apply(&mut s).map_err(|e| {
                pingora::Error::because(pingora::ErrorType::InternalError, "TLS client_auth", e)
            })?;
        }
        Ok((s, certs))
    }
}

/// A listener's certificates as its handshakes read them.
pub type Certs = Arc<arc_swap::ArcSwap<ServerTls>>;

/// `"1.2"` from a string or a number YAML read from an unquoted `1.2`.
fn version_text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.trim().to_owned(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// Read one `{cert, key}` pair at `path`; errors name `path.cert` / `path.key`.
fn load(path: &str, c: &CertFile, errs: &mut ConfigErrors) -> Option<Cert> {
    let read = |key: &str, file: &str, errs: &mut ConfigErrors| match std::fs::read(file) {
        Ok(b) => Some(b),
        Err(e) => {
            errs.push(
                format!("{path}.{key}"),
                format!("cannot read {file:?}: {e}"),
            );
            None
        }
    };
    let chain = read("cert", &c.cert, errs).and_then(|pem| match X509::stack_from_pem(&pem) {
        Ok(chain) if !chain.is_empty() => Some(chain),
        _ => {
            errs.push(
                format!("{path}.cert"),
                format!("{:?} holds no PEM certificate", c.cert),
            );
            None
        }
    });
    let key = read("key", &c.key, errs).and_then(|pem| match PKey::private_key_from_pem(&pem) {
        Ok(k) => Some(k),
        Err(_) => {
            errs.push(
                format!("{path}.key"),
                format!("{:?} holds no PEM private key", c.key),
            );
            None
        }
    });
    let (chain, key) = (chain?, key?);
    let matches = chain[0]
        .public_key()
        .map(|p| p.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        errs.push(
            format!("{path}.key"),
            format!("{:?} does not match the certificate in {:?}", c.key, c.cert),
        );
        return None;
    }
    let names = names_of(&chain[0]);
    Some(Cert { chain, key, names })
}

/// The DNS names a certificate is for (lower case): its SAN DNS entries, else its CN.
fn names_of(cert: &X509) -> Vec<String> {
    let san: Vec<String> = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if !san.is_empty() {
        return san;
    }
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase()))
        .collect()
}

/// Gives Pingora the certificate for each handshake's SNI.
struct CertPicker(Certs);

#[async_trait]
impl TlsAccept for CertPicker {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let tls = self.0.load();
        let cert = tls.select(ssl.servername(NameType::HOST_NAME));
        let mut set = || -> Result<(), pingora::tls::error::ErrorStack> {
            ext::ssl_use_certificate(ssl, &cert.chain[0])?;
            for c in &cert.chain[1..] {
                ext::ssl_add_chain_cert(ssl, c)?;
            }
            ext::ssl_use_private_key(ssl, &cert.key)
        };
        if let Err(e) = set() {
            // The handshake then fails for want of a certificate; the client sees an alert.
            log::warn!("TLS: cannot use the certificate for {:?}: {e}", cert.names);
        }
    }

    /// The client's certificate, verified by OpenSSL, for the HTTP layer: only on a listener
    /// that asks for one.
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.0.load().client_auth.as_ref()?;
        PeerCert::from_ssl(ssl).map(PeerCert::into_extension)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(names: &[&[&str]]) -> ServerTls {
        let certs: Vec<Cert> = names
            .iter()
            .map(|n| {
                let k = rcgen::KeyPair::generate().unwrap();
                let c = rcgen::CertificateParams::new(
                    n.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )
                .unwrap()
                .self_signed(&k)
                .unwrap();
                let x = X509::from_pem(c.pem().as_bytes()).unwrap();
                Cert {
                    names: names_of(&x),
                    chain: vec![x],
                    key: PKey::private_key_from_pem(k.serialize_pem().as_bytes()).unwrap(),
                }
            })
            .collect();
        ServerTls::index(certs, false, true)
    }

    #[test]
    fn sni_picks_exact_then_one_label_wildcard_then_the_first() {
        let t = tls(&[&["a.test"], &["b.test", "*.w.test"], &["x.w.test"]]);
        let pick = |sni| t.select(sni).names[0].clone();
        assert_eq!(pick(Some("B.test.")), "b.test");
        assert_eq!(pick(Some("y.w.test")), "b.test");
        assert_eq!(pick(Some("x.w.test")), "x.w.test", "exact beats wildcard");
        assert_eq!(
            pick(Some("z.y.w.test")),
            "a.test",
            "a wildcard is one label"
        );
        assert_eq!(pick(Some("w.test")), "a.test");
        assert_eq!(pick(None), "a.test");
    }
}
