//! The request pipeline every dsf server runs: the app servers, the
//! balancers and the collectors alike. A server is a set of typed
//! [`Route`]s, declared from catalogue types, behind one chain of sync
//! [`Layer`]s:
//!
//! ```text
//! reactor:  frame ─▶ admission (signature, replay) ─▶ drain ─▶ route ─▶ inline, or a worker
//! anywhere: metrics ─▶ auth ─▶ rate limits ─▶ the server's layers ─▶ handler ─▶ reply
//! ```
//!
//! - [`Call`]: one request as the layers and the handler see it.
//! - [`Route`]: a type and its handler, of one of three kinds: unary, long
//!   poll (parked off the workers until a topic wakes it), stream (events,
//!   then a final reply), and the unary answered later ([`Route::deferred`]).
//! - [`Layer`], [`Next`], [`Outcome`]: the shape of a layer.
//! - The layers, one file each: admission is [`crate::wire::admission`];
//!   [`drain`], [`auth`] (one [`dsf_proto::Auth`] for every server),
//!   [`rate`] (limits declared per route), [`metrics`] (count, errors and
//!   latency per message type). The app server adds long polls and
//!   run-once writes ([`Builder::layer`]).
//! - [`Route::batched`] routes run in order per connection, in batches,
//!   inside the server's [`Group`] (the app server's group commit).
//! - [`Builder`] assembles a server's routes into one table: its catalogue
//!   is made from the routes' types, and two owners routing one type refuse
//!   to start, naming both ([`BuildError`]).
//!
//! A server's reactor [`Service`](crate::reactor::Service) hands each frame to
//! [`Pipeline::on_frame`]; what it returns as a job runs on a worker with
//! [`Pipeline::run_job`], which says what the worker does next ([`Ran`]).

pub mod auth;
mod call;
pub mod drain;
mod layer;
pub mod metrics;
pub mod rate;
mod route;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dsf_proto::{Auth, Catalogue, Duplicate};

pub use auth::{AuthLayer, Sessions};
pub use call::{Batched, Call, Session};
pub use drain::Drain;
pub use layer::{Layer, Next, Outcome};
pub use metrics::{Gauges, Load, Metrics, MetricsLayer};
pub use rate::{Limit, Per, Rate, RateLayer};
pub use route::{parse_body, render, Exec, Responder, Route, Stream, Wait};

use crate::error::{Error, ErrorCode, Result};
use crate::reactor::{ConnId, Context};
use crate::wire::keys::AppKeys;
use crate::wire::streams::{Streams, DEFAULT_STREAMS_PER_CONN};
use crate::wire::{self, Admission};
use metrics::RouteMetrics;
use route::Handler;

/// Why a server's routes cannot make a pipeline; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Two services declared one message type.
    #[error(transparent)]
    Duplicate(#[from] Duplicate),
    /// A route's handler does not fit its type (a unary route on a stream).
    #[error("route {0}")]
    Mismatch(String),
    /// Routes need a logged-in user, and no service provides sessions.
    #[error(
        "{types} need a logged-in user, and no service of this server provides sessions: \
         add the accounts service (app_server::accounts())"
    )]
    NoSessions {
        /// The types, listed.
        types: String,
    },
    /// A scoped app key allows a type no route serves.
    #[error("{0}")]
    Scope(String),
}

/// The most requests of a [`Route::batched`] type one batch runs.
pub const BATCH_MAX: usize = 64;

/// The most requests of a [`Route::batched`] type one connection may have
/// waiting behind the batch that runs; more are refused `overloaded`.
pub const LANE_MAX: usize = 4 * BATCH_MAX;

