//! The member table and its rules, free of threads and clocks (every
//! method takes `now`), so each rule has a unit test.
//!
//! - A node that heartbeats is up from its first heartbeat, draining when it
//!   says so, and evicted after `dead_after` without one, or at once when it
//!   sends `node.leave`.
//! - A static `--target` starts down and is health-checked by its own
//!   thread: [`RISE`] good checks in a row bring it up, [`FALL`] failed ones
//!   in a row take it down. It stays in the table while down (for status
//!   and metrics) but not in the view.
//! - Load figures are smoothed ([`Smoothed`]) so that one busy second does
//!   not push a node over the bounded-load line and the next one pull it
//!   back: the ring would move keys back and forth every second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dsf_common::view::{Heartbeat, Load, MemberSpec, NodeState, NodeView, Stats};
use dsf_common::Error;
use serde::Serialize;

/// Good checks in a row that bring a static target up.
pub const RISE: u32 = 2;
/// Failed checks in a row that take a static target down.
pub const FALL: u32 = 3;
/// Time constant of the load smoothing: a step in a node's load shows about
/// two thirds of the way after this long.
pub const SMOOTHING: Duration = Duration::from_secs(2);

/// A static member, `--target ID=HOST:PORT[,WEIGHT]`.
pub type Target = MemberSpec;

pub use dsf_common::view::is_host_port;

/// Where a member came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// It sends `node.heartbeat`.
    Heartbeat,
    /// A `--target`, health-checked by TCP connect.
    Static,
}

/// A member's state as status and metrics show it; `Down` members (static
/// targets failing their checks) are not in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Up,
    Draining,
    /// Heartbeating, but cannot reach its database.
    Degraded,
    Down,
}

impl MemberState {
    /// The string status and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Up => "up",
            MemberState::Draining => "draining",
            MemberState::Degraded => "degraded",
            MemberState::Down => "down",
        }
    }
}

/// Health-check streaks of a static target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    pub ok_streak: u32,
    pub fail_streak: u32,
}

// === impl Health ===

impl Health {
    /// Records one check; returns whether `up` changed.
    pub fn record(&mut self, ok: bool) -> bool {
        if ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= RISE {
                self.up = true;
                return true;
            }
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            if self.up && self.fail_streak >= FALL {
                self.up = false;
                return true;
            }
        }
        false
    }
}

/// Exponentially smoothed load figures, weighted by the time between
/// samples so a node that heartbeats twice as often is not smoothed half as
/// much.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Smoothed {
    pub conns: f64,
    pub inflight: f64,
    pub rps: f64,
    pub p99_ms: f64,
    at: Option<Instant>,
}

// === impl Smoothed ===

impl Smoothed {
    /// Takes in one sample taken at `now`.
    pub fn update(&mut self, s: &Stats, now: Instant) {
        let sample = [s.conns as f64, s.inflight as f64, s.rps, s.p99_ms];
        let alpha = match self.at {
            // The first sample is all we know.
            None => 1.0,
            Some(then) => {
                let dt = now.saturating_duration_since(then).as_secs_f64();
                1.0 - (-dt / SMOOTHING.as_secs_f64()).exp()
            }
        };
        for (v, x) in [
            &mut self.conns,
            &mut self.inflight,
            &mut self.rps,
            &mut self.p99_ms,
        ]
        .into_iter()
        .zip(sample)
        {
            // Non-finite figures from a confused node are ignored, not spread.
            if x.is_finite() && x >= 0.0 {
                *v += alpha * (x - *v);
            }
        }
        self.at = Some(now);
    }

    /// The figures as the view carries them.
    pub fn load(&self) -> Load {
        Load {
            conns: self.conns.round() as u64,
            inflight: self.inflight.round() as u64,
            rps: round3(self.rps),
            p99_ms: round3(self.p99_ms),
        }
    }
}

