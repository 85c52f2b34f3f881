//! Assemble the Pingora server: the data-plane proxy service and the admin service.

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::Opt;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::conn::proxy_protocol::{PreTls, ProxyProtocol};
use crate::conn::{ConnLimits, Front, Gate, Guards};
use crate::gateway::Loaded;
use crate::listen::ServiceKey;
use crate::live::Live;
use crate::notify::Notifier;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::observe::Observe;
use crate::proxy::Tollgate;
use crate::upstream::health::FirstRound;
use crate::upstream::trust;

/// Socket buffers of an accepted client connection. Pingora's default puts a read buffer
/// (zeroed, so resident) under every connection, idle or not. Pingora's HTTP/1 code reads heads
/// and bodies into buffers of its own, so reads go straight to the socket (no second buffer, no
/// extra copy).
///
/// Writes are coalesced above, by the connection's [`crate::conn::Guarded`] stream, whose
/// buffer exists only while a response is being written; Pingora's
/// (`DEFAULT_L4_WRITE_BUFFER_SIZE`) would be held for the connection's whole life. A TLS
/// listener keeps Pingora's under the TLS stream too, so a handshake's flight leaves in one
/// write: a TLS connection holds far more OpenSSL state anyway.
pub fn client_buffers(tls: bool) -> L4BufferSettings {
    L4BufferSettings::new(0, if tls { DEFAULT_L4_WRITE_BUFFER_SIZE } else { 0 })
}

/// Serve until told to stop (SIGTERM, SIGINT, or SIGQUIT after an upgrade's hand-over), then
/// write out what the access log and the trace exporter still hold, and exit.
///
/// Under a service manager (`$NOTIFY_SOCKET`), the process also tells it when it is ready,
/// reloading or stopping ([`crate::notify`]).
pub fn run(loaded: Loaded, opt: Opt) -> ! {
    let notifier = Notifier::from_env().map(Arc::new);
    // SIGHUP reloads once the reload service runs; until then it must not end the process.
    crate::reload::ignore_hangup();
    let (server, live) = assemble(loaded, opt, notifier.clone());
    let mut args = pingora::server::RunArgs::default();
    if let Some(n) = notifier {
        args.shutdown_signal = Box::new(crate::notify::Announcing(n));
    }
    server.run(args);
    // The config current at the end: a reload may have replaced the first one.
    let last = live.current();
    last.observe().access_log.flush();
    if let Some(t) = &last.gateway().tracing {
        t.flusher().flush();
    }
    std::process::exit(0)
}

/// Build a ready-to-run server from a validated config and Pingora's command-line options
/// (`-u` upgrade, `-d` daemonize).
pub fn build(loaded: Loaded, opt: Opt) -> Server {
    assemble(loaded, opt, None).0
}

