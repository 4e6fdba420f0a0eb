//! The reactor's side of the server: for each frame, backpressure first,
//! then admission, then either an inline answer or a job for the pool.

use std::sync::Arc;
use std::time::Instant;

use dsf_common::pool::Submitter;
use dsf_common::reactor::{ConnId, Context, Dispatch, Origin, ReplyTo, Service};
use dsf_common::wire::keys::PEER_APP;
use dsf_common::wire::Admitted;
use dsf_common::Error;

use crate::controller::{Controller, Exec, Route};

/// One request handed to a worker.
pub struct Job {
    pub admitted: Admitted,
    pub route: &'static Route,
    pub reply: ReplyTo,
    /// When its frame was decoded: latency counts the queue wait too.
    pub received: Instant,
    /// Released by the claim waiters: runs now, whatever it finds.
    pub woken: bool,
    /// The client's address.
    pub peer: std::net::IpAddr,
}

/// Runs one job on a worker: the controller, then the reply. A claim that
/// may wait and finds nothing ready is parked instead (see
/// [`crate::waiters`]).
pub fn run_job(controller: &Controller, job: Job) {
    if !job.woken && job.route.kind == "task.claim" {
        if let Some(until) = controller.claim_wait(&job.admitted) {
            let app = job.admitted.request.app.clone();
            controller.waiters().park(job, app, until);
            return;
        }
    }
    if job.route.kind == "msg.subscribe" {
        return crate::handlers::messages::subscribe(controller, job);
    }
    let mut out = Vec::with_capacity(256);
    let conn = Some(job.reply.conn());
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let peer = Some(job.peer);
        controller.handle(job.route, &job.admitted, conn, peer, job.received, &mut out)
    }));
    if handled.is_err() {
        // A bug in a handler: the client still gets an answer for its id.
        let r = &job.admitted.request;
        log::error!("{} (request {}) panicked", r.kind, r.id);
        out.clear();
        let e = Error::Internal(format!("{} failed on this node (logged)", r.kind));
        job.admitted.error(&e, &mut out);
        controller.metrics().record(job.received, false);
    }
    job.reply.send(out);
    if job.route.kind == "task.submit" {
        // Committed now: claims parked on this node look at once.
        controller.app().wake.notify();
    }
}

/// The [`Service`] the reactor drives.
pub struct AppService {
    controller: Arc<Controller>,
    pool: Submitter<Job>,
    /// The `job.watch` streams' thread, one for every reactor.
    watches: Arc<crate::watches::Watches>,
}

// === impl AppService ===

impl AppService {
    /// Feeds `pool`, whose workers run [`run_job`] on `controller`.
    pub fn new(controller: Arc<Controller>, pool: Submitter<Job>) -> AppService {
        let watches = Arc::new(crate::watches::Watches::start(controller.clone()));
        AppService {
            controller,
            pool,
            watches,
        }
    }

    /// The service for another reactor on the same port: the same
    /// controller, pool and watches.
    pub fn sibling(&self) -> AppService {
        AppService {
            controller: self.controller.clone(),
            pool: self.pool.clone(),
            watches: self.watches.clone(),
        }
    }

    /// `job.watch {"job"}`: a stream served by the watches thread (which
    /// also checks the job is the caller's, and ends the stream if not).
    fn watch(&self, admitted: Admitted, received: Instant, cx: &mut Context<'_>) -> Dispatch {
        let body =
            crate::controller::parse_body::<dsf_proto::task::JobRef>(admitted.request.body.get());
        let job = match body {
            Ok(b) => b.job,
            Err(e) => {
                admitted.error(&e, cx.out());
                self.controller.metrics().record(received, false);
                return Dispatch::Done;
            }
        };
        let reply = cx.defer();
        if let Ok(stream) = self.controller.streams().open(&admitted, reply) {
            let token = admitted.request.token.clone().filter(|t| !t.is_empty());
            self.watches
                .add(stream, admitted.request.app.clone(), job, token);
        }
        self.controller.metrics().record(received, true);
        Dispatch::Done
    }

    /// `sys.cancel {"id"}`: ends that stream of this connection.
    fn cancel(&self, admitted: &Admitted, received: Instant, cx: &mut Context<'_>) -> Dispatch {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            id: u64,
        }
        let result =
            crate::controller::parse_body::<Body>(admitted.request.body.get()).and_then(|b| {
                match self.controller.streams().cancel(cx.conn(), b.id) {
                    true => {
                        // A cancelled subscription frees its connection now.
                        self.controller.app().mail.purge_ended(cx.conn());
                        Ok(())
                    }
                    false => Err(Error::NotFound(format!(
                        "no stream {} is open on this connection",
                        b.id
                    ))),
                }
            });
        self.answer(admitted, result, received, cx)
    }

    /// Answers a request served here `{}` or its error, and counts it.
    fn answer(
        &self,
        admitted: &Admitted,
        result: Result<(), Error>,
        received: Instant,
        cx: &mut Context<'_>,
    ) -> Dispatch {
        self.controller.metrics().record(received, result.is_ok());
        match result {
            Ok(()) => admitted.ok("{}", cx.out()),
            Err(e) => admitted.error(&e, cx.out()),
        }
        Dispatch::Done
    }
}

