//! Starting and stopping a balancer: the reactor on the client and cluster
//! ports, the view builder, and the initial view from `--backend`s.

use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use dsf_common::reactor::{Reactor, ReactorConfig, ReactorStats, Shutdown};
use dsf_common::view::{Load, NodeState, NodeView, View, DEFAULT_WEIGHT};
use dsf_common::wire::{Admission, AppKeys, ReplayGuard};

use crate::policy::PolicyKind;
use crate::ring::RingConfig;
use crate::service::{Balancer, Snapshot};

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
    pub cluster_secret: Vec<u8>,
    pub reactor: ReactorConfig,
}

/// A static member given as `ID=HOST:PORT[,WEIGHT]` or `HOST:PORT[,WEIGHT]`
/// (the id is then the address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub id: String,
    pub addr: String,
    pub weight: u32,
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        let usage =
            "expected ID=HOST:PORT[,WEIGHT] or HOST:PORT[,WEIGHT], e.g. app1=10.0.0.5:7000,2";
        let (rest, weight) = match s.rsplit_once(',') {
            Some((r, w)) => {
                let w: u32 = w.trim().parse().map_err(|_| {
                    format!("backend {s:?}: weight {w:?} is not a whole number; {usage}")
                })?;
                (r, w)
            }
            None => (s, DEFAULT_WEIGHT),
        };
        let (id, addr) = match rest.split_once('=') {
            Some((id, addr)) => (id.trim(), addr.trim()),
            None => (rest.trim(), rest.trim()),
        };
        if id.is_empty() {
            return Err(format!("backend {s:?}: empty id; {usage}"));
        }
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("backend {s:?}: {addr:?} is not HOST:PORT; {usage}"));
        }
        Ok(Backend {
            id: id.to_string(),
            addr: addr.to_string(),
            weight,
        })
    }
}

/// The view of the static members (version 0: any collector view replaces it).
pub fn static_view(backends: &[Backend]) -> View {
    View {
        version: 0,
        nodes: backends
            .iter()
            .map(|b| NodeView {
                id: b.id.clone(),
                addr: b.addr.clone(),
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
    pub stats: Arc<ReactorStats>,
    shutdown: Shutdown,
    reactor: JoinHandle<io::Result<()>>,
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
        self.reactor
            .join()
            .map_err(|_| io::Error::other("the reactor thread panicked"))?
    }

    /// Stops and waits.
    pub fn stop(self) -> io::Result<()> {
        self.shutdown.trigger();
        self.wait()
    }
}

/// Binds both ports and starts serving.
pub fn start(s: Settings) -> io::Result<Running> {
    let keys = s.app_keys.clone().with_cluster_secret(&s.cluster_secret);
    let admission = Arc::new(Admission::new(keys, ReplayGuard::default()));
    let view = static_view(&s.backends);
    let initial = Snapshot::build(view, s.policy, s.ring)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if !s.backends.is_empty() {
        log::info!(
            "static view: {} backends, policy {}, vnodes {}, bounded load {}",
            s.backends.len(),
            s.policy,
            s.ring.vnodes,
            s.ring.bound
        );
    }
    let (balancer, builder) = Balancer::new(admission, initial, s.policy, s.ring);
    let mut cfg = s.reactor.clone();
    cfg.shutdown_grace = cfg.shutdown_grace.min(Duration::from_secs(5));
    let reactor = Reactor::bind(cfg, &[s.listen, s.cluster_listen], balancer)?;
    let (client_addr, cluster_addr) = (reactor.local_addrs()[0], reactor.local_addrs()[1]);
    let shutdown = reactor.shutdown_handle();
    let stats = reactor.stats();
    let reactor = reactor.spawn()?;
    Ok(Running {
        client_addr,
        cluster_addr,
        stats,
        shutdown,
        reactor,
        current: builder.current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_with_and_without_id_and_weight() {
        let b: Backend = "app1=10.0.0.5:7000,3".parse().unwrap();
        assert_eq!(
            (b.id.as_str(), b.addr.as_str(), b.weight),
            ("app1", "10.0.0.5:7000", 3)
        );
        let b: Backend = "10.0.0.5:7000".parse().unwrap();
        assert_eq!((b.id.as_str(), b.weight), ("10.0.0.5:7000", 1));
        let b: Backend = "a=h:1,0".parse().unwrap();
        assert_eq!(b.weight, 0);
    }

    #[test]
    fn bad_backends_say_what_is_expected() {
        for bad in ["", "a=", "a=host", "a=host:port", "a=h:1,x", "=h:1", ":80"] {
            let e = bad.parse::<Backend>().unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }
}
