//! The client side of a TLS handshake with the gateway (OpenSSL, as a real client would).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use openssl::ssl::Ssl;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// Connect to `addr` and complete the handshake of `ssl`; OpenSSL's error (with the
/// gateway's alert, if it sent one) when it fails.
pub async fn tls_handshake(ssl: Ssl, addr: SocketAddr) -> Result<SslStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = SslStream::new(ssl, tcp).unwrap();
    Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// A self-signed certificate for `names`, written as `stem.pem` / `stem.key` in `dir`.
pub fn cert(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let c = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cp, kp) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&cp, c.pem()).unwrap();
    std::fs::write(&kp, key.serialize_pem()).unwrap();
    (cp, kp)
}

/// The DNS names in the certificate the gateway presented.
pub fn dns_names(s: &SslStream<TcpStream>) -> Vec<String> {
    let c = s.ssl().peer_certificate().expect("a peer certificate");
    c.subject_alt_names()
        .map(|n| {
            n.iter()
                .filter_map(|g| g.dnsname().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A CA (`tollgate test NAME`) and a `localhost` certificate it signed, written in `dir` as
/// `NAME.pem` (the CA), `NAME-leaf.pem` and `NAME-leaf.key`; their paths in that order.
pub fn ca_and_leaf_files(dir: &Path, name: &str) -> [PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("tollgate test {name}"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = [
        format!("{name}.pem"),
        format!("{name}-leaf.pem"),
        format!("{name}-leaf.key"),
    ]
    .map(|n| dir.join(n));
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], leaf.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    paths
}
