//! Starting and stopping a collector: the reactor on the collector port,
//! the `ticker`, one `push` thread per balancer, one `check` thread per
//! static target, and the `metrics` HTTP thread.
//!
//! Stopping is one trigger ([`Running::shutdown_handle`], SIGTERM in the
//! binary): the reactor stops accepting and delivers what is in flight,
//! then every other thread is told to finish and joined. Nothing is sent
//! to the balancers on the way out: they keep serving the last view, and
//! the next collector to start sends a greater version.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dsf_common::pipeline::Pipeline;
use dsf_common::reactor::{Reactor, ReactorConfig, ReactorStats, Shutdown};
use dsf_common::view::View;
use dsf_common::wire::{AppKeys, Key};

use crate::cluster::{self, Cluster};
use crate::error::CollectorError;
use crate::health::{self, DEFAULT_CHECK_INTERVAL};
use crate::members::Target;
use crate::push::{self, PushConfig};
use crate::service::{Collector, State};

/// Default `--dead-after`.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(3);
/// How often the view goes out even without a change.
pub const DEFAULT_RESEND: Duration = Duration::from_secs(1);

/// Everything a collector needs, resolved from flags, env and file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Collector port: heartbeats, leaves, status.
    pub listen: SocketAddr,
    /// Metrics port: `GET /metrics`.
    pub metrics_listen: SocketAddr,
    /// Every balancer's cluster port, `HOST:PORT`.
    pub lbs: Vec<String>,
    /// The active collector this one is the standby of (`--standby-for`).
    pub standby_for: Option<String>,
    /// Static members, health-checked by TCP connect.
    pub targets: Vec<Target>,
    /// A heartbeating node silent this long is evicted.
    pub dead_after: Duration,
    /// Time between health checks of one target.
    pub check_interval: Duration,
    /// How often the view is re-sent without a change.
    pub resend: Duration,
    /// Listening time before the first push; `dead_after` unless a test
    /// wants it shorter. A restarted collector has not yet heard from the
    /// nodes; waiting `dead_after` treats each as last seen when the
    /// collector started, so a node is dropped by a restart only if it
    /// would have been evicted anyway, and the balancers serve their last
    /// view meanwhile. (A node retrying its connection with a long backoff
    /// still gets `dead_after` to come back.)
    pub warmup: Duration,
    pub push: PushConfig,
    /// Keys operators sign `cluster.status` with (`--app-keys`).
    pub app_keys: AppKeys,
    /// Each node's own key, under `node:<id>` (`--node-keys`): heartbeats
    /// must then come under them, each speaking only for its own node.
    pub node_keys: Option<AppKeys>,
    /// The cluster secret (never from a flag value).
    pub cluster_secret: dsf_common::config::Secret,
    pub reactor: ReactorConfig,
    /// The app servers' database, for the dashboard's jobs (`--db`).
    pub db: Option<dsf_sql::DbConfig>,
}

// === impl Settings ===

impl Settings {
    /// Defaults for everything but the secret and the balancers: ports
    /// 127.0.0.1:6400 and :9400, no targets, no app keys.
    pub fn new(lbs: Vec<String>, cluster_secret: Vec<u8>) -> Settings {
        Settings {
            listen: crate::config::DEFAULT_LISTEN
                .parse()
                .expect("valid default"),
            metrics_listen: crate::config::DEFAULT_METRICS_LISTEN
                .parse()
                .expect("valid default"),
            lbs,
            standby_for: None,
            targets: Vec::new(),
            dead_after: DEFAULT_DEAD_AFTER,
            check_interval: DEFAULT_CHECK_INTERVAL,
            resend: DEFAULT_RESEND,
            warmup: DEFAULT_DEAD_AFTER,
            push: PushConfig::default(),
            app_keys: AppKeys::new(),
            node_keys: None,
            cluster_secret: dsf_common::config::Secret::new(cluster_secret),
            reactor: ReactorConfig::default(),
            db: None,
        }
    }
}

/// A running collector.
pub struct Running {
    /// Where the collector port listens (port 0 resolved).
    pub listen_addr: SocketAddr,
    /// Where the metrics port listens.
    pub metrics_addr: SocketAddr,
    pub stats: Arc<ReactorStats>,
    cluster: Arc<Cluster>,
    shutdown: Shutdown,
    reactor: JoinHandle<io::Result<()>>,
    metrics: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

// === impl Running ===

impl Running {
    /// A handle that stops the collector from any thread (signal handlers).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The shared state (status, metrics, tests).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The view last published.
    pub fn view(&self) -> View {
        (*self.cluster.view()).clone()
    }

    /// Waits until the reactor has stopped (after a shutdown), then stops
    /// and joins every other thread.
    pub fn wait(self) -> Result<(), CollectorError> {
        let reactor = self.reactor.join();
        self.cluster.stop();
        self.metrics.unblock();
        for t in self.threads {
            let name = t.thread().name().unwrap_or("?").to_string();
            if t.join().is_err() {
                log::error!("thread {name} panicked");
            }
        }
        match reactor {
            Ok(r) => r.map_err(CollectorError::Reactor),
            Err(_) => Err(CollectorError::Reactor(io::Error::other(
                "the reactor thread panicked",
            ))),
        }
    }

