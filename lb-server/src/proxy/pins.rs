//! Stored routes: a pin maps a device's key to the node it was sent to.
//!
//! A pinned key keeps its node while that node is in the view (up or
//! draining); only when the node has left, or refuses the connection, is
//! the key routed again and pinned anew. New keys are placed by the plain
//! ring ([`Ring::owner`], no bounded load), so balancer replicas given the
//! same view place them alike, and a node that joins takes only keys that
//! are new or freed: adding a broker moves no connected device.
//!
//! [`PinTable`] is the table in memory: every pin without `--pins-db`, and
//! the local cache of the shared table with it. Pins expire a TTL after
//! their last use; at the capacity cap a new key is routed by the ring but
//! not stored (counted as `full`), so a flood of one-off keys cannot push
//! out the pins of the devices that are connected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub use dsf_proto::lb::{Pin as PinView, PinStats as PinCounts};
use dsf_ring::Ring;

/// Default time a pin lives after its last use.
pub const DEFAULT_PIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Default cap on pins held.
pub const DEFAULT_MAX_PINS: usize = 1_000_000;

/// How often expired pins are swept out (and the keys of connected devices
/// marked used first).
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Where a key goes, and what that did to its pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The pin holds: its node is in the view.
    Kept(usize),
    /// No pin: the ring's owner, to be pinned.
    New(usize),
    /// The pinned node has left the view: the ring's owner now, re-pinned.
    Moved(usize),
}

impl Decision {
    /// The ring index of the node chosen.
    pub fn node(self) -> usize {
        match self {
            Decision::Kept(i) | Decision::New(i) | Decision::Moved(i) => i,
        }
    }
}

/// Decides for a key at `pos` pinned to `pinned` (if at all); `None` when
/// no node takes keys. A pin holds on a draining node (it keeps its
/// devices); a node that has left the view frees its pins.
pub fn decide(ring: &Ring, pinned: Option<&str>, pos: u64) -> Option<Decision> {
    if let Some(node) = pinned {
        if let Some(i) = ring.index_of(node) {
            return Some(Decision::Kept(i));
        }
        return ring.owner(pos).map(Decision::Moved);
    }
    ring.owner(pos).map(Decision::New)
}

/// The next node for a key whose connect to every node in `failed` failed:
/// the first node clockwise from the key that takes keys and has not
/// failed. Deterministic, so replicas that saw the same failures agree.
pub fn fail_over(ring: &Ring, pos: u64, failed: &[String]) -> Option<usize> {
    ring.successors(pos)
        .find(|&i| !failed.iter().any(|f| *f == ring.node(i).id))
}

/// Pin events, for the balancer's stats and the collector's metrics.
#[derive(Debug, Default)]
pub struct PinStats {
    /// Keys pinned for the first time.
    pub created: AtomicU64,
    /// Keys re-pinned because their node left or refused them.
    pub moved: AtomicU64,
    /// Pins dropped a TTL after their last use.
    pub expired: AtomicU64,
    /// Pins an operator dropped.
    pub dropped: AtomicU64,
    /// New keys routed but not stored: the table was at its cap.
    pub full: AtomicU64,
    /// Lookups or writes of the shared table (`--pins-db`) that failed; the
    /// key was routed by the ring meanwhile.
    pub db_errors: AtomicU64,
    /// Pins held now (the shared table's count with `--pins-db`, as of
    /// the last count).
    pub held: AtomicU64,
}

