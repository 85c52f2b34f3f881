//! The system trust store: loaded only by the connectors that verify against it.
//!
//! Every Pingora connector is an OpenSSL `SslConnector` that parses the system CA bundle when it
//! is built (`SslConnector::builder`, then `pingora_core::connectors::tls::Connector::new` again)
//! and keeps it for the process's life; the proxy builds two, and so does every HTTP health check
//! (a TCP check one). Only a verified TLS upstream without a `ca` of its own uses it (one with a
//! `ca` gets a store of just those certificates, one with `verify: false` none), so every other
//! connector is built with OpenSSL's bundle path (`SSL_CERT_FILE`) pointed at an empty file. The
//! certificate directory is looked up lazily, on a verification against the connector's own
//! store, which then never happens.
//!
//! OpenSSL reads that path only from the environment. Connectors are built at startup, before the
//! server's threads; the lock serialises concurrent config compilations (the unit tests), so one
//! never sees another's empty path. Once the probe below has run, the variable exists wherever
//! there is a bundle, so switching it replaces it in place in the C environment, never
//! reallocating under a concurrent `getenv`.

use std::ffi::OsString;
use std::sync::{Mutex, Once, PoisonError};

use super::tls::UpstreamTls;

/// The variable OpenSSL reads the bundle's path from (`X509_get_default_cert_file_env`).
const BUNDLE: &str = "SSL_CERT_FILE";
/// Exists (so `openssl-probe` keeps it) and holds no certificate.
const EMPTY: &str = "/dev/null";

/// Does verifying this upstream need the system trust store?
pub fn needs_system_store(tls: Option<&UpstreamTls>) -> bool {
    tls.is_some_and(|t| t.verify && t.ca.is_none())
}

/// Runs `build`, which builds Pingora connectors; they load the system trust store only if
/// `system_store`.
pub fn build_connectors<T>(system_store: bool, build: impl FnOnce() -> T) -> T {
    static SERIAL: Mutex<()> = Mutex::new(());
    static PROBED: Once = Once::new();
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    // Pingora sets the paths `openssl-probe` finds at its first connector. Do it here first,
    // with the real environment, so the store a later connector loads is the one Pingora
    // would have found, even if Pingora's own probe runs under the empty path below.
    // SAFETY: under `SERIAL`; at startup, before other threads read the environment.
    PROBED.call_once(|| unsafe { openssl_probe::init_openssl_env_vars() });
    if system_store {
        return build();
    }
    let _restore = Restore(std::env::var_os(BUNDLE));
    std::env::set_var(BUNDLE, EMPTY);
    build()
}

/// Puts `SSL_CERT_FILE` back as it was, also if the build panics.
struct Restore(Option<OsString>);

impl Drop for Restore {
    fn drop(&mut self) {
        match self.0.take() {
            Some(v) => std::env::set_var(BUNDLE, v),
            None => std::env::remove_var(BUNDLE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::tls::CaType;
    use std::sync::Arc;

    fn tls(verify: bool, ca: bool) -> UpstreamTls {
        UpstreamTls {
            sni: "up.test".into(),
            verify,
            ca: ca.then(|| Arc::new(CaType::default())),
        }
    }

    #[test]
    fn only_a_verified_upstream_without_its_own_ca_needs_the_system_store() {
        assert!(!needs_system_store(None));
        assert!(needs_system_store(Some(&tls(true, false))));
        assert!(!needs_system_store(Some(&tls(true, true))));
        assert!(!needs_system_store(Some(&tls(false, false))));
    }

    #[test]
    fn the_bundle_path_is_empty_only_during_a_build_without_the_store() {
        // Read inside builds, under their lock: other tests build connectors concurrently.
        let read = || std::env::var_os(BUNDLE);
        let before = build_connectors(true, read);
        let during = build_connectors(false, read);
        assert_eq!(during.as_deref(), Some(std::ffi::OsStr::new(EMPTY)));
        assert_eq!(build_connectors(true, read), before);
    }
}
