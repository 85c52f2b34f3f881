//! Bad configs are refused before anything is served, with every error and its key path;
//! `-t` says so with its exit code.

mod support;
use support::*;

const BASE: &str = r#"
upstreams:
  public: {targets: ["127.0.0.1:8081"]}
  private: {targets: ["127.0.0.1:8082"]}
routes:
  - {name: public, path_prefix: /public, upstream: public}
"#;

/// `-t` on `yaml` fails and its output has `needle` (the key path and the reason).
fn rejects(yaml: &str, needles: &[&str]) {
    let (code, out) = check_config(yaml);
    assert_eq!(code, 1, "expected exit 1 for:\n{yaml}\noutput:\n{out}");
    for n in needles {
        assert!(out.contains(n), "expected {n:?} in:\n{out}");
    }
}

#[test]
fn valid_config_passes_with_exit_0() {
    let (code, out) = check_config(BASE);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid"), "{out}");
}

#[test]
fn the_demo_config_is_valid() {
    let (code, out) = check_config(include_str!("../conf/tollgate.yaml"));
    assert_eq!(code, 0, "{out}");
}

/// The config a newcomer reads first, in the README's tour, is one tollgate takes.
#[test]
fn the_readme_tour_config_is_valid() {
    let readme = include_str!("../README.md");
    let yaml = readme
        .split("## A short tour")
        .nth(1)
        .and_then(|t| t.split("```yaml").nth(1))
        .and_then(|t| t.split("```").next())
        .expect("the README's tour has a YAML block");
    let env = [
        ("TOLLGATE_ADMIN_TOKEN", "tour-admin-token-0123456789"),
        ("FRONTEND_KEY", "tour-frontend-key-0123"),
    ];
    let (code, out) = check_config_with_env(yaml, &env);
    assert_eq!(code, 0, "{yaml}\n{out}");
}

#[test]
fn unknown_upstream_names_the_route_and_the_known_ones() {
    rejects(
        &format!("{BASE}  - {{name: p, path_prefix: /p, upstream: privat}}\n"),
        &["routes[1].upstream: unknown upstream \"privat\" (known: public, private)"],
    );
}

#[test]
fn unknown_keys_at_every_level() {
    rejects(&format!("{BASE}rouets: []\n"), &["rouets: unknown key"]);
    rejects(
        "upstreams: {u: {targets: [\"127.0.0.1:1\"], tiemouts: {}}}\n",
        &["upstreams.u.tiemouts: unknown field `tiemouts`, expected one of `targets`"],
    );
    rejects(
        "upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\nroutes: [{name: a, path_prefix: /, upstream: u, hsot: x}]\n",
        &["routes[0].hsot: unknown field `hsot`"],
    );
}

#[test]
fn duplicate_route_names() {
    rejects(
        &format!("{BASE}  - {{name: public, path_prefix: /other, upstream: public}}\n"),
        &["routes[1].name: duplicate route name \"public\" (also routes[0])"],
    );
}

#[test]
fn bad_cidr() {
    rejects(
        &format!("{BASE}trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"),
        &["trusted_proxies[1]: \"10.0.0.0/33\" is not a CIDR"],
    );
}

#[test]
fn bad_addresses() {
    rejects(
        &format!("{BASE}listen: [\"0.0.0.0\"]\n"),
        &["listen[0]: \"0.0.0.0\" is not an IP:port"],
    );
    rejects(
        &format!("{BASE}admin: \"localhost\"\n"),
        &["admin: \"localhost\" is not an IP:port"],
    );
    rejects(
        "upstreams: {u: {targets: [\"127.0.0.1\"]}}\nroutes: []\n",
        &["upstreams.u.targets[0]: \"127.0.0.1\" needs a port"],
    );
}

#[test]
fn empty_targets() {
    rejects(
        "upstreams: {u: {targets: []}}\n",
        &["upstreams.u.targets: needs at least one target"],
    );
}

#[test]
fn bad_durations() {
    rejects(
        "upstreams: {u: {targets: [\"127.0.0.1:1\"], timeouts: {read: 30}}}\n",
        &["upstreams.u.timeouts.read: bad duration 30: durations need a unit"],
    );
    rejects(
        "upstreams: {u: {targets: [\"127.0.0.1:1\"], timeouts: {connect: soon}}}\n",
        &["upstreams.u.timeouts.connect: bad duration \"soon\""],
    );
}

