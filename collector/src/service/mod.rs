//! The collector's port: `node.heartbeat` and `node.leave` from app servers
//! (cluster secret), `cluster.status` for operators (any app key). Every
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
use dsf_common::wire::keys::CLUSTER_APP;
use dsf_common::wire::{Admission, Admitted};
use dsf_common::Error;

use crate::cluster::Cluster;

/// Who may send a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Only the cluster secret (app `cluster`).
    Cluster,
    /// Any app this collector has a key for, the cluster included.
    App,
}

/// A handler: the admitted request and the cluster in, the reply body out.
pub type Handler = fn(&Cluster, &Admitted) -> Result<String, Error>;

/// Message type → auth rule and handler.
pub const ROUTES: &[(&str, Auth, Handler)] = &[
    ("node.heartbeat", Auth::Cluster, heartbeat::handle),
    ("node.leave", Auth::Cluster, leave::handle),
    ("cluster.status", Auth::App, status::handle),
];

/// The reactor side of the collector.
pub struct Collector {
    admission: Arc<Admission>,
    cluster: Arc<Cluster>,
}

// === impl Collector ===

impl Collector {
    /// The service over `cluster`, admitting what `admission` admits.
    pub fn new(admission: Arc<Admission>, cluster: Arc<Cluster>) -> Collector {
        Collector { admission, cluster }
    }

    fn route(&self, admitted: &Admitted) -> Result<String, Error> {
        let kind = admitted.request.kind.as_str();
        let Some((_, auth, handler)) = ROUTES.iter().find(|(k, _, _)| *k == kind) else {
            return Err(Error::UnknownType(format!(
                "type {kind:?} is not served by the collector; it serves node.heartbeat, node.leave and cluster.status"
            )));
        };
        if *auth == Auth::Cluster && admitted.request.app != CLUSTER_APP {
            return Err(Error::Forbidden(format!(
                "{kind} needs the cluster secret (app \"cluster\"), not app {:?}",
                admitted.request.app
            )));
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
