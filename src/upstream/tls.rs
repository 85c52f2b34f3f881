//! `upstreams.N.tls`: TLS to an upstream, verified by default.
//!
//! `tls: true` or `tls: {sni: NAME, verify: true|false, ca: FILE}`. The name sent as SNI and
//! checked against the upstream's certificate is `sni`, else the host name the targets are
//! written with. Pingora skips verification entirely when the SNI is empty
//! (`pingora_core::connectors::tls::connect`), so verifying an upstream given by IP address
//! needs `sni`: without it the config is refused rather than silently unverified. The `ca`
//! bundle is read at config time.

use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::tls::x509::X509;
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::config::ConfigErrors;

/// The `tls` key as written: `true`/`false` or the full form.
#[derive(Debug, Default)]
pub struct UpstreamTlsFile {
    pub enabled: bool,
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub ca: Option<String>,
}

impl<'de> Deserialize<'de> for UpstreamTlsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default)]
            sni: Option<String>,
            #[serde(default)]
            verify: Option<bool>,
            #[serde(default)]
            ca: Option<String>,
        }
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Bool(enabled) => Ok(UpstreamTlsFile {
                enabled,
                ..Default::default()
            }),
            v @ serde_yaml::Value::Mapping(_) => {
                let f: Full = serde_yaml::from_value(v).map_err(de::Error::custom)?;
                Ok(UpstreamTlsFile {
                    enabled: true,
                    sni: f.sni,
                    verify: f.verify,
                    ca: f.ca,
                })
            }
            _ => Err(de::Error::custom(
                "tls is true, false or {sni: NAME, verify: true|false, ca: FILE}",
            )),
        }
    }
}

/// Compiled TLS settings of an upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Sent as SNI and verified; empty: none.
    pub sni: String,
    pub verify: bool,
    /// Trust these instead of the system roots.
    pub ca: Option<Arc<CaType>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl UpstreamTls {
    /// Compile `t` for the upstream at `base`, whose host-name targets are `hosts`.
    pub fn compile(
        base: &str,
        t: UpstreamTlsFile,
        hosts: &[&str],
        errs: &mut ConfigErrors,
    ) -> Option<UpstreamTls> {
        if !t.enabled {
            return None;
        }
        let base = format!("{base}.tls");
        let verify = t.verify.unwrap_or(true);
        let sni = match t.sni {
            Some(s) if s.trim().is_empty() => {
                errs.push(
                    format!("{base}.sni"),
                    "must not be empty (leave it out instead)",
                );
                String::new()
            }
            Some(s) => s.trim().to_owned(),
            None => {
                let mut distinct: Vec<&str> = hosts.to_vec();
                distinct.sort_unstable();
                distinct.dedup();
                if distinct.len() > 1 {
                    errs.push(
                        format!("{base}.sni"),
                        format!(
                            "the targets name several hosts ({}): set the one name to send and verify",
                            distinct.join(", ")
                        ),
                    );
                }
                distinct.first().map(|h| h.to_string()).unwrap_or_default()
            }
        };
        if verify && sni.is_empty() {
            errs.push(
                base.as_str(),
                "verifying the upstream's certificate needs a host name, and the targets are IP \
                 addresses: set sni to the name in its certificate (or verify: false)",
            );
        }
        let ca = t.ca.and_then(|file| {
            let path = format!("{base}.ca");
            if !verify {
                errs.push(path, "only applies with verify: true");
                return None;
            }
            read_ca(&path, &file, errs)
        });
        Some(UpstreamTls { sni, verify, ca })
    }

    /// A TLS peer for `addr` with these settings.
    pub fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        self.verification(&mut peer.options);
        peer
    }

    /// Verification settings onto a peer's options (a proxy peer or a health check's).
    pub fn verification(&self, o: &mut PeerOptions) {
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        o.ca.clone_from(&self.ca);
    }
}

/// A `ca` bundle: the PEM certificates in `file`, to trust instead of the system roots; an
/// error at `path` when it cannot be read or holds none.
pub fn read_ca(path: &str, file: &str, errs: &mut ConfigErrors) -> Option<Arc<CaType>> {
    match std::fs::read(file) {
        Err(e) => errs.push(path, format!("cannot read {file:?}: {e}")),
        Ok(pem) => match X509::stack_from_pem(&pem) {
            Ok(certs) if !certs.is_empty() => return Some(Arc::new(certs.into_boxed_slice())),
            _ => errs.push(path, format!("{file:?} holds no PEM certificate")),
        },
    }
    None
}
