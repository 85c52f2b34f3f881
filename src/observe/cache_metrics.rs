//! The response cache's series on `/metrics` (`crate::cache`): read at scrape time from the
//! counters each caching route and store keeps.

use std::fmt::Write;
use std::sync::Arc;

use super::metrics::label;

/// The response cache's series, when some route caches: requests by route and
/// `X-Cache-Status`, lock waits by route, bytes held and evictions by store.
pub fn render(
    o: &mut String,
    stores: &crate::cache::Stores,
    caches: &[Option<Arc<crate::cache::RouteCache>>],
) {
    let caches: Vec<_> = caches.iter().flatten().collect();
    if caches.is_empty() {
        return;
    }
    o.push_str("# HELP tollgate_cache_requests_total Requests of caching routes by what the cache step did (X-Cache-Status).
");
    o.push_str(
        "# TYPE tollgate_cache_requests_total counter
",
    );
    for c in &caches {
        let route = label(&c.route);
        for (status, n) in c.counts() {
            let _ = writeln!(
                o,
                "tollgate_cache_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    o.push_str("# HELP tollgate_cache_lock_waits_total Requests that waited on the cache lock for another request's fill.
");
    o.push_str(
        "# TYPE tollgate_cache_lock_waits_total counter
",
    );
    for c in &caches {
        let route = label(&c.route);
        let n = c.lock_waits();
        let _ = writeln!(
            o,
            "tollgate_cache_lock_waits_total{{route=\"{route}\"}} {n}"
        );
    }
    o.push_str(
        "# HELP tollgate_cache_bytes Bytes a cache store holds (bodies, heads and each entry's structures), against its max_size.
",
    );
    o.push_str(
        "# TYPE tollgate_cache_bytes gauge
",
    );
    for s in stores.iter() {
        let _ = writeln!(
            o,
            "tollgate_cache_bytes{{store=\"{}\"}} {}",
            label(&s.name),
            s.bytes()
        );
    }
    o.push_str("# HELP tollgate_cache_evictions_total Entries a cache store dropped to stay within max_size.
");
    o.push_str(
        "# TYPE tollgate_cache_evictions_total counter
",
    );
    for s in stores.iter() {
        let n = s.evictions();
        let _ = writeln!(
            o,
            "tollgate_cache_evictions_total{{store=\"{}\"}} {n}",
            label(&s.name)
        );
    }
}
