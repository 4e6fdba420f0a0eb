//! The clock `ts` is judged and stamped by: this host's, corrected by an
//! offset that a server may set from a reference clock it trusts.
//!
//! An app server sets it from its database's clock (the run-once records
//! and the task leases are stamped by that clock). The replay window must
//! be judged by the same clock as the records' lifetime: a server whose
//! own clock ran minutes behind would otherwise admit, minutes later, a
//! captured write whose record had already expired, and run it again.
//! Everything else (the SDK, the balancers, the collectors) keeps the
//! offset at 0: its host's own clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the Unix epoch by this host's clock.
pub fn host_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Milliseconds since the Unix epoch by the corrected clock.
pub fn now_ms() -> i64 {
    host_ms() + OFFSET_MS.load(Ordering::Relaxed)
}

/// How far the reference clock is ahead of this host's (negative: behind).
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// The offset that a reading `reference_ms` of the reference clock, taken
/// between this host's readings `before_ms` and `after_ms`, shows: the
/// midpoint is taken for the moment of the reading, so the error is at
/// most half the round trip.
pub fn offset_of(reference_ms: i64, before_ms: i64, after_ms: i64) -> i64 {
    reference_ms - before_ms - (after_ms - before_ms) / 2
}

/// Sets the correction (see [`offset_of`]).
pub fn set_offset_ms(offset: i64) {
    OFFSET_MS.store(offset, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_gives_the_offset_at_the_round_trips_midpoint() {
        // A reference five minutes behind, read in a 20 ms round trip.
        let host = 1_800_000_000_000;
        assert_eq!(offset_of(host - 300_000, host - 10, host + 10), -300_000);
        // Thirty seconds ahead, read in a 1 s round trip.
        assert_eq!(offset_of(host + 30_500, host, host + 1_000), 30_000);
    }
}
