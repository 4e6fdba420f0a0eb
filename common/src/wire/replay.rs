//! Replay guard: a timestamp window plus a bounded memory of nonces.
//!
//! A request is admitted when its `ts` is within ±window of our clock and its
//! `(app, nonce)` was not seen before. Remembered nonces are forgotten once
//! their `ts` has left the window (a replay of them is then stale anyway).
//! Memory is bounded: when `capacity` nonces are held, the oldest is
//! forgotten and `floor` rises to its `ts`; from then on any request with
//! `ts <= floor` is refused as stale, so a forgotten nonce can never be
//! replayed. Under a flood the window shrinks; it never opens a hole.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::Duration;

use crate::error::{Error, Result};

/// The design's window: ±60 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Default number of nonces remembered (about 100 bytes each).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// See the module documentation.
///
/// A nonce is remembered as a 64-bit fingerprint of `(app, nonce)` under a
/// key drawn at start-up, so remembering costs no allocation and an
/// attacker cannot aim for collisions. Two different nonces sharing a
/// fingerprint (odds about n/2^64 per request with n remembered) would make
/// the second look replayed: a refused request, never an admitted replay.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    hasher: RandomState,
    seen: HashSet<u64, BuildHasherDefault<Fingerprint>>,
    /// Remembered fingerprints in arrival order, with their `ts`.
    order: VecDeque<(u64, u64)>,
    /// Requests with `ts <= floor` are refused: their nonces may be forgotten.
    floor: u64,
}

// === impl ReplayGuard ===

impl ReplayGuard {
    /// A guard with the given window and nonce capacity (at least 1).
    pub fn new(window: Duration, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms: window.as_millis() as u64,
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            seen: HashSet::default(),
            order: VecDeque::new(),
            floor: 0,
        }
    }

    /// Checks `ts` against the window only; cheap, and needs no signature.
    pub fn check_time(&self, ts: u64, now_ms: u64) -> Result<()> {
        let skew = now_ms.abs_diff(ts);
        if skew > self.window_ms {
            return Err(Error::StaleTimestamp(format!(
                "ts {ts} is {skew} ms from this server's clock {now_ms}; it must be within {} ms (sync the clock, or send the current Unix time in milliseconds)",
                self.window_ms
            )));
        }
        if ts <= self.floor {
            return Err(Error::StaleTimestamp(format!(
                "ts {ts} is older than {} that this busy server can still check for replays; send a fresh request",
                self.floor
            )));
        }
        Ok(())
    }

    /// Admits `(app, nonce)` at `ts`, remembering it; call only after the
    /// request's signature verified.
    pub fn admit(&mut self, app: &str, nonce: &str, ts: u64, now_ms: u64) -> Result<()> {
        self.expire(now_ms);
        self.check_time(ts, now_ms)?;
        let key = self.hasher.hash_one((app, nonce));
        if self.seen.contains(&key) {
            return Err(Error::ReplayedNonce(format!(
                "nonce {nonce} was already used by app {app:?} within the last {} s; send a fresh random nonce with every request",
                self.window_ms / 1000
            )));
        }
        while self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        self.seen.insert(key);
        self.order.push_back((ts, key));
        Ok(())
    }

    /// Nonces currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((ts, _)) = self.order.front() {
            if ts.saturating_add(self.window_ms) >= now_ms {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((ts, key)) = self.order.pop_front() {
            self.seen.remove(&key);
            self.floor = self.floor.max(ts);
        }
    }
}

/// The set's hasher: fingerprints are already keyed hashes, so hashing
/// them again would only cost time.
#[derive(Debug, Default)]
struct Fingerprint(u64);

impl Hasher for Fingerprint {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard::new(DEFAULT_WINDOW, DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const NOW: u64 = 1_763_700_000_000;

    #[test]
    fn timestamps_outside_the_window_are_stale() {
        let mut g = ReplayGuard::default();
        assert!(g.admit("a", "00000001", NOW - 60_000, NOW).is_ok());
        assert!(g.admit("a", "00000002", NOW + 60_000, NOW).is_ok());
        for ts in [NOW - 60_001, NOW + 60_001, 0] {
            let e = g.admit("a", "00000003", ts, NOW).unwrap_err();
            assert_eq!(e.code(), ErrorCode::StaleTimestamp);
        }
    }

    #[test]
    fn a_nonce_is_refused_the_second_time_per_app() {
        let mut g = ReplayGuard::default();
        g.admit("a", "deadbeef", NOW, NOW).unwrap();
        let e = g.admit("a", "deadbeef", NOW + 1, NOW + 1).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ReplayedNonce);
        // Another app may use the same nonce.
        g.admit("b", "deadbeef", NOW, NOW).unwrap();
    }

    #[test]
    fn nonces_are_forgotten_once_their_window_has_passed() {
        let mut g = ReplayGuard::default();
        g.admit("a", "deadbeef", NOW, NOW).unwrap();
        g.admit("a", "deadbee0", NOW + 70_000, NOW + 70_000)
            .unwrap();
        assert_eq!(g.len(), 1);
        // The first is forgotten, and its replay is stale anyway.
        let e = g.admit("a", "deadbeef", NOW, NOW + 70_000).unwrap_err();
        assert_eq!(e.code(), ErrorCode::StaleTimestamp);
    }

    #[test]
    fn a_full_guard_stays_bounded_and_never_admits_a_replay() {
        let mut g = ReplayGuard::new(DEFAULT_WINDOW, 100);
        for i in 0..1000u64 {
            g.admit("a", &format!("{i:08x}"), NOW + i, NOW).unwrap();
            assert!(g.len() <= 100);
        }
        // Every earlier nonce is refused, either as replayed or as below the floor.
        for i in 0..1000u64 {
            let e = g.admit("a", &format!("{i:08x}"), NOW + i, NOW).unwrap_err();
            assert!(
                matches!(
                    e.code(),
                    ErrorCode::ReplayedNonce | ErrorCode::StaleTimestamp
                ),
                "{i}: {e}"
            );
        }
    }
}
