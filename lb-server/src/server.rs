//! Starting and stopping a balancer: the reactor on the client and cluster
//! ports, the view builder, and the initial view from `--backend`s.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use dsf_common::pipeline::Pipeline;
use dsf_common::reactor::{Reactor, ReactorConfig, ReactorStats, Shutdown};
use dsf_common::view::{Load, MemberSpec, NodeState, NodeView, View};
use dsf_common::wire::AppKeys;

use crate::policy::PolicyKind;
use crate::proxy::{Proxy, ProxySettings};
use crate::ring::RingConfig;
use crate::service::{Balancer, Lb, Snapshot};

/// Everything a balancer needs, resolved from flags, env and file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client port (`lb.resolve`, `lb.view`).
    pub listen: SocketAddr,
    /// Cluster port (`lb.set_view` from the collector).
    pub cluster_listen: SocketAddr,
    /// Static members: the view in force until a collector sends one.
    pub backends: Vec<Backend>,
    pub policy: PolicyKind,
    pub ring: RingConfig,
    /// Keys clients sign with (`--app-keys`).
    pub app_keys: AppKeys,
    /// The cluster secret (never from a flag value).
    pub cluster_secret: dsf_common::config::Secret,
    pub reactor: ReactorConfig,
    /// Reactor threads on the client port (`SO_REUSEPORT`); the cluster
    /// and proxy ports are the first one's.
    pub reactors: usize,
    /// Proxy mode (`--proxy-listen`), if any.
    pub proxy: Option<ProxySettings>,
}

/// A static member, `--backend ID=HOST:PORT[,WEIGHT]`.
pub type Backend = MemberSpec;

/// The view of the static members (version 0: any collector view replaces it).
pub fn static_view(backends: &[Backend]) -> View {
    View {
        version: 0,
        nodes: backends
            .iter()
            .map(|b| NodeView {
                id: b.id.clone(),
                addr: b.addr.clone(),
                proxy_addr: b.proxy_addr.clone(),
                weight: b.weight,
                state: NodeState::Up,
                load: Load::default(),
            })
            .collect(),
    }
}

/// A running balancer.
pub struct Running {
    /// Where the client port listens (port 0 resolved).
    pub client_addr: SocketAddr,
    /// Where the cluster port listens.
    pub cluster_addr: SocketAddr,
    /// Where each proxy listener listens, in the order given.
    pub proxy_addrs: Vec<SocketAddr>,
    pub stats: Arc<ReactorStats>,
    shutdown: Shutdown,
    /// Every reactor thread, the first (all ports) first.
    reactors: Vec<JoinHandle<io::Result<()>>>,
    current: Arc<ArcSwap<Snapshot>>,
}

// === impl Running ===

impl Running {
    /// A handle that stops the balancer from any thread (signal handlers).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The view in force.
    pub fn view(&self) -> View {
        self.current.load().view.clone()
    }

    /// Waits until the reactor has stopped (after a shutdown).
    pub fn wait(self) -> io::Result<()> {
        let mut result = Ok(());
        for r in self.reactors {
            let stopped = r
                .join()
                .map_err(|_| io::Error::other("the reactor thread panicked"))?;
            result = result.and(stopped);
        }
        result
    }

    /// Stops and waits.
    pub fn stop(self) -> io::Result<()> {
        self.shutdown.trigger();
        self.wait()
    }
}

/// Binds both ports and starts serving.
pub fn start(s: Settings) -> io::Result<Running> {
    let keys = s
        .app_keys
        .clone()
        .with_cluster_secret(s.cluster_secret.expose());
    let view = static_view(&s.backends);
    let initial = Snapshot::build(view, s.policy, s.ring)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if s.backends.is_empty() {
        log::warn!(
            "no --backend given and no view yet: resolves answer unavailable until a collector pushes a view to {} (or restart with --backend ID=HOST:PORT)",
            s.cluster_listen
        );
    } else {
        let members: Vec<String> = s
            .backends
            .iter()
            .map(|b| format!("{}={} (weight {})", b.id, b.addr, b.weight))
            .collect();
        log::info!(
            "static view: {}; policy {}, vnodes {}, bounded load {}",
            members.join(", "),
            s.policy,
            s.ring.vnodes,
            s.ring.bound
        );
    }
    let mut addrs = vec![s.listen, s.cluster_listen];
    let mut proxy = None;
    if let Some(p) = &s.proxy {
        for (addr, protocol) in &p.listeners {
            log::info!(
                "proxy mode on {addr}: {protocol}, routed by {}{}",
                if *protocol == crate::proxy::Protocol::Mqtt {
                    p.key.to_string()
                } else {
                    "peer-ip".into()
                },
                match &p.pins_db {
                    Some(_) => ", pins shared in --pins-db",
                    None => ", pins in memory",
                }
            );
            addrs.push(*addr);
        }
        proxy = Some(
            Proxy::new(
                p.clone(),
                crate::service::FIRST_PROXY_PORT,
                s.reactor.max_conns,
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        );
    }
    let (lb, builder) = Lb::new(initial, s.policy, s.ring, proxy.as_ref().map(Proxy::admin));
    let pipeline = Pipeline::builder()
        .routes("lb", crate::service::routes())
        .build(lb, keys)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut balancer = Balancer::new(pipeline.clone());
    if let Some(proxy) = proxy {
        balancer = balancer.with_proxy(proxy);
    }
    let mut cfg = s.reactor.for_group(s.reactors);
    cfg.shutdown_grace = cfg.shutdown_grace.min(Duration::from_secs(5));
    let siblings: Vec<Balancer> = (1..s.reactors).map(|_| balancer.sibling()).collect();
    let reactor = Reactor::bind(cfg, &addrs, balancer)?;
    // The group shares its counters.
    let stats = reactor.stats();
    pipeline.server().set_reactor_stats(stats.clone());
    let siblings = siblings
        .into_iter()
        .map(|b| reactor.sibling(&[0], b))
        .collect::<io::Result<Vec<_>>>()?;
    let (client_addr, cluster_addr) = (reactor.local_addrs()[0], reactor.local_addrs()[1]);
    let proxy_addrs = reactor.local_addrs()[2..].to_vec();
    let shutdown = reactor.shutdown_handle();
    let mut reactors = vec![reactor.spawn()?];
    for (i, r) in siblings.into_iter().enumerate() {
        reactors.push(r.spawn_as(&format!("reactor-{}", i + 1))?);
    }
    if s.reactors > 1 {
        log::info!("{} reactors accept on {client_addr}", s.reactors);
    }
    Ok(Running {
        client_addr,
        cluster_addr,
        proxy_addrs,
        stats,
        shutdown,
        reactors,
        current: builder.current,
    })
}