/// Three decimals are plenty and keep the view's JSON short.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One member of the cluster.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub addr: String,
    /// Where proxy mode splices to, when not `addr`.
    pub proxy_addr: Option<String>,
    pub weight: u32,
    pub source: Source,
    pub state: MemberState,
    /// Last heartbeat, or last good check of a static target.
    pub last_seen: Option<Instant>,
    /// The stats of the last heartbeat, as sent.
    pub stats: Stats,
    pub load: Smoothed,
    /// Check streaks; static targets only.
    pub health: Health,
}

/// What a heartbeat did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The node was not a member: it is now.
    Joined,
    /// A member went from up to draining or back.
    StateChanged(MemberState),
    /// Nothing but its stats changed (or its address or weight).
    Refreshed,
}

/// A membership fact that decides the ring: id → (addr, weight, state).
pub type Shape = BTreeMap<String, (String, u32, NodeState)>;

/// The member table.
#[derive(Debug, Clone)]
pub struct Members {
    nodes: BTreeMap<String, Member>,
    dead_after: Duration,
}

// === impl Members ===

impl Members {
    /// A table with the static targets in it, all down until checked.
    pub fn new(dead_after: Duration, targets: &[Target]) -> Members {
        let nodes = targets
            .iter()
            .map(|t| {
                let m = Member {
                    id: t.id.clone(),
                    addr: t.addr.clone(),
                    proxy_addr: t.proxy_addr.clone(),
                    weight: t.weight,
                    source: Source::Static,
                    state: MemberState::Down,
                    last_seen: None,
                    stats: Stats::default(),
                    load: Smoothed::default(),
                    health: Health::default(),
                };
                (t.id.clone(), m)
            })
            .collect();
        Members { nodes, dead_after }
    }