#[test]
fn prefix_must_start_with_slash_and_be_normal() {
    rejects(
        &format!("{BASE}  - {{name: p, path_prefix: api, upstream: public}}\n"),
        &["routes[1].path_prefix: \"api\" must start with /"],
    );
    rejects(
        &format!("{BASE}  - {{name: p, path_prefix: /a/../b, upstream: public}}\n"),
        &["routes[1].path_prefix: \"/a/../b\" is not in normal form"],
    );
}

#[test]
fn bad_methods_hosts_weights_and_headers() {
    rejects(
        &format!(
            "{BASE}  - {{name: p, path_prefix: /p, upstream: public, methods: [GET, FETCH]}}\n"
        ),
        &["routes[1].methods[1]: unknown method \"FETCH\""],
    );
    rejects(
        &format!("{BASE}  - {{name: p, path_prefix: /p, upstream: public, host: \"a b\"}}\n"),
        &["routes[1].host: \"a b\" is not a host name"],
    );
    rejects(
        "upstreams: {u: {targets: [{address: \"127.0.0.1:1\", weight: 0}]}}\n",
        &["upstreams.u.targets[0].weight: must be between 1 and 1000"],
    );
    rejects(
        &format!("{BASE}  - {{name: p, path_prefix: /p, upstream: public, response_headers: {{X-Gateway: me}}}}\n"),
        &["routes[1].response_headers.X-Gateway: is set by tollgate itself"],
    );
}

#[test]
fn conflicting_routes() {
    rejects(
        &format!("{BASE}  - {{name: p, path_prefix: /public/, upstream: private}}\n"),
        &["routes[1]: same host, path_prefix and overlapping methods as routes[0]"],
    );
}

#[test]
fn connection_limits_are_validated() {
    rejects(
        &format!("{BASE}limits: {{max_connections_per_ip: 0, head_timeout: 0s}}\n"),
        &[
            "limits.max_connections_per_ip: must be at least 1",
            "limits.head_timeout: ",
        ],
    );
}

#[test]
fn rate_limit_and_redis_sections_are_validated() {
    rejects(
        &format!("{BASE}redis: {{url: \"http://127.0.0.1\", on_error: maybe}}\n"),
        &["redis.url: ", "redis.on_error: unknown value \"maybe\""],
    );
    // Credentials and CAs: a secret that protects nothing, a user without a password, a CA
    // for a connection that is not TLS, a password in two places.
    rejects(
        &format!(
            "{BASE}redis: {{url: \"redis://127.0.0.1:6379\", username: gw, password: \"\", ca: /nope.pem}}\n"
        ),
        &[
            "redis.password: is empty: it cannot protect anything",
            "redis.ca: only applies to a rediss:// (TLS) url",
        ],
    );
    rejects(
        &format!("{BASE}redis: {{url: \"redis://127.0.0.1:6379\", username: gw}}\n"),
        &["redis.password: username needs a password"],
    );
    rejects(
        &format!(
            "{BASE}redis: {{url: \"redis://:a@127.0.0.1:6379\", password: {{env: TG_NEVER_SET_PW}}}}\n"
        ),
        &["redis.password.env: environment variable TG_NEVER_SET_PW is not set"],
    );
    rejects(
        &format!(
            "{BASE}redis: {{url: \"redis://:a@127.0.0.1:6379\", password: two-places-secret}}\n"
        ),
        &["redis.password: the url has a password too: give it in one place"],
    );
    rejects(
        &format!("{BASE}redis: {{url: \"rediss://127.0.0.1:6379\", ca: /nope/ca.pem}}\n"),
        &["redis.ca: cannot read \"/nope/ca.pem\""],
    );
    rejects(
        &format!("{BASE}rate_limits: {{rl: {{requests: 5, per: 1s, store: redis}}}}\n"),
        &["rate_limits.rl.store: store: redis needs a top-level redis section"],
    );
    rejects(
        &format!("{BASE}rate_limits: {{rl: {{requests: 5, per: 1s, headers: loud}}}}\n"),
        &["rate_limits.rl.headers: unknown value \"loud\" (one of: ietf, legacy, both, none)"],
    );
    rejects(
        "upstreams: {u: {targets: [\"127.0.0.1:1\"], balance: fastest}}\n",
        &["upstreams.u.balance: unknown balancing \"fastest\""],
    );
}