/// How a server runs a batch of [`Route::batched`] requests together: the
/// app server opens one transaction, every request of the batch joins it,
/// and it commits once (a group commit).
pub trait Group: Send + Sync + 'static {
    /// Opens a group on this thread: the requests run until
    /// [`Group::commit`] join it. False: none could be opened (they run one
    /// by one).
    fn begin(&self) -> bool;
    /// Ends the group opened on this thread. `Ok`: everything its requests
    /// did is durable, and their outcomes stand. An error (why) means none
    /// of it is: the pipeline runs the requests again, one by one.
    fn commit(&self) -> std::result::Result<(), String>;
    /// Ends the group opened on this thread, keeping nothing of it (a
    /// request failed before it reached the group, with "try again").
    fn abort(&self);
}

/// What [`Pipeline::on_frame`] did with a frame.
// The job is moved once, into the pool's queue, which holds calls by
// value: boxing it would cost an allocation a request.
#[allow(clippy::large_enum_variant)]
pub enum Front<S: Send + Sync + 'static> {
    /// Answered (or refused) on the reactor.
    Done,
    /// To run on a worker with [`Pipeline::run_job`].
    Job(Call<S>),
}

/// What a worker does after [`Pipeline::run_job`].
#[allow(clippy::large_enum_variant)]
pub enum Ran<S: Send + Sync + 'static> {
    /// Answered.
    Done,
    /// A long poll parked: hold it until its topic is woken or its wait
    /// ends, then submit it again ([`Call::set_woken`]).
    Park(Call<S>, Wait),
    /// A batch of a connection ran and more of that connection's requests
    /// wait: submit this one, the oldest, again behind what other
    /// connections queued meanwhile (those waiting behind it go with it,
    /// in order). A busy connection does not keep a worker to itself.
    Again(Call<S>),
}

/// The route table.
struct Router<S: Send + Sync + 'static> {
    routes: Vec<Route<S>>,
    by_name: HashMap<&'static str, usize, foldhash::fast::RandomState>,
    catalogue: Catalogue,
}

// === impl Router ===

impl<S: Send + Sync + 'static> Router<S> {
    fn find(&self, kind: &str, port: Option<usize>) -> Result<usize> {
        match self.by_name.get(kind) {
            Some(&i) if self.routes[i].serves(port) => Ok(i),
            Some(_) => Err(Error::UnknownType(format!(
                "type {kind:?} is not served on this port; this port serves {}",
                self.describe(port)
            ))),
            None => Err(Error::UnknownType(format!(
                "no message type {kind:?} on this server; this port serves {}",
                self.describe(port)
            ))),
        }
    }

    /// The types served on `port`, a group of three or more as `group.*`.
    fn describe(&self, port: Option<usize>) -> String {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in self.routes.iter().filter(|r| r.serves(port)) {
            let group = r.ty.name.split('.').next().unwrap_or(r.ty.name);
            groups.entry(group).or_default().push(r.ty.name);
        }
        let mut parts = Vec::new();
        for (group, mut names) in groups {
            if names.len() >= 3 {
                parts.push(format!("{group}.*"));
            } else {
                names.sort_unstable();
                parts.extend(names.into_iter().map(str::to_string));
            }
        }
        if parts.is_empty() {
            return "nothing".into();
        }
        parts.join(", ")
    }

    fn writes(&self, kind: &str) -> bool {
        self.by_name
            .get(kind)
            .is_some_and(|&i| self.routes[i].ty.writes())
    }

    /// The types of routes with `auth`, for refusals.
    fn with_auth(&self, auth: Auth) -> String {
        let mut names: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| r.ty.auth == auth)
            .map(|r| r.ty.name)
            .collect();
        names.sort_unstable();
        match names.len() {
            0 => "nothing".into(),
            _ => names.join(", "),
        }
    }
}

/// The rate a server sets for a named limit.
type RateOf = dyn Fn(&str) -> Option<Rate>;

/// Assembles a pipeline: routes by owner, the server's own layers, and the
/// settings of the standard ones.
pub struct Builder<S: Send + Sync + 'static> {
    routes: Vec<(String, Route<S>)>,
    layers: Vec<Box<dyn Layer<S>>>,
    sessions: Option<Arc<dyn Sessions>>,
    node_keys: bool,
    rates: Box<RateOf>,
    load: bool,
    streams_per_conn: usize,
    check_scopes: bool,
    drain: Arc<Drain>,
    group: Option<Box<dyn Group>>,
}

