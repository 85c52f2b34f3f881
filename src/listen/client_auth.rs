//! Client certificates on a TLS listener (`tls.client_auth: {ca, required}`), and what the
//! HTTP layer gets to know of the certificate a client presented.
//!
//! The CA file is read when the config is compiled (start, `-t`, `explain`, and the new
//! process of a reload), like the listener's own certificates. OpenSSL verifies the client's
//! chain during the handshake: a certificate from another CA, or expired, is refused there;
//! `required: true` also refuses a client that sends none. After the handshake, the
//! certificate's names and digest are taken once per connection into a [`PeerCert`], stored
//! in the connection's TLS digest, where both HTTP engines find it ([`PeerCert::of`]); an
//! `mtls` auth provider reads it only on the routes that name it.

use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use openssl::stack::Stack;
use pingora::protocols::tls::SslDigest;
use pingora::tls::hash::MessageDigest;
use pingora::tls::nid::Nid;
use pingora::tls::ssl::{SslAcceptorBuilder, SslRef, SslVerifyMode};
use pingora::tls::x509::store::{X509Store, X509StoreBuilder};
use pingora::tls::x509::{X509PurposeId, X509StoreContext, X509};
use serde::Deserialize;

use crate::config::ConfigErrors;

/// `client_auth: {ca: FILE, required: true|false}` under a listener's `tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthFile {
    pub ca: String,
    #[serde(default = "required_by_default")]
    pub required: bool,
}

fn required_by_default() -> bool {
    true
}

/// A listener's compiled client-certificate settings.
pub struct ClientAuth {
    /// The file the CAs came from, as written (for `explain` and logs).
    pub ca_file: String,
    cas: Vec<X509>,
    pub required: bool,
    /// The session id context: sessions are resumable only where these settings are the same.
    sid_ctx: [u8; 32],
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("ca_file", &self.ca_file)
            .field("cas", &self.cas.len())
            .field("required", &self.required)
            .finish()
    }
}

impl ClientAuth {
    /// A digest of the CAs and `required`: equal when both verify alike.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.sid_ctx
    }

    /// Read and check the CA file of `f` (at `base`, e.g. `listen[1].tls.client_auth`).
    pub fn compile(base: &str, f: ClientAuthFile, errs: &mut ConfigErrors) -> Option<ClientAuth> {
        let path = format!("{base}.ca");
        let pem = match std::fs::read(&f.ca) {
            Ok(b) => b,
            Err(e) => {
                errs.push(path, format!("cannot read {:?}: {e}", f.ca));
                return None;
            }
        };
        let cas = match X509::stack_from_pem(&pem) {
            Ok(cas) if !cas.is_empty() => cas,
            _ => {
                errs.push(path, format!("{:?} holds no PEM certificate", f.ca));
                return None;
            }
        };
        let mut sid_ctx = [0u8; 32];
        let digest = pingora::tls::hash::hash(MessageDigest::sha256(), &pem).ok()?;
        sid_ctx.copy_from_slice(&digest);
        sid_ctx[0] ^= u8::from(f.required);
        Some(ClientAuth {
            ca_file: f.ca,
            cas,
            required: f.required,
            sid_ctx,
        })
    }

    fn store(&self) -> Result<X509Store, pingora::tls::error::ErrorStack> {
        let mut b = X509StoreBuilder::new()?;
        // As OpenSSL checks a client's chain in the handshake (for `verify`).
        b.set_purpose(X509PurposeId::SSL_CLIENT)?;
        for ca in &self.cas {
            b.add_cert(ca.clone())?;
        }
        Ok(b.build())
    }

    /// Ask clients for a certificate from these CAs (and refuse them without one when
    /// `required`).
    pub fn apply(&self, b: &mut SslAcceptorBuilder) -> Result<(), pingora::tls::error::ErrorStack> {
        b.set_verify_cert_store(self.store()?)?;
        let mut names = Stack::new()?;
        for ca in &self.cas {
            names.push(ca.subject_name().to_owned()?)?;
        }
        // The CAs named in the certificate request, so a client holding several certificates
        // can pick the right one.
        b.set_client_ca_list(names);
        let mut mode = SslVerifyMode::PEER;
        if self.required {
            mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
        }
        b.set_verify(mode);
        // Without it, OpenSSL fails the handshake of a client resuming a session on a server
        // that verifies peers; with it, only sessions made under the same CAs resume.
        b.set_session_id_context(&self.sid_ctx)
    }

    /// Whether `cert` (with `chain`, its intermediates) would be accepted at the handshake:
    /// `Err` says why not (for `tollgate explain`).
    pub fn verify(&self, cert: &X509, chain: &[X509]) -> Result<(), String> {
        let store = self.store().map_err(|e| e.to_string())?;
        let mut inter = Stack::new().map_err(|e| e.to_string())?;
        for c in chain {
            inter.push(c.clone()).map_err(|e| e.to_string())?;
        }
        let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
        let verdict = ctx
            .init(&store, cert, &inter, |c| {
                Ok(c.verify_cert()?.then_some(()).ok_or(c.error()))
            })
            .map_err(|e| e.to_string())?;
        verdict.map_err(|e| e.error_string().to_owned())
    }
}

