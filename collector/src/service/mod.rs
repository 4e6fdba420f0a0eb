//! The collector's port: `node.heartbeat` and `node.leave` from app servers
//! (each under its own node key, or the cluster secret where no node keys
//! are set), `cluster.status` for operators (any app key). Every request is
//! answered inline on the reactor thread: each is a table update under one
//! short lock, with nothing to wait for.
//!
//! [`routes`] declares each message type with its handler, which lives in
//! its own file with its validation; who may send each is the type's own
//! `Auth` (the pipeline's auth layer checks it).

pub mod heartbeat;
pub mod leave;
pub mod status;

use std::sync::Arc;

use dsf_common::pipeline::{Call, Front, Pipeline, Route};
use dsf_common::reactor::{Context, Dispatch, Service};
use dsf_common::wire::keys::NODE_APP_PREFIX;
use dsf_proto::cluster::{NodeHeartbeat, NodeLeave, Status};

use crate::cluster::Cluster;

/// What the collector's handlers share.
pub type State = Arc<Cluster>;

/// The collector's routes.
pub fn routes() -> Vec<Route<State>> {
    vec![
        Route::unary::<NodeHeartbeat>(heartbeat::handle).inline(),
        Route::unary::<NodeLeave>(leave::handle).inline(),
        Route::unary::<Status>(status::handle).inline(),
    ]
}

/// Whether a request about node `id` was signed with that node's own key.
pub fn proven(call: &Call<State>, id: &str) -> bool {
    call.app().strip_prefix(NODE_APP_PREFIX) == Some(id)
}

/// The reactor side of the collector: every frame through the pipeline.
pub struct Collector {
    pipeline: Arc<Pipeline<State>>,
}

// === impl Collector ===

impl Collector {
    /// The service over `pipeline`.
    pub fn new(pipeline: Arc<Pipeline<State>>) -> Collector {
        Collector { pipeline }
    }
}

impl Service for Collector {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        // Every route is inline: nothing comes back to run elsewhere.
        match self.pipeline.on_frame(payload, cx) {
            Front::Done => {}
            Front::Job(call) => self.pipeline.refuse_job(call, cx),
        }
        Dispatch::Done
    }
}
