//! The one clock that limiter and breaker state is kept on: CLOCK_MONOTONIC, in nanoseconds.
//!
//! Why not a process-relative `Instant` epoch: on Linux CLOCK_MONOTONIC is one clock for the
//! whole system (counted from boot, never stepped by NTP or an operator), so a timestamp taken
//! by the old process means the same instant to the new one after a graceful upgrade. The
//! limiter's TATs and the breaker's `opened_at` can then be handed over as they are, with no
//! conversion and no drift from the hand-over itself (see [`crate::handover`]). It is the clock
//! `Instant::now()` reads anyway (one vDSO call, no syscall).

/// Nanoseconds on CLOCK_MONOTONIC. Never 0 on a running system.
pub fn mono_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer; CLOCK_MONOTONIC is
    // always supported on the platforms Pingora runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Milliseconds on CLOCK_MONOTONIC.
pub fn mono_millis() -> u64 {
    mono_nanos() / 1_000_000
}

/// Seconds since the Unix epoch, for JWT `exp`/`nbf` (wall time, unlike the rest of this
/// module: tokens carry wall-clock dates).
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_instant_and_moves_forward() {
        let a = mono_nanos();
        let i = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = mono_nanos();
        assert!(a > 0 && b >= a + 5_000_000);
        assert!(b - a >= i.elapsed().as_nanos() as u64 / 2);
    }
}
