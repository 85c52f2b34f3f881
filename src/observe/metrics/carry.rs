//! Counters across an in-process reload: a new generation's [`Metrics`] start from the old
//! one's counts for every route (and policy, and auth reason) it keeps by name, so a route that
//! stays keeps its series. Gauges (in flight, open tunnels) are not carried: the requests and
//! tunnels they count finish on the old generation, which counts them down there.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::{Histogram, Metrics, CLASSES, METHODS};
use crate::policy::auth::Reason;

fn add(to: &AtomicU64, from: &AtomicU64) {
    to.fetch_add(from.load(Relaxed), Relaxed);
}

fn add_histogram(to: &Histogram, from: &Histogram) {
    for (t, f) in to.buckets.iter().zip(&from.buckets) {
        add(t, f);
    }
    add(&to.sum_micros, &from.sum_micros);
}

impl Metrics {
    /// Add the counts `old` holds for what this layout keeps (routes and policies by name;
    /// requests that matched no route, local answers by code).
    pub fn carry_from(&self, old: &Metrics) {
        let per_slot = METHODS.len() * CLASSES.len();
        // Route slots: new slot -> old slot; the last slot of each is "no route".
        let mut slots: Vec<(usize, usize)> = (0..self.layout.routes.len())
            .filter_map(|n| {
                let o = old
                    .layout
                    .routes
                    .iter()
                    .position(|r| *r == self.layout.routes[n])?;
                Some((n, o))
            })
            .collect();
        slots.push((self.layout.routes.len(), old.layout.routes.len()));
        for &(n, o) in &slots {
            for i in 0..per_slot {
                add(
                    &self.requests[n * per_slot + i],
                    &old.requests[o * per_slot + i],
                );
            }
            add_histogram(&self.duration[n], &old.duration[o]);
            add_histogram(&self.upstream_duration[n], &old.upstream_duration[o]);
        }
        let reasons = Reason::ALL.len();
        let (np, op) = (self.layout.policies.len(), old.layout.policies.len());
        for &(n, o) in slots.iter().filter(|(n, _)| *n < self.layout.routes.len()) {
            for r in 0..reasons {
                add(
                    &self.auth_failures[n * reasons + r],
                    &old.auth_failures[o * reasons + r],
                );
            }
            for p in 0..np {
                let name = &self.layout.policies[p];
                if let Some(q) = old.layout.policies.iter().position(|x| x == name) {
                    if let (Some(t), Some(f)) = (
                        self.rate_limited.get(n * np + p),
                        old.rate_limited.get(o * op + q),
                    ) {
                        add(t, f);
                    }
                }
            }
        }
        for ((_, t), (_, f)) in self.rejects.iter().zip(old.rejects.iter()) {
            add(t, f);
        }
        if let (Some(t), Some(f)) = (&self.proxy_refused, &old.proxy_refused) {
            for (t, f) in t.iter().zip(f.iter()) {
                add(t, f);
            }
        }
    }
}
