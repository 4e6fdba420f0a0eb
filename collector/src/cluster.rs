//! The collector's shared state: the member table, the version clock, the
//! view last published, what each balancer last applied, and the mailbox
//! the pushers wait on.
//!
//! Every mutation ends in `Cluster::settle`: when the shape of the
//! membership (ids, addresses, weights, states) changed, a new version is
//! published at once; load-only changes go out with the next re-send, at
//! the same version (a balancer applies a view of the version it holds and
//! takes the new loads without rebuilding its ring).
//!
//! The mailbox holds only the newest view and a sequence number: a pusher
//! that was away has no use for the views it missed, only for the latest,
//! so it cannot fall behind and nothing queues up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dsf_common::view::{Heartbeat, View};
use dsf_common::wire::now_ms;
use dsf_common::Error;
use serde::Serialize;

use crate::members::{Beat, MemberState, Members, Shape, Target};
use crate::version::VersionClock;

/// Counters since start, read by the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Heartbeats accepted.
    pub heartbeats: AtomicU64,
    /// `node.leave`s that removed a node.
    pub leaves: AtomicU64,
    /// Nodes evicted for silence.
    pub evictions: AtomicU64,
}

/// What the collector knows of one balancer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BalancerStatus {
    /// Its cluster port, as given with `--lb`.
    pub addr: String,
    /// Whether the persistent connection is up.
    pub connected: bool,
    /// The version it said it holds after the last push.
    pub applied: Option<u64>,
    /// Pushes it acknowledged.
    pub pushes: u64,
    /// Pushes that failed (connect, send, reply or refusal).
    pub failures: u64,
    /// Why the last push failed, until one succeeds.
    pub last_error: Option<String>,
    /// Its proxy mode's counters, as of the last push (absent without
    /// proxy listeners).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<dsf_proto::lb::ProxyStats>,
}

/// A copy of the state at one instant, for status and metrics.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub view: Arc<View>,
    pub members: Members,
    pub balancers: Vec<BalancerStatus>,
    pub taken: Instant,
    /// Whether the first view has gone out (see [`Cluster::set_ready`]).
    pub ready: bool,
    /// `active`, `standby` or `took-over` (see [`Cluster::role`]).
    pub role: &'static str,
    /// The collector this one stands by for (`--standby-for`).
    pub standby_for: Option<String>,
    /// The recent changes of membership, oldest first.
    pub history: Vec<Change>,
}

/// One change of membership that made a new view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The view it made.
    pub version: u64,
    pub node: String,
    /// `joined`, `left`, `evicted`, `draining`, `up`, `down` or `changed`
    /// (a new address or weight).
    pub event: &'static str,
}

/// Changes kept for the dashboard.
pub const HISTORY: usize = 100;

struct Inner {
    members: Members,
    clock: VersionClock,
    shape: Shape,
    view: Arc<View>,
    seq: u64,
    ready: bool,
    /// On a standby: the active collector's address.
    standby_for: Option<String>,
    /// On a standby, while the active collector answers and feeds the
    /// balancers: no views go out.
    standing_by: bool,
    stopping: bool,
    balancers: BTreeMap<String, BalancerStatus>,
    history: VecDeque<Change>,
}

/// What a pusher waiting for a view got.
#[derive(Debug)]
pub enum Next {
    /// A view newer than the one it has, with its sequence number.
    View(Arc<View>, u64),
    /// Nothing new yet.
    Idle,
    /// The collector is stopping.
    Stop,
}

/// The shared state; one per collector, behind an `Arc`.
pub struct Cluster {
    inner: Mutex<Inner>,
    changed: Condvar,
    pub counters: Counters,
}

// === impl Cluster ===

impl Cluster {
    /// The state at start: static targets known but down, no view sent yet.
    pub fn new(dead_after: Duration, targets: &[Target], balancers: &[String]) -> Cluster {
        Cluster::with_standby(dead_after, targets, balancers, None)
    }

