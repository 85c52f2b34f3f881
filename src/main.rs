//! The tollgate binary: parse the command line, load and validate the config, run.

#![deny(unsafe_code)]

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;

use tollgate::gateway;

/// Pingora allocates per request (headers, buffers, tasks), and glibc's malloc spends much of
/// that in consolidation; mimalloc's per-thread free lists do not.
#[global_allocator]
static GLOBAL: tollgate::alloc::Mimalloc = tollgate::alloc::Mimalloc;

/// Run before `main`, from the binary's constructors: before the allocator's first
/// allocation, so that not even the start of its arena is backed by huge pages
/// (`tollgate::alloc::no_huge_pages` says why).
#[cfg(target_os = "linux")]
#[used]
#[allow(unsafe_code)] // a constructor entry: the attribute is the only unsafe part
#[link_section = ".init_array"]
static NO_HUGE_PAGES: extern "C" fn() = {
    extern "C" fn before_main() {
        tollgate::alloc::no_huge_pages();
    }
    before_main
};

/// The demo config, embedded so `tollgate --demo` works from any directory.
const DEMO_CONFIG: &str = include_str!("../conf/tollgate.yaml");

/// An API gateway on Pingora. Pingora's own flags (-c, -t, -d, -u) keep their meaning.
#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The YAML config file (Pingora's server keys and tollgate's sections side by side).
    #[arg(short, long)]
    conf: Option<String>,
    /// Validate the config and exit: 0 when valid, 1 with every error listed.
    #[arg(short, long)]
    test: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running instance (graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
    /// Run the embedded demo: the gateway on :8080 with two sample upstreams on :8081/:8082.
    #[arg(long, conflicts_with = "conf")]
    demo: bool,
    #[arg(long, hide = true)]
    nocapture: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mint a JWT with a configured HMAC provider (for demos and tests).
    Token {
        /// The config file holding the provider.
        #[arg(short, long, alias = "config")]
        conf: String,
        /// The name of the jwt provider under `auth`.
        #[arg(long)]
        auth: String,
        /// The subject (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Extra claims, NAME=VALUE (repeatable).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Lifetime, e.g. 1h, 15m.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Zero-downtime reload with FILE, the file the running instance was started with: in
    /// process (SIGHUP) when the change allows, else the graceful upgrade (`tollgate -u -d -c
    /// FILE`, then SIGQUIT). A bad config is refused and the running instance is left alone.
    Reload {
        #[arg(short, long)]
        conf: String,
        /// The running instance (default: read from the config's pid_file).
        #[arg(long)]
        pid: Option<i32>,
        /// Always take the graceful upgrade (a new process), even when SIGHUP would do.
        #[arg(long)]
        upgrade: bool,
    },
    /// The response cache of a running instance, through its admin listener.
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
    },
    /// Show what the gateway would do with a request, without sending anything:
    /// `tollgate explain -c FILE GET http://host/path -H 'X-Api-Key: ...'`.
    Explain {
        #[arg(short, long)]
        conf: String,
        method: String,
        url: String,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The client certificate (PEM, leaf first) the request would present over TLS.
        #[arg(long)]
        cert: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum CacheCmd {
    /// Remove a route's cached responses under a path (as clients send it) or a prefix:
    /// `tollgate cache purge -c FILE --route catalog --prefix /catalog/`.
    Purge {
        #[arg(short, long)]
        conf: String,
        #[arg(long)]
        route: String,
        #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
        path: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Some(cmd) = cli.command {
        run_command(cmd);
    }

    let (loaded, source) = match (&cli.conf, cli.demo) {
        (Some(path), _) => (gateway::load_file(path), path.clone()),
        (None, true) => (
            gateway::load_str(DEMO_CONFIG),
            "the embedded demo config".to_owned(),
        ),
        (None, false) => {
            eprintln!(
                "tollgate: no config given: run `tollgate -c FILE`, or `tollgate --demo` to try it"
            );
            std::process::exit(2);
        }
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(errs) => {
            eprint!("tollgate: {source}: {errs}");
            std::process::exit(1);
        }
    };
    if cli.test {
        println!(
            "tollgate: {source} is valid ({} routes, {} upstreams)",
            loaded.gateway.router.routes().len(),
            loaded.gateway.upstreams.len()
        );
        std::process::exit(0);
    }

    // Remote key sets fetched now (never by `-t`), introspection clients built, before
    // anything is served.
    if let Err(e) = loaded.gateway.auth.start() {
        eprintln!("tollgate: {source}: cannot start:\n{e}");
        std::process::exit(1);
    }

    if cli.demo {
        let upstreams = vec![
            ("127.0.0.1:8081".parse().expect("literal"), "public"),
            ("127.0.0.1:8082".parse().expect("literal"), "private"),
        ];
        if let Err(e) = tollgate::demo::start_background(upstreams) {
            eprintln!("tollgate: cannot start the demo upstreams on :8081/:8082: {e}");
            std::process::exit(1);
        }
        print_demo_help(&loaded.gateway);
    }

    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    tollgate::server::run(loaded, opt);
}

fn run_command(cmd: Cmd) -> ! {
    match cmd {
        Cmd::Token {
            conf,
            auth,
            sub,
            claims,
            ttl,
        } => match token(&conf, &auth, &sub, &claims, &ttl) {
            Ok(t) => {
                println!("{t}");
                std::process::exit(0)
            }
            Err(e) => {
                eprintln!("tollgate token: {e}");
                std::process::exit(1)
            }
        },
        Cmd::Explain {
            conf,
            method,
            url,
            headers,
            cert,
        } => {
            let loaded = gateway::load_file(&conf).unwrap_or_else(|errs| {
                eprint!("tollgate: {conf}: {errs}");
                std::process::exit(1)
            });
            // Offline: a remote key set as the gateway last cached it.
            for r in loaded.gateway.auth.remotes() {
                let _ = r.load_cached();
            }
            let req = tollgate::explain::Request::parse(&method, &url, &headers);
            let req = match cert {
                Some(path) => req.and_then(|r| r.with_client_cert(&path)),
                None => req,
            };
            match req {
                Ok(req) => {
                    print!("{}", tollgate::explain::explain(&loaded.gateway, &req));
                    std::process::exit(0)
                }
                Err(e) => {
                    eprintln!("tollgate explain: {e}");
                    std::process::exit(2)
                }
            }
        }
        Cmd::Cache {
            action:
                CacheCmd::Purge {
                    conf,
                    route,
                    path,
                    prefix,
                },
        } => {
            match tollgate::admin::purge::send(&conf, &route, path.as_deref(), prefix.as_deref()) {
                Ok(n) => {
                    println!("{{\"purged\": {n}}}");
                    std::process::exit(0)
                }
                Err(e) => {
                    eprintln!("tollgate cache purge: {e}");
                    std::process::exit(1)
                }
            }
        }
        Cmd::Reload { conf, pid, upgrade } => match tollgate::reloadctl::run(&conf, pid, upgrade) {
            Ok(done) => {
                println!("tollgate: {conf}: {done}");
                std::process::exit(0)
            }
            Err(e) => {
                eprintln!("tollgate: reload refused: {e}");
                std::process::exit(1)
            }
        },
    }
}

fn print_demo_help(gw: &tollgate::gateway::Gateway) {
    let port = gw
        .listen
        .first()
        .and_then(|l| l.addr.rsplit(':').next())
        .unwrap_or("8080");
    let admin = gw.admin.as_ref().map_or("127.0.0.1:9090", |a| &a.address);
    println!(
        r#"
tollgate demo: gateway on :{port}, sample upstreams on :8081 (public) and :8082 (private)
Try:
  curl -i http://127.0.0.1:{port}/public/hello?x=1        # proxied, prefix stripped, headers echoed
  curl -i -X POST http://127.0.0.1:{port}/public/hello    # 405 method_not_allowed (GET only)
  curl -i http://127.0.0.1:{port}/nowhere                 # 404 no_route, JSON error
  curl -i http://127.0.0.1:{port}/private/data            # another upstream, Cache-Control added
  curl -i -H 'X-User: ann' http://127.0.0.1:{port}/canary/x  # canary split 90/10, ann keeps her branch
  curl -i 'http://127.0.0.1:{port}/slow/x?delay_ms=3000'  # 504 gateway_timeout after 1s
  curl -i http://{admin}/health                          # admin endpoint
  curl -i http://{admin}/metrics                         # Prometheus metrics
  curl -i -H 'X-Api-Key: supersecretapikey' http://127.0.0.1:{port}/keys/x   # API key: X-Consumer: alice upstream, RateLimit headers
  curl -i http://127.0.0.1:{port}/keys/x                  # 401 unauthorized, WWW-Authenticate
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'X-Api-Key: supersecretapikey' http://127.0.0.1:{port}/keys/x; done
                                                           # 200 x5, then 429 rate_limited (5 per 10 s per consumer)
  curl -i -H "Authorization: Bearer $(target/release/tollgate token -c conf/tollgate.yaml --auth tokens --sub alice --claim role=admin)" \
       http://127.0.0.1:{port}/tokens/x                   # JWT: X-User-ID / X-User-Role upstream
"#
    );
}

fn token(
    path: &str,
    auth: &str,
    sub: &str,
    claims: &[String],
    ttl: &str,
) -> Result<String, String> {
    let loaded = gateway::load_file(path).map_err(|e| format!("{path}: {e}"))?;
    let ttl = humantime::parse_duration(ttl).map_err(|e| format!("bad --ttl {ttl:?}: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut map = serde_json::Map::new();
    map.insert("sub".into(), sub.into());
    map.insert("iat".into(), now.into());
    map.insert("exp".into(), (now + ttl.as_secs()).into());
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim {c:?}: write NAME=VALUE"))?;
        map.insert(k.to_owned(), v.into());
    }
    loaded.gateway.auth.mint(auth, map)
}
