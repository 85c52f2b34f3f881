//! A gateway running inside the test process, built from the library with a DNS resolver the
//! test controls. Everything else is real: the Pingora server, its listeners and background
//! services, the upstream servers and the HTTP requests. Use it only where a test must change
//! what a name resolves to; everything else should run the real binary (`Gateway`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};

use super::{free_port, gateway_yaml, request, request_bytes, Resp};

/// What a name answers: its addresses, or a failure message.
type Answers = HashMap<String, Result<Vec<IpAddr>, String>>;

/// A DNS test double: each name answers what the test last set, or fails.
#[derive(Clone, Default)]
pub struct Dns(Arc<Mutex<Answers>>);

impl Dns {
    pub fn set(&self, host: &str, ips: &[SocketAddr]) {
        let ips = ips.iter().map(|a| a.ip()).collect();
        self.0.lock().unwrap().insert(host.to_owned(), Ok(ips));
    }

    pub fn fail(&self, host: &str, why: &str) {
        self.0
            .lock()
            .unwrap()
            .insert(host.to_owned(), Err(why.to_owned()));
    }
}

impl tollgate::upstream::discovery::Resolver for Dns {
    fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        match self.0.lock().unwrap().get(host) {
            Some(Ok(ips)) => Ok(ips.clone()),
            Some(Err(e)) => Err(io::Error::other(e.clone())),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "unknown name")),
        }
    }
}

/// Never asks the server to stop: it lives until the test process exits.
struct Never;

#[async_trait::async_trait]
impl ShutdownSignalWatch for Never {
    async fn recv(&self) -> ShutdownSignal {
        std::future::pending().await
    }
}

pub struct LocalGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl LocalGateway {
    /// Build the gateway from `body` with `dns` as its resolver, run it on its own thread and
    /// wait until it serves.
    pub fn start(body: &str, dns: &Dns) -> LocalGateway {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // The access log would interleave with the test output: keep it in the temp dir.
        let body = format!(
            "access_log: {{path: \"{}\"}}\n{body}",
            dir.path().join("access.log").display()
        );
        let yaml = gateway_yaml(dir.path(), addr, admin, &body);
        let loaded = tollgate::gateway::load_str_with(&yaml, Arc::new(dns.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let server = tollgate::server::build(loaded, Opt::default());
        std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(Never),
            })
        });
        let gw = LocalGateway {
            addr,
            admin,
            _dir: dir,
        };
        // The admin service can listen before the proxy does: wait for both.
        assert!(
            super::eventually(Duration::from_secs(10), || gw
                .try_admin_get("/health")
                .is_ok()
                && std::net::TcpStream::connect(gw.addr).is_ok()),
            "in-process gateway did not start"
        );
        gw
    }

    pub fn get(&self, path: &str) -> Resp {
        let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        request_bytes(self.addr, req.as_bytes()).expect("request")
    }

    fn try_admin_get(&self, path: &str) -> io::Result<Resp> {
        request(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
    }

    /// The `/health` entry of upstream `name`.
    pub fn upstream(&self, name: &str) -> serde_json::Value {
        self.try_admin_get("/health").expect("admin /health").json()["upstreams"][name].clone()
    }

    /// `(address, healthy, circuit)` of each backend of upstream `name`, as `/health` says.
    pub fn backends(&self, name: &str) -> Vec<(String, bool, String)> {
        self.upstream(name)["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| {
                (
                    b["address"].as_str().unwrap_or("").to_owned(),
                    b["healthy"].as_bool().unwrap_or(false),
                    b["circuit"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}
