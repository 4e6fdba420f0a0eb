//! Replay guard: a timestamp window plus a bounded memory of nonces, kept
//! per app.
//!
//! A request is admitted when its `ts` is at most `window` behind our clock
//! and at most [`FUTURE`] ahead of it, and its nonce was not seen before
//! from that app with that `ts` (the signature covers both, so a replay
//! carries the same pair; OAuth 1.0's rule, RFC 5849 section 3.3).
//! Remembered nonces are kept in slices of [`SLICE_MS`] of their `ts`, and
//! a request is checked against its own slice only: the memory a check
//! touches is one slice's, a few hundred KiB at the highest rates, not the
//! whole window's; and a slice whose every `ts` has left the window is
//! dropped whole, with no per-nonce work. Memory is bounded per app: when
//! more than `capacity` nonces are held, the oldest slice is forgotten and
//! the app's `floor` rises to the newest `ts` in it; from then on any
//! request of that app with `ts <= floor` is refused as stale, so a
//! forgotten nonce can never be replayed. Under a flood the app's window
//! shrinks; it never opens a hole, and no other app's window moves: the
//! floor is per app, and a `ts` can be at most [`FUTURE`] ahead, so a
//! flooder cannot push even its own floor further than that.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::quality::RandomState;
use std::time::Duration;

use crate::error::{Error, Result};

/// The design's window: 60 s into the past.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// How far ahead of our clock a `ts` may be: 5 s.
pub const FUTURE: Duration = Duration::from_secs(5);

/// Default number of nonces remembered per app (about 16 bytes each).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// The span of `ts` whose nonces share one set.
pub const SLICE_MS: u64 = 100;

/// See the module documentation.
///
/// A nonce is remembered as a 64-bit fingerprint of it and its `ts` under a
/// key drawn at start-up, so remembering costs no allocation and an
/// attacker cannot aim for collisions. Two different requests sharing a
/// fingerprint (odds about n/2^64 per request with n remembered in the
/// slice) would make the second look replayed: a refused request, never an
/// admitted replay.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    future_ms: u64,
    capacity: usize,
    hasher: RandomState,
    apps: HashMap<String, AppNonces, foldhash::fast::RandomState>,
}

type Fingerprints = HashSet<u64, BuildHasherDefault<Fingerprint>>;

/// One app's remembered nonces and floor.
#[derive(Debug, Default)]
struct AppNonces {
    /// By slice of `ts` (`ts / SLICE_MS`), oldest first.
    slices: BTreeMap<u64, Slice>,
    /// Fingerprints held, across slices.
    len: usize,
    /// Requests with `ts <= floor` are refused: their nonces may be forgotten.
    floor: u64,
    /// The set of the last slice dropped, emptied, for the next one (its
    /// table already grown).
    spare: Option<Fingerprints>,
}

#[derive(Debug)]
struct Slice {
    seen: Fingerprints,
    /// The newest `ts` remembered in it.
    newest: u64,
}

// === impl ReplayGuard ===

