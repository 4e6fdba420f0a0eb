//! Starting and stopping an app server: the database pool, the worker pool,
//! the reactor, the heartbeat thread, and the graceful shutdown that ties
//! them together.
//!
//! Shutdown ([`StopHandle::trigger`], SIGTERM/SIGINT in the binary):
//! 1. report `draining` to the collector (balancers stop sending new keys),
//!    and answer every new request `overloaded` without running it, until
//!    the requests already running are answered and [`REFUSE_SETTLE`] more
//!    has passed: a client learns from a reply, not from a closed
//!    connection, to take its request (even a write) to another node;
//! 2. stop accepting and reading; finish the requests already read, and
//!    deliver their replies, within [`SHUTDOWN_DEADLINE`];
//! 3. let the workers finish anything still running (a write that was
//!    acknowledged was committed before its reply was written);
//! 4. `node.leave`, and return.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use dsf_common::call::Signer;
use dsf_common::config::Secret;
use dsf_common::pool::{Submitter, WorkerPool};
use dsf_common::reactor::{Reactor, ReactorConfig, ReactorStats, Shutdown};
use dsf_common::wire::keys::{self, PEER_APP};
use dsf_common::wire::{Admission, AppKeys, Key, ReplayGuard};
use dsf_sql::password::Cost;
use dsf_sql::{Db, DbConfig};

use crate::config::SHUTDOWN_DEADLINE;
use crate::controller::{App, Controller};
use crate::error::Error;
use crate::heartbeat::{Heartbeats, Identity, Upstream};
use crate::limits::{AuthLimits, Rate, Registration};
use crate::service::{run_job, AppService, Job};
use crate::stats::{Gauges, Metrics};

/// Everything a server needs, resolved from flags, environment and file
/// ([`crate::config::AppConfig::settings`]), or built by tests.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client port; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Address heartbeats advertise [default: the bound listen address].
    pub advertise: Option<String>,
    /// Where a balancer's proxy mode splices to for this node, if not `advertise`.
    pub proxy_advertise: Option<String>,
    /// Node id [default: the advertised address].
    pub node_id: Option<String>,
    /// Share of keys on the ring.
    pub weight: u32,
    pub db: DbConfig,
    /// Each collector's app-server port; none sends no heartbeats.
    pub collectors: Vec<String>,
    /// Worker threads.
    pub workers: usize,
    /// Requests waiting for a worker at most.
    pub queue: usize,
    /// Keys clients sign with.
    pub app_keys: AppKeys,
    /// Signs heartbeats (never from a flag value); needed with `collector`.
    pub heartbeat_key: Option<HeartbeatKey>,
    /// Signs `peer.notify` to and from the other app servers.
    pub peer_secret: Secret,
    /// The certificates trusted when connecting out (the collector, other
    /// app servers) over TLS; plain without. The server side of TLS is in
    /// `reactor.tls`.
    pub tls_ca: Option<Arc<rustls::ClientConfig>>,
    pub reactor: ReactorConfig,
    /// Reactor threads accepting on `listen` (`SO_REUSEPORT`), sharing the
    /// workers; `reactor`'s memory budget is split between them.
    pub reactors: usize,
    /// How long a token check is cached (≤ 2 s).
    pub session_cache: Duration,
    /// Lifetime of a login session.
    pub session_ttl: Duration,
    /// Time between heartbeats.
    pub heartbeat_every: Duration,
    /// Work of each password hash ([`Cost::DEFAULT`] outside tests).
    pub password_cost: Cost,
    /// How often subscriptions poll their inboxes for messages whose
    /// notification was lost ([`crate::mailroom::POLL`]).
    pub msg_poll: Duration,
    /// How often the task reaper looks for expired leases and due retries
    /// ([`REAP_EVERY`]).
    pub reap_every: Duration,
    /// Whether `user.register` makes accounts.
    pub registration: Registration,
    /// Logins and registrations per user name, and per peer address.
    pub auth_rate_name: Rate,
    pub auth_rate_addr: Rate,
}

/// What an app server signs its heartbeats with.
#[derive(Debug, Clone)]
pub enum HeartbeatKey {
    /// Its own node key, under `node:<id>`: it speaks only for its id.
    Node(Secret),
    /// The cluster secret, for a collector without node keys.
    Cluster(Secret),
}

// === impl HeartbeatKey ===

impl HeartbeatKey {
    /// The signer of node `id`'s heartbeats.
    pub fn signer(&self, id: &str) -> Signer {
        match self {
            HeartbeatKey::Node(k) => Signer {
                app: keys::node_app(id),
                key: Key::new(k.expose()),
            },
            HeartbeatKey::Cluster(k) => Signer {
                app: keys::CLUSTER_APP.into(),
                key: Key::new(k.expose()),
            },
        }
    }
}

