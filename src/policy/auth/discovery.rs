//! OpenID Connect discovery: `issuer: https://idp` with `discovery: true` reads
//! `<issuer>/.well-known/openid-configuration` for the key set's URL (`jwks_uri`).
//!
//! The document's `issuer` must equal the configured one exactly (OpenID Connect Discovery
//! 1.0 §4.3): a mismatch is a configuration error, so the start fails, naming the key path.
//! Everything after the discovery is a remote JWKS ([`super::remote`]): refresh, min_refresh,
//! on_unavailable and the state directory's copy. The document is read again at most once
//! per `refresh`, and after a fetch of the set failed (the set may have moved).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Deserialize;

use super::fetch::{Client, HttpsUrl};

/// The path appended to the issuer.
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// A provider's discovery: where the document is, and the `jwks_uri` it last gave.
pub struct Discovery {
    /// As configured (and as the document must name it).
    pub issuer: String,
    /// `<issuer>/.well-known/openid-configuration`.
    pub document: HttpsUrl,
    jwks_uri: ArcSwapOption<HttpsUrl>,
    /// CLOCK_MONOTONIC milliseconds of the last good discovery (0: none, or to be redone).
    discovered: AtomicU64,
}

/// Why the key set's URL is not known.
#[derive(Debug)]
pub enum Failed {
    /// The document could not be read or is not usable (the identity provider's problem;
    /// the last good keys are kept).
    Unavailable(String),
    /// The document names another issuer: the configuration is wrong.
    WrongIssuer(String),
}

/// The part of the discovery document tollgate reads.
#[derive(Deserialize)]
struct Document {
    issuer: Option<String>,
    jwks_uri: Option<String>,
}

impl Discovery {
    /// The discovery of `issuer`, or why it cannot have one (the message for `issuer`'s key).
    pub fn new(issuer: &str) -> Result<Discovery, String> {
        HttpsUrl::parse(issuer).map_err(|e| format!("with discovery: true, {e}"))?;
        if issuer.contains(['?', '#']) {
            return Err(format!(
                "{issuer:?}: an issuer has no query or fragment (OpenID Connect Discovery §2)"
            ));
        }
        // §4: a terminating `/` of the issuer is removed before the well-known path.
        let document = HttpsUrl::parse(&format!("{}{WELL_KNOWN}", issuer.trim_end_matches('/')))?;
        Ok(Discovery {
            issuer: issuer.to_owned(),
            document,
            jwks_uri: ArcSwapOption::empty(),
            discovered: AtomicU64::new(0),
        })
    }

    /// The `jwks_uri` found last, if any.
    pub fn jwks_uri(&self) -> Option<Arc<HttpsUrl>> {
        self.jwks_uri.load_full()
    }

    /// The key set's URL: the one found, or (none yet, or older than `refresh`) the one the
    /// document gives now.
    pub async fn url(&self, client: &Client, refresh: Duration) -> Result<Arc<HttpsUrl>, Failed> {
        let now = crate::clock::mono_millis();
        let at = self.discovered.load(Relaxed);
        if let Some(u) = self.jwks_uri.load_full() {
            if at != 0 && now.saturating_sub(at) < refresh.as_millis() as u64 {
                return Ok(u);
            }
        }
        let doc = client
            .get(&self.document)
            .await
            .map_err(|e| Failed::Unavailable(format!("the discovery document: {e}")))?;
        let url = Arc::new(self.read(&doc)?);
        if self
            .jwks_uri
            .load()
            .as_ref()
            .is_some_and(|old| old.text != url.text)
        {
            log::info!(
                "{}: the key set moved to {} (jwks_uri)",
                self.document.text,
                url.text
            );
        }
        self.jwks_uri.store(Some(url.clone()));
        self.discovered.store(now.max(1), Relaxed);
        Ok(url)
    }

    /// The key set could not be fetched from the URL found: read the document again next time.
    pub fn stale(&self) {
        self.discovered.store(0, Relaxed);
    }

    /// Check a discovery document: its issuer, and its `jwks_uri`.
    fn read(&self, doc: &[u8]) -> Result<HttpsUrl, Failed> {
        let at = &self.document.text;
        let d: Document = serde_json::from_slice(doc)
            .map_err(|e| Failed::Unavailable(format!("not an OpenID discovery document: {e}")))?;
        match d.issuer {
            Some(i) if i == self.issuer => {}
            Some(i) => {
                return Err(Failed::WrongIssuer(format!(
                    "{at} names the issuer {i:?}, not {:?} as configured: they must be equal \
                     (OpenID Connect Discovery 1.0 §4.3)",
                    self.issuer
                )))
            }
            None => {
                return Err(Failed::Unavailable(
                    "the discovery document has no issuer".into(),
                ))
            }
        }
        let uri = d
            .jwks_uri
            .ok_or_else(|| Failed::Unavailable("the discovery document has no jwks_uri".into()))?;
        HttpsUrl::parse(&uri).map_err(|e| Failed::Unavailable(format!("its jwks_uri {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_under_the_issuer_without_its_last_slash() {
        let d = Discovery::new("https://idp.example/realms/x/").unwrap();
        assert_eq!(
            d.document.text,
            "https://idp.example/realms/x/.well-known/openid-configuration"
        );
        let d = Discovery::new("https://idp.example").unwrap();
        assert_eq!(
            d.document.text,
            "https://idp.example/.well-known/openid-configuration"
        );
        for bad in [
            "http://idp.example",
            "idp.example",
            "https://idp.example/?a=b",
        ] {
            assert!(Discovery::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_issuer_must_match_exactly_and_jwks_uri_be_https() {
        let d = Discovery::new("https://idp.example").unwrap();
        let ok = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/k"}"#;
        assert_eq!(d.read(ok).unwrap().text, "https://idp.example/k");
        let other = br#"{"issuer":"https://idp.example/","jwks_uri":"https://idp.example/k"}"#;
        assert!(matches!(d.read(other), Err(Failed::WrongIssuer(_))));
        for bad in [
            &br#"{"issuer":"https://idp.example"}"#[..],
            br#"{"issuer":"https://idp.example","jwks_uri":"http://idp.example/k"}"#,
            br#"{"jwks_uri":"https://idp.example/k"}"#,
            b"<html>",
        ] {
            assert!(matches!(d.read(bad), Err(Failed::Unavailable(_))));
        }
    }
}
