//! Route `match` rules and `priority` seen from a client: headers (exact, regex, absent),
//! query parameters and cookies choose among routes at one prefix; a prefix none of whose
//! routes' rules hold yields to a shorter one; 404 when rules fail, 405 only when the method
//! does; duplicates and bad rules are refused by `tollgate -t` with their key path. Then a
//! property test of the router with rules against a model of the documented order.

mod support;
use support::*;

fn gateway() -> Gateway {
    let up = |n| echo(n);
    let (stable, canary, beta, v2, vip, quiet, writes) = (
        up("stable"),
        up("canary"),
        up("beta"),
        up("v2"),
        up("vip"),
        up("quiet"),
        up("writes"),
    );
    Gateway::start(&format!(
        r#"
upstreams:
  stable: {{targets: ["{stable}"]}}
  canary: {{targets: ["{canary}"]}}
  beta: {{targets: ["{beta}"]}}
  v2: {{targets: ["{v2}"]}}
  vip: {{targets: ["{vip}"]}}
  quiet: {{targets: ["{quiet}"]}}
  writes: {{targets: ["{writes}"]}}
routes:
  - {{name: stable, path_prefix: /api, upstream: stable}}
  - {{name: canary, path_prefix: /api, upstream: canary, match: {{headers: {{X-Env: canary}}}}}}
  - name: beta
    path_prefix: /api
    upstream: beta
    match: {{headers: {{X-Beta: "~^(1|true)$"}}}}
    priority: 10
  - {{name: v2, path_prefix: /api, upstream: v2, match: {{query: {{version: 2}}}}}}
  - {{name: vip, path_prefix: /api, upstream: vip, match: {{cookies: {{tier: gold}}}}}}
  - {{name: quiet, path_prefix: /api/quiet, upstream: quiet, match: {{headers: {{X-Debug: "!"}}}}}}
  - {{name: tenant, path_prefix: /tenant, upstream: v2, match: {{headers: {{X-Tenant: acme}}}}}}
  - {{name: reads, path_prefix: /orders, upstream: stable, methods: [GET]}}
  - {{name: writes, path_prefix: /orders, upstream: writes, methods: [POST], match: {{headers: {{X-Env: canary}}}}}}
  - {{name: admin, path_prefix: /admin, upstream: stable, methods: [GET], match: {{headers: {{X-Admin: "yes"}}}}}}
"#
    ))
}

fn service(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["service"].as_str().unwrap().to_owned()
}

#[test]
fn headers_exact_regex_and_absent_choose_the_route() {
    let gw = gateway();
    let get = |h: &[(&str, &str)]| service(&gw.send("GET", "/api/x", h));
    assert_eq!(get(&[]), "stable");
    assert_eq!(get(&[("X-Env", "canary")]), "canary");
    // Header names are case-insensitive, values are not.
    assert_eq!(get(&[("x-ENV", "canary")]), "canary");
    assert_eq!(get(&[("X-Env", "Canary")]), "stable");
    assert_eq!(get(&[("X-Beta", "true")]), "beta");
    assert_eq!(get(&[("X-Beta", "1")]), "beta");
    // The regex is anchored as written: `10` is not `1`.
    assert_eq!(get(&[("X-Beta", "10")]), "stable");
    // `X-Debug: "!"`: the route takes requests without the header only.
    assert_eq!(service(&gw.get("/api/quiet/a")), "quiet");
}

#[test]
fn query_and_cookies_choose_the_route() {
    let gw = gateway();
    let r = gw.get("/api/items?version=2&x=1");
    assert_eq!(service(&r), "v2");
    assert_eq!(
        r.json()["query"],
        "version=2&x=1",
        "the query is forwarded as sent"
    );
    assert_eq!(service(&gw.get("/api/items?version=20")), "stable");
    assert_eq!(service(&gw.get("/api/items?x=1&version=3&version=2")), "v2");
    let cookie = |c: &str| service(&gw.send("GET", "/api/items", &[("Cookie", c)]));
    assert_eq!(cookie("a=b; tier=gold"), "vip");
    assert_eq!(cookie("tier=silver"), "stable");
    assert_eq!(cookie("xtier=gold"), "stable");
}

