//! Route matching cost at 10, 100 and 1,000 routes (the hot path must not grow with the table
//! beyond a few hash probes, and must not allocate).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Method;
use tollgate::policy::router::{normalise_prefix, HostPattern, MethodSet, Route, Router};

fn table(n: usize) -> Router {
    let routes = (0..n)
        .map(|i| {
            let mut methods = MethodSet::default();
            methods.insert_name("GET");
            methods.insert_name("POST");
            Route {
                id: 0,
                name: format!("r{i}").into(),
                host: (i % 10 == 0)
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
            }
        })
        .collect();
    Router::new(routes).expect("no conflicts")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 100, 1000] {
        let r = table(n);
        let hit = format!(
            "/svc{}/v{}/items{}/42/details",
            (n / 2) % 7,
            (n / 2) % 3,
            n / 2 + 1
        );
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, path| {
            b.iter(|| {
                r.find(
                    black_box(Some(b"api.example.com")),
                    black_box(path),
                    &Method::GET,
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
                    )
                })
            },
        );
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