impl AppService {
    /// `peer.*`, from another app server under the peer secret; the peer
    /// secret signs nothing else here, and no app key signs these.
    fn peer(&self, admitted: &Admitted, received: Instant, cx: &mut Context<'_>) -> Dispatch {
        let r = &admitted.request;
        let result = match (r.app == PEER_APP, r.kind.as_str()) {
            (true, "peer.notify") => {
                crate::controller::parse_body::<dsf_proto::msg::NotifyBody>(r.body.get()).map(|b| {
                    let mail = &self.controller.app().mail;
                    match b.message {
                        Some(m) => mail.push(b.user, b.seq, m.get().to_string()),
                        None => mail.wake(b.user),
                    }
                })
            }
            (true, kind) => Err(Error::Forbidden(format!(
                "the peer secret signs only peer.notify on app servers, not {kind}"
            ))),
            (false, kind) => Err(Error::Forbidden(format!(
                "{kind} is for app servers, under the peer secret (app \"peer\"), not app {:?}",
                r.app
            ))),
        };
        self.answer(admitted, result, received, cx)
    }

    /// While the node drains for shutdown, a new request is answered
    /// `overloaded` without being run, so its client learns from a reply,
    /// not from a closed connection, that it may send it (write or not)
    /// to another node.
    fn refuse_draining(&self, payload: &[u8], received: Instant, cx: &mut Context<'_>) -> Dispatch {
        match self.controller.admit(payload) {
            Ok(a) => {
                let e = Error::Overloaded(format!(
                    "node {} is draining for shutdown: {} was not run; send it to another node",
                    self.controller.app().node(),
                    a.request.kind
                ));
                a.error(&e, cx.out());
            }
            Err(refused) => cx.refuse(&refused),
        }
        self.controller.metrics().record(received, false);
        Dispatch::Done
    }
}

impl Service for AppService {
    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        if cx.origin() == Origin::Outbound {
            // A peer's reply to our peer.notify.
            self.controller.app().peers.on_reply(cx.conn(), payload);
            return Dispatch::Done;
        }
        let received = Instant::now();
        if self.controller.metrics().is_draining() {
            return self.refuse_draining(payload, received, cx);
        }
        // Before admission, which remembers the nonce: a Busy frame is
        // offered again byte for byte, and must not then look replayed.
        // The place is reserved, so with other reactors submitting too it
        // is still there below (an inline request gives it back).
        let Some(slot) = self.pool.try_reserve() else {
            return Dispatch::Busy;
        };
        let admitted = match self.controller.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                self.controller.metrics().record(received, false);
                return Dispatch::Done;
            }
        };
        if admitted.request.app == PEER_APP || admitted.request.kind.starts_with("peer.") {
            return self.peer(&admitted, received, cx);
        }
        if admitted.request.kind == "sys.cancel" {
            return self.cancel(&admitted, received, cx);
        }
        if admitted.request.kind == "job.watch" {
            return self.watch(admitted, received, cx);
        }
        let Some(route) = self.controller.route(&admitted.request.kind) else {
            let e = Controller::unknown_type(&admitted.request.kind);
            cx.reject(&admitted, &e);
            self.controller.metrics().record(received, false);
            return Dispatch::Done;
        };
        if route.exec == Exec::Inline {
            let (conn, peer) = (Some(cx.conn()), Some(cx.peer().ip()));
            self.controller
                .handle(route, &admitted, conn, peer, received, cx.out());
            return Dispatch::Done;
        }
        let reply = cx.defer();
        let job = Job {
            admitted,
            route,
            reply,
            received,
            woken: false,
            peer: cx.peer().ip(),
        };
        if let Err(job) = slot.submit(job) {
            // The place was reserved, so the pool is stopping.
            cx.cancel(job.reply);
            let e = Error::Unavailable("this node is shutting down: retry on another node".into());
            job.admitted.error(&e, cx.out());
            self.controller.metrics().record(received, false);
        }
        Dispatch::Done
    }

    fn on_close(&mut self, conn: ConnId) {
        // Streams first: a subscription dropped after its stream is closed
        // ends quietly (it has no one to send a final reply to).
        self.controller.streams().close_conn(conn);
        let app = self.controller.app();
        app.mail.on_close(conn);
        app.peers.on_close(conn);
    }
}