#[test]
fn priority_then_more_rules_decide_among_matching_routes() {
    let gw = gateway();
    // canary and beta both hold: beta has priority 10.
    let both = [("X-Env", "canary"), ("X-Beta", "1")];
    assert_eq!(service(&gw.send("GET", "/api/x", &both)), "beta");
    // canary and v2 both hold at priority 0 with one rule each: file order.
    assert_eq!(
        service(&gw.send("GET", "/api/x?version=2", &[("X-Env", "canary")])),
        "canary"
    );
}

#[test]
fn a_prefix_whose_rules_fail_yields_to_a_shorter_one() {
    let gw = gateway();
    let r = gw.send("GET", "/api/quiet/a", &[("X-Debug", "1")]);
    assert_eq!(service(&r), "stable");
    assert_eq!(
        r.json()["path"],
        "/quiet/a",
        "stripped of /api, the route that took it"
    );
    let r = gw.send(
        "GET",
        "/api/quiet/a",
        &[("X-Debug", "1"), ("X-Env", "canary")],
    );
    assert_eq!(service(&r), "canary");
}

#[test]
fn failed_rules_are_404_and_only_a_failed_method_is_405() {
    let gw = gateway();
    // No route's rules hold at /tenant and there is no shorter prefix.
    let r = gw.get("/tenant/x");
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_route"));
    assert_eq!(
        service(&gw.send("GET", "/tenant/x", &[("X-Tenant", "acme")])),
        "v2"
    );
    let r = gw.send("DELETE", "/admin", &[]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_route"));
    let r = gw.send("DELETE", "/admin", &[("X-Admin", "yes")]);
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // `Allow` names the methods of the routes whose rules held.
    let post = |h: &[(&str, &str)]| {
        let mut h = h.to_vec();
        h.push(("Content-Length", "0"));
        gw.send("POST", "/orders", &h)
    };
    assert_eq!(service(&post(&[("X-Env", "canary")])), "writes");
    let r = post(&[]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = gw.send("DELETE", "/orders", &[("X-Env", "canary")]);
    assert_eq!(
        (r.status, r.header("allow")),
        (405, Some("GET, HEAD, POST"))
    );
    assert_eq!(service(&gw.get("/orders")), "stable");
}

const UP: &str = "upstreams: {u: {targets: [\"127.0.0.1:9\"]}}\nroutes:\n";

fn check(routes: &str) -> (i32, String) {
    check_config(&format!("{UP}{routes}"))
}

#[test]
fn exact_duplicates_are_a_config_error_and_differing_match_or_priority_is_not() {
    let twin = "  - {name: a, path_prefix: /a, upstream: u, match: {headers: {X-Env: canary}, query: {v: \"~2\"}}}\n  - {name: b, path_prefix: /a/, upstream: u, match: {query: {v: \"~2\"}, headers: {x-env: canary}}}\n";
    let (code, out) = check(twin);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("routes[1]: same host, path_prefix and overlapping methods as routes[0], and the same match and priority"),
        "{out}"
    );
    for other in [
        "  - {name: a, path_prefix: /a, upstream: u, match: {headers: {X-Env: canary}}}\n  - {name: b, path_prefix: /a, upstream: u}\n",
        "  - {name: a, path_prefix: /a, upstream: u, match: {headers: {X-Env: canary}}}\n  - {name: b, path_prefix: /a, upstream: u, match: {headers: {X-Env: \"~canary\"}}}\n",
        "  - {name: a, path_prefix: /a, upstream: u}\n  - {name: b, path_prefix: /a, upstream: u, priority: 1}\n",
    ] {
        let (code, out) = check(other);
        assert_eq!(code, 0, "{other}\n{out}");
    }
}

#[test]
fn bad_rules_are_refused_with_their_key_path() {
    let (code, out) = check(
        r#"  - {name: a, path_prefix: /a, upstream: u}
  - {name: b, path_prefix: /b, upstream: u}
  - name: c
    path_prefix: /c
    upstream: u
    match:
      headers: {X-Env: "~^(canary", "X Bad": x, X-Lit: "!x"}
      query: {v: "~[", "": a}
      cookies: {"a;b": "1"}
  - {name: d, path_prefix: /d, upstream: u, match: {header: {X-Env: a}}}
  - {name: e, path_prefix: /e, upstream: u, priority: high}
  - {name: f, path_prefix: /f, upstream: u, match: {headers: {X-A: [1]}}}
"#,
    );
    assert_eq!(code, 1, "{out}");
    for want in [
        "routes[2].match.headers.X-Env: bad regex \"^(canary\": unclosed group",
        "routes[2].match.headers.X Bad: is not a valid header name",
        "routes[2].match.headers.X-Lit: \"!x\": \"!\" alone means absent; write \"=!x\"",
        "routes[2].match.query.v: bad regex \"[\"",
        "routes[2].match.query.: the name must not be empty",
        "routes[2].match.cookies.a;b: is not a valid cookie name",
        "routes[3].match.header: unknown field `header`, expected one of `headers`, `query`, `cookies`",
        "routes[4].priority: ",
        "routes[5].match.headers.X-A: ",
    ] {
        assert!(out.contains(want), "expected {want:?} in:\n{out}");
    }
}

mod properties {
    use proptest::prelude::*;
    use std::sync::OnceLock;
    use tollgate::policy::router::{HostPattern, Match, Route};

    /// Routes sharing hosts and prefixes, told apart by rules, priorities and methods.
    fn gateway() -> &'static tollgate::gateway::compile::Gateway {
        static GW: OnceLock<tollgate::gateway::Loaded> = OnceLock::new();
        &GW.get_or_init(|| {
            tollgate::gateway::load_str(
                r#"
upstreams: {u: {targets: ["127.0.0.1:9"]}}
routes:
  - {name: root, path_prefix: /, upstream: u, methods: [GET]}
  - {name: api, path_prefix: /api, upstream: u, methods: [GET, POST]}
  - {name: api-canary, path_prefix: /api, upstream: u, match: {headers: {X-Env: canary}}}
  - {name: api-beta, path_prefix: /api, upstream: u, priority: 5, methods: [POST], match: {headers: {X-Beta: "~^(1|true)$"}}}
  - {name: api-both, path_prefix: /api, upstream: u, match: {headers: {X-Env: canary, X-Beta: "!"}}}
  - {name: v1-q, path_prefix: /api/v1, upstream: u, match: {query: {v: "2"}}}
  - {name: v1-c, path_prefix: /api/v1, upstream: u, methods: [DELETE], match: {cookies: {tier: "~^g"}}}
  - {name: v1-low, path_prefix: /api/v1, upstream: u, priority: -1, match: {headers: {X-Env: "!"}}}
  - {name: h-api, host: a.example.com, path_prefix: /api, upstream: u, match: {headers: {X-Env: canary}}}
  - {name: h-root, host: a.example.com, path_prefix: /, upstream: u, methods: [PUT], match: {query: {v: "~."}}}
  - {name: w-v1, host: "*.example.com", path_prefix: /api/v1, upstream: u, match: {cookies: {tier: gold}}}
  - {name: w-deep, host: "*.b.example.com", path_prefix: /api, upstream: u, methods: [GET]}
"#,
            )
            .unwrap()
        })
        .gateway
    }

    #[derive(Debug, PartialEq)]
    enum Verdict {
        Route(String),
        NotAllowed(String),
        NotFound,
    }

    fn verdict(m: Match) -> Verdict {
        match m {
            Match::Route(r) => Verdict::Route(r.name.to_string()),
            Match::MethodNotAllowed(a) => Verdict::NotAllowed(a.to_str().unwrap().to_owned()),
            Match::NotFound => Verdict::NotFound,
        }
    }

    /// The documented order, written out plainly: host classes (exact, wildcards by longer
    /// suffix, any host), then prefixes longest first; at each, routes by priority, then
    /// rule count, then file order; the first prefix where some route's rules hold decides.
    fn model(
        routes: &[Route],
        host: Option<&str>,
        path: &str,
        req: &pingora::http::RequestHeader,
    ) -> Verdict {
        let class = |r: &Route| -> Option<usize> {
            match (&r.host, host) {
                (None, _) => Some(usize::MAX),
                (Some(HostPattern::Exact(e)), Some(h)) => (e == h).then_some(0),
                (Some(HostPattern::Wildcard(s)), Some(h)) => {
                    (h.len() > s.len() && h.ends_with(s.as_str())).then(|| 1000 - s.len())
                }
                _ => None,
            }
        };
        let mut candidates: Vec<&Route> = routes
            .iter()
            .filter(|r| class(r).is_some() && r.admits_path(path))
            .collect();
        candidates.sort_by_key(|r| {
            (
                class(r),
                std::cmp::Reverse(r.prefix.len()),
                std::cmp::Reverse(r.priority),
                std::cmp::Reverse(r.match_rules.as_ref().map_or(0, |m| m.len())),
                r.id,
            )
        });
        let mut i = 0;
        while i < candidates.len() {
            let key = (class(candidates[i]), &candidates[i].prefix);
            let group: Vec<&Route> = candidates[i..]
                .iter()
                .take_while(|r| (class(r), &r.prefix) == key)
                .copied()
                .collect();
            i += group.len();
            let held: Vec<&Route> = group
                .into_iter()
                .filter(|r| r.match_rules.as_ref().is_none_or(|m| m.holds(req)))
                .collect();
            if let Some(r) = held
                .iter()
                .find(|r| r.methods.is_none_or(|m| m.contains(&req.method)))
            {
                return Verdict::Route(r.name.to_string());
            }
            if !held.is_empty() {
                let mut set = tollgate::policy::router::MethodSet::default();
                for r in &held {
                    for m in r.methods.unwrap().allow_header().split(", ") {
                        set.insert_name(m);
                    }
                }
                return Verdict::NotAllowed(set.allow_header());
            }
        }
        Verdict::NotFound
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn the_router_with_rules_never_panics_and_chooses_as_documented(
            host in proptest::option::of(prop::sample::select(vec!["a.example.com", "x.b.example.com", "c.example.com", "other.org"])),
            path in prop::sample::select(vec!["/", "/api", "/api/", "/api/v1", "/api/v1/x", "/apix", "/api/v10"]),
            method in prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "PURGE"]),
            env in proptest::option::of(prop::sample::select(vec!["canary", "Canary", "stable", ""])),
            beta in proptest::option::of(prop::sample::select(vec!["1", "true", "10", "x"])),
            query in prop::sample::select(vec!["", "v=2", "v=3", "v=", "a=1&v=2", "v=%32", "v"]),
            cookie in proptest::option::of(prop::sample::select(vec!["tier=gold", "tier=green; a=b", "a=tier=gold", "tier", "tier=\"gold\""])),
            junk in "[ -~]{0,12}",
        ) {
            let gw = gateway();
            let target = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
            let mut req = pingora::http::RequestHeader::build(method, target.as_bytes(), None).unwrap();
            for (name, value) in [("x-env", env), ("x-beta", beta), ("cookie", cookie)] {
                if let Some(v) = value {
                    req.append_header(name, v).unwrap();
                }
            }
            if let Ok(v) = http::HeaderValue::from_str(&junk) {
                req.append_header("x-beta", v.clone()).unwrap();
                req.append_header("cookie", v).unwrap();
            }
            let hostb = host.map(str::as_bytes);
            let first = verdict(gw.router.find(hostb, path, &req.method, &req));
            let again = verdict(gw.router.find(hostb, path, &req.method, &req));
            prop_assert_eq!(&first, &again);
            prop_assert_eq!(first, model(gw.router.routes(), host, path, &req));
        }

        #[test]
        fn match_rules_never_panic_the_loader(
            section in prop::sample::select(vec!["headers", "query", "cookies", "nope"]),
            name in "[ -~]{0,6}",
            value in prop::sample::select(vec!["a", "!", "!!", "~", "~(", "~^a$", "=~", "=", "1", "[1]", "null", "~\\\\", "\"\\t\""]),
        ) {
            let yaml = format!(
                "upstreams: {{u: {{targets: [\"127.0.0.1:9\"]}}}}\nroutes:\n  - {{name: a, path_prefix: /, upstream: u, match: {{{section}: {{\"{}\": {value}}}}}}}\n",
                name.replace(['\\', '"'], "")
            );
            let _ = tollgate::gateway::load_str(&yaml);
        }
    }
}