/// Asks a running server to shut down gracefully; clonable to any thread
/// (the signal handler's).
#[derive(Clone)]
pub struct StopHandle {
    tx: Sender<()>,
}

impl StopHandle {
    /// Starts the graceful shutdown; [`Running::wait`] carries it out.
    pub fn trigger(&self) {
        let _ = self.tx.try_send(());
    }
}

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The collector took the `draining` heartbeat.
    pub reported_draining: bool,
    /// Every worker finished before the deadline.
    pub workers_finished: bool,
    /// The collector took `node.leave`.
    pub left: bool,
}

/// A running app server.
pub struct Running {
    addr: SocketAddr,
    node_id: String,
    metrics: Arc<Metrics>,
    reactor_stats: Arc<ReactorStats>,
    shutdown: Shutdown,
    /// Every reactor thread, the first one's (which holds the outbound
    /// links) first.
    reactors: Vec<JoinHandle<std::io::Result<()>>>,
    pool: WorkerPool<Job>,
    heartbeats: Option<Heartbeats>,
    /// The heartbeat's view of the queue. Taken away before the pool shuts
    /// down: a submitter left alive would keep the workers waiting for jobs.
    gauge_pool: Arc<Mutex<Option<Submitter<Job>>>>,
    stop_tx: Sender<()>,
    stop_rx: Receiver<()>,
    controller: Arc<Controller>,
    /// Dropped at shutdown: the janitor thread then stops.
    _janitor: Sender<()>,
    /// Dropped at shutdown: the task reaper then stops.
    _reaper: Sender<()>,
}

// === impl Running ===

impl Running {
    /// Where the client port listens (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Request and error counters and latency.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The reactor's counters (connections, frames).
    pub fn reactor_stats(&self) -> &Arc<ReactorStats> {
        &self.reactor_stats
    }

    /// The controller (routes, shared state, parked long polls).
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The database pool the handlers use.
    pub fn db(&self) -> &Db {
        &self.controller.app().db
    }

    /// A handle that starts the graceful shutdown from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            tx: self.stop_tx.clone(),
        }
    }

    /// Waits for a stop request, then shuts down gracefully (see the module
    /// documentation).
    pub fn wait(self) -> Result<ShutdownReport, Error> {
        let _ = self.stop_rx.recv();
        self.shut_down()
    }

    /// Starts the graceful shutdown and waits for it.
    pub fn stop(self) -> Result<ShutdownReport, Error> {
        self.stop_handle().trigger();
        self.wait()
    }

    fn shut_down(self) -> Result<ShutdownReport, Error> {
        let started = Instant::now();
        let deadline = started + SHUTDOWN_DEADLINE;
        log::info!(
            "{}: draining: {} requests in flight",
            self.node_id,
            self.shutdown.in_flight()
        );
        self.metrics.set_draining();
        // Parked long polls are answered now (with what they find), not
        // at the end of their wait, and the waiters let go of the pool.
        self.controller.waiters().close();
        // Subscriptions end with `unavailable`: their clients subscribe
        // again elsewhere now, not when the connection drops.
        self.controller.app().mail.close();
        let reported_draining = match &self.heartbeats {
            Some(h) => h.beat_now(Duration::from_secs(1)),
            None => false,
        };
        // New requests are refused from set_draining on; let the running
        // ones finish, and the clients waiting for them come back once
        // more to be told to go elsewhere.
        let refusing_until = deadline.min(Instant::now() + REFUSE_MAX);
        while self.shutdown.in_flight() > 0 && Instant::now() < refusing_until {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(
            REFUSE_SETTLE.min(refusing_until.saturating_duration_since(Instant::now())),
        );
        // The reactor stops accepting and reading, and returns once every
        // dispatched request is answered or its grace (the same 5 s) ends.
        self.shutdown.trigger();
        for reactor in self.reactors {
            let reactor = reactor.join().map_err(|_| Error::Io {
                what: "reactor".into(),
                source: std::io::Error::other("the reactor thread panicked"),
            })?;
            if let Err(e) = reactor {
                log::error!("reactor stopped with an error: {e}");
            }
        }
        // Anything a worker still runs finishes its writes, even if the
        // reply can no longer be delivered.
        let left_for_workers = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500));
        self.gauge_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let workers_finished = self.pool.shutdown(left_for_workers);
        let left = match self.heartbeats {
            Some(h) => h.leave(Duration::from_secs(2)),
            None => false,
        };
        log::info!(
            "{}: stopped after {:?} ({} requests answered)",
            self.node_id,
            started.elapsed(),
            self.metrics.requests()
        );
        Ok(ShutdownReport {
            reported_draining,
            workers_finished,
            left,
        })
    }
}