#[test]
fn every_error_is_listed_at_once() {
    let (code, out) = check_config(
        "listen: [\"nope\"]\ntrusted_proxies: [\"x\"]\nupstreams: {u: {targets: []}}\n\
         routes: [{name: a, path_prefix: a, upstream: v}]\nbogus: 1\n",
    );
    assert_eq!(code, 1);
    for n in [
        "listen[0]",
        "trusted_proxies[0]",
        "upstreams.u.targets",
        "routes[0].path_prefix",
        "routes[0].upstream",
        "bogus",
    ] {
        assert!(out.contains(n), "{n} missing from:\n{out}");
    }
    assert!(out.contains("6 errors"), "{out}");
}

#[test]
fn pingora_keys_are_typed_too() {
    rejects(
        &format!("{BASE}threads: many\n"),
        &["threads: invalid type"],
    );
}

#[test]
fn bad_config_serves_nothing() {
    // Not just -t: running it exits 1 without binding anything.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.yaml");
    let port = free_port();
    std::fs::write(
        &conf,
        format!("listen: [\"127.0.0.1:{port}\"]\nroutes: [{{name: a}}]\n"),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0]: missing field `path_prefix`"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn bad_limits_and_ip_rules() {
    rejects(
        &format!("{BASE}limits: {{max_body: lots}}\n"),
        &["limits.max_body: bad size \"lots\""],
    );
    rejects(
        &format!("{BASE}limits: {{max_headers: 0}}\n"),
        &["limits.max_headers: must be between 1 and 250"],
    );
    rejects(
        &format!(
            "{BASE}  - {{name: p, path_prefix: /p, upstream: public, ip_deny: [\"1.2.3.4/40\"]}}\n"
        ),
        &["routes[1].ip_deny[0]: \"1.2.3.4/40\" is not a CIDR"],
    );
}

#[test]
fn an_empty_config_is_refused_not_served_as_404s() {
    for yaml in ["", "\n\n", "# only a comment\n", "null\n", "---\n", "~\n"] {
        rejects(yaml, &["the config is empty"]);
    }
    // A config with something in it but no routes still starts, with a warning.
    let (code, out) = check_config("upstreams: {u: {targets: [\"127.0.0.1:1\"]}}\nroutes: []\n");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_utf8_byte_order_mark_is_accepted() {
    let (code, out) = check_config(&format!("\u{feff}{BASE}"));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn deep_nesting_is_refused_at_once() {
    let started = std::time::Instant::now();
    rejects(
        &format!("routes: {}\n", "[".repeat(100_000)),
        &["line 1: nested more than 128 levels deep"],
    );
    // The parser alone took 23 s on this before; the scan refuses it before parsing.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Brackets inside quotes and comments are not nesting.
    let quoted = format!(
        "{BASE}# {}\nupstreams_note: &x \"{}\"\n",
        "[".repeat(200),
        "[".repeat(200)
    );
    let (_, out) = check_config(&quoted);
    assert!(!out.contains("nested"), "{out}");
}

#[test]
fn sizes_and_durations_have_upper_bounds() {
    rejects(
        &format!("{BASE}limits: {{max_body: 99999999999999999999999TiB}}\n"),
        &["limits.max_body: bad size \"99999999999999999999999TiB\": larger than 1TiB"],
    );
    rejects(
        &format!("{BASE}rate_limits: {{a: {{requests: 1, per: 99999999999d}}}}\n"),
        &["rate_limits.a.per: bad duration \"99999999999d\": longer than a year"],
    );
}

#[test]
fn pingora_keys_are_reported_by_their_name() {
    let (code, out) = check_config(&format!("{BASE}threads: many\n"));
    assert_eq!(code, 1);
    assert!(out.contains("\n  threads: invalid type"), "{out}");
}

#[test]
fn an_upstream_in_error_is_not_also_unknown_at_its_routes() {
    let (code, out) = check_config(
        "upstreams:\n  u: {targets: 5}\n  v: {targets: [\"127.0.0.1:1\"], balance: nope}\n\
         routes:\n  - {name: a, path_prefix: /a, upstream: u}\n  - {name: b, path_prefix: /b, upstream: v}\n",
    );
    assert_eq!(code, 1);
    assert!(out.contains("upstreams.u.targets"), "{out}");
    assert!(out.contains("upstreams.v.balance"), "{out}");
    assert!(!out.contains("unknown upstream"), "{out}");
}

#[test]
fn fast_path_is_a_boolean() {
    let (code, out) = check_config(&format!("{BASE}fast_path: false\n"));
    assert_eq!(code, 0, "{out}");
    rejects(
        &format!("{BASE}fast_path: sometimes\n"),
        &["fast_path: invalid type"],
    );
}