impl ReplayGuard {
    /// A guard with the given window and per-app nonce capacity (at least 1).
    pub fn new(window: Duration, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms: window.as_millis() as u64,
            future_ms: FUTURE.as_millis() as u64,
            capacity: capacity.max(1),
            hasher: RandomState::default(),
            apps: HashMap::default(),
        }
    }

    /// Checks `ts` against the window and the app's floor; cheap, and needs
    /// no signature.
    pub fn check_time(&self, app: &str, ts: u64, now_ms: u64) -> Result<()> {
        self.check_clock(ts, now_ms)?;
        check_floor(app, ts, self.apps.get(app).map_or(0, |a| a.floor))
    }

    fn check_clock(&self, ts: u64, now_ms: u64) -> Result<()> {
        if ts > now_ms.saturating_add(self.future_ms) {
            return Err(Error::StaleTimestamp(format!(
                "ts {ts} is {} ms ahead of this server's clock {now_ms}; at most {} ms ahead is accepted (sync the clock, or send the current Unix time in milliseconds)",
                ts - now_ms,
                self.future_ms
            )));
        }
        if ts.saturating_add(self.window_ms) < now_ms {
            return Err(Error::StaleTimestamp(format!(
                "ts {ts} is {} ms behind this server's clock {now_ms}; at most {} ms behind is accepted (sync the clock, or send the current Unix time in milliseconds)",
                now_ms - ts,
                self.window_ms
            )));
        }
        Ok(())
    }

    /// Admits `(app, nonce)` at `ts`, remembering it; call only after the
    /// request's signature verified. The app is looked up once.
    pub fn admit(&mut self, app: &str, nonce: &str, ts: u64, now_ms: u64) -> Result<()> {
        self.check_clock(ts, now_ms)?;
        let key = self.hasher.hash_one((nonce, ts));
        let (window_ms, capacity) = (self.window_ms, self.capacity);
        let a = match self.apps.get_mut(app) {
            Some(a) => a,
            None => self.apps.entry(app.to_string()).or_default(),
        };
        a.expire(now_ms, window_ms);
        check_floor(app, ts, a.floor)?;
        let spare = &mut a.spare;
        let slice = a.slices.entry(ts / SLICE_MS).or_insert_with(|| Slice {
            seen: spare.take().unwrap_or_default(),
            newest: ts,
        });
        // One probe both checks and remembers.
        if !slice.seen.insert(key) {
            return Err(Error::ReplayedNonce(format!(
                "nonce {nonce} with ts {ts} was already used by app {app:?}; send a fresh random nonce with every request"
            )));
        }
        slice.newest = slice.newest.max(ts);
        a.len += 1;
        // Within capacity again: this request's own slice may go too (it
        // is admitted; its replay is then below the floor).
        while a.len > capacity {
            a.forget_oldest();
        }
        Ok(())
    }

    /// Nonces currently remembered, across apps.
    pub fn len(&self) -> usize {
        self.apps.values().map(|a| a.len).sum()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_floor(app: &str, ts: u64, floor: u64) -> Result<()> {
    if ts <= floor {
        return Err(Error::StaleTimestamp(format!(
            "ts {ts} is older than {floor}, the oldest this busy server can still check app {app:?} for replays; send a fresh request"
        )));
    }
    Ok(())
}

// === impl AppNonces ===

impl AppNonces {
    /// Drops the slices whose every `ts` has left the window.
    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((_, slice)) = self.slices.first_key_value() {
            if slice.newest.saturating_add(window_ms) >= now_ms {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, mut slice)) = self.slices.pop_first() {
            self.len -= slice.seen.len();
            self.floor = self.floor.max(slice.newest);
            slice.seen.clear();
            self.spare = Some(slice.seen);
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
        assert!(g.admit("a", "00000002", NOW + 5_000, NOW).is_ok());
        for ts in [NOW - 60_001, NOW + 5_001, NOW + 60_000, 0] {
            let e = g.admit("a", "00000003", ts, NOW).unwrap_err();
            assert_eq!(e.code(), ErrorCode::StaleTimestamp);
        }
    }

    #[test]
    fn a_nonce_is_refused_the_second_time_per_app_and_ts() {
        let mut g = ReplayGuard::default();
        g.admit("a", "deadbeef", NOW, NOW).unwrap();
        // The replay: the same nonce and ts, a moment or much later.
        for now in [NOW + 1, NOW + SLICE_MS, NOW + 30_000] {
            let e = g.admit("a", "deadbeef", NOW, now).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ReplayedNonce, "{e}");
        }
        // Another app may use the same nonce, and so may another request
        // of the app (another ts, so another signature: not a replay).
        g.admit("b", "deadbeef", NOW, NOW).unwrap();
        g.admit("a", "deadbeef", NOW + 1, NOW + 1).unwrap();
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
    fn one_apps_flood_of_future_nonces_leaves_another_app_untouched() {
        let mut g = ReplayGuard::new(DEFAULT_WINDOW, 100);
        // The flooder fills its memory with nonces dated as far ahead as
        // allowed, pushing its own floor up.
        for i in 0..1000u64 {
            let _ = g.admit("flood", &format!("{i:016x}"), NOW + 5_000, NOW);
        }
        assert!(g.admit("flood", "ffffffffffffffff", NOW, NOW).is_err());
        // Another app's requests of now go through as ever.
        for i in 0..50u64 {
            g.admit("gate", &format!("{i:016x}"), NOW, NOW).unwrap();
        }
        // And a flood dated beyond 5 s ahead is refused outright.
        let e = g
            .admit("flood", "eeeeeeeeeeeeeeee", NOW + 59_000, NOW)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::StaleTimestamp);
    }

    proptest::proptest! {
        /// Whatever the order, the clock and the capacity, the same request
        /// (app, nonce and ts alike, as a replay is) is admitted once at
        /// most, and the memory stays within its capacity.
        #[test]
        fn the_same_request_is_never_admitted_twice(
            capacity in 1usize..12,
            steps in proptest::collection::vec((0u8..2, 0u64..40, 0u64..3_000, 0u64..20_000), 1..400),
        ) {
            let mut g = ReplayGuard::new(Duration::from_secs(60), capacity);
            let mut now = NOW;
            let mut admitted = std::collections::HashSet::new();
            for (app, nonce, back, tick) in steps {
                now += tick;
                let (app, ts) = (["a", "b"][app as usize], now.saturating_sub(back * 25));
                let nonce = format!("{nonce:016x}");
                if g.admit(app, &nonce, ts, now).is_ok() {
                    proptest::prop_assert!(admitted.insert((app, nonce, ts)), "admitted twice");
                }
                proptest::prop_assert!(g.len() <= 2 * capacity, "two apps, each within its capacity");
            }
        }
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
