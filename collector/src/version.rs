//! View versions that never go backwards, also across a collector restart,
//! without a state file.
//!
//! The next version is `max(last + 1, unix_millis, seen + 1)`:
//! - `unix_millis` carries the order across restarts: a collector that
//!   starts again starts at the clock, which is past every version the old
//!   one issued unless it issued more than one per millisecond on average
//!   (membership changes at human and heartbeat pace, so it does not).
//! - `last + 1` keeps versions strictly growing within one run, whatever
//!   the clock does.
//! - `seen + 1` covers the case the clock cannot (a clock stepped back
//!   across a restart): a balancer answers every push with the version it
//!   holds, and a version above ours is fed back through
//!   [`VersionClock::observe`], so the next view overtakes it.
//!
//! A state file would add a disk write per change and a failure mode (a
//! lost or unwritable file) for no gain over this.

/// Issues view versions.
#[derive(Debug, Default, Clone)]
pub struct VersionClock {
    last: u64,
}

// === impl VersionClock ===

impl VersionClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> VersionClock {
        VersionClock::default()
    }

    /// The last version issued (0 before the first).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next version, given the wall clock in Unix milliseconds.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        self.last = self.last.saturating_add(1).max(now_ms);
        self.last
    }

    /// A version seen elsewhere (a balancer's): the next one issued will be
    /// above it. Returns whether it was ahead of us.
    pub fn observe(&mut self, seen: u64) -> bool {
        if seen > self.last {
            self.last = seen;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_clock_and_grow_when_it_stands_still_or_steps_back() {
        let mut c = VersionClock::new();
        assert_eq!(c.next(1_000), 1_000);
        assert_eq!(c.next(1_000), 1_001);
        assert_eq!(c.next(900), 1_002);
        assert_eq!(c.next(5_000), 5_000);
    }

    #[test]
    fn a_restarted_clock_starts_past_what_the_old_one_issued() {
        let mut old = VersionClock::new();
        let issued = (0..10).map(|i| old.next(1_000 + i)).max().unwrap();
        let mut new = VersionClock::new();
        assert!(new.next(1_000 + 60_000) > issued);
    }

    #[test]
    fn a_version_seen_ahead_is_overtaken() {
        let mut c = VersionClock::new();
        c.next(1_000);
        assert!(c.observe(9_000));
        assert!(!c.observe(8_000));
        assert_eq!(c.next(1_001), 9_001);
    }
}