impl PinStats {
    pub fn counts(&self) -> PinCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PinCounts {
            created: get(&self.created),
            moved: get(&self.moved),
            expired: get(&self.expired),
            dropped: get(&self.dropped),
            full: get(&self.full),
            db_errors: get(&self.db_errors),
            held: get(&self.held),
        }
    }

    /// Counts what a decision did to a pin.
    pub fn count(&self, d: Decision) {
        match d {
            Decision::Kept(_) => {}
            Decision::New(_) => {
                self.created.fetch_add(1, Ordering::Relaxed);
            }
            Decision::Moved(_) => {
                self.moved.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A key as the pin table holds it: MD5 of the routing key (its first 8
/// bytes, big-endian, are the key's ring position), so a pin costs the same
/// whatever the length of the client id it came from.
pub type KeyHash = [u8; 16];

/// The hash of a routing key.
pub fn key_hash(key: &[u8]) -> KeyHash {
    use md5::{Digest, Md5};
    Md5::digest(key).into()
}

/// The ring position of a hashed key (what [`dsf_ring::key_position`]
/// gives the key).
pub fn position_of(hash: &KeyHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}

/// Longest part of a key kept for operators to read.
pub const SHOWN_KEY: usize = 64;

/// What an operator is shown of a key: at most [`SHOWN_KEY`] bytes, cut at
/// a character boundary.
pub fn shown(key: &str) -> String {
    let mut end = key.len().min(SHOWN_KEY);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key[..end].to_string()
}

#[derive(Debug, Clone)]
struct Pin {
    node: String,
    shown: String,
    last_used: Instant,
    /// When the shared table was last told of a use (`--pins-db`).
    stored_use: Instant,
    pinned_at: SystemTime,
    /// When this entry was read from the shared table; a cache entry older
    /// than the cache TTL is read again.
    fetched: Instant,
}

/// Pins in memory, in key-hash order (pages for operators are a range).
#[derive(Debug)]
pub struct PinTable {
    map: BTreeMap<KeyHash, Pin>,
    ttl: Duration,
    capacity: usize,
    /// How long an entry is trusted without reading the shared table
    /// again; `None` when this table is the only one.
    cache_ttl: Option<Duration>,
}

/// What [`PinTable::get`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A pin to trust (`stale_use`: the shared table should hear of the use).
    Hit { node: String, stale_use: bool },
    /// No entry, or a cache entry too old to trust.
    Miss,
}

impl PinTable {
    pub fn new(ttl: Duration, capacity: usize, cache_ttl: Option<Duration>) -> PinTable {
        PinTable {
            map: BTreeMap::new(),
            ttl,
            capacity,
            cache_ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The pin of `key`, marked used at `now`.
    pub fn get(&mut self, key: &KeyHash, now: Instant) -> Lookup {
        let Some(p) = self.map.get_mut(key) else {
            return Lookup::Miss;
        };
        if now.saturating_duration_since(p.last_used) >= self.ttl {
            return Lookup::Miss;
        }
        if let Some(fresh) = self.cache_ttl {
            if now.saturating_duration_since(p.fetched) >= fresh {
                return Lookup::Miss;
            }
        }
        let stale_use = mark_used(p, now, self.ttl);
        Lookup::Hit {
            node: p.node.clone(),
            stale_use,
        }
    }

    /// The node `key` was last pinned to here, however old the entry (the
    /// fallback while the shared table does not answer).
    pub fn peek(&self, key: &KeyHash) -> Option<&str> {
        self.map.get(key).map(|p| p.node.as_str())
    }

    /// Marks `key` used at `now` (a device still connected, or one that
    /// just left); whether the shared table should hear of it.
    pub fn touch(&mut self, key: &KeyHash, now: Instant) -> bool {
        match self.map.get_mut(key) {
            Some(p) => mark_used(p, now, self.ttl),
            None => false,
        }
    }

    /// Pins `key` to `node` at `now`; `false` when the table is full and
    /// the key is new (it is then not stored).
    pub fn set(
        &mut self,
        key: &KeyHash,
        shown: &str,
        node: &str,
        now: Instant,
        stats: &PinStats,
    ) -> bool {
        if let Some(p) = self.map.get_mut(key) {
            if p.node != node {
                p.node.clear();
                p.node.push_str(node);
                p.pinned_at = SystemTime::now();
            }
            p.last_used = now;
            p.stored_use = now;
            p.fetched = now;
            return true;
        }
        if self.map.len() >= self.capacity {
            stats.full.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.map.insert(
            *key,
            Pin {
                node: node.to_string(),
                shown: shown.to_string(),
                last_used: now,
                stored_use: now,
                pinned_at: SystemTime::now(),
                fetched: now,
            },
        );
        if self.cache_ttl.is_none() {
            stats.held.store(self.map.len() as u64, Ordering::Relaxed);
        }
        true
    }

    /// Drops the pin of `key`; whether there was one.
    pub fn remove(&mut self, key: &KeyHash) -> bool {
        self.map.remove(key).is_some()
    }

    /// Drops every pin to `node`; how many.
    pub fn remove_node(&mut self, node: &str) -> usize {
        let before = self.map.len();
        self.map.retain(|_, p| p.node != node);
        before - self.map.len()
    }

    /// Drops pins unused for a TTL (the caller marks the keys of devices
    /// still connected used first, so theirs stay).
    pub fn sweep(&mut self, now: Instant, stats: &PinStats) {
        let ttl = self.ttl;
        let before = self.map.len();
        self.map
            .retain(|_, p| now.saturating_duration_since(p.last_used) < ttl);
        let expired = before - self.map.len();
        if self.cache_ttl.is_none() {
            stats.expired.fetch_add(expired as u64, Ordering::Relaxed);
            stats.held.store(self.map.len() as u64, Ordering::Relaxed);
        }
    }

    /// Pins in key-hash order after `after`, at most `limit`, optionally
    /// only those to `node`; with the hash of the last one (the next
    /// page's `after`) when the page is full.
    pub fn list(
        &self,
        after: Option<KeyHash>,
        limit: usize,
        node: Option<&str>,
    ) -> (Vec<PinView>, Option<KeyHash>) {
        use std::ops::Bound;
        let now = Instant::now();
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut last = None;
        let pins: Vec<PinView> = self
            .map
            .range((from, Bound::Unbounded))
            .filter(|(_, p)| node.is_none_or(|n| p.node == n))
            .take(limit)
            .map(|(k, p)| {
                last = Some(*k);
                PinView {
                    key: p.shown.clone(),
                    node: p.node.clone(),
                    idle_ms: now.saturating_duration_since(p.last_used).as_millis() as u64,
                    pinned_at_ms: unix_ms(p.pinned_at),
                }
            })
            .collect();
        let next = if pins.len() == limit { last } else { None };
        (pins, next)
    }
}

/// Marks a pin used; whether the shared table should hear of it (about
/// four times a TTL, never once per connection).
fn mark_used(p: &mut Pin, now: Instant, ttl: Duration) -> bool {
    p.last_used = now;
    let stale = now.saturating_duration_since(p.stored_use) >= ttl / 4;
    if stale {
        p.stored_use = now;
    }
    stale
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_proto::cluster::{NodeState, NodeView, View};
    use dsf_ring::RingConfig;

    fn ring(ids: &[(&str, NodeState)]) -> Ring {
        let view = View {
            version: 1,
            nodes: ids
                .iter()
                .map(|(id, state)| NodeView {
                    id: id.to_string(),
                    addr: format!("{id}:1883"),
                    proxy_addr: None,
                    weight: 1,
                    state: *state,
                    load: Default::default(),
                })
                .collect(),
        };
        Ring::from_view(&view, RingConfig::default()).unwrap()
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..2000).map(|i| format!("device-{i}"))
    }

    fn h(k: &str) -> KeyHash {
        key_hash(k.as_bytes())
    }

    #[test]
    fn a_hashed_key_sits_where_the_ring_puts_the_key() {
        for k in keys().take(100) {
            assert_eq!(position_of(&h(&k)), dsf_ring::key_position(k.as_bytes()));
        }
        assert_eq!(shown(&"é".repeat(40)).len(), 64);
        assert_eq!(shown("short"), "short");
    }

    #[test]
    fn a_new_node_takes_no_pinned_key_and_a_leaving_node_frees_only_its_own() {
        use NodeState::Up;
        let two = ring(&[("a", Up), ("b", Up)]);
        let three = ring(&[("a", Up), ("b", Up), ("c", Up)]);
        let only_b = ring(&[("b", Up), ("c", Up)]);
        let stats = PinStats::default();
        let mut pins = PinTable::new(DEFAULT_PIN_TTL, DEFAULT_MAX_PINS, None);
        let now = Instant::now();
        for k in keys() {
            let d = decide(&two, None, position_of(&h(&k))).unwrap();
            assert!(matches!(d, Decision::New(_)));
            pins.set(&h(&k), &k, &two.node(d.node()).id, now, &stats);
        }
        // c joins: every pinned key stays where it is.
        for k in keys() {
            let Lookup::Hit { node, .. } = pins.get(&h(&k), now) else {
                panic!("{k} lost its pin");
            };
            let d = decide(&three, Some(&node), position_of(&h(&k))).unwrap();
            assert_eq!(d, Decision::Kept(three.index_of(&node).unwrap()), "{k}");
        }
        // a leaves: its keys move to the ring's owner without a (b or c),
        // b's keys stay on b.
        let mut moved = 0;
        for k in keys() {
            let Lookup::Hit { node, .. } = pins.get(&h(&k), now) else {
                panic!("{k} lost its pin");
            };
            let d = decide(&only_b, Some(&node), position_of(&h(&k))).unwrap();
            if node == "a" {
                moved += 1;
                let owner = only_b.owner(position_of(&h(&k))).unwrap();
                assert_eq!(d, Decision::Moved(owner));
            } else {
                assert_eq!(only_b.node(d.node()).id, "b");
            }
        }
        assert!(
            moved > 700 && moved < 1300,
            "about half the keys were on a: {moved}"
        );
    }

    #[test]
    fn a_pin_holds_on_a_draining_node() {
        let r = ring(&[("a", NodeState::Draining), ("b", NodeState::Up)]);
        for k in keys().take(50) {
            let pos = position_of(&h(&k));
            assert_eq!(decide(&r, Some("a"), pos), Some(Decision::Kept(0)));
            // A new key never lands on the draining node.
            assert_eq!(decide(&r, None, pos), Some(Decision::New(1)));
        }
    }

    #[test]
    fn fail_over_walks_clockwise_past_the_failed_nodes() {
        use NodeState::Up;
        let r = ring(&[("a", Up), ("b", Up), ("c", Up)]);
        let pos = position_of(&h("k"));
        let first = r.owner(pos).unwrap();
        let second = fail_over(&r, pos, &[r.node(first).id.clone()]).unwrap();
        assert_ne!(first, second);
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(fail_over(&r, pos, &all), None);
        assert_eq!(fail_over(&r, pos, &[]), Some(first));
    }

    #[test]
    fn pins_expire_a_ttl_after_their_last_use_and_the_cap_holds() {
        let stats = PinStats::default();
        let ttl = Duration::from_secs(60);
        let mut pins = PinTable::new(ttl, 2, None);
        let t0 = Instant::now();
        assert!(pins.set(&h("a"), "a", "n1", t0, &stats));
        assert!(pins.set(&h("b"), "b", "n1", t0, &stats));
        assert!(!pins.set(&h("c"), "c", "n1", t0, &stats), "at the cap");
        assert_eq!(stats.full.load(Ordering::Relaxed), 1);
        // Re-pinning a held key is not a new pin.
        assert!(pins.set(&h("a"), "a", "n2", t0, &stats));
        // a is used at t0+50s (a device still connected is marked used the
        // same way), b is not: at t0+70s b has expired, a has not.
        assert!(pins.touch(&h("a"), t0 + Duration::from_secs(50)));
        assert_eq!(
            pins.get(&h("b"), t0 + Duration::from_secs(70)),
            Lookup::Miss
        );
        pins.sweep(t0 + Duration::from_secs(70), &stats);
        assert_eq!(pins.len(), 1);
        assert_eq!(stats.expired.load(Ordering::Relaxed), 1);
        assert_eq!(stats.held.load(Ordering::Relaxed), 1);
        // Used again 10 s after its last use: no news for the shared table.
        assert_eq!(
            pins.get(&h("a"), t0 + Duration::from_secs(60)),
            Lookup::Hit {
                node: "n2".into(),
                stale_use: false
            }
        );
    }

    #[test]
    fn a_cache_entry_is_read_again_after_the_cache_ttl_but_peeked_at_any_age() {
        let stats = PinStats::default();
        let mut pins = PinTable::new(DEFAULT_PIN_TTL, 10, Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        pins.set(&h("k"), "k", "n", t0, &stats);
        assert!(matches!(
            pins.get(&h("k"), t0 + Duration::from_secs(4)),
            Lookup::Hit { .. }
        ));
        assert_eq!(pins.get(&h("k"), t0 + Duration::from_secs(6)), Lookup::Miss);
        assert_eq!(pins.peek(&h("k")), Some("n"));
    }

    #[test]
    fn operators_page_in_hash_order_and_drop_by_key_or_node() {
        let stats = PinStats::default();
        let mut pins = PinTable::new(DEFAULT_PIN_TTL, 100, None);
        let now = Instant::now();
        for i in 0..25 {
            let k = format!("k{i}");
            pins.set(
                &h(&k),
                &k,
                if i % 2 == 0 { "n1" } else { "n2" },
                now,
                &stats,
            );
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = pins.list(after, 7, None);
            seen.extend(page.into_iter().map(|p| p.key));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        seen.sort();
        let mut all: Vec<String> = (0..25).map(|i| format!("k{i}")).collect();
        all.sort();
        assert_eq!(seen, all, "every pin once, across pages");
        assert_eq!(pins.list(None, 100, Some("n1")).0.len(), 13);
        assert_eq!(pins.remove_node("n1"), 13);
        assert!(pins.remove(&h("k1")));
        assert!(!pins.remove(&h("k1")));
        assert_eq!(pins.len(), 11);
    }
}
