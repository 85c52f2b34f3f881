//! Route matching cost at 10, 100 and 1,000 routes (the hot path must not grow with the table
//! beyond a few hash probes, and must not allocate), and at 1,000 routes with header `match`
//! rules (at most twice the prefix-only hit).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use pingora::http::RequestHeader;
use tollgate::policy::router::{normalise_prefix, HostPattern, MethodSet, Route, Router};

/// Route `i` of the prefix-only table.
fn plain(i: usize) -> Route {
    let mut methods = MethodSet::default();
    methods.insert_name("GET");
    methods.insert_name("POST");
    Route {
        id: 0,
        name: format!("r{i}").into(),
        host: i
            .is_multiple_of(10)
            .then(|| HostPattern::parse(&format!("h{i}.example.com")).unwrap()),
        prefix: normalise_prefix(&format!("/svc{}/v{}/items{i}", i % 7, i % 3)),
        methods: Some(methods),
        strip_prefix: true,
        upstream: 0,
        split: None,
        response_headers: Default::default(),
        max_body: 1 << 20,
        ip_rules: None,
        cors: None,
        rate_limits: vec![],
        auth: None,
        websocket: None,
        compression: None,
        transform: None,
        match_rules: None,
        priority: 0,
    }
}

fn table(n: usize) -> Router {
    Router::new((0..n).map(plain).collect()).expect("no conflicts")
}

/// `n` routes, two a prefix (the prefixes of `table(n / 2)`): a canary that takes
/// `X-Env: canary` with `X-Beta: ~^(1|true)$`, and the stable route without rules.
fn matched_table(n: usize) -> Router {
    use tollgate::policy::router::matching::{compile, MatchFile};
    let file: MatchFile =
        serde_yaml::from_str(r#"headers: {X-Env: canary, X-Beta: "~^(1|true)$"}"#).unwrap();
    let mut errs = tollgate::config::ConfigErrors::default();
    let mut rules = || compile("bench", file.clone(), &mut errs);
    let mut routes = Vec::with_capacity(n);
    for i in 0..n / 2 {
        routes.push(Route {
            name: format!("r{i}-canary").into(),
            match_rules: rules(),
            ..plain(i)
        });
        routes.push(plain(i));
    }
    Router::new(routes).expect("no conflicts")
}

/// A request head with the headers a typical client sends, plus `extra`.
fn head(extra: &[(&'static str, &'static str)]) -> RequestHeader {
    let mut h = RequestHeader::build("GET", b"/", None).unwrap();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip"),
        ("x-request-id", "0123456789abcdef"),
    ]
    .iter()
    .chain(extra)
    {
        h.append_header(*k, *v).unwrap();
    }
    h
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    let plain_head = head(&[]);
    for n in [10usize, 100, 1000] {
        let r = table(n);
        let i = n / 2 + 1;
        let hit = format!("/svc{}/v{}/items{i}/42/details", i % 7, i % 3);
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, path| {
            b.iter(|| {
                r.find(
                    black_box(Some(b"api.example.com")),
                    black_box(path),
                    &Method::GET,
                    &plain_head,
                )
            })
        });
        g.bench_with_input(
            BenchmarkId::new("miss", n),
            &"/nothing/here/at/all",
            |b, path| {
                b.iter(|| {
                    r.find(
                        black_box(Some(b"api.example.com")),
                        black_box(path),
                        &Method::GET,
                        &plain_head,
                    )
                })
            },
        );
    }
    // 1,000 routes with header rules: the canary taken (both rules checked), and passed over
    // (its first rule fails) for the stable route at the same prefix.
    let r = matched_table(1000);
    let i = 251;
    let hit = format!("/svc{}/v{}/items{i}/42/details", i % 7, i % 3);
    let canary = head(&[("x-env", "canary"), ("x-beta", "true")]);
    for (case, req) in [("canary", &canary), ("stable", &plain_head)] {
        g.bench_with_input(BenchmarkId::new("hit_match_1000", case), &hit, |b, path| {
            b.iter(|| {
                r.find(
                    black_box(Some(b"api.example.com")),
                    black_box(path),
                    &Method::GET,
                    req,
                )
            })
        });
    }
    g.finish();
    c.bench_function("path_normalise_clean", |b| {
        b.iter(|| tollgate::policy::path::normalise(black_box("/api/v1/users/42/orders")))
    });
    c.bench_function("path_normalise_dirty", |b| {
        b.iter(|| {
            tollgate::policy::path::normalise(black_box("/api/v1/../v1/./users//42/%7eorders"))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
