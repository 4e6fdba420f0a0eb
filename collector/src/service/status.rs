//! `cluster.status` (any app key): `{}` →
//! `{"view": version, "nodes": [{"id","addr","weight","state","source",
//! "last_seen_ms","load","stats"}], "balancers": [...], "dead_after_ms",
//! "role", "feeding", "standby_for"}`.
//!
//! `view` is the version last published. `state` is `up`, `draining` or
//! `down` (a static target failing its checks: known, not in the view).
//! `last_seen_ms` is how long ago, in milliseconds, the node last
//! heartbeated or passed a check (`null` if never): an age reads at a
//! glance in `client status`, where a timestamp would need arithmetic.
//! `load` is the smoothed figures the view carries; `stats` the last ones
//! sent. `role` is `active`, `standby` (another collector, `standby_for`,
//! feeds the balancers) or `took-over` (a standby feeding them because its
//! active collector went silent); `feeding` is whether this collector sends
//! views now (not during its warm-up, nor while standing by). A standby
//! reads its active collector's `feeding` and `role` to decide.

use dsf_common::pipeline::Call;
use dsf_common::view::{Load, Stats};
use dsf_common::Error;
use serde::Serialize;

use crate::cluster::{BalancerStatus, Snapshot};
use crate::members::{MemberState, Source};

/// `cluster.status`'s reply.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub view: u64,
    pub nodes: Vec<NodeStatus<'a>>,
    pub balancers: &'a [BalancerStatus],
    pub dead_after_ms: u64,
    pub role: &'static str,
    pub feeding: bool,
    pub standby_for: Option<&'a str>,
}

/// One row of the node table.
#[derive(Debug, Serialize)]
pub struct NodeStatus<'a> {
    pub id: &'a str,
    pub addr: &'a str,
    pub weight: u32,
    pub state: MemberState,
    pub source: Source,
    pub last_seen_ms: Option<u64>,
    pub load: Load,
    pub stats: &'a Stats,
}

/// The reply body for a snapshot.
pub fn render(snap: &Snapshot) -> String {
    serde_json::to_string(&status(snap)).expect("status serialises")
}

/// The status of a snapshot, borrowed from it.
pub fn status(snap: &Snapshot) -> Status<'_> {
    let nodes = snap
        .members
        .iter()
        .map(|m| NodeStatus {
            id: &m.id,
            addr: &m.addr,
            weight: m.weight,
            state: m.state,
            source: m.source,
            last_seen_ms: m
                .last_seen
                .map(|t| snap.taken.saturating_duration_since(t).as_millis() as u64),
            load: m.load.load(),
            stats: &m.stats,
        })
        .collect();
    Status {
        view: snap.view.version,
        nodes,
        balancers: &snap.balancers,
        dead_after_ms: snap.members.dead_after().as_millis() as u64,
        role: snap.role,
        feeding: snap.ready && snap.role != "standby",
        standby_for: snap.standby_for.as_deref(),
    }
}

/// The handler. Any body is accepted: there is nothing to ask for yet,
/// and an old client sending a field we do not know should still get its
/// table.
pub fn handle(
    call: &Call<super::State>,
    _body: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    serde_json::to_value(status(&call.server().snapshot()))
        .map_err(|e| Error::Internal(format!("rendering the status: {e}")))
}