/// What the HTTP layer knows of the certificate a client presented, taken once per
/// connection: the names an `mtls` provider may map to a consumer, and the forms it may
/// forward. A value that cannot be a header value (control characters) is left out.
pub struct PeerCert {
    cert: X509,
    /// The subject's (first) common name.
    pub cn: Option<HeaderValue>,
    /// The first SAN of each kind.
    pub san_dns: Option<HeaderValue>,
    pub san_email: Option<HeaderValue>,
    pub san_uri: Option<HeaderValue>,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: HeaderValue,
    /// The PEM, percent-encoded; made when first asked for.
    escaped: OnceLock<HeaderValue>,
}

impl std::fmt::Debug for PeerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("PeerCert")
            .field("cn", &self.cn)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl PeerCert {
    /// The client's certificate on a connection whose TLS handshake is done, if it sent one.
    pub fn from_ssl(ssl: &SslRef) -> Option<PeerCert> {
        PeerCert::new(ssl.peer_certificate()?)
    }

    pub fn new(cert: X509) -> Option<PeerCert> {
        let value = |s: &str| HeaderValue::from_str(s).ok();
        let cn = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok())
            .and_then(|s| value(&s));
        let (mut san_dns, mut san_email, mut san_uri) = (None, None, None);
        if let Some(names) = cert.subject_alt_names() {
            for n in names.iter() {
                if san_dns.is_none() {
                    san_dns = n.dnsname().and_then(value);
                }
                if san_email.is_none() {
                    san_email = n.email().and_then(value);
                }
                if san_uri.is_none() {
                    san_uri = n.uri().and_then(value);
                }
            }
        }
        let digest = cert.digest(MessageDigest::sha256()).ok()?;
        let fingerprint = HeaderValue::from_str(&hex::encode(digest)).ok()?;
        Some(PeerCert {
            cert,
            cn,
            san_dns,
            san_email,
            san_uri,
            fingerprint,
            escaped: OnceLock::new(),
        })
    }

    /// The certificate a client presented on the connection of `digest`.
    pub fn of(digest: &SslDigest) -> Option<&PeerCert> {
        digest.extension.get::<PeerCert>()
    }

    /// The certificate as PEM, percent-encoded as a URI component (nginx's
    /// `$ssl_client_escaped_cert`).
    pub fn escaped_pem(&self) -> HeaderValue {
        self.escaped
            .get_or_init(|| {
                let pem = self.cert.to_pem().unwrap_or_default();
                HeaderValue::from_str(&escape_component(&pem))
                    .unwrap_or(HeaderValue::from_static(""))
            })
            .clone()
    }

    /// The digest extension for Pingora to keep with the connection.
    pub fn into_extension(self) -> Arc<dyn std::any::Any + Send + Sync> {
        Arc::new(self)
    }
}

/// Percent-encode all but RFC 3986's unreserved characters.
fn escape_component(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 3 / 2);
    for &c in b {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_is_escaped_as_nginx_does() {
        assert_eq!(
            escape_component(b"-----BEGIN CERTIFICATE-----\nab+/c=\n"),
            "-----BEGIN%20CERTIFICATE-----%0Aab%2B%2Fc%3D%0A"
        );
    }

    #[test]
    fn names_and_fingerprint_of_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["svc.test".to_owned()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "billing");
        p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@example.com".try_into().unwrap(),
        ));
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.com/billing".try_into().unwrap(),
        ));
        let c = p.self_signed(&key).unwrap();
        let x = X509::from_der(c.der()).unwrap();
        let pc = PeerCert::new(x).unwrap();
        assert_eq!(pc.cn.as_ref().unwrap(), "billing");
        assert_eq!(pc.san_dns.as_ref().unwrap(), "svc.test");
        assert_eq!(pc.san_email.as_ref().unwrap(), "ops@example.com");
        assert_eq!(pc.san_uri.as_ref().unwrap(), "spiffe://example.com/billing");
        use sha2::Digest;
        assert_eq!(
            pc.fingerprint.to_str().unwrap(),
            hex::encode(sha2::Sha256::digest(c.der()))
        );
    }
}