impl<S: Send + Sync + 'static> Default for Builder<S> {
    fn default() -> Self {
        Builder::new()
    }
}

// === impl Builder ===

impl<S: Send + Sync + 'static> Builder<S> {
    /// No routes yet.
    pub fn new() -> Builder<S> {
        Builder {
            routes: Vec::new(),
            layers: Vec::new(),
            sessions: None,
            node_keys: false,
            rates: Box::new(|_| None),
            load: false,
            streams_per_conn: DEFAULT_STREAMS_PER_CONN,
            check_scopes: false,
            drain: Arc::default(),
            group: None,
        }
    }

    /// Adds `routes`, declared by `owner` (a service's name, in errors).
    pub fn routes(mut self, owner: &str, routes: impl IntoIterator<Item = Route<S>>) -> Self {
        self.routes
            .extend(routes.into_iter().map(|r| (owner.to_string(), r)));
        self
    }

    /// Adds a layer of the server's own, inside auth and rate limits (in
    /// the order added).
    pub fn layer(mut self, layer: impl Layer<S>) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Where sessions are found, for the types that need a user.
    pub fn sessions(mut self, sessions: Arc<dyn Sessions>) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Whether `Node` types must be signed with node keys.
    pub fn node_keys(mut self, on: bool) -> Self {
        self.node_keys = on;
        self
    }

    /// The rate of each named [`Limit`] the server sets (others keep their
    /// default).
    pub fn rates(mut self, rates: impl Fn(&str) -> Option<Rate> + 'static) -> Self {
        self.rates = Box::new(rates);
        self
    }

    /// Keeps the heartbeat figures ([`Load`]) as well.
    pub fn track_load(mut self) -> Self {
        self.load = true;
        self
    }

    /// Open streams one connection may hold.
    pub fn streams_per_conn(mut self, n: usize) -> Self {
        self.streams_per_conn = n;
        self
    }

    /// The drain switch, shared with whoever starts the drain.
    pub fn drain(mut self, drain: Arc<Drain>) -> Self {
        self.drain = drain;
        self
    }

    /// How batches of [`Route::batched`] requests run together; without
    /// one, a batch's requests run one after another.
    pub fn group(mut self, group: impl Group) -> Self {
        self.group = Some(Box::new(group));
        self
    }

    /// Refuses to build when a scoped app key allows a type no route serves.
    pub fn check_scopes(mut self) -> Self {
        self.check_scopes = true;
        self
    }

    /// The pipeline of `server` admitting with `keys`: checks every route
    /// and assembles the layers (metrics, auth, rate limits, then the
    /// server's own).
    pub fn build(
        self,
        server: S,
        keys: AppKeys,
    ) -> std::result::Result<Arc<Pipeline<S>>, BuildError> {
        let mut catalogue = Catalogue::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        let mut by_name = HashMap::default();
        let mut need_user = Vec::new();
        for (owner, route) in self.routes {
            catalogue.add(&owner, route.ty)?;
            if let Some(m) = &route.mismatch {
                return Err(BuildError::Mismatch(format!("{m} (service {owner:?})")));
            }
            if matches!(route.handler, Handler::LongPoll { .. }) && route.exec == Exec::Inline {
                return Err(BuildError::Mismatch(format!(
                    "{} is a long poll and cannot run inline (service {owner:?})",
                    route.ty.name
                )));
            }
            if route.batched
                && (!matches!(route.handler, Handler::Unary(_)) || route.exec == Exec::Inline)
            {
                return Err(BuildError::Mismatch(format!(
                    "{} is batched, which only a unary route on the workers can be (service {owner:?})",
                    route.ty.name
                )));
            }
            if route.ty.auth.reads_session() && route.ty.auth.role().is_some() {
                need_user.push(route.ty.name);
            }
            by_name.insert(route.ty.name, routes.len());
            routes.push(route);
        }
        if self.sessions.is_none() && !need_user.is_empty() {
            need_user.sort_unstable();
            return Err(BuildError::NoSessions {
                types: need_user.join(", "),
            });
        }
        if self.check_scopes {
            keys.check_scopes(|k| catalogue.get(k).is_some())
                .map_err(BuildError::Scope)?;
        }
        let router = Router {
            routes,
            by_name,
            catalogue,
        };
        let metrics = Metrics::new(self.load);
        let route_metrics = router
            .routes
            .iter()
            .map(|r| metrics.route(r.ty.name))
            .collect();
        let mut layers: Vec<Box<dyn Layer<S>>> = vec![
            Box::new(MetricsLayer),
            Box::new(AuthLayer {
                sessions: self.sessions,
                node_keys: self.node_keys,
                peer_types: router.with_auth(Auth::Peer),
                node_types: router.with_auth(Auth::Node),
            }),
        ];
        let rate = RateLayer::new(
            router.routes.iter().flat_map(|r| r.limits.iter()),
            &*self.rates,
        );
        if !rate.is_empty() {
            layers.push(Box::new(rate));
        }
        layers.extend(self.layers);
        Ok(Arc::new(Pipeline {
            server,
            router,
            layers,
            admission: Admission::new(keys, wire::ReplayGuard::default()),
            streams: Streams::new(self.streams_per_conn),
            drain: self.drain,
            metrics,
            route_metrics,
            group: self.group,
            lanes: Mutex::default(),
        }))
    }
}

