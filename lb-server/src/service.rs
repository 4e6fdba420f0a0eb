//! The balancer's service: `lb.resolve` and `lb.view` on the client port,
//! `lb.set_view` (cluster secret) and `lb.view` on the cluster port.
//!
//! Lookups are answered inline on the reactor thread: admission, one ring
//! walk, one reply, no hop to another thread. A new view is handed to the
//! `view-builder` thread, which builds the ring off the serving path and
//! swaps the new [`Snapshot`] in atomically; the reactor reads whichever
//! snapshot is current for each request. The builder is the only writer,
//! so views are applied in order and a stale one is never applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use dsf_common::reactor::{ConnId, Context, Dispatch, ReplyTo, Service};
use dsf_common::view::{NodeState, NodeView, View};
use dsf_common::wire::keys::CLUSTER_APP;
use dsf_common::wire::{self, Admission, Admitted, Key};
use dsf_common::Error;
// What `lb.resolve` takes and answers: the catalogue's types.
use dsf_proto::cluster::Applied;
use dsf_proto::lb::{ResolveBody, Resolved, MAX_EXCLUDE, MAX_KEY};
use serde::Serialize;

use crate::policy::{Policy, PolicyKind};
use crate::ring::{Ring, RingConfig};

/// Index of the client listener in the reactor's listen addresses.
pub const CLIENT_PORT: usize = 0;
/// Index of the cluster listener.
pub const CLUSTER_PORT: usize = 1;

/// Views waiting for the builder; a collector sends one a second.
const BUILD_QUEUE: usize = 64;

/// A view and the policy built over it: what lookups read.
#[derive(Debug)]
pub struct Snapshot {
    pub view: View,
    pub policy: Policy,
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds the ring of `view`.
    pub fn build(view: View, kind: PolicyKind, ring: RingConfig) -> Result<Snapshot, Error> {
        let policy = Policy::new(
            kind,
            Ring::from_view(&view, ring).map_err(crate::ring_error)?,
        );
        Ok(Snapshot { view, policy })
    }

    /// `lb.view`'s reply: the view with each node's exact share of the hash space.
    pub fn describe(&self) -> String {
        let ring = self.policy.ring();
        let nodes: Vec<NodeShare<'_>> = self
            .view
            .nodes
            .iter()
            .map(|n| NodeShare {
                node: n,
                share: ring.index_of(&n.id).map_or(0.0, |i| ring.node(i).share()),
            })
            .collect();
        serde_json::json!({
            "version": self.view.version,
            "policy": self.policy.kind().as_str(),
            "nodes": nodes,
        })
        .to_string()
    }
}

#[derive(Serialize)]
struct NodeShare<'a> {
    #[serde(flatten)]
    node: &'a NodeView,
    share: f64,
}

struct Build {
    view: View,
    reply: ReplyTo,
    id: u64,
    nonce: String,
    key: Key,
}

/// The reactor-side half of the balancer.
pub struct Balancer {
    admission: Arc<Admission>,
    current: Arc<ArcSwap<Snapshot>>,
    builds: Sender<Build>,
}

/// The builder thread and the snapshot it maintains.
pub struct ViewBuilder {
    pub current: Arc<ArcSwap<Snapshot>>,
    pub thread: JoinHandle<()>,
}

// === impl Balancer ===

impl Balancer {
    /// The service over `initial`, with a `view-builder` thread for updates.
    pub fn new(
        admission: Arc<Admission>,
        initial: Snapshot,
        kind: PolicyKind,
        ring: RingConfig,
    ) -> (Balancer, ViewBuilder) {
        let current = Arc::new(ArcSwap::from_pointee(initial));
        let (builds, rx) = bounded(BUILD_QUEUE);
        let thread = {
            let current = current.clone();
            std::thread::Builder::new()
                .name("view-builder".into())
                .spawn(move || build_views(rx, current, kind, ring))
                .expect("spawning the view builder")
        };
        let balancer = Balancer {
            admission,
            current: current.clone(),
            builds,
        };
        (balancer, ViewBuilder { current, thread })
    }

    fn resolve(&self, req: &Admitted, peer: SocketAddr) -> Result<String, Error> {
        let body: ResolveBody = req.request.body()?;
        let key = match &body.key {
            Some(k) if k.len() > MAX_KEY => {
                return Err(Error::bad_request(format!(
                    "key: at most {MAX_KEY} bytes, got {}",
                    k.len()
                )))
            }
            Some(k) => k.clone(),
            // No key: the peer's IP address is the key (sticky per client host).
            None => peer.ip().to_string(),
        };
        if body.exclude.len() > MAX_EXCLUDE {
            return Err(Error::bad_request(format!(
                "exclude: at most {MAX_EXCLUDE} ids, got {}",
                body.exclude.len()
            )));
        }
        let snap = self.current.load();
        let node = snap
            .policy
            .pick(key.as_bytes(), &body.exclude)
            .map_err(crate::ring_error)?;
        let reply = Resolved {
            node: node.id.clone(),
            addr: node.addr.clone(),
            view: snap.view.version,
        };
        Ok(serde_json::to_string(&reply).expect("strings and numbers serialise"))
    }

    fn set_view(&self, admitted: Admitted, cx: &mut Context<'_>) -> Result<(), Error> {
        if admitted.request.app != CLUSTER_APP {
            return Err(Error::Forbidden(format!(
                "lb.set_view needs the cluster secret (app \"cluster\"), not app {:?}",
                admitted.request.app
            )));
        }
        let view: View = admitted.request.body()?;
        check_view(&view)?;
        let reply = cx.defer();
        let build = Build {
            view,
            reply,
            id: admitted.request.id,
            nonce: admitted.request.nonce,
            key: admitted.key,
        };
        match self.builds.try_send(build) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                cx.cancel(b.reply);
                Err(Error::Overloaded(
                    "views are arriving faster than this balancer builds rings; the next push will catch up".into(),
                ))
            }
        }
    }
}