    /// Stops and waits.
    pub fn stop(self) -> Result<(), CollectorError> {
        self.shutdown.trigger();
        self.wait()
    }
}

fn spawn(
    threads: &mut Vec<JoinHandle<()>>,
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<(), CollectorError> {
    let t = std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| CollectorError::Spawn { name, source })?;
    threads.push(t);
    Ok(())
}

/// The `ticker`, `push-*`, `check-*` and `metrics` threads.
fn spawn_workers(
    s: &Settings,
    cluster: &Arc<Cluster>,
    metrics: &Arc<tiny_http::Server>,
    pipeline: &Arc<Pipeline<State>>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<(), CollectorError> {
    {
        let cluster = cluster.clone();
        let (warmup, resend) = (s.warmup.min(s.dead_after), s.resend);
        spawn(threads, "ticker".into(), move || {
            cluster::run_ticker(cluster, warmup, resend)
        })?;
    }
    let key = Key::new(s.cluster_secret.expose());
    for lb in &s.lbs {
        let (lb, cluster, key, cfg) = (lb.clone(), cluster.clone(), key.clone(), s.push.clone());
        spawn(threads, format!("push-{lb}"), move || {
            push::run_pusher(lb, cluster, key, cfg)
        })?;
    }
    if let Some(active) = &s.standby_for {
        let (active, cluster, key, cfg) =
            (active.clone(), cluster.clone(), key.clone(), s.push.clone());
        spawn(threads, "standby".into(), move || {
            crate::standby::run_standby(active, cluster, key, cfg)
        })?;
    }
    for t in &s.targets {
        let (t, cluster, every) = (t.clone(), cluster.clone(), s.check_interval);
        spawn(threads, format!("check-{}", t.id), move || {
            health::run_checker(t, cluster, every)
        })?;
    }
    let jobs = match &s.db {
        Some(db) => {
            let jobs = Arc::new(crate::dashboard::Jobs::default());
            let (jobs2, db, cluster) = (jobs.clone(), db.clone(), cluster.clone());
            spawn(threads, "jobs".into(), move || {
                crate::dashboard::run_jobs(jobs2, db, cluster)
            })?;
            Some(jobs)
        }
        None => None,
    };
    let (server, cluster, pipeline) = (metrics.clone(), cluster.clone(), pipeline.clone());
    spawn(threads, "metrics".into(), move || {
        crate::metrics::serve(server, cluster, jobs, pipeline)
    })
}

/// Binds both ports and starts every thread.
pub fn start(s: Settings) -> Result<Running, CollectorError> {
    let mut keys = s
        .app_keys
        .clone()
        .with_cluster_secret(s.cluster_secret.expose());
    match &s.node_keys {
        Some(nodes) => {
            log::info!("{} node keys: each node's heartbeats speak only for its own id", nodes.len());
            keys.extend(nodes.clone());
        }
        None => log::warn!(
            "no --node-keys: heartbeats come under the cluster secret, so any holder of it may speak for any node \
             (and a live node's address is never taken over by a heartbeat from elsewhere)"
        ),
    }
    let cluster = Arc::new(Cluster::with_standby(
        s.dead_after,
        &s.targets,
        &s.lbs,
        s.standby_for.clone(),
    ));
    let pipeline = Pipeline::builder()
        .routes("collector", crate::service::routes())
        .node_keys(s.node_keys.is_some())
        .build(cluster.clone(), keys)?;

    let reactor = Reactor::bind(
        s.reactor.clone(),
        &[s.listen],
        Collector::new(pipeline.clone()),
    )
    .map_err(|source| CollectorError::Bind {
        what: "heartbeats and status",
        flag: "listen",
        addr: s.listen,
        source,
    })?;
    let listen_addr = reactor.local_addrs()[0];
    let metrics = tiny_http::Server::http(s.metrics_listen).map_err(|e| CollectorError::Bind {
        what: "metrics",
        flag: "metrics-listen",
        addr: s.metrics_listen,
        source: io::Error::other(e.to_string()),
    })?;
    let metrics_addr = metrics.server_addr().to_ip().unwrap_or(s.metrics_listen);
    let metrics = Arc::new(metrics);
    log::info!("metrics on http://{metrics_addr}/metrics");

    let mut threads = Vec::new();
    if let Err(e) = spawn_workers(&s, &cluster, &metrics, &pipeline, &mut threads) {
        // Those already started are waiting on the cluster: release them.
        cluster.stop();
        metrics.unblock();
        return Err(e);
    }
    log::info!(
        "collector: {} balancers, {} static targets, dead after {:?}{}",
        s.lbs.len(),
        s.targets.len(),
        s.dead_after,
        match &s.standby_for {
            Some(a) => format!(", standby for collector {a}"),
            None => String::new(),
        }
    );

    let shutdown = reactor.shutdown_handle();
    let stats = reactor.stats();
    let reactor = match reactor.spawn() {
        Ok(r) => r,
        Err(source) => {
            cluster.stop();
            metrics.unblock();
            return Err(CollectorError::Spawn {
                name: "reactor".into(),
                source,
            });
        }
    };
    Ok(Running {
        listen_addr,
        metrics_addr,
        stats,
        cluster,
        shutdown,
        reactor,
        metrics,
        threads,
    })
}

/// Starts, stops on SIGTERM or SIGINT, and returns once everything is
/// stopped: what the binary runs.
pub fn run(s: Settings) -> Result<(), CollectorError> {
    let signals = dsf_common::signals::Terminate::install();
    let running = start(s)?;
    let shutdown = running.shutdown_handle();
    if let Err(e) = signals.and_then(|t| t.then(move || shutdown.trigger())) {
        log::warn!("cannot install signal handlers (stop with SIGKILL only): {e}");
    }
    running.wait()
}
