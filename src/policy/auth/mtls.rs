//! `type: mtls`: the caller is the client certificate the TLS listener verified
//! (`listen[i].tls.client_auth`), named by its CN or one of its SANs; the certificate and its
//! SHA-256 fingerprint can be forwarded to the backend.
//!
//! The handshake has done the verification (chain to the listener's CA, validity dates);
//! this provider only maps the [`PeerCert`] the connection carries to an identity.

use http::{HeaderName, HeaderValue};

use super::{Failure, Identity, Reason};
use crate::error::Reject;
use crate::listen::client_auth::PeerCert;

/// Which part of the certificate names the caller (`consumer_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumerFrom {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS name among the subject alternative names.
    SanDns,
    /// The first e-mail address (rfc822Name) among them.
    SanEmail,
    /// The first URI among them (a SPIFFE id, say).
    SanUri,
}

impl ConsumerFrom {
    pub const ALL: [ConsumerFrom; 4] = [
        ConsumerFrom::Cn,
        ConsumerFrom::SanDns,
        ConsumerFrom::SanEmail,
        ConsumerFrom::SanUri,
    ];

    pub fn parse(s: &str) -> Option<ConsumerFrom> {
        ConsumerFrom::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerFrom::Cn => "cn",
            ConsumerFrom::SanDns => "san_dns",
            ConsumerFrom::SanEmail => "san_email",
            ConsumerFrom::SanUri => "san_uri",
        }
    }

    fn of(self, c: &PeerCert) -> Option<&HeaderValue> {
        match self {
            ConsumerFrom::Cn => c.cn.as_ref(),
            ConsumerFrom::SanDns => c.san_dns.as_ref(),
            ConsumerFrom::SanEmail => c.san_email.as_ref(),
            ConsumerFrom::SanUri => c.san_uri.as_ref(),
        }
    }

    /// Why a certificate without this part is refused.
    fn missing(self) -> &'static str {
        match self {
            ConsumerFrom::Cn => "the client certificate has no subject common name (CN)",
            ConsumerFrom::SanDns => "the client certificate has no DNS subject alternative name",
            ConsumerFrom::SanEmail => {
                "the client certificate has no e-mail subject alternative name"
            }
            ConsumerFrom::SanUri => "the client certificate has no URI subject alternative name",
        }
    }
}

/// A compiled `mtls` provider.
#[derive(Debug)]
pub struct Mtls {
    pub consumer_from: ConsumerFrom,
    /// Where the PEM goes, percent-encoded.
    pub forward_certificate: Option<HeaderName>,
    /// Where the SHA-256 hex fingerprint goes.
    pub forward_fingerprint: Option<HeaderName>,
}

/// The challenge of a 401 for want of a certificate (no HTTP scheme exists for it; RFC 9110
/// asks for one in every 401).
pub static WWW_CERT: HeaderValue = HeaderValue::from_static("ClientCertificate");

impl Mtls {
    /// The identity the certificate gives: `Ok(None)` without a certificate.
    pub fn check(&self, cert: Option<&PeerCert>) -> Result<Option<Identity>, Failure> {
        let Some(cert) = cert else { return Ok(None) };
        let Some(name) = self.consumer_from.of(cert) else {
            return Err(Failure {
                reject: Reject::Unauthorized,
                reason: Reason::UnmappedCertificate,
                message: self.consumer_from.missing(),
                www: Some(WWW_CERT.clone()),
            });
        };
        let mut headers = Vec::new();
        if let Some(h) = &self.forward_certificate {
            headers.push((h.clone(), cert.escaped_pem()));
        }
        if let Some(h) = &self.forward_fingerprint {
            headers.push((h.clone(), cert.fingerprint.clone()));
        }
        Ok(Some(Identity {
            consumer: Some(name.clone()),
            headers,
            ..Identity::default()
        }))
    }

    /// For `tollgate explain`.
    pub fn describe(&self) -> String {
        let mut d = format!(
            "mtls, client certificate's {} names the caller",
            self.consumer_from.as_str()
        );
        if let Some(h) = &self.forward_certificate {
            d.push_str(&format!(", certificate forwarded in {h}"));
        }
        if let Some(h) = &self.forward_fingerprint {
            d.push_str(&format!(", SHA-256 fingerprint in {h}"));
        }
        d
    }
}
