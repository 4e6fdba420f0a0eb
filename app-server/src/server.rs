//! Starting and stopping an app server: the services it is composed of
//! ([`Server`]), the database pool, the pipeline and its worker pool, the
//! reactors, the heartbeat threads, the services' jobs, and the graceful
//! shutdown that ties them together.
//!
//! Shutdown ([`StopHandle::trigger`], SIGTERM/SIGINT in the binary):
//! 1. report `draining` to the collector (balancers stop sending new keys),
//!    and answer every new request `overloaded` without running it, until
//!    the requests already running are answered and [`REFUSE_SETTLE`] more
//!    has passed: a client learns from a reply, not from a closed
//!    connection, to take its request (even a write) to another node;
//!    parked long polls run now, and streams end (each service's
//!    [`Service::on_drain`]);
//! 2. stop accepting and reading; finish the requests already read, and
//!    deliver their replies, within [`SHUTDOWN_DEADLINE`];
//! 3. let the workers finish anything still running (a write that was
//!    acknowledged was committed before its reply was written);
//! 4. `node.leave`, and return.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use dsf_common::pipeline::metrics::MetricsServer;
use dsf_common::pipeline::{Drain, Gauges, Pipeline, Ran};
use dsf_common::pool::{Submitter, WorkerPool};
use dsf_common::reactor::{Reactor, ReactorStats, Shutdown};
use dsf_common::wire::keys::PEER_APP;
use dsf_common::wire::AppKeys;
use dsf_sql::migrate::Migration;
use dsf_sql::Db;

