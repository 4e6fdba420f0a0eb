//! Routing policies: which node a resolve answers, chosen by `--policy`.
//!
//! - `ring` (default): consistent hashing with bounded load ([`crate::Ring`]);
//!   the same key goes to the same node while the view holds.
//! - `round-robin`: the nodes in turn.
//! - `random`: uniformly at random.
//! - `least-loaded`: the node with the fewest `conns` in the view.
//!
//! The last three ignore the key. Every policy answers only nodes that take
//! keys (up, weight > 0), never a node in `exclude`, and `unavailable` when
//! none is left. A [`Policy`] is built once per view and shared read-only
//! between threads (`Arc<Policy>`); the only mutable state is an atomic
//! counter. On a view change the server builds a new one and swaps it in.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use dsf_proto::cluster::View;
use rand::Rng;

use crate::{Ring, RingConfig, RingError, RingNode};

/// Which policy `--policy` selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Consistent hash with bounded load.
    #[default]
    Ring,
    /// Nodes in turn, ignoring the key.
    RoundRobin,
    /// A node at random, ignoring the key.
    Random,
    /// The node with the fewest connections, ignoring the key.
    LeastLoaded,
}

// === impl PolicyKind ===

impl PolicyKind {
    /// Every policy, in the order help text lists them.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Ring,
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoaded,
    ];

    /// The name `--policy` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Ring => "ring",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoaded => "least-loaded",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--policy` value that names no policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}; use one of: ring, round-robin, random, least-loaded")]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    /// The names of [`PolicyKind::as_str`], any case; `_` is taken for `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

/// A policy over the ring of one view. Immutable apart from an atomic
/// counter, so one instance serves every thread.
#[derive(Debug)]
pub struct Policy {
    kind: PolicyKind,
    ring: Ring,
    /// Indices of the nodes that take keys, in id order.
    takers: Vec<u32>,
    /// Round-robin turn, and the tie-break rotation of least-loaded.
    turn: AtomicUsize,
}

// === impl Policy ===

impl Policy {
    /// A policy of `kind` over an already built ring.
    pub fn new(kind: PolicyKind, ring: Ring) -> Policy {
        let takers = (0..ring.nodes().len())
            .filter(|&i| ring.node(i).takes_keys())
            .map(|i| i as u32)
            .collect();
        Policy {
            kind,
            ring,
            takers,
            turn: AtomicUsize::new(0),
        }
    }

    /// Builds the ring of `view` and a policy of `kind` over it.
    pub fn from_view(
        kind: PolicyKind,
        view: &View,
        config: RingConfig,
    ) -> Result<Policy, RingError> {
        Ok(Policy::new(kind, Ring::from_view(view, config)?))
    }

    /// The same policy over the same points with the loads and version of
    /// `view` (see [`Ring::with_loads`]): for a view where only loads moved.
    /// The round-robin turn carries on where this one is.
    pub fn with_loads(&self, view: &View) -> Policy {
        Policy {
            kind: self.kind,
            ring: self.ring.with_loads(view),
            takers: self.takers.clone(),
            turn: AtomicUsize::new(self.turn.load(Ordering::Relaxed)),
        }
    }

