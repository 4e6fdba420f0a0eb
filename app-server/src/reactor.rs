//! The reactor's side of an app server: each frame through the pipeline
//! (admission, drain, the route), a job to the worker pool for what runs
//! there, a reply from another app server over a peer link to the peers.

use std::sync::Arc;

use dsf_common::pipeline::{Front, Pipeline};
use dsf_common::pool::Submitter;
use dsf_common::reactor::{ConnId, Context, Dispatch, Origin, Service};

use crate::node::{Call, Node};

/// The [`Service`] the reactor drives.
pub struct AppService {
    pipeline: Arc<Pipeline<Node>>,
    pool: Submitter<Call>,
}

// === impl AppService ===

impl AppService {
    /// Feeds `pool`, whose workers run `pipeline`'s jobs.
    pub fn new(pipeline: Arc<Pipeline<Node>>, pool: Submitter<Call>) -> AppService {
        AppService { pipeline, pool }
    }

    /// The service for another reactor on the same port.
    pub fn sibling(&self) -> AppService {
        AppService::new(self.pipeline.clone(), self.pool.clone())
    }
}

impl Service for AppService {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        if cx.origin() == Origin::Outbound {
            // Another app server's reply to a peer.* frame of ours.
            self.pipeline.server().peers().on_reply(cx.conn(), payload);
            return Dispatch::Done;
        }
        if self.pipeline.drain().is_draining() {
            // Refused without a worker.
            if let Front::Job(call) = self.pipeline.on_frame(payload, cx) {
                self.pipeline.refuse_job(call, cx);
            }
            return Dispatch::Done;
        }
        if !self.pipeline.server().db().answers() {
            // The database did not answer its last probe: what would take
            // a worker is refused before it runs (the workers may be held
            // by statements on connections that hang), so that its client
            // sends it, a write too, to another node at once. What runs on
            // the reactor (sys.ping) is still answered.
            if let Front::Job(call) = self.pipeline.on_frame(payload, cx) {
                let e = dsf_common::Error::Overloaded(format!(
                    "node {} cannot reach its database: {} was not run; send it to another node",
                    self.pipeline.server().id(),
                    call.kind()
                ));
                self.pipeline.refuse_job_with(call, cx, &e);
            }
            return Dispatch::Done;
        }
        // Before admission, which remembers the nonce: a Busy frame is
        // offered again byte for byte, and must not then look replayed.
        // The place is reserved, so with other reactors submitting too it
        // is still there below (an inline request gives it back).
        let Some(slot) = self.pool.try_reserve() else {
            return Dispatch::Busy;
        };
        if let Front::Job(call) = self.pipeline.on_frame(payload, cx) {
            if let Err(call) = slot.submit(call) {
                // The place was reserved, so the pool is stopping.
                self.pipeline.refuse_job(call, cx);
            }
        }
        Dispatch::Done
    }

    fn on_close(&mut self, conn: ConnId) {
        // Streams first: a subscription dropped after its stream is closed
        // ends quietly (it has no one to send a final reply to).
        self.pipeline.on_close(conn);
        self.pipeline.server().closed(conn);
    }
}