use crate::config::SHUTDOWN_DEADLINE;
use crate::error::Error;
use crate::heartbeat::{Heartbeats, Identity, Upstream};
use crate::layers::once::{GroupCommit, RunOnce};
use crate::layers::poll::LongPolls;
use crate::node::{Call, Node};
use crate::reactor::AppService;
use crate::service::{DrainFn, Job, Service};
pub use crate::settings::{HeartbeatKey, Settings, AUTH_ADDR, AUTH_NAME, REAP_EVERY};

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
    pipeline: Arc<Pipeline<Node>>,
    reactor_stats: Arc<ReactorStats>,
    shutdown: Shutdown,
    /// Every reactor thread, the first one's (which holds the outbound
    /// links) first.
    reactors: Vec<JoinHandle<std::io::Result<()>>>,
    pool: WorkerPool<Call>,
    heartbeats: Option<Heartbeats>,
    /// The heartbeat's view of the queue. Taken away before the pool shuts
    /// down: a submitter left alive would keep the workers waiting for jobs.
    gauge_pool: Arc<Mutex<Option<Submitter<Call>>>>,
    stop_tx: Sender<()>,
    stop_rx: Receiver<()>,
    /// What the services run when the node starts draining.
    on_drain: Vec<DrainFn>,
    /// Dropped at shutdown: the services' job threads then stop.
    _jobs: Vec<Sender<()>>,
    metrics: Option<MetricsServer>,
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

    /// The node's shared state: database, peers, each service's state.
    pub fn node(&self) -> &Node {
        self.pipeline.server()
    }

    /// The pipeline: routes, metrics, streams.
    pub fn pipeline(&self) -> &Arc<Pipeline<Node>> {
        &self.pipeline
    }

    /// The reactor's counters (connections, frames).
    pub fn reactor_stats(&self) -> &Arc<ReactorStats> {
        &self.reactor_stats
    }

    /// The database pool the handlers use.
    pub fn db(&self) -> &Db {
        self.node().db()
    }

    /// Where `GET /metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::addr)
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
        self.pipeline.drain().start();
        let node = self.pipeline.server();
        // Parked long polls are answered now (with what they find), not
        // at the end of their wait, and the waits let go of the pool.
        node.topics().release_all();
        // Streams end with `unavailable`: their clients go elsewhere now,
        // not when the connection drops.
        for f in self.on_drain {
            f(node);
        }
        let reported_draining = match &self.heartbeats {
            Some(h) => h.beat_now(Duration::from_secs(1)),
            None => false,
        };
        // New requests are refused from the drain on; let the running
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
        let requests = self.pipeline.metrics().load().map_or(0, |l| l.requests());
        log::info!(
            "{}: stopped after {:?} ({requests} requests answered)",
            self.node_id,
            started.elapsed(),
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

/// The services an app server is made of; [`Server::start`] runs them.
///
/// ```no_run
/// # fn settings() -> app_server::Settings { unimplemented!() }
/// let running = app_server::Server::new()
///     .service(app_server::accounts())
///     .service(app_server::blacklist())
///     .start(settings())?;
/// # Ok::<(), app_server::Error>(())
/// ```
pub struct Server {
    services: Vec<Service>,
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

// === impl Server ===

impl Server {
    /// A server of the framework's own service alone (`sys.ping`,
    /// `sys.cancel`, `peer.wake`, the run-once records and their janitor).
    pub fn new() -> Server {
        Server {
            services: vec![crate::sys::service()],
        }
    }

    /// Every dsf service: accounts, blacklist, tasks, messaging (what the
    /// `app-server` binary runs).
    pub fn dsf() -> Server {
        Server::new()
            .service(crate::accounts())
            .service(crate::blacklist())
            .service(crate::tasks())
            .service(crate::messaging())
    }

    /// Adds `service`.
    pub fn service(mut self, service: Service) -> Server {
        self.services.push(service);
        self
    }

    /// The services' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.services.iter().map(|s| s.name.as_str()).collect()
    }

    /// Every service's migrations, by namespace, in order.
    pub fn migrations(&self) -> Vec<(&str, &[Migration])> {
        self.services
            .iter()
            .filter(|s| !s.migrations.is_empty())
            .map(|s| (s.name.as_str(), s.migrations.as_slice()))
            .collect()
    }

    /// Checks the composition: names unique, every required service there,
    /// no message type declared by two services.
    pub fn check(&self) -> Result<(), Error> {
        let mut catalogue = dsf_proto::Catalogue::new();
        for s in &self.services {
            for r in &s.routes {
                catalogue
                    .add(&s.name, *r.ty())
                    .map_err(|e| Error::Pipeline(e.into()))?;
            }
        }
        let names = self.names();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(Error::Compose(format!(
                    "service {n:?} is composed in twice"
                )));
            }
        }
        for s in &self.services {
            for r in &s.requires {
                if !names.contains(r) {
                    return Err(Error::Compose(format!(
                        "service {:?} needs service {r:?}, which this server does not run (add it)",
                        s.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that every type a scoped key of `keys` allows is one of the
    /// composed services' (the server refuses to start otherwise).
    pub fn check_keys(&self, keys: &AppKeys) -> Result<(), Error> {
        let served = |kind: &str| {
            self.services
                .iter()
                .flat_map(|s| s.routes.iter())
                .any(|r| r.ty().name == kind)
        };
        keys.check_scopes(served)
            .map_err(|e| Error::Pipeline(dsf_common::pipeline::BuildError::Scope(e)))
    }

    /// Connects to the database, binds the client port and starts serving.
    pub fn start(self, s: Settings) -> Result<Running, Error> {
        self.check()?;
        let db = Db::connect(&s.db)?;
        // A server whose tables are missing would answer `internal` to
        // every request of the service: refuse to start, saying what to run.
        match dsf_sql::migrate::pending(&db, &self.migrations()) {
            Ok(missing) if !missing.is_empty() => {
                let list: Vec<String> = missing
                    .iter()
                    .map(|(ns, v, name)| format!("{ns} {v} ({name})"))
                    .collect();
                return Err(Error::Unmigrated(list.join(", ")));
            }
            Ok(_) => {}
            Err(e) => log::warn!("could not check the schema's migrations ({e}); starting anyway"),
        }
        // Times are the database's from the first request on.
        crate::sys::follow_db_clock(&db);
        let drain = Arc::new(Drain::default());
        let node = Node::new(db, s.clone(), drain.clone());
        let mut services = self.services;

        // Each service's state, then what reads it.
        let mut states: HashMap<TypeId, Arc<dyn Any + Send + Sync>> = HashMap::new();
        for svc in &mut services {
            for make in svc.states.drain(..) {
                let (id, state) = make(&node).map_err(|e| Error::Service {
                    service: svc.name.clone(),
                    message: e.to_string(),
                })?;
                states.insert(id, state);
            }
        }
        node.set_states(states);
        let mut sessions = None;
        let mut close_hooks = Vec::new();
        let mut on_start = Vec::new();
        let mut on_drain = Vec::new();
        let mut jobs = Vec::new();
        // The peer secret signs the peer.* types between app servers (and
        // nothing else: the auth layer keeps it to them).
        let mut keys: AppKeys = s.app_keys.clone();
        keys.insert(PEER_APP, s.peer_secret.expose());
        let rates = s.clone();
        let mut builder = Pipeline::builder()
            .track_load()
            .check_scopes()
            .drain(drain)
            .rates(move |name| rates.rate(name))
            .layer(LongPolls)
            .layer(RunOnce)
            .group(GroupCommit(node.db().clone()));
        for svc in services {
            if let Some(f) = svc.sessions {
                if sessions.is_some() {
                    return Err(Error::Compose(format!(
                        "service {:?} provides sessions, and so does another: one service at most",
                        svc.name
                    )));
                }
                sessions = Some(f(&node));
            }
            close_hooks.extend(svc.on_close);
            on_start.extend(svc.on_start.into_iter().map(|f| (svc.name.clone(), f)));
            on_drain.extend(svc.on_drain);
            jobs.extend(svc.jobs);
            builder = builder.routes(&svc.name, svc.routes);
        }
        node.set_close_hooks(close_hooks);
        if let Some(sessions) = sessions {
            builder = builder.sessions(sessions);
        }
        let pipeline = builder.build(node, keys)?;
        let node = pipeline.server();

        let worker_pipeline = pipeline.clone();
        let pool = WorkerPool::new("worker", s.workers, s.queue, move |mut call: Call| {
            let topics = worker_pipeline.server().topics();
            loop {
                match worker_pipeline.run_job(call) {
                    Ran::Done => return,
                    Ran::Park(call, wait) => return topics.park(call, wait),
                    // A connection's next batch goes behind the others'
                    // work; with the queue full, it runs here.
                    Ran::Again(next) => match topics.requeue(next) {
                        None => return,
                        Some(next) => call = next,
                    },
                }
            }
        });
        node.topics().set_pool(pool.submitter());
        let gauge_pool = Arc::new(Mutex::new(Some(pool.submitter())));
        let service = AppService::new(pipeline.clone(), pool.submitter());
        let siblings: Vec<AppService> = (1..s.reactors).map(|_| service.sibling()).collect();
        let listening = |e| Error::Io {
            what: format!("listening on {}", s.listen),
            source: e,
        };
        let reactor = Reactor::bind(s.reactor.for_group(s.reactors), &[s.listen], service)
            .map_err(listening)?;
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
        node.set_id(&node_id);
        node.peers().set_handle(reactor.handle());
        for (service, f) in on_start {
            f(node).map_err(|e| Error::Service {
                service,
                message: e.to_string(),
            })?;
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
                        pipeline.clone(),
                        Box::new(gauges),
                        {
                            let p = pipeline.clone();
                            Box::new(move |version, nodes| {
                                p.server().peers().set_view(version, nodes)
                            })
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
        let metrics = match s.metrics_listen {
            Some(at) => {
                let p = pipeline.clone();
                let server = dsf_common::pipeline::metrics::serve(at, move || {
                    p.metrics().set_parked(p.server().parked());
                    let shared = p.server().db().writes().shared_commits();
                    p.metrics()
                        .set_shared_commits(shared.commits, shared.writes, shared.failed);
                    p.metrics().render()
                })
                .map_err(|e| Error::Io {
                    what: format!("listening on {at} for GET /metrics (--metrics-listen)"),
                    source: e,
                })?;
                log::info!("metrics on http://{}/metrics", server.addr());
                Some(server)
            }
            None => None,
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
            "{node_id} serving on {addr} (advertised {advertise}), {} reactor{}, {} workers, queue {}, database {}; services: {}",
            s.reactors,
            if s.reactors == 1 { "" } else { "s" },
            s.workers,
            s.queue,
            node.db().target(),
            pipeline
                .catalogue()
                .iter()
                .map(|(_, o)| o)
                .fold(Vec::<&str>::new(), |mut v, o| {
                    if !v.contains(&o) {
                        v.push(o);
                    }
                    v
                })
                .join(", "),
        );
        let jobs = jobs
            .into_iter()
            .map(|job| start_job(pipeline.clone(), job))
            .collect::<Result<Vec<_>, _>>()?;
        let (stop_tx, stop_rx) = bounded(1);
        Ok(Running {
            addr,
            node_id,
            pipeline,
            reactor_stats,
            shutdown,
            reactors,
            pool,
            heartbeats,
            gauge_pool,
            stop_tx,
            stop_rx,
            on_drain,
            _jobs: jobs,
            metrics,
        })
    }
}

/// Connects to the database, binds the client port and starts serving
/// every dsf service ([`Server::dsf`]).
pub fn start(s: Settings) -> Result<Running, Error> {
    Server::dsf().start(s)
}

/// A service's job on a thread of its own, until the returned sender is
/// dropped. A run that panics is logged; the next one goes on.
fn start_job(pipeline: Arc<Pipeline<Node>>, mut job: Job) -> Result<Sender<()>, Error> {
    let (tx, rx) = bounded::<()>(1);
    let name = job.name.clone();
    let every = (job.every)(pipeline.server().settings());
    std::thread::Builder::new()
        .name(job.name.clone())
        .spawn(move || loop {
            match rx.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (job.run)(pipeline.server())
            }));
            if ran.is_err() {
                log::error!("{}: a run panicked (logged above); going on", job.name);
            }
        })
        .map_err(|e| Error::Io {
            what: format!("starting the {name} thread"),
            source: e,
        })?;
    Ok(tx)
}