/// How long, once the requests running at shutdown are answered, new
/// requests are still refused before the connections close (see the
/// module documentation): enough for a client to read its last reply and
/// send its next request.
pub const REFUSE_SETTLE: Duration = Duration::from_millis(200);
/// Longest the refusing phase of shutdown may last.
const REFUSE_MAX: Duration = Duration::from_secs(2);

/// Connects to the database, binds the client port and starts serving.
pub fn start(s: Settings) -> Result<Running, Error> {
    let db = Db::connect(&s.db)?;
    // The peer secret signs peer.notify from other app servers (and
    // nothing else: see AppService::peer).
    let mut keys = s.app_keys.clone();
    keys.insert(PEER_APP, s.peer_secret.expose());
    let admission = Admission::new(keys, ReplayGuard::default());
    let metrics = Arc::new(Metrics::new());
    let mut app = App::new(
        db,
        s.session_cache,
        s.session_ttl,
        s.password_cost,
        s.peer_secret.expose(),
        s.msg_poll,
    );
    app.registration = s.registration;
    if let Some(ca) = &s.tls_ca {
        app.peers.set_tls(ca.clone());
    }
    app.auth_limits = AuthLimits::new(s.auth_rate_name, s.auth_rate_addr);
    let controller = Arc::new(Controller::new(admission, app, metrics.clone()));

    let worker_controller = controller.clone();
    let pool = WorkerPool::new("worker", s.workers, s.queue, move |job: Job| {
        run_job(&worker_controller, job)
    });
    controller.waiters().set_pool(pool.submitter());
    let gauge_pool = Arc::new(Mutex::new(Some(pool.submitter())));
    let service = AppService::new(controller.clone(), pool.submitter());
    let siblings: Vec<AppService> = (1..s.reactors).map(|_| service.sibling()).collect();
    let listening = |e| Error::Io {
        what: format!("listening on {}", s.listen),
        source: e,
    };
    let reactor =
        Reactor::bind(s.reactor.for_group(s.reactors), &[s.listen], service).map_err(listening)?;
    let siblings = siblings
        .into_iter()
        .map(|service| reactor.sibling(&[0], service))
        .collect::<Result<Vec<_>, _>>()
        .map_err(listening)?;
    let addr = reactor.local_addrs()[0];
    let advertise = s.advertise.clone().unwrap_or_else(|| addr.to_string());
    if advertise.starts_with("0.0.0.0:") || advertise.starts_with("[::]:") {
        log::warn!(
            "advertising {advertise}, which clients cannot connect to: pass --advertise HOST:PORT"
        );
    }
    let node_id = s.node_id.clone().unwrap_or_else(|| advertise.clone());
    controller.app().set_node(node_id.clone());
    controller.app().peers.set_handle(reactor.handle());
    // Subscriptions this node held before a restart are gone with it.
    match controller.app().db.messages().clear_node(&node_id) {
        Ok(0) => {}
        Ok(n) => log::info!("{node_id}: cleared {n} subscriptions left from before a restart"),
        Err(e) => {
            log::warn!("{node_id}: cannot clear old subscriptions' presence: {e} (they go stale)")
        }
    }
    let shutdown = reactor.shutdown_handle();
    let reactor_stats = reactor.stats();

    let heartbeats = match (s.collectors.is_empty(), &s.heartbeat_key) {
        (false, None) => return Err(Error::NoHeartbeatKey),
        (false, Some(key)) => {
            let stats = reactor_stats.clone();
            let pool = gauge_pool.clone();
            let gauges = move || {
                let pool = pool.lock().unwrap_or_else(|p| p.into_inner());
                Gauges {
                    conns: stats.conns.load(std::sync::atomic::Ordering::Relaxed) as u64,
                    inflight: pool.as_ref().map_or(0, |p| p.running() as u64),
                    queue: pool.as_ref().map_or(0, |p| p.queued() as u64),
                }
            };
            Some(
                Heartbeats::start(
                    Upstream {
                        collectors: s.collectors.clone(),
                        signer: key.signer(&node_id),
                        tls: s.tls_ca.clone(),
                    },
                    Identity {
                        id: node_id.clone(),
                        addr: advertise.clone(),
                        proxy_addr: s.proxy_advertise.clone(),
                        weight: s.weight,
                    },
                    s.heartbeat_every,
                    metrics.clone(),
                    Box::new(gauges),
                    {
                        let c = controller.clone();
                        Box::new(move |version, nodes| c.app().peers.set_view(version, nodes))
                    },
                )
                .map_err(|e| Error::Io {
                    what: "starting the heartbeat thread".into(),
                    source: e,
                })?,
            )
        }
        (true, _) => {
            log::warn!("no --collector: sending no heartbeats, so no collector-fed balancer will list this node");
            None
        }
    };
    let spawned = |e| Error::Io {
        what: "starting the reactor threads".into(),
        source: e,
    };
    let mut reactors = vec![reactor.spawn().map_err(spawned)?];
    for (i, r) in siblings.into_iter().enumerate() {
        reactors.push(r.spawn_as(&format!("reactor-{}", i + 1)).map_err(spawned)?);
    }
    log::info!(
        "{node_id} serving on {addr} (advertised {advertise}), {} reactor{}, {} workers, queue {}, database {}",
        s.reactors,
        if s.reactors == 1 { "" } else { "s" },
        s.workers,
        s.queue,
        controller.app().db.target()
    );
    let janitor = start_janitor(controller.app().db.clone()).map_err(|e| Error::Io {
        what: "starting the janitor thread".into(),
        source: e,
    })?;
    let reaper =
        start_reaper(controller.app().db.clone(), s.reap_every).map_err(|e| Error::Io {
            what: "starting the task reaper thread".into(),
            source: e,
        })?;
    let (stop_tx, stop_rx) = bounded(1);
    Ok(Running {
        addr,
        node_id,
        metrics,
        reactor_stats,
        shutdown,
        reactors,
        pool,
        heartbeats,
        gauge_pool,
        stop_tx,
        stop_rx,
        controller,
        _janitor: janitor,
        _reaper: reaper,
    })
}

