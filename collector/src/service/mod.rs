//! The collector's port: `node.heartbeat` and `node.leave` from app servers
//! (each under its own node key, or the cluster secret where no node keys
//! are set), `cluster.status` for operators (any app key). Every
//! request is answered inline on the reactor thread: each is a table update
//! under one short lock, with nothing to wait for.
//!
//! [`ROUTES`] maps each message type to its auth rule and handler; each
//! handler lives in its own file with its body type and validation.

pub mod heartbeat;
pub mod leave;
pub mod status;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dsf_common::reactor::{Context, Dispatch, Service};
use dsf_common::wire::keys::{CLUSTER_APP, NODE_APP_PREFIX};
use dsf_common::wire::{Admission, Admitted};
use dsf_common::Error;

use crate::cluster::Cluster;

/// Who may send a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// A node about itself: its own key (app `node:<id>`, the body's `id`
    /// the same), or the cluster secret when this collector has no node
    /// keys.
    Node,
    /// Any app this collector has a key for, the cluster included.
    App,
}

/// A handler: the admitted request and the cluster in, the reply body out.
pub type Handler = fn(&Cluster, &Admitted) -> Result<String, Error>;

/// Message type → auth rule and handler.
pub const ROUTES: &[(&str, Auth, Handler)] = &[
    ("node.heartbeat", Auth::Node, heartbeat::handle),
    ("node.leave", Auth::Node, leave::handle),
    ("cluster.status", Auth::App, status::handle),
];

/// The reactor side of the collector.
pub struct Collector {
    admission: Arc<Admission>,
    cluster: Arc<Cluster>,
    /// Whether heartbeats must come under node keys (`--node-keys`).
    node_keys: bool,
}

/// Whether a request about node `id` was signed with that node's own key.
pub fn proven(req: &Admitted, id: &str) -> bool {
    req.request.app.strip_prefix(NODE_APP_PREFIX) == Some(id)
}

// === impl Collector ===

impl Collector {
    /// The service over `cluster`, admitting what `admission` admits.
    pub fn new(admission: Arc<Admission>, cluster: Arc<Cluster>, node_keys: bool) -> Collector {
        Collector {
            admission,
            cluster,
            node_keys,
        }
    }

    /// The rule of [`Auth::Node`].
    fn speaks_for(&self, req: &Admitted) -> Result<(), Error> {
        #[derive(serde::Deserialize)]
        struct Named {
            id: String,
        }
        let (kind, app) = (req.request.kind.as_str(), req.request.app.as_str());
        if app == CLUSTER_APP {
            if self.node_keys {
                return Err(Error::Forbidden(format!(
                    "this collector takes {kind} only under node keys (--node-keys): sign with the node's own key \
                     (app-server --node-key-file), not the cluster secret"
                )));
            }
            return Ok(());
        }
        let Some(signer) = app.strip_prefix(NODE_APP_PREFIX) else {
            return Err(Error::Forbidden(format!(
                "{kind} needs a node's own key (app \"node:<id>\") or the cluster secret, not app {app:?}"
            )));
        };
        let named: Named = req.request.body()?;
        if named.id != signer {
            return Err(Error::Forbidden(format!(
                "signed with node {signer:?}'s key, which speaks only for {signer:?}, not for {:?}",
                named.id
            )));
        }
        Ok(())
    }

    fn route(&self, admitted: &Admitted) -> Result<String, Error> {
        let kind = admitted.request.kind.as_str();
        let Some((_, auth, handler)) = ROUTES.iter().find(|(k, _, _)| *k == kind) else {
            return Err(Error::UnknownType(format!(
                "type {kind:?} is not served by the collector; it serves node.heartbeat, node.leave and cluster.status"
            )));
        };
        match auth {
            Auth::Node => self.speaks_for(admitted)?,
            // A node key is for its heartbeats alone.
            Auth::App if admitted.request.app.starts_with(NODE_APP_PREFIX) => {
                return Err(Error::Forbidden(format!(
                    "a node key signs only node.heartbeat and node.leave, not {kind}"
                )))
            }
            Auth::App => {}
        }
        handler(&self.cluster, admitted)
    }
}

impl Service for Collector {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        let admitted = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                self.cluster
                    .counters
                    .refused
                    .fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "refused a frame from {}: {}",
                    cx.peer(),
                    refused.rejection.error
                );
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        match self.route(&admitted) {
            Ok(body) => admitted.ok(&body, cx.out()),
            Err(e) => admitted.error(&e, cx.out()),
        }
        Dispatch::Done
    }
}