    /// Which policy this is.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The ring (for shares, the view version, node lookups).
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The node to answer for `key`, never one in `exclude` (ids; keep it
    /// short, it is scanned linearly).
    pub fn pick<S: AsRef<str>>(&self, key: &[u8], exclude: &[S]) -> Result<&RingNode, RingError> {
        self.pick_index(key, exclude).map(|i| self.ring.node(i))
    }

    /// Like [`Policy::pick`], returning the node's index in the ring.
    pub fn pick_index<S: AsRef<str>>(&self, key: &[u8], exclude: &[S]) -> Result<usize, RingError> {
        match self.kind {
            PolicyKind::Ring => self.ring.route(key, exclude),
            PolicyKind::RoundRobin => {
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                self.nth_candidate(exclude, |n| turn % n)
            }
            PolicyKind::Random => {
                self.nth_candidate(exclude, |n| rand::thread_rng().gen_range(0..n))
            }
            PolicyKind::LeastLoaded => self.least_loaded(exclude),
        }
    }

    /// The `choose(n)`-th of the `n` candidates (takers not excluded): so
    /// each candidate is equally likely, with or without exclusions.
    fn nth_candidate<S: AsRef<str>>(
        &self,
        exclude: &[S],
        choose: impl FnOnce(usize) -> usize,
    ) -> Result<usize, RingError> {
        if exclude.is_empty() {
            if self.takers.is_empty() {
                return Err(self.ring.unavailable(0));
            }
            return Ok(self.takers[choose(self.takers.len())] as usize);
        }
        let left = self
            .takers
            .iter()
            .filter(|&&i| !self.excluded(i, exclude))
            .count();
        if left == 0 {
            return Err(self.ring.unavailable(self.takers.len()));
        }
        let n = choose(left);
        let idx = self
            .takers
            .iter()
            .filter(|&&i| !self.excluded(i, exclude))
            .nth(n)
            .copied()
            .expect("n < count of candidates");
        Ok(idx as usize)
    }

    /// The candidate with the fewest view `conns`. Ties rotate between
    /// calls: with loads only refreshed per view, always taking the first
    /// of equals would send a whole burst to one node.
    fn least_loaded<S: AsRef<str>>(&self, exclude: &[S]) -> Result<usize, RingError> {
        let n = self.takers.len();
        if n == 0 {
            return Err(self.ring.unavailable(0));
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(u64, u32)> = None;
        for k in 0..n {
            let i = self.takers[(start + k) % n];
            if self.excluded(i, exclude) {
                continue;
            }
            let load = self.ring.view_load(i as usize);
            match best {
                Some((b, _)) if b <= load => {}
                _ => best = Some((load, i)),
            }
        }
        best.map(|(_, i)| i as usize)
            .ok_or_else(|| self.ring.unavailable(n))
    }

    fn excluded<S: AsRef<str>>(&self, idx: u32, exclude: &[S]) -> bool {
        let id = self.ring.node(idx as usize).id.as_str();
        exclude.iter().any(|e| e.as_ref() == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BoundedLoad, NO_EXCLUDE};
    use dsf_proto::cluster::{Load, NodeState, NodeView};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn node(id: &str, weight: u32, state: NodeState, conns: u64) -> NodeView {
        NodeView {
            id: id.into(),
            addr: format!("{id}:7000"),
            proxy_addr: None,
            weight,
            state,
            load: Load {
                conns,
                ..Load::default()
            },
        }
    }

    fn view(nodes: Vec<NodeView>) -> View {
        View { version: 9, nodes }
    }

    fn abc() -> View {
        view(vec![
            node("a", 1, NodeState::Up, 5),
            node("b", 1, NodeState::Up, 2),
            node("c", 1, NodeState::Up, 2),
        ])
    }

    #[test]
    fn policy_names_parse_in_any_case_and_unknown_ones_list_the_choices() {
        for k in PolicyKind::ALL {
            assert_eq!(k.as_str().parse::<PolicyKind>(), Ok(k));
            assert_eq!(k.to_string().to_uppercase().parse::<PolicyKind>(), Ok(k));
        }
        assert_eq!("least_loaded".parse(), Ok(PolicyKind::LeastLoaded));
        assert_eq!(PolicyKind::default(), PolicyKind::Ring);
        let err = "fastest".parse::<PolicyKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown policy \"fastest\"; use one of: ring, round-robin, random, least-loaded"
        );
    }

    #[test]
    fn ring_policy_answers_the_same_node_for_the_same_key() {
        let p = Policy::from_view(PolicyKind::Ring, &abc(), RingConfig::default()).unwrap();
        let first = p.pick(b"alice", NO_EXCLUDE).unwrap().id.clone();
        for _ in 0..10 {
            assert_eq!(p.pick(b"alice", NO_EXCLUDE).unwrap().id, first);
        }
    }

    #[test]
    fn round_robin_takes_the_takers_in_turn() {
        let mut v = abc();
        v.nodes.push(node("d", 1, NodeState::Draining, 0));
        let p = Policy::from_view(PolicyKind::RoundRobin, &v, RingConfig::default()).unwrap();
        let got: Vec<String> = (0..6)
            .map(|_| p.pick(b"k", NO_EXCLUDE).unwrap().id.clone())
            .collect();
        assert_eq!(got, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn least_loaded_takes_the_fewest_conns_and_rotates_ties() {
        let p = Policy::from_view(PolicyKind::LeastLoaded, &abc(), RingConfig::default()).unwrap();
        let mut got: Vec<String> = (0..4)
            .map(|_| p.pick(b"k", NO_EXCLUDE).unwrap().id.clone())
            .collect();
        assert!(!got.contains(&"a".to_string()), "{got:?}");
        got.sort();
        got.dedup();
        assert_eq!(got, ["b", "c"]);
        assert_eq!(p.pick(b"k", &["b", "c"]).unwrap().id, "a");
    }

    #[test]
    fn with_loads_moves_least_loaded_to_the_new_minimum() {
        let p = Policy::from_view(PolicyKind::LeastLoaded, &abc(), RingConfig::default()).unwrap();
        let mut next = abc();
        next.version = 10;
        next.nodes[0].load.conns = 0;
        let q = p.with_loads(&next);
        assert_eq!(q.ring().version(), 10);
        assert_eq!(q.kind(), PolicyKind::LeastLoaded);
        for _ in 0..3 {
            assert_eq!(q.pick(b"k", NO_EXCLUDE).unwrap().id, "a");
        }
    }

    #[test]
    fn random_reaches_every_taker() {
        let p = Policy::from_view(PolicyKind::Random, &abc(), RingConfig::default()).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        // 3 nodes: missing one in 300 draws has probability 3 × (2/3)^300.
        for _ in 0..300 {
            seen.insert(p.pick(b"", NO_EXCLUDE).unwrap().id.clone());
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn every_policy_answers_unavailable_on_an_empty_view() {
        for kind in PolicyKind::ALL {
            let p = Policy::from_view(kind, &View::default(), RingConfig::default()).unwrap();
            let err = p.pick(b"k", NO_EXCLUDE).unwrap_err();
            assert!(err.is_unavailable(), "{kind}");
            assert!(matches!(err, RingError::NoNodes { .. }), "{kind}: {err}");
        }
    }

    #[test]
    fn a_policy_is_shared_between_threads() {
        let p = Arc::new(
            Policy::from_view(PolicyKind::RoundRobin, &abc(), RingConfig::default()).unwrap(),
        );
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let p = Arc::clone(&p);
                std::thread::spawn(move || {
                    (0..300)
                        .map(|_| p.pick(b"k", NO_EXCLUDE).unwrap().id.clone())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut counts = std::collections::BTreeMap::new();
        for h in handles {
            for id in h.join().unwrap() {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        // 600 turns of one shared counter over 3 nodes: 200 each.
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [200, 200, 200]
        );
    }

    fn arb_view() -> impl Strategy<Value = View> {
        prop::collection::vec((0u32..3, any::<bool>(), 0u64..20), 0..8).prop_map(|spec| {
            view(
                spec.into_iter()
                    .enumerate()
                    .map(|(i, (w, draining, conns))| {
                        let state = if draining {
                            NodeState::Draining
                        } else {
                            NodeState::Up
                        };
                        node(&format!("n{i}"), w, state, conns)
                    })
                    .collect(),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn no_policy_returns_an_excluded_draining_or_weightless_node(
            v in arb_view(),
            mask in prop::collection::vec(any::<bool>(), 8),
            bounded in any::<bool>(),
        ) {
            let config = RingConfig {
                vnodes: 20,
                bound: if bounded { BoundedLoad::default() } else { BoundedLoad::Off },
            };
            let exclude: Vec<String> = v.nodes.iter().zip(&mask).filter(|(_, m)| **m).map(|(n, _)| n.id.clone()).collect();
            let left = v.nodes.iter().filter(|n| n.weight > 0 && n.state == NodeState::Up && !exclude.contains(&n.id)).count();
            for kind in PolicyKind::ALL {
                let p = Policy::from_view(kind, &v, config).unwrap();
                for k in 0..50 {
                    match p.pick(format!("key-{k}").as_bytes(), &exclude) {
                        Ok(n) => {
                            prop_assert!(!exclude.contains(&n.id), "{} answered excluded {}", kind, n.id);
                            prop_assert!(n.weight > 0 && n.state == NodeState::Up, "{} answered {:?}", kind, n);
                        }
                        Err(e) => {
                            prop_assert_eq!(left, 0, "{} refused with {} left", kind, left);
                            prop_assert!(e.is_unavailable());
                        }
                    }
                }
            }
        }
    }
}