/// How often the reaper looks for expired leases and due retries.
pub const REAP_EVERY: Duration = Duration::from_millis(250);

/// The `reaper` thread: returns tasks whose lease expired to their retry
/// (or buries them after their last attempt) and makes due retries ready,
/// every `every`, until the returned sender is dropped. Every app
/// server runs one; they take rows with SKIP LOCKED, so they share the
/// work rather than repeat it.
fn start_reaper(db: Db, every: Duration) -> std::io::Result<Sender<()>> {
    let (tx, rx) = bounded::<()>(1);
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                match rx.recv_timeout(every) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                match db.tasks().reap(500) {
                    Ok(r) => {
                        if failing {
                            log::info!("reaper: the database answers again");
                            failing = false;
                        }
                        if r.expired > 0 {
                            log::info!(
                                "reaper: {} leases expired; their tasks retry or are dead",
                                r.expired
                            );
                        }
                        if r.promoted > 0 {
                            log::debug!("reaper: {} retries ready", r.promoted);
                        }
                    }
                    Err(e) if !failing => {
                        log::warn!(
                            "reaper: {e}; retrying every {every:?} (logged again when it answers)"
                        );
                        failing = true;
                    }
                    Err(e) => log::debug!("reaper: {e}"),
                }
            }
        })?;
    Ok(tx)
}

/// How often the janitor checks that the database node in use serves.
const JANITOR_TICK: Duration = Duration::from_secs(1);
/// How often the janitor goes back to the first node of a list and
/// deletes expired run-once records.
const JANITOR_EVERY: Duration = Duration::from_secs(10);
/// Records are kept for twice the replay window: a resend older than the
/// window is refused as stale before its record is looked up.
const WRITES_KEPT: Duration = Duration::from_secs(2 * 60);

/// The `janitor` thread, until the returned sender is dropped: every
/// [`JANITOR_TICK`], with a `--db` list, it moves off a node that answers
/// but cannot serve ([`Db::check_in_use`]: a Galera node cut off from the
/// others); every [`JANITOR_EVERY`] it moves back to the first node once
/// that serves again ([`Db::prefer_first`]), and deletes run-once records
/// past [`WRITES_KEPT`]. Every app server runs one; they delete the same
/// rows, which is harmless.
fn start_janitor(db: Db) -> std::io::Result<Sender<()>> {
    let (tx, rx) = bounded::<()>(1);
    std::thread::Builder::new()
        .name("janitor".into())
        .spawn(move || {
            let mut next = Instant::now() + JANITOR_EVERY;
            loop {
                match rx.recv_timeout(JANITOR_TICK) {
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                db.check_in_use();
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + JANITOR_EVERY;
                janitor_round(&db);
            }
        })?;
    Ok(tx)
}

/// The janitor's work every [`JANITOR_EVERY`].
fn janitor_round(db: &Db) {
    db.prefer_first();
    match db.writes().expire(WRITES_KEPT, 10_000) {
        Ok(0) => {}
        Ok(n) => log::debug!("janitor: deleted {n} expired run-once records"),
        Err(e) => log::warn!("janitor: cannot delete expired run-once records: {e}"),
    }
}