    /// How long a heartbeating node may stay silent.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// Every member, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.nodes.values()
    }

    /// One member.
    pub fn get(&self, id: &str) -> Option<&Member> {
        self.nodes.get(id)
    }

    /// Applies a heartbeat received at `now`. A heartbeat under the id of a
    /// static target is a `conflict`: two things claiming one ring position.
    /// A heartbeat of node `hb.id`. `proven`: signed with that node's own
    /// key. Without that proof a live node's address is not taken over: a
    /// heartbeat from elsewhere under its id is refused until it has been
    /// silent long enough to be evicted.
    pub fn heartbeat(&mut self, hb: &Heartbeat, proven: bool, now: Instant) -> Result<Beat, Error> {
        let state = match hb.state {
            NodeState::Up => MemberState::Up,
            NodeState::Draining => MemberState::Draining,
            NodeState::Degraded => MemberState::Degraded,
        };
        let m = match self.nodes.get_mut(&hb.id) {
            Some(m) if m.source == Source::Static => {
                return Err(Error::Conflict(format!(
                    "node id {:?} is a static --target of this collector; give the node another id (--node-id) or remove the --target",
                    hb.id
                )))
            }
            Some(m) if !proven && m.addr != hb.addr => {
                return Err(Error::Conflict(format!(
                    "node id {:?} is alive at {}; a heartbeat from {} cannot take it over until that node is evicted \
                     (silent for --dead-after). Give this node its own --node-id, or use node keys \
                     (collector --node-keys, app-server --node-key-file), which prove who speaks",
                    hb.id, m.addr, hb.addr
                )))
            }
            Some(m) => m,
            None => {
                let mut load = Smoothed::default();
                load.update(&hb.stats, now);
                self.nodes.insert(
                    hb.id.clone(),
                    Member {
                        id: hb.id.clone(),
                        addr: hb.addr.clone(),
                        proxy_addr: hb.proxy_addr.clone(),
                        weight: hb.weight,
                        source: Source::Heartbeat,
                        state,
                        last_seen: Some(now),
                        stats: hb.stats,
                        load,
                        health: Health::default(),
                    },
                );
                return Ok(Beat::Joined);
            }
        };
        m.addr.clone_from(&hb.addr);
        m.proxy_addr.clone_from(&hb.proxy_addr);
        m.weight = hb.weight;
        m.last_seen = Some(now);
        m.stats = hb.stats;
        m.load.update(&hb.stats, now);
        if m.state != state {
            m.state = state;
            return Ok(Beat::StateChanged(state));
        }
        Ok(Beat::Refreshed)
    }

    /// Removes a heartbeating node at once. `Ok(false)` if it was not a
    /// member (a second leave, or one after eviction: nothing to do).
    pub fn leave(&mut self, id: &str) -> Result<bool, Error> {
        match self.nodes.get(id) {
            None => Ok(false),
            Some(m) if m.source == Source::Static => Err(Error::Conflict(format!(
                "{id:?} is a static --target: it leaves when its health checks fail, not on node.leave"
            ))),
            Some(_) => {
                self.nodes.remove(id);
                Ok(true)
            }
        }
    }

    /// Records a health check of static target `id`; returns its new state
    /// if the check changed it.
    pub fn check(&mut self, id: &str, ok: bool, now: Instant) -> Option<MemberState> {
        let m = self.nodes.get_mut(id)?;
        if ok {
            m.last_seen = Some(now);
        }
        if !m.health.record(ok) {
            return None;
        }
        m.state = if m.health.up {
            MemberState::Up
        } else {
            MemberState::Down
        };
        Some(m.state)
    }

    /// Removes heartbeating nodes silent for `dead_after` or more; returns
    /// their ids.
    pub fn evict_silent(&mut self, now: Instant) -> Vec<String> {
        let dead_after = self.dead_after;
        let dead: Vec<String> = self
            .nodes
            .values()
            .filter(|m| {
                m.source == Source::Heartbeat
                    && m.last_seen
                        .is_some_and(|t| now.saturating_duration_since(t) >= dead_after)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &dead {
            self.nodes.remove(id);
        }
        dead
    }

    /// The members the view holds (up, draining or degraded), by id. A
    /// degraded node goes out as `degraded` (no keys) only while another
    /// is up; with none up it goes out as `up`, since no node would serve
    /// its keys better (the database itself is away, say).
    pub fn view_nodes(&self) -> Vec<NodeView> {
        let any_up = self.nodes.values().any(|m| m.state == MemberState::Up);
        self.nodes
            .values()
            .filter_map(|m| {
                let state = match m.state {
                    MemberState::Up => NodeState::Up,
                    MemberState::Draining => NodeState::Draining,
                    MemberState::Degraded if any_up => NodeState::Degraded,
                    MemberState::Degraded => NodeState::Up,
                    MemberState::Down => return None,
                };
                Some(NodeView {
                    id: m.id.clone(),
                    addr: m.addr.clone(),
                    proxy_addr: m.proxy_addr.clone(),
                    weight: m.weight,
                    state,
                    load: m.load.load(),
                })
            })
            .collect()
    }

    /// What the ring is built from; a new version is due when it changes.
    pub fn shape(&self) -> Shape {
        self.view_nodes()
            .into_iter()
            .map(|n| (n.id, (n.addr, n.weight, n.state)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, state: NodeState, conns: u64) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            addr: format!("127.0.0.1:{}", 7000 + id.len()),
            proxy_addr: None,
            weight: 1,
            state,
            stats: Stats {
                conns,
                ..Stats::default()
            },
            known_view: None,
        }
    }

    fn target(id: &str) -> Target {
        format!("{id}=127.0.0.1:9000").parse().unwrap()
    }

    #[test]
    fn a_proxy_address_reaches_the_view_from_heartbeats_and_targets() {
        let now = Instant::now();
        let t: Target = "broker=127.0.0.1:9000,proxy=127.0.0.1:1883"
            .parse()
            .unwrap();
        let mut m = Members::new(Duration::from_secs(3), &[t]);
        let mut beat = hb("app", NodeState::Up, 0);
        beat.proxy_addr = Some("127.0.0.1:1884".into());
        m.heartbeat(&beat, false, now).unwrap();
        // A static target enters the view once a check passes.
        let up = (0..10).find_map(|_| m.check("broker", true, now));
        assert_eq!(up, Some(MemberState::Up));
        let proxies: Vec<(String, Option<String>)> = m
            .view_nodes()
            .into_iter()
            .map(|n| (n.id, n.proxy_addr))
            .collect();
        assert_eq!(
            proxies,
            [
                ("app".to_string(), Some("127.0.0.1:1884".to_string())),
                ("broker".to_string(), Some("127.0.0.1:1883".to_string()))
            ]
        );
        // A heartbeat that stops advertising one clears it.
        m.heartbeat(&hb("app", NodeState::Up, 0), false, now)
            .unwrap();
        assert_eq!(m.view_nodes()[0].proxy_addr, None);
    }

    #[test]
    fn a_node_is_up_from_its_first_heartbeat_and_drains_when_it_says_so() {
        let now = Instant::now();
        let mut m = Members::new(Duration::from_secs(3), &[]);
        assert_eq!(
            m.heartbeat(&hb("a", NodeState::Up, 0), false, now).unwrap(),
            Beat::Joined
        );
        assert_eq!(m.view_nodes()[0].state, NodeState::Up);
        assert_eq!(
            m.heartbeat(&hb("a", NodeState::Draining, 0), false, now)
                .unwrap(),
            Beat::StateChanged(MemberState::Draining)
        );
        assert_eq!(m.view_nodes()[0].state, NodeState::Draining);
        assert_eq!(
            m.heartbeat(&hb("a", NodeState::Draining, 5), false, now)
                .unwrap(),
            Beat::Refreshed
        );
    }

    #[test]
    fn a_degraded_node_gets_no_keys_while_another_is_up() {
        let now = Instant::now();
        let mut m = Members::new(Duration::from_secs(3), &[]);
        m.heartbeat(&hb("a", NodeState::Up, 0), false, now).unwrap();
        m.heartbeat(&hb("b", NodeState::Up, 0), false, now).unwrap();
        let states = |m: &Members| -> Vec<NodeState> {
            m.view_nodes().into_iter().map(|n| n.state).collect()
        };
        assert_eq!(
            m.heartbeat(&hb("a", NodeState::Degraded, 0), false, now)
                .unwrap(),
            Beat::StateChanged(MemberState::Degraded)
        );
        assert_eq!(states(&m), [NodeState::Degraded, NodeState::Up]);
        // Both degraded (the database itself is away): both serve as
        // before, neither better than the other.
        m.heartbeat(&hb("b", NodeState::Degraded, 0), false, now)
            .unwrap();
        assert_eq!(states(&m), [NodeState::Up, NodeState::Up]);
        m.heartbeat(&hb("a", NodeState::Up, 0), false, now).unwrap();
        assert_eq!(states(&m), [NodeState::Up, NodeState::Degraded]);
    }

    #[test]
    fn a_silent_node_is_evicted_at_dead_after_and_not_before() {
        let t0 = Instant::now();
        let mut m = Members::new(Duration::from_secs(3), &[target("s")]);
        m.heartbeat(&hb("a", NodeState::Up, 0), false, t0).unwrap();
        m.heartbeat(
            &hb("b", NodeState::Up, 0),
            false,
            t0 + Duration::from_secs(2),
        )
        .unwrap();
        assert!(m.evict_silent(t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(m.evict_silent(t0 + Duration::from_secs(3)), ["a"]);
        assert_eq!(m.evict_silent(t0 + Duration::from_secs(5)), ["b"]);
        // Static targets are never evicted for silence.
        assert!(m.get("s").is_some());
    }

    #[test]
    fn leave_removes_at_once_and_twice_is_harmless() {
        let mut m = Members::new(Duration::from_secs(3), &[target("s")]);
        m.heartbeat(&hb("a", NodeState::Up, 0), false, Instant::now())
            .unwrap();
        assert!(m.leave("a").unwrap());
        assert!(!m.leave("a").unwrap());
        assert!(m.view_nodes().is_empty());
        assert!(m.leave("s").is_err());
    }

    #[test]
    fn a_heartbeat_cannot_take_a_static_targets_id() {
        let mut m = Members::new(Duration::from_secs(3), &[target("s")]);
        let e = m
            .heartbeat(&hb("s", NodeState::Up, 0), false, Instant::now())
            .unwrap_err();
        assert_eq!(e.code(), dsf_common::ErrorCode::Conflict);
    }

    #[test]
    fn static_targets_rise_after_two_good_checks_and_fall_after_three_bad_ones() {
        let now = Instant::now();
        let mut m = Members::new(Duration::from_secs(3), &[target("s")]);
        assert!(m.view_nodes().is_empty(), "down until checked");
        assert_eq!(m.check("s", true, now), None);
        assert_eq!(m.check("s", true, now), Some(MemberState::Up));
        assert_eq!(m.view_nodes().len(), 1);
        // A single failure between good checks does not count toward falling.
        assert_eq!(m.check("s", false, now), None);
        assert_eq!(m.check("s", false, now), None);
        assert_eq!(m.check("s", true, now), None);
        assert_eq!(m.check("s", false, now), None);
        assert_eq!(m.check("s", false, now), None);
        assert_eq!(m.check("s", false, now), Some(MemberState::Down));
        assert!(m.view_nodes().is_empty());
        assert_eq!(m.get("s").unwrap().state, MemberState::Down);
        assert_eq!(m.check("s", true, now), None);
        assert_eq!(m.check("s", true, now), Some(MemberState::Up));
    }

    #[test]
    fn the_shape_ignores_load_but_not_weight_address_or_state() {
        let now = Instant::now();
        let mut m = Members::new(Duration::from_secs(3), &[]);
        m.heartbeat(&hb("a", NodeState::Up, 0), false, now).unwrap();
        let before = m.shape();
        m.heartbeat(&hb("a", NodeState::Up, 50), false, now)
            .unwrap();
        assert_eq!(m.shape(), before);
        let mut heavier = hb("a", NodeState::Up, 50);
        heavier.weight = 2;
        m.heartbeat(&heavier, false, now).unwrap();
        assert_ne!(m.shape(), before);
    }

    #[test]
    fn smoothing_damps_a_flapping_load() {
        let t0 = Instant::now();
        let mut s = Smoothed::default();
        let sample = |conns| Stats {
            conns,
            ..Stats::default()
        };
        s.update(&sample(50), t0);
        assert_eq!(s.load().conns, 50, "the first sample is taken as is");
        // A load that jumps between 0 and 100 every second stays near the
        // middle instead of following it.
        let mut seen = Vec::new();
        for i in 1..=20u64 {
            s.update(
                &sample(if i % 2 == 0 { 100 } else { 0 }),
                t0 + Duration::from_secs(i),
            );
            seen.push(s.load().conns);
        }
        let (lo, hi) = (
            seen[10..].iter().min().unwrap(),
            seen[10..].iter().max().unwrap(),
        );
        assert!(*lo >= 30 && *hi <= 70, "{seen:?}");
        // A lasting change is followed.
        for i in 21..=40u64 {
            s.update(&sample(10), t0 + Duration::from_secs(i));
        }
        assert_eq!(s.load().conns, 10);
    }

    #[test]
    fn nonsense_figures_are_ignored() {
        let mut s = Smoothed::default();
        let t0 = Instant::now();
        s.update(
            &Stats {
                rps: 5.0,
                ..Stats::default()
            },
            t0,
        );
        s.update(
            &Stats {
                rps: f64::NAN,
                p99_ms: -1.0,
                ..Stats::default()
            },
            t0 + Duration::from_secs(1),
        );
        assert_eq!(s.load().rps, 5.0);
        assert_eq!(s.load().p99_ms, 0.0);
    }
}
