//! This instance's estimate of the Redis server's clock, so a Redis policy can charge a request
//! at the time it reached the gateway rather than when its call reached Redis (see
//! [`super::redis`]). Every call's answer carries Redis's `TIME`; the sample with the shortest
//! round trip of the last [`WINDOW`] gives the offset, as NTP's minimum filter does: its error
//! is at most half that round trip, whatever the two hosts' clocks say.

use parking_lot::Mutex;

/// How long the best sample is kept before a newer one replaces it whatever its round trip
/// (so drift between the clocks cannot build up).
pub const WINDOW: u64 = 1_000_000_000;

#[derive(Debug, Default)]
pub struct Offset(Mutex<Option<Sample>>);

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Round trip (ns).
    rtt: u64,
    /// Redis µs − local monotonic µs.
    offset: i64,
    /// When taken (local monotonic ns).
    at: u64,
}

impl Offset {
    /// `local` (monotonic ns) in Redis's clock (µs), or 0 before the first answer.
    pub fn to_redis(&self, local: u64) -> u64 {
        match *self.0.lock() {
            Some(s) => ((local / 1000) as i64).saturating_add(s.offset).max(0) as u64,
            None => 0,
        }
    }

    /// A call sent at `sent` and answered at `received` (monotonic ns) read Redis's clock as
    /// `redis` (µs).
    pub fn sample(&self, sent: u64, received: u64, redis: u64) {
        let rtt = received.saturating_sub(sent);
        let mid = (sent / 2 + received / 2) / 1000;
        let new = Sample {
            rtt,
            offset: redis as i64 - mid as i64,
            at: received,
        };
        let mut best = self.0.lock();
        let keep = best.is_some_and(|b| b.rtt < rtt && received.saturating_sub(b.at) < WINDOW);
        if !keep {
            *best = Some(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_round_trip_wins_until_it_is_old() {
        let o = Offset::default();
        assert_eq!(o.to_redis(5_000_000), 0, "unknown before the first answer");
        // Sent at 1 ms, answered at 1.2 ms (local), Redis read 10 s + 1.1 ms.
        o.sample(1_000_000, 1_200_000, 10_001_100);
        assert_eq!(o.to_redis(2_000_000), 10_002_000);
        // A slower answer whose midpoint is off by its queueing does not replace it...
        o.sample(3_000_000, 5_000_000, 10_003_100);
        assert_eq!(o.to_redis(2_000_000), 10_002_000);
        // ...a faster one does, and an older best gives way to anything.
        o.sample(6_000_000, 6_100_000, 10_006_050);
        assert_eq!(o.to_redis(7_000_000), 10_007_000);
        o.sample(6_000_000 + WINDOW, 6_000_000 + WINDOW + 900_000, 11_006_000);
        assert_eq!(o.to_redis(6_000_000 + WINDOW), 11_005_550);
    }
}