    /// [`Cluster::new`] for a standby of the collector at `standby_for`,
    /// which starts standing by.
    pub fn with_standby(
        dead_after: Duration,
        targets: &[Target],
        balancers: &[String],
        standby_for: Option<String>,
    ) -> Cluster {
        let members = Members::new(dead_after, targets);
        let mut clock = VersionClock::new();
        let view = View {
            version: clock.next(now_ms()),
            nodes: Vec::new(),
        };
        let balancers = balancers
            .iter()
            .map(|b| {
                let status = BalancerStatus {
                    addr: b.clone(),
                    ..BalancerStatus::default()
                };
                (b.clone(), status)
            })
            .collect();
        Cluster {
            inner: Mutex::new(Inner {
                shape: members.shape(),
                members,
                clock,
                view: Arc::new(view),
                seq: 0,
                ready: false,
                standing_by: standby_for.is_some(),
                standby_for,
                stopping: false,
                balancers,
                history: VecDeque::with_capacity(HISTORY),
            }),
            changed: Condvar::new(),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take membership down with it; the
        // table is consistent after every method.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The view last published.
    pub fn view(&self) -> Arc<View> {
        self.lock().view.clone()
    }

    /// Applies a heartbeat; returns the version now in force.
    pub fn heartbeat(&self, hb: &Heartbeat, proven: bool) -> Result<u64, Error> {
        let mut inner = self.lock();
        let beat = inner.members.heartbeat(hb, proven, Instant::now())?;
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        match beat {
            Beat::Joined => log::info!(
                "node {} joined at {} (weight {}, {:?})",
                hb.id,
                hb.addr,
                hb.weight,
                hb.state
            ),
            Beat::StateChanged(MemberState::Draining) => log::info!("node {} is draining", hb.id),
            Beat::StateChanged(MemberState::Degraded) => log::warn!(
                "node {} cannot reach its database: it gets no keys while another node is up",
                hb.id
            ),
            Beat::StateChanged(s) => log::info!("node {} is {}", hb.id, s.as_str()),
            Beat::Refreshed => log::debug!("heartbeat from {}", hb.id),
        }
        self.settle(&mut inner, "left");
        Ok(inner.view.version)
    }

    /// Removes a node that said it is leaving; returns the version in force.
    pub fn leave(&self, id: &str) -> Result<u64, Error> {
        let mut inner = self.lock();
        if inner.members.leave(id)? {
            self.counters.leaves.fetch_add(1, Ordering::Relaxed);
            log::info!("node {id} left");
            self.settle(&mut inner, "left");
        }
        Ok(inner.view.version)
    }

    /// Records one health check of a static target.
    pub fn check(&self, id: &str, ok: bool) {
        let mut inner = self.lock();
        match inner.members.check(id, ok, Instant::now()) {
            Some(MemberState::Down) => log::warn!(
                "target {id} is down: {} health checks in a row failed",
                crate::members::FALL
            ),
            Some(s) => log::info!(
                "target {id} is {} after {} good health checks",
                s.as_str(),
                crate::members::RISE
            ),
            None => return,
        }
        self.settle(&mut inner, "down");
    }

    /// Evicts nodes silent for `dead_after`.
    pub fn sweep(&self) {
        let mut inner = self.lock();
        let dead = inner.members.evict_silent(Instant::now());
        if dead.is_empty() {
            return;
        }
        let after = inner.members.dead_after();
        for id in &dead {
            log::warn!("node {id} evicted: no heartbeat for {after:?}");
        }
        self.counters
            .evictions
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        self.settle(&mut inner, "evicted");
    }

    /// Publishes the current loads at the current version (the re-send).
    pub fn republish(&self) {
        let mut inner = self.lock();
        self.publish(&mut inner, false);
    }

    /// Lets the pushers start. Until then a restarted collector, which has
    /// not yet heard from every node, would push a view missing most of
    /// them over the balancers' good one.
    pub fn set_ready(&self) {
        let mut inner = self.lock();
        if !inner.ready {
            inner.ready = true;
            match &inner.standby_for {
                Some(active) if inner.standing_by => log::info!(
                    "warmed up; standing by for collector {active}: no views go out while it answers and feeds the balancers"
                ),
                _ => log::info!(
                    "sending views to {} balancers from version {}",
                    inner.balancers.len(),
                    inner.view.version
                ),
            }
            self.publish(&mut inner, false);
        }
    }

    /// Whether the warm-up is over.
    pub fn is_ready(&self) -> bool {
        self.lock().ready
    }

    /// Whether views go to the balancers: after the warm-up, and on a
    /// standby only once it took over.
    pub fn feeding(&self) -> bool {
        let inner = self.lock();
        inner.ready && !inner.standing_by
    }

    /// `active` (no `--standby-for`), `standby` (its active collector feeds
    /// the balancers) or `took-over` (a standby feeding them itself).
    pub fn role(&self) -> &'static str {
        role(&self.lock())
    }

    /// On a standby: stand by (`true`) or take over (`false`), saying why
    /// in the log. Taking over publishes a new version at once, past the
    /// active collector's last (versions follow the clock), so the
    /// balancers take it.
    pub fn stand_by(&self, yes: bool, why: &str) {
        let mut inner = self.lock();
        if inner.standby_for.is_none() || inner.standing_by == yes {
            return;
        }
        inner.standing_by = yes;
        if yes {
            log::info!("standing by again: {why}");
        } else {
            log::warn!(
                "taking over: {why}; sending views to {} balancers",
                inner.balancers.len()
            );
            self.publish(&mut inner, true);
        }
    }

    /// After each mutation: a new version if what the ring is built from
    /// changed.
    /// Publishes a new version if the shape changed, and records each
    /// node's change; a node gone from the shape went as `removed`.
    fn settle(&self, inner: &mut Inner, removed: &'static str) {
        let shape = inner.members.shape();
        if shape != inner.shape {
            let old = std::mem::replace(&mut inner.shape, shape);
            self.publish(inner, true);
            let (at_ms, version) = (now_ms(), inner.view.version);
            let mut changes: Vec<(String, &'static str)> = Vec::new();
            for (id, (addr, weight, state)) in &inner.shape {
                let event = match old.get(id) {
                    None => "joined",
                    Some((_, _, was)) if was != state => match state {
                        dsf_common::view::NodeState::Draining => "draining",
                        dsf_common::view::NodeState::Degraded => "degraded",
                        _ => "up",
                    },
                    Some((a, w, _)) if a != addr || w != weight => "changed",
                    Some(_) => continue,
                };
                changes.push((id.clone(), event));
            }
            for id in old.keys().filter(|id| !inner.shape.contains_key(*id)) {
                changes.push((id.clone(), removed));
            }
            for (node, event) in changes {
                if inner.history.len() == HISTORY {
                    inner.history.pop_front();
                }
                inner.history.push_back(Change {
                    at_ms,
                    version,
                    node,
                    event,
                });
            }
            log::info!(
                "view {}: {} nodes",
                inner.view.version,
                inner.view.nodes.len()
            );
        }
    }

    fn publish(&self, inner: &mut Inner, bump: bool) {
        let version = if bump {
            inner.clock.next(now_ms())
        } else {
            inner.view.version
        };
        inner.view = Arc::new(View {
            version,
            nodes: inner.members.view_nodes(),
        });
        inner.seq += 1;
        self.changed.notify_all();
    }

    /// The newest view once its sequence number passes `after` (and views
    /// are being sent), or `None` when stopping.
    pub fn next_view(&self, after: u64) -> Option<(Arc<View>, u64)> {
        loop {
            match self.next_view_within(after, Duration::from_secs(3600)) {
                Next::View(view, seq) => return Some((view, seq)),
                Next::Stop => return None,
                Next::Idle => {}
            }
        }
    }

    /// [`Cluster::next_view`], giving up after `timeout` with
    /// [`Next::Idle`] so the caller can look after its connection. Pushers
    /// wait here.
    pub fn next_view_within(&self, after: u64, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.stopping {
                return Next::Stop;
            }
            if inner.ready && !inner.standing_by && inner.seq > after {
                return Next::View(inner.view.clone(), inner.seq);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Idle;
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A balancer acknowledged `sent` saying it holds `applied`. A balancer
    /// ahead of us holding our membership (`same`: the other collector fed
    /// it, both hearing the same heartbeats) gives us its version: taken as
    /// ours and passed on to the other balancers, no new one minted, so two
    /// collectors feeding at once (cut from each other) settle on one
    /// version instead of outbidding each other every push. A balancer
    /// ahead with another membership, or not saying (a collector before a
    /// clock step, an older balancer), is overtaken with a new version at
    /// once.
    pub fn pushed(
        &self,
        lb: &str,
        sent: u64,
        applied: u64,
        same: Option<bool>,
        stats: Option<dsf_proto::lb::Stats>,
    ) {
        let mut inner = self.lock();
        if let Some(b) = inner.balancers.get_mut(lb) {
            b.connected = true;
            b.applied = Some(applied);
            b.proxy = stats.and_then(|s| s.proxy);
            b.pushes += 1;
            b.last_error = None;
        }
        if applied <= sent || !inner.clock.observe(applied) {
            return;
        }
        // Only while our view is still the one pushed: a membership that
        // changed since must go out under a version of its own.
        if same == Some(true) && inner.view.version == sent {
            log::info!(
                "balancer {lb} holds view {applied} with our membership (another collector fed it); taking its version for ours ({sent})"
            );
            inner.view = Arc::new(View {
                version: applied,
                nodes: inner.view.nodes.clone(),
            });
            inner.seq += 1;
            self.changed.notify_all();
            return;
        }
        log::warn!("balancer {lb} holds view {applied}, newer than ours ({sent}); moving past it");
        self.publish(&mut inner, true);
    }

    /// A push to `lb` failed.
    pub fn push_failed(&self, lb: &str, why: String) {
        let mut inner = self.lock();
        if let Some(b) = inner.balancers.get_mut(lb) {
            b.connected = false;
            b.failures += 1;
            b.last_error = Some(why);
        }
    }

    /// A copy of everything, for status and metrics.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            view: inner.view.clone(),
            members: inner.members.clone(),
            balancers: inner.balancers.values().cloned().collect(),
            taken: Instant::now(),
            ready: inner.ready,
            role: role(&inner),
            standby_for: inner.standby_for.clone(),
            history: inner.history.iter().cloned().collect(),
        }
    }

    /// Asks every thread waiting on the cluster to finish.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// Waits up to `timeout`; returns `true` if stopping (at once if so).
    pub fn wait_stop(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.stopping {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn role(inner: &Inner) -> &'static str {
    match (&inner.standby_for, inner.standing_by) {
        (None, _) => "active",
        (Some(_), true) => "standby",
        (Some(_), false) => "took-over",
    }
}

/// The `ticker` thread: evicts the silent, lets the first view out after
/// `warmup`, then re-sends the view every `resend`.
pub fn run_ticker(cluster: Arc<Cluster>, warmup: Duration, resend: Duration) {
    let dead_after = cluster.lock().members.dead_after();
    // Eviction is at most a tick late: a tenth of dead_after, 10 to 100 ms.
    let tick = (dead_after / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
    let mut next_send = Instant::now() + warmup;
    loop {
        let wait = tick.min(next_send.saturating_duration_since(Instant::now()));
        if cluster.wait_stop(wait) {
            return;
        }
        cluster.sweep();
        let now = Instant::now();
        if now >= next_send {
            if cluster.is_ready() {
                cluster.republish();
            } else {
                cluster.set_ready();
            }
            next_send = now + resend;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_common::view::{NodeState, Stats};

    fn hb(id: &str, state: NodeState) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            addr: "127.0.0.1:7000".into(),
            proxy_addr: None,
            weight: 1,
            state,
            stats: Stats::default(),
            known_view: None,
        }
    }

    #[test]
    fn membership_changes_bump_the_version_and_loads_do_not() {
        let c = Cluster::new(Duration::from_secs(3), &[], &[]);
        let v0 = c.view().version;
        let v1 = c.heartbeat(&hb("a", NodeState::Up), false).unwrap();
        assert!(v1 > v0);
        assert_eq!(c.heartbeat(&hb("a", NodeState::Up), false).unwrap(), v1);
        let v2 = c.heartbeat(&hb("a", NodeState::Draining), false).unwrap();
        assert!(v2 > v1);
        let v3 = c.leave("a").unwrap();
        assert!(v3 > v2);
        assert_eq!(c.leave("a").unwrap(), v3);
        c.republish();
        assert_eq!(c.view().version, v3);
    }

    #[test]
    fn pushers_wait_until_ready_and_then_see_the_newest_view() {
        let c = Cluster::new(Duration::from_secs(3), &[], &["lb".into()]);
        c.heartbeat(&hb("a", NodeState::Up), false).unwrap();
        c.heartbeat(&hb("b", NodeState::Up), false).unwrap();
        assert!(!c.is_ready());
        c.set_ready();
        let (view, seq) = c.next_view(0).unwrap();
        assert_eq!(view.nodes.len(), 2);
        c.stop();
        assert!(c.next_view(seq).is_none());
    }

    #[test]
    fn a_balancer_ahead_of_us_is_overtaken() {
        let c = Cluster::new(Duration::from_secs(3), &[], &["lb".into()]);
        let v = c.view().version;
        c.pushed("lb", v, v + 1_000_000, None, None);
        assert_eq!(c.view().version, v + 1_000_001);
        let snap = c.snapshot();
        assert_eq!(snap.balancers[0].applied, Some(v + 1_000_000));
        // Another membership: overtaken too.
        let v = c.view().version;
        c.pushed("lb", v, v + 1_000, Some(false), None);
        assert_eq!(c.view().version, v + 1_001);
    }

    #[test]
    fn a_balancer_ahead_with_our_membership_gives_us_its_version() {
        let c = Cluster::new(Duration::from_secs(3), &[], &["lb".into()]);
        let (v, seq) = (c.view().version, c.lock().seq);
        c.pushed("lb", v, v + 1_000, Some(true), None);
        // Its version is ours now, and goes out to the other balancers.
        assert_eq!(c.view().version, v + 1_000);
        assert!(c.lock().seq > seq);
        // The same push again (it holds what we send): nothing new.
        c.pushed("lb", v + 1_000, v + 1_000, Some(true), None);
        assert_eq!(c.view().version, v + 1_000);
        // Our next change mints a version above it.
        assert!(c.lock().clock.next(now_ms()) > v + 1_000);
    }
}