fn assemble(loaded: Loaded, opt: Opt, notifier: Option<Arc<Notifier>>) -> (Server, Live) {
    let Loaded {
        server: conf,
        gateway,
        path,
    } = loaded;
    let gw = Arc::new(gateway);
    let layout = crate::observe::metrics::Layout::of(gw.router.routes(), &gw.rate_limits);
    let proxy_protocol = gw.listen.iter().any(|l| l.proxy_protocol);
    let obs = Arc::new(Observe {
        metrics: Metrics::with_layout(layout).with_proxy_protocol(proxy_protocol),
        access_log: Arc::new(AccessLog::new(gw.access_log.clone())),
        refusals: Arc::new(crate::observe::refusals::Refusals::new(
            gw.admin.as_ref().map_or(0, |a| a.refusals_kept),
        )),
    });
    // The one proxy every service and engine serves through: its generation is swapped by
    // `SIGHUP` (`crate::inplace`).
    let live = Live::new(Tollgate::new(gw.clone(), obs.clone(), &conf));
    let fixed_server =
        Arc::new(crate::inplace::copy_server_conf(&conf).expect("Pingora's settings serialize"));
    let state_sock = crate::handover::state_sock_path(&conf.upgrade_sock);
    let upgrading = opt.upgrade;
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // With `-u`, this returns once the old process has handed its listening sockets over; it
    // still serves (and keeps its state) for about 5 s more. Take that state now, before this
    // process serves anything.
    server.bootstrap();
    if upgrading {
        crate::handover::take_over(&gw, &state_sock);
    }

    // Pingora's HTTP app behind the connection guards, one service per distinct set of
    // protocol options (Pingora's h2c is a service option), the guards shared by all.
    let guards = Guards::new(ConnLimits {
        head_timeout: gw.limits.head_timeout,
        keepalive_timeout: gw.limits.keepalive_timeout,
        max_connections_per_ip: gw.limits.max_connections_per_ip,
    });
    // What `proxy_protocol` listeners read before anything else, shared by their services.
    let pp = proxy_protocol.then(|| {
        let live = live.clone();
        Arc::new(ProxyProtocol::new(
            gw.trusted_proxies.clone(),
            gw.limits.head_timeout,
            move |why| {
                let gen = live.current();
                gen.observe().metrics.proxy_protocol_refused(why.label())
            },
        ))
    });
    // Each TLS listener's certificates, by `listen` index: a reload replaces them.
    let mut listener_certs = Vec::new();
    let mut keys: Vec<ServiceKey> = Vec::new();
    for l in &gw.listen {
        if !keys.contains(&l.service_key()) {
            keys.push(l.service_key());
        }
    }
    // The proxy's connectors serve every upstream: they hold the system trust store if one
    // of them is verified against it.
    let system_store = gw
        .upstreams
        .iter()
        .any(|u| trust::needs_system_store(u.tls.as_ref()));
    for key in keys {
        let tollgate = || live.clone();
        let mut app = trust::build_connectors(system_store, || {
            pingora::proxy::http_proxy(&server.configuration, tollgate())
        });
        let mut options = HttpServerOptions::default();
        options.h2c = key.h2c;
        app.server_options = Some(options);
        let name = match (key.h2c, key.proxy_protocol) {
            (false, false) => "tollgate",
            (true, false) => "tollgate h2c",
            (false, true) => "tollgate proxy-protocol",
            (true, true) => "tollgate h2c proxy-protocol",
        };
        // With `fast_path: false` it serves no request, and still answers refused heads.
        let mut gate = Gate::with_own(app, tollgate(), &guards);
        let pp = pp.as_ref().filter(|_| key.proxy_protocol);
        if let Some(pp) = pp {
            gate = gate.with_proxy_protocol(pp.clone());
        }
        let mut front = Front::new(name, gate);
        for (i, l) in gw.listen.iter().enumerate() {
            if l.service_key() != key {
                continue;
            }
            match &l.tls {
                Some(tls) => match tls.settings() {
                    Ok((settings, certs)) => {
                        listener_certs.push((i, certs));
                        let pingora = front.pingora();
                        if let Some(pp) = pp {
                            let pre_tls = Arc::new(PreTls(pp.clone()));
                            pingora.endpoints().set_pre_tls_callback(pre_tls);
                        }
                        pingora.add_listener(
                            ListenerConfig::tcp(l.addr.as_str())
                                .tls(settings)
                                .l4_buffer(client_buffers(true)),
                        )
                    }
                    // Only OpenSSL failing to create a context lands here: nothing to serve.
                    Err(e) => {
                        log::error!("cannot set up TLS on {}: {e}", l.addr);
                        std::process::exit(1);
                    }
                },
                // Cleartext HTTP/1: tollgate's own accept loop (`conn::accept`).
                None if !key.h2c && gw.fast_path => front.add_plain(&l.addr),
                None => front.pingora().add_listener(
                    ListenerConfig::tcp(l.addr.as_str()).l4_buffer(client_buffers(false)),
                ),
            }
        }
        server.add_service(front);
    }

    // Each generation's health checks, re-resolution and key-set refresh, and the signals
    // that reload the config (SIGHUP) and reopen the access log (SIGUSR1).
    let checked = gw.upstreams.iter().filter(|u| u.health.is_some()).count();
    let first_round = FirstRound::new(checked);
    let reloads = Arc::new(crate::inplace::Reloads::default());
    server.add_service(pingora::services::background::background_service(
        "reload",
        crate::inplace::Reloader {
            live: live.clone(),
            path,
            fixed: crate::inplace::Fixed {
                server: fixed_server,
                system_store,
            },
            reloads: reloads.clone(),
            first_round: first_round.clone(),
            listener_certs,
        },
    ));

    // Serve this process's state to its successor (a background service: it must start after
    // daemonizing, which forks).
    server.add_service(pingora::services::background::background_service(
        "state handover",
        crate::handover::StateServer {
            live: live.clone(),
            path: state_sock,
        },
    ));

    if let Some(notifier) = notifier {
        let mut listen: Vec<String> = gw.listen.iter().map(|l| l.addr.clone()).collect();
        listen.extend(gw.admin.as_ref().map(|a| a.address.clone()));
        let health = checked > 0;
        server.add_service(pingora::services::background::background_service(
            "service manager notifications",
            crate::notify::Readiness {
                notifier,
                listen,
                health: health.then_some(first_round),
                watchdog: crate::notify::watchdog_interval(),
            },
        ));
    }

    if let Some(addr) = gw.admin.as_ref().map(|a| &a.address) {
        let mut admin = Service::new(
            "tollgate admin".to_owned(),
            Admin::new(live.clone(), reloads),
        );
        admin.threads = Some(1);
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    (server, live)
}