/// A server's routes and layers; see the module documentation. Shared
/// (`Arc`) by its reactors and workers.
pub struct Pipeline<S: Send + Sync + 'static> {
    server: S,
    router: Router<S>,
    layers: Vec<Box<dyn Layer<S>>>,
    admission: Admission,
    streams: Arc<Streams>,
    drain: Arc<Drain>,
    metrics: Metrics,
    route_metrics: Vec<RouteMetrics>,
    group: Option<Box<dyn Group>>,
    /// The batched requests waiting, by connection, behind the batch a
    /// worker is running for it; a connection is here while one runs.
    lanes: Mutex<HashMap<ConnId, VecDeque<Call<S>>>>,
}

// === impl Pipeline ===

impl<S: Send + Sync + 'static> Pipeline<S> {
    /// Starts a [`Builder`].
    pub fn builder() -> Builder<S> {
        Builder::new()
    }

    /// The server's shared state.
    pub fn server(&self) -> &S {
        &self.server
    }

    /// The drain layer's switch.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The per-type metrics (and the heartbeat figures, when kept).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The open streams, by connection.
    pub fn streams(&self) -> &Arc<Streams> {
        &self.streams
    }

    /// The types served, each with the service that declared it.
    pub fn catalogue(&self) -> &Catalogue {
        &self.router.catalogue
    }

    /// The route of type `kind` on listener `port`, or the `unknown_type`
    /// error a request of it gets.
    pub fn route_of(&self, kind: &str, port: Option<usize>) -> Result<&Route<S>> {
        self.router.find(kind, port).map(|i| &self.router.routes[i])
    }

    /// The app keys admitted, with their scopes: a handler that does what
    /// another type does (a claim that also finishes) checks that type's
    /// scope here.
    pub fn keys(&self) -> &AppKeys {
        self.admission.keys()
    }

    /// Handles one frame on the reactor: admission, drain, the route; an
    /// inline route runs now, a pool route comes back as a [`Front::Job`]
    /// (its reply handle taken from `cx`).
    pub fn on_frame(self: &Arc<Self>, payload: &[u8], cx: &mut Context<'_>) -> Front<S> {
        let received = Instant::now();
        let admitted = match self
            .admission
            .admit_with(payload, |kind| self.router.writes(kind))
        {
            Ok(a) => a,
            Err(refused) => {
                log::debug!(
                    "refused a frame from {}: {}",
                    cx.peer(),
                    refused.rejection.error
                );
                cx.refuse(&refused);
                self.metrics.refused(received);
                return Front::Done;
            }
        };
        if self.drain.is_draining() {
            admitted.error(&self.drain.refusal(&admitted.request.kind), cx.out());
            self.metrics.refused(received);
            return Front::Done;
        }
        let route = match self.router.find(&admitted.request.kind, cx.listener()) {
            Ok(i) => i,
            Err(e) => {
                cx.reject(&admitted, &e);
                self.metrics.refused(received);
                return Front::Done;
            }
        };
        let r = &self.router.routes[route];
        let (inline, later) = (r.exec == Exec::Inline, r.answers_later());
        let mut call = Call {
            pipe: self.clone(),
            route,
            admitted,
            peer: cx.peer(),
            listener: cx.listener(),
            conn: cx.conn(),
            received,
            session: None,
            woken: false,
            after: Default::default(),
            reply: None,
            batch: None,
        };
        if !inline {
            call.reply = Some(cx.defer());
            if r.batched {
                let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
                match lanes.get_mut(&call.conn) {
                    Some(waiting) if waiting.len() >= LANE_MAX => {
                        drop(lanes);
                        let e = Error::Overloaded(format!(
                            "{LANE_MAX} {} of this connection are waiting to run: wait for their replies before sending more",
                            call.kind()
                        ));
                        self.refuse_one(call, cx, &e);
                        return Front::Done;
                    }
                    // A batch of this connection's runs: this one waits
                    // for the next, so that they run in the order sent.
                    Some(waiting) => {
                        waiting.push_back(call);
                        return Front::Done;
                    }
                    None => {
                        lanes.insert(call.conn, VecDeque::new());
                    }
                }
            }
            return Front::Job(call);
        }
        if later {
            call.reply = Some(cx.defer());
        }
        let outcome = self.run(&mut call);
        self.answer(&mut call, outcome, cx.out());
        Front::Done
    }

    /// A job that could not be handed to the pool (it is stopping): its
    /// reply handle goes back to `cx`, and it is answered `unavailable`.
    pub fn refuse_job(&self, call: Call<S>, cx: &mut Context<'_>) {
        let e = Error::Unavailable("this node is shutting down: retry on another node".into());
        self.refuse_job_with(call, cx, &e);
    }

    /// [`Pipeline::refuse_job`] with error `e`; a batched request takes
    /// those of its connection waiting behind it along.
    pub fn refuse_job_with(&self, call: Call<S>, cx: &mut Context<'_>, e: &Error) {
        let waiting = match self.router.routes[call.route].batched {
            true => self
                .lanes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&call.conn),
            false => None,
        };
        for c in std::iter::once(call).chain(waiting.into_iter().flatten()) {
            self.refuse_one(c, cx, e);
        }
    }

    /// Answers `call` with `e` on the reactor, its reply handle given back.
    fn refuse_one(&self, mut call: Call<S>, cx: &mut Context<'_>, e: &Error) {
        if let Some(reply) = call.take_reply() {
            cx.cancel(reply);
        }
        call.admitted.error(e, cx.out());
        self.metrics.refused(call.received);
    }

    /// Runs a job on a worker and sends its reply, then says what the
    /// worker does next ([`Ran`]).
    pub fn run_job(&self, mut call: Call<S>) -> Ran<S> {
        if self.router.routes[call.route].batched {
            return match self.run_lane(call) {
                Some(next) => Ran::Again(next),
                None => Ran::Done,
            };
        }
        let outcome = self.run(&mut call);
        if let Outcome::Park(wait) = outcome {
            return Ran::Park(call, wait);
        }
        let mut out = Vec::with_capacity(256);
        self.answer(&mut call, outcome, &mut out);
        if let Some(reply) = call.take_reply() {
            reply.send(out);
        }
        Ran::Done
    }

    /// Runs one batch of a connection's requests: `first` and those that
    /// arrived behind it while it waited for a worker (up to
    /// [`BATCH_MAX`]). Returns the oldest of those that arrived while the
    /// batch ran, for the worker to submit again ([`Ran::Again`]): the
    /// connection's next batch runs after what other connections queued
    /// meanwhile, instead of keeping the worker for as long as its client
    /// keeps sending. After a request that failed with "try again" (not
    /// run, or rolled back and not recorded), the ones behind it are
    /// answered `unavailable` without running: its client sends them again
    /// after it, so that they still run in the order sent.
    fn run_lane(&self, first: Call<S>) -> Option<Call<S>> {
        let conn = first.conn;
        let guard = LaneGuard { pipe: self, conn };
        let mut batch = vec![first];
        if let Some(waiting) = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&conn)
        {
            let n = waiting.len().min(BATCH_MAX - 1);
            batch.extend(waiting.drain(..n));
        }
        let halted = self.run_batch(&mut batch);
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let next = match lanes.get_mut(&conn) {
            Some(waiting) if !halted && !waiting.is_empty() => waiting.pop_front(),
            Some(_) => {
                let rest = lanes.remove(&conn);
                drop(lanes);
                self.not_run(rest.into_iter().flatten());
                None
            }
            None => None,
        };
        std::mem::forget(guard);
        next
    }

    /// Runs a batch in the server's [`Group`] (or one by one, without one),
    /// then answers each request in order. A group that fails to commit
    /// left nothing behind: its requests run again, one by one. Whether a
    /// request failed with "try again" (those after it were not run).
    fn run_batch(&self, batch: &mut Vec<Call<S>>) -> bool {
        let grouped = batch.len() > 1 && self.group.as_ref().is_some_and(|g| g.begin());
        let (outcomes, halted) = match grouped {
            true => self.run_grouped(batch),
            false => self.run_each(batch),
        };
        let mut out = Vec::with_capacity(256);
        for (mut call, outcome) in batch.drain(..).zip(outcomes) {
            out.clear();
            self.answer(&mut call, outcome, &mut out);
            if let Some(reply) = call.take_reply() {
                reply.send(std::mem::take(&mut out));
            }
        }
        halted
    }

    /// The batch in one group (opened), or, when it does not commit, one
    /// by one. Outcomes in the group are provisional: the metrics count
    /// them once it committed (and count a rerun's instead).
    fn run_grouped(&self, batch: &mut [Call<S>]) -> (Vec<Outcome>, bool) {
        let requests: Arc<[Batched]> = batch
            .iter()
            .map(|c| {
                let r = &c.admitted.request;
                Batched {
                    body: r.body.get().to_string(),
                    app: r.app.clone(),
                    nonce: r.nonce.clone(),
                }
            })
            .collect();
        for (i, c) in batch.iter_mut().enumerate() {
            c.batch = Some((requests.clone(), i));
        }
        let outcomes: Vec<Outcome> = batch.iter_mut().map(|c| self.run(c)).collect();
        let group = self.group.as_ref().expect("grouped with a group");
        // One that must be sent again (refused before it reached the group:
        // a rate limit, say) must not see those after it committed first.
        let committed = match outcomes.iter().any(try_again) {
            true => {
                group.abort();
                Err("a request of it failed with \"try again\"".to_string())
            }
            false => group.commit(),
        };
        self.metrics.group(batch.len(), committed.is_ok());
        for c in batch.iter_mut() {
            c.batch = None;
        }
        match committed {
            Ok(()) => {
                for (c, o) in batch.iter().zip(&outcomes) {
                    self.metrics
                        .record(&self.route_metrics[c.route], c.received, o);
                }
                (outcomes, false)
            }
            Err(why) => {
                log::debug!(
                    "a batch of {} {} did not commit together ({why}); running them one by one",
                    batch.len(),
                    batch[0].kind()
                );
                for c in batch.iter_mut() {
                    c.forget_after_commit();
                }
                self.run_each(batch)
            }
        }
    }

    /// The batch one request at a time, up to the first that failed with
    /// "try again"; those after it are answered `unavailable`, not run.
    fn run_each(&self, batch: &mut [Call<S>]) -> (Vec<Outcome>, bool) {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut halted = false;
        for c in batch.iter_mut() {
            if halted {
                let o = Outcome::Reply(Err(not_run(c.kind())));
                self.metrics
                    .record(&self.route_metrics[c.route], c.received, &o);
                outcomes.push(o);
                continue;
            }
            let o = self.run(c);
            halted = try_again(&o);
            outcomes.push(o);
        }
        (outcomes, halted)
    }

    /// Answers `calls` (taken from a lane) `unavailable`, not run.
    fn not_run(&self, calls: impl IntoIterator<Item = Call<S>>) {
        for mut c in calls {
            let o = Outcome::Reply(Err(not_run(c.kind())));
            self.metrics
                .record(&self.route_metrics[c.route], c.received, &o);
            let mut out = Vec::with_capacity(128);
            self.answer(&mut c, o, &mut out);
            if let Some(reply) = c.take_reply() {
                reply.send(out);
            }
        }
    }

    /// The layers and the handler; a panic is an `internal` error (the
    /// client still gets an answer for its id) and is counted.
    fn run(&self, call: &mut Call<S>) -> Outcome {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Next { rest: &self.layers }.run(call)
        }));
        match ran {
            Ok(outcome) => outcome,
            Err(_) => {
                let r = call.request();
                log::error!("{} (request {}) panicked", r.kind, r.id);
                call.forget_after_commit();
                let outcome = Outcome::Reply(Err(Error::Internal(format!(
                    "{} failed on this node (logged)",
                    r.kind
                ))));
                // In a group, counted once it is settled.
                if call.batch.is_none() {
                    let route = &self.route_metrics[call.route];
                    self.metrics.record(route, call.received, &outcome);
                }
                outcome
            }
        }
    }

    /// Writes the reply of `outcome` into `out`, then runs what the handler
    /// asked for after its commit, if it succeeded.
    fn answer(&self, call: &mut Call<S>, outcome: Outcome, out: &mut Vec<u8>) {
        let a = &call.admitted;
        let ok = match outcome {
            Outcome::Reply(Ok(body)) => {
                a.ok(&body, out);
                true
            }
            Outcome::Reply(Err(e)) => {
                log_refusal(call, &e);
                a.error(&e, out);
                false
            }
            Outcome::Stored { ok, payload } => {
                let r = &a.request;
                wire::envelope::encode_reply(Some(&a.key), r.id, &r.nonce, ok, &payload, out);
                ok
            }
            Outcome::Answered { ok } => ok,
            Outcome::Park(_) => {
                let e = Error::Internal(format!(
                    "{} asked to wait where no wait is possible",
                    a.request.kind
                ));
                a.error(&e, out);
                false
            }
        };
        let after = std::mem::take(&mut *call.after.borrow_mut());
        if ok {
            for f in after {
                f();
            }
        }
    }

    /// A connection closed: its streams end.
    pub fn on_close(&self, conn: ConnId) {
        self.streams.close_conn(conn);
    }
}