impl Service for Balancer {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        let admitted = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        let port = cx.listener();
        let answer = match (admitted.request.kind.as_str(), port) {
            ("lb.resolve", Some(CLIENT_PORT)) => self.resolve(&admitted, cx.peer()),
            ("lb.view", _) => Ok(self.current.load().describe()),
            ("lb.set_view", Some(CLUSTER_PORT)) => {
                let (id, nonce, key) = (
                    admitted.request.id,
                    admitted.request.nonce.clone(),
                    admitted.key.clone(),
                );
                // Answered by the builder once the view is in force.
                if let Err(e) = self.set_view(admitted, cx) {
                    wire::encode_error(Some(&key), id, &nonce, &e, cx.out());
                }
                return Dispatch::Done;
            }
            (other, _) => Err(Error::UnknownType(format!(
                "type {other:?} is not served on this port; the client port serves lb.resolve and lb.view, the cluster port lb.set_view and lb.view"
            ))),
        };
        match answer {
            Ok(body) => admitted.ok(&body, cx.out()),
            // A run of these closes the connection, as refused frames do.
            Err(e) if e.code() == dsf_common::ErrorCode::UnknownType => cx.reject(&admitted, &e),
            Err(e) => admitted.error(&e, cx.out()),
        }
        Dispatch::Done
    }

    fn on_close(&mut self, _conn: ConnId) {}
}

/// Rejects views no ring can be built from, before they are queued.
fn check_view(view: &View) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for n in &view.nodes {
        if n.id.is_empty() || n.id.len() > 256 {
            return Err(Error::bad_request("nodes[].id: 1 to 256 bytes"));
        }
        if n.addr.is_empty() || n.addr.len() > 256 {
            return Err(Error::bad_request(format!(
                "nodes[{}].addr: host:port, 1 to 256 bytes",
                n.id
            )));
        }
        if !seen.insert(n.id.as_str()) {
            return Err(Error::bad_request(format!(
                "nodes: id {:?} appears twice in view {}",
                n.id, view.version
            )));
        }
    }
    Ok(())
}

/// The builder loop: applies views in arrival order; rebuilds the ring
/// only when membership (ids, addresses, weights, states) changed.
fn build_views(
    rx: Receiver<Build>,
    current: Arc<ArcSwap<Snapshot>>,
    kind: PolicyKind,
    ring: RingConfig,
) {
    for mut b in rx.iter() {
        let cur = current.load_full();
        let view = std::mem::take(&mut b.view);
        let result = apply(&cur, view, kind, ring);
        let mut out = Vec::new();
        match result {
            Ok(Some(next)) => {
                let v = next.view.version;
                current.store(Arc::new(next));
                reply_applied(&b, v, &mut out);
            }
            Ok(None) => reply_applied(&b, cur.view.version, &mut out),
            Err(e) => {
                log::warn!("refused a view: {e}");
                wire::encode_error(Some(&b.key), b.id, &b.nonce, &e, &mut out);
            }
        }
        b.reply.send(out);
    }
}

fn reply_applied(b: &Build, version: u64, out: &mut Vec<u8>) {
    let body = serde_json::to_string(&Applied { applied: version }).expect("a number serialises");
    wire::encode_ok(Some(&b.key), b.id, &b.nonce, &body, out);
}

/// The snapshot `view` leads to, or `None` when it is older than `cur`.
pub fn apply(
    cur: &Snapshot,
    view: View,
    kind: PolicyKind,
    ring: RingConfig,
) -> Result<Option<Snapshot>, Error> {
    if view.version < cur.view.version {
        log::debug!(
            "ignoring view {}: already at {}",
            view.version,
            cur.view.version
        );
        return Ok(None);
    }
    if same_membership(&cur.view, &view) {
        // Only loads moved (or nothing): keep the points, take the new loads.
        let policy = cur.policy.with_loads(&view);
        return Ok(Some(Snapshot { view, policy }));
    }
    log_change(&cur.view, &view);
    Snapshot::build(view, kind, ring).map(Some)
}

fn membership(view: &View) -> BTreeMap<&str, (&str, u32, NodeState)> {
    view.nodes
        .iter()
        .map(|n| (n.id.as_str(), (n.addr.as_str(), n.weight, n.state)))
        .collect()
}

fn same_membership(a: &View, b: &View) -> bool {
    membership(a) == membership(b)
}

fn log_change(old: &View, new: &View) {
    let (before, after) = (membership(old), membership(new));
    let joined: Vec<&str> = after
        .keys()
        .filter(|id| !before.contains_key(*id))
        .copied()
        .collect();
    let left: Vec<&str> = before
        .keys()
        .filter(|id| !after.contains_key(*id))
        .copied()
        .collect();
    let drained: Vec<&str> = after
        .iter()
        .filter(|(id, (_, _, s))| {
            *s == NodeState::Draining && before.get(*id).is_some_and(|b| b.2 != NodeState::Draining)
        })
        .map(|(id, _)| *id)
        .collect();
    let changed: Vec<&str> = after
        .iter()
        .filter(|(id, m)| before.get(*id).is_some_and(|b| b != *m) && !drained.contains(*id))
        .map(|(id, _)| *id)
        .collect();
    log::info!(
        "view {} -> {}: {} nodes; joined {:?}, left {:?}, draining {:?}, changed {:?}",
        old.version,
        new.version,
        new.nodes.len(),
        joined,
        left,
        drained,
        changed
    );
}
