//! The view of the cluster that the collector pushes to every balancer and
//! that `lb.view` returns (a version that only grows and the member nodes),
//! and the heartbeat app servers send the collector.

use serde::{Deserialize, Serialize};

/// Default weight of a node.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One version of the cluster's membership and load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// Only grows; a balancer ignores a view older than the one it holds.
    pub version: u64,
    pub nodes: Vec<NodeView>,
}

/// A member as the view describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    /// Stable id (default: the advertised address); a node restarted under
    /// the same id takes back the same ring points.
    pub id: String,
    /// Where clients connect, `host:port`.
    pub addr: String,
    /// Relative share of keys; 0 takes no new keys.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: NodeState,
    #[serde(default)]
    pub load: Load,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// Whether a node takes new keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving and taking new keys.
    #[default]
    Up,
    /// Finishing what it has; gets no new keys.
    Draining,
}

/// The load figures a node last reported (smoothed by the collector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    #[serde(default)]
    pub conns: u64,
    #[serde(default)]
    pub inflight: u64,
    #[serde(default)]
    pub rps: f64,
    #[serde(default)]
    pub p99_ms: f64,
}

/// `node.heartbeat`'s body: an app server saying it is alive, where, and
/// how loaded. Sent to the collector every second under the cluster secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Stable node id (default: the advertised address).
    pub id: String,
    /// Where clients connect, `host:port`.
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: NodeState,
    #[serde(default)]
    pub stats: Stats,
}

/// What a node measures about itself, over the last heartbeat interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Connections open now.
    #[serde(default)]
    pub conns: u64,
    /// Requests being handled now.
    #[serde(default)]
    pub inflight: u64,
    /// Requests waiting for a worker now.
    #[serde(default)]
    pub queue: u64,
    /// Requests per second answered.
    #[serde(default)]
    pub rps: f64,
    /// Error replies per second.
    #[serde(default)]
    pub errors_per_s: f64,
    /// Median latency, milliseconds.
    #[serde(default)]
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    #[serde(default)]
    pub p99_ms: f64,
}

/// `node.leave`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leave {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_reads_the_design_shape_with_defaults() {
        let v: View = serde_json::from_str(
            r#"{"version":3,"nodes":[{"id":"a","addr":"127.0.0.1:7000","weight":2,"state":"draining","load":{"conns":1,"inflight":0,"rps":2.5,"p99_ms":1.0}},{"id":"b","addr":"127.0.0.1:7001"}]}"#,
        )
        .unwrap();
        assert_eq!(v.version, 3);
        assert_eq!(v.nodes[0].state, NodeState::Draining);
        assert_eq!(v.nodes[1].weight, 1);
        assert_eq!(v.nodes[1].state, NodeState::Up);
        let back: View = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn unknown_fields_and_states_are_refused() {
        assert!(serde_json::from_str::<View>(r#"{"version":1,"nodes":[],"x":1}"#).is_err());
        assert!(serde_json::from_str::<NodeState>(r#""gone""#).is_err());
    }
}