/// Whether `o` says "try again": not run, or rolled back and not recorded
/// (a write's refusal comes as a stored reply, recorded or not).
fn try_again(o: &Outcome) -> bool {
    match o {
        Outcome::Reply(Err(e)) => e.code().says_try_again(),
        Outcome::Stored { ok: false, payload } => {
            metrics::stored_error(payload).is_some_and(ErrorCode::says_try_again)
        }
        _ => false,
    }
}

/// The answer of a batched request not run because one before it on its
/// connection failed with "try again".
fn not_run(kind: &str) -> Error {
    Error::Unavailable(format!(
        "this {kind} was not run: one sent before it on this connection failed; send them again, in order"
    ))
}

/// Frees a connection's lane if its worker panics outside the handlers
/// (answering what waits in it), so that the connection's next requests
/// are not queued behind a batch that will never end.
struct LaneGuard<'a, S: Send + Sync + 'static> {
    pipe: &'a Pipeline<S>,
    conn: ConnId,
}

impl<S: Send + Sync + 'static> Drop for LaneGuard<'_, S> {
    fn drop(&mut self) {
        let rest = self
            .pipe
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.conn);
        self.pipe.not_run(rest.into_iter().flatten());
    }
}

/// The handler at the end of the chain.
fn handle<S: Send + Sync + 'static>(call: &mut Call<S>) -> Outcome {
    let pipe = call.pipe.clone();
    let route = &pipe.router.routes[call.route];
    match &route.handler {
        Handler::Unary(f) | Handler::LongPoll { run: f, .. } => {
            let call = &*call;
            Outcome::Reply(f(call, call.admitted.request.body.get()))
        }
        Handler::Stream(f) => {
            let Some(reply) = call.take_reply() else {
                return Outcome::Reply(Err(Error::Internal(format!(
                    "{} is a stream but came without a reply handle",
                    call.kind()
                ))));
            };
            let Ok(stream) = pipe.streams.open(&call.admitted, reply) else {
                // Refused (the connection's cap of streams): answered.
                return Outcome::Answered { ok: false };
            };
            let home = Arc::new(Mutex::new(None));
            let call = &*call;
            let ran = f(
                call,
                call.admitted.request.body.get(),
                stream,
                Arc::downgrade(&home),
            );
            let back = home.lock().unwrap_or_else(|p| p.into_inner()).take();
            match (ran, back) {
                (Ok(()), None) => Outcome::Answered { ok: true },
                (Ok(()), Some(stream)) => {
                    let e = Error::Internal(format!(
                        "{} ended its stream without a final reply (logged)",
                        call.kind()
                    ));
                    log::error!("{e}");
                    let _ = stream.fail(&e);
                    Outcome::Answered { ok: false }
                }
                (Err(e), back) => {
                    log_refusal(call, &e);
                    match back {
                        Some(stream) => {
                            let _ = stream.fail(&e);
                        }
                        None => log::error!(
                            "{}: the handler kept its stream and returned an error ({e}); the stream goes on",
                            call.kind()
                        ),
                    }
                    Outcome::Answered { ok: false }
                }
            }
        }
        Handler::Deferred(f) => {
            let r = &call.admitted.request;
            let responder = Responder {
                slot: Arc::new(Mutex::new(call.reply.take())),
                key: call.admitted.key.clone(),
                id: r.id,
                nonce: r.nonce.clone(),
                _m: std::marker::PhantomData,
            };
            let keep = responder.clone();
            let call = &*call;
            match f(call, call.admitted.request.body.get(), responder) {
                Ok(()) => Outcome::Answered { ok: true },
                Err(e) => {
                    log_refusal(call, &e);
                    keep.fail(&e);
                    Outcome::Answered { ok: false }
                }
            }
        }
    }
}

impl<S: Send + Sync + 'static> Call<S> {
    /// What a long poll waits for, when it is one, has not waited yet, and
    /// its `wait` says to (the long-poll layer asks).
    pub fn wait(&self) -> Option<Wait> {
        if self.woken {
            return None;
        }
        match &self.route().handler {
            Handler::LongPoll { wait, .. } => wait(self, self.admitted.request.body.get()),
            _ => None,
        }
    }
}

fn log_refusal<S: Send + Sync + 'static>(call: &Call<S>, e: &Error) {
    let r = call.request();
    if e.code() == ErrorCode::Internal {
        log::error!("{} (request {} from app {}): {e}", r.kind, r.id, r.app);
    } else {
        log::debug!("{} (request {}): {}: {e}", r.kind, r.id, e.code());
    }
}
