//! The balancer's service: `lb.resolve`, `lb.view` and `lb.stats` on the
//! client port; `lb.set_view`, `lb.pins` and `lb.unpin` (cluster secret),
//! `lb.view` and `lb.stats` on the cluster port; proxy mode on the proxy
//! listeners ([`crate::proxy`]).
//!
//! Lookups are answered inline on the reactor thread: admission, one ring
//! walk, one reply, no hop to another thread. A new view is handed to the
//! `view-builder` thread, which builds the ring off the serving path and
//! swaps the new [`Snapshot`] in atomically; the reactor reads whichever
//! snapshot is current for each request. The builder is the only writer,
//! so views are applied in order and a stale one is never applied.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use dsf_common::pipeline::{Call, Front, Pipeline, Responder, Route};
use dsf_common::reactor::{Accept, ConnId, Context, Dispatch, ReactorStats, Service, Sniffed};
use dsf_common::view::{NodeState, NodeView, View};
use dsf_common::wire;
use dsf_common::Error;
// What `lb.resolve` takes and answers: the catalogue's types.
use dsf_proto::cluster::{Applied, SetView};
use dsf_proto::lb::{
    GetStats, GetView, Pins, PinsBody, Resolve, ResolveBody, Resolved, Stats, Unpin, UnpinBody,
    Unpinned, MAX_EXCLUDE, MAX_KEY, PINS_MAX,
};
use serde::Serialize;

use crate::policy::{Policy, PolicyKind};
use crate::proxy::pins::PinTable;
use crate::proxy::store::Store;
use crate::proxy::{Counters, Proxy};
use crate::ring::{Ring, RingConfig};

/// Index of the client listener in the reactor's listen addresses.
pub const CLIENT_PORT: usize = 0;
/// Index of the cluster listener.
pub const CLUSTER_PORT: usize = 1;
/// Index of the first proxy listener (`--proxy-listen`, in order).
pub const FIRST_PROXY_PORT: usize = 2;

/// Views waiting for the builder; a collector sends one a second.
const BUILD_QUEUE: usize = 64;

/// A view and the policy built over it: what lookups read.
#[derive(Debug)]
pub struct Snapshot {
    pub view: View,
    pub policy: Policy,
    /// Proxy mode's ring: the nodes it can splice to.
    pub proxy: Arc<ProxyRing>,
}

/// The ring proxy mode routes on: the view's nodes that have a proxy
/// target (when any node advertises a `proxy_addr`, only those; a node's
/// `addr` otherwise), each target resolved when the view is built. Plain
/// [`Ring::owner`] over it places new keys.
#[derive(Debug)]
pub struct ProxyRing {
    pub ring: Ring,
    /// Each ring node's target, indexed like [`Ring::nodes`].
    pub targets: Vec<SocketAddr>,
    /// Targets that did not resolve: tried again with the next view, even
    /// one that changes only loads (the collector sends one a second).
    pub unresolved: usize,
}

impl ProxyRing {
    /// Resolves the targets (off the serving path) and builds the ring.
    pub fn build(view: &View, config: RingConfig) -> Result<ProxyRing, Error> {
        let advertised = view.nodes.iter().any(|n| n.proxy_addr.is_some());
        let mut nodes = Vec::new();
        let mut resolved = std::collections::HashMap::new();
        let mut unresolved = 0;
        for n in &view.nodes {
            let target = match (&n.proxy_addr, advertised) {
                (Some(p), _) => p.as_str(),
                // Its dsf port is not what devices speak.
                (None, true) => continue,
                (None, false) => n.addr.as_str(),
            };
            match target.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => {
                    resolved.insert(n.id.clone(), a);
                    nodes.push(n.clone());
                }
                Ok(None) | Err(_) => {
                    unresolved += 1;
                    log::warn!(
                        "node {}: proxy target {target} does not resolve; proxy mode routes around it",
                        n.id
                    )
                }
            }
        }
        let ring = Ring::build(view.version, &nodes, config).map_err(crate::ring_error)?;
        let targets = ring.nodes().iter().map(|n| resolved[&n.id]).collect();
        Ok(ProxyRing {
            ring,
            targets,
            unresolved,
        })
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds the ring of `view`.
    pub fn build(view: View, kind: PolicyKind, ring: RingConfig) -> Result<Snapshot, Error> {
        let policy = Policy::new(
            kind,
            Ring::from_view(&view, ring).map_err(crate::ring_error)?,
        );
        let proxy = Arc::new(ProxyRing::build(&view, ring)?);
        Ok(Snapshot {
            view,
            policy,
            proxy,
        })
    }

    /// `lb.view`'s reply: the view with each node's exact share of the hash space.
    pub fn describe(&self) -> serde_json::Value {
        let ring = self.policy.ring();
        let nodes: Vec<NodeShare<'_>> = self
            .view
            .nodes
            .iter()
            .map(|n| NodeShare {
                node: n,
                share: ring.index_of(&n.id).map_or(0.0, |i| ring.node(i).share()),
            })
            .collect();
        serde_json::json!({
            "version": self.view.version,
            "policy": self.policy.kind().as_str(),
            "nodes": nodes,
        })
    }
}

#[derive(Serialize)]
struct NodeShare<'a> {
    #[serde(flatten)]
    node: &'a NodeView,
    share: f64,
}

struct Build {
    view: View,
    /// The balancer's counters as the view arrived, for the collector.
    stats: Stats,
    responder: Responder<SetView>,
}

/// What the balancer's routes share, on every reactor.
pub struct Lb {
    /// The view and ring in force.
    pub current: Arc<ArcSwap<Snapshot>>,
    builds: Sender<Build>,
    /// Proxy mode's pins and counters, when it is on.
    proxy: Option<PinAdmin>,
    /// The reactors' counters (set once the reactor is bound), for `lb.stats`.
    reactor: OnceLock<Arc<ReactorStats>>,
}

/// The builder thread and the snapshot it maintains.
pub struct ViewBuilder {
    pub current: Arc<ArcSwap<Snapshot>>,
    pub thread: JoinHandle<()>,
}

// === impl Lb ===

impl Lb {
    /// The shared state over `initial`, with a `view-builder` thread for
    /// updates; `proxy` when proxy mode is on.
    pub fn new(
        initial: Snapshot,
        kind: PolicyKind,
        ring: RingConfig,
        proxy: Option<PinAdmin>,
    ) -> (Lb, ViewBuilder) {
        let current = Arc::new(ArcSwap::from_pointee(initial));
        let (builds, rx) = bounded(BUILD_QUEUE);
        // With --pins-db the pin table here is a cache of the shared one.
        let cache = proxy
            .as_ref()
            .filter(|p| p.store.is_some())
            .map(|p| p.pins.clone());
        let thread = {
            let current = current.clone();
            std::thread::Builder::new()
                .name("view-builder".into())
                .spawn(move || build_views(rx, current, kind, ring, cache))
                .expect("spawning the view builder")
        };
        let lb = Lb {
            current: current.clone(),
            builds,
            proxy,
            reactor: OnceLock::new(),
        };
        (lb, ViewBuilder { current, thread })
    }

    /// Where `lb.stats` reads the connection counters.
    pub fn set_reactor_stats(&self, stats: Arc<ReactorStats>) {
        let _ = self.reactor.set(stats);
    }

    /// `lb.stats`'s reply.
    pub fn stats(&self) -> Stats {
        let reactor = self.reactor.get().map(Arc::as_ref);
        Stats {
            view: self.current.load().view.version,
            conns: reactor.map_or(0, |r| {
                r.conns.load(std::sync::atomic::Ordering::Relaxed) as u64
            }),
            proxy: match (&self.proxy, reactor) {
                (Some(p), Some(r)) => Some(p.counters.report(r)),
                _ => None,
            },
        }
    }
}

/// The balancer's routes: `lb.resolve` on the client port; `lb.set_view`,
/// `lb.pins`, `lb.unpin` (cluster secret) on the cluster port; `lb.view`
/// and `lb.stats` on both. All run on the reactor: a lookup is one ring
/// walk, and what takes longer (building a ring, the shared pin table)
/// answers from its own thread.
pub fn routes() -> Vec<Route<Lb>> {
    vec![
        Route::unary::<Resolve>(resolve)
            .inline()
            .on_ports(&[CLIENT_PORT]),
        Route::unary::<GetView>(|call: &Call<Lb>, _| Ok(call.server().current.load().describe()))
            .inline()
            .on_ports(&[CLIENT_PORT, CLUSTER_PORT]),
        Route::unary::<GetStats>(|call: &Call<Lb>, _| Ok(call.server().stats()))
            .inline()
            .on_ports(&[CLIENT_PORT, CLUSTER_PORT]),
        Route::deferred::<SetView>(set_view)
            .inline()
            .on_ports(&[CLUSTER_PORT]),
        Route::deferred::<Pins>(pins)
            .inline()
            .on_ports(&[CLUSTER_PORT]),
        Route::deferred::<Unpin>(unpin)
            .inline()
            .on_ports(&[CLUSTER_PORT]),
    ]
}

/// `lb.resolve {"key"?, "exclude"?}`.
fn resolve(call: &Call<Lb>, body: ResolveBody) -> Result<Resolved, Error> {
    let key = match &body.key {
        Some(k) if k.len() > MAX_KEY => {
            return Err(Error::bad_request(format!(
                "key: at most {MAX_KEY} bytes, got {}",
                k.len()
            )))
        }
        Some(k) => k.clone(),
        // No key: the peer's IP address is the key (sticky per client host).
        None => call.peer().ip().to_string(),
    };
    if body.exclude.len() > MAX_EXCLUDE {
        return Err(Error::bad_request(format!(
            "exclude: at most {MAX_EXCLUDE} ids, got {}",
            body.exclude.len()
        )));
    }
    let snap = call.server().current.load();
    let node = snap
        .policy
        .pick(key.as_bytes(), &body.exclude)
        .map_err(crate::ring_error)?;
    Ok(Resolved {
        node: node.id.clone(),
        addr: node.addr.clone(),
        view: snap.view.version,
    })
}

/// `lb.set_view`: checked here, built and answered by the builder thread.
fn set_view(call: &Call<Lb>, view: View, responder: Responder<SetView>) -> Result<(), Error> {
    check_view(&view)?;
    let lb = call.server();
    let build = Build {
        view,
        stats: lb.stats(),
        responder,
    };
    match lb.builds.try_send(build) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Error::Overloaded(
            "views are arriving faster than this balancer builds rings; the next push will catch up"
                .into(),
        )),
    }
}

/// Proxy mode's pins and counters, shared by the proxy (on the first
/// reactor) and the `lb.pins` / `lb.unpin` routes (on any).
#[derive(Clone)]
pub struct PinAdmin {
    pub pins: Arc<Mutex<PinTable>>,
    pub store: Option<Arc<Store>>,
    pub counters: Arc<Counters>,
}

/// Where a request for pins is told what to do without proxy mode.
fn no_proxy(call: &Call<Lb>) -> Result<&PinAdmin, Error> {
    call.server().proxy.as_ref().ok_or_else(|| {
        Error::NotFound(
            "this balancer has no proxy listener, so no pins (start it with --proxy-listen ADDR --proxy-protocol mqtt|tcp)".into(),
        )
    })
}

/// `lb.pins`: a page, from memory at once, or from the shared table on its
/// thread.
fn pins(call: &Call<Lb>, list: PinsBody, responder: Responder<Pins>) -> Result<(), Error> {
    let admin = no_proxy(call)?;
    let limit = list.limit.unwrap_or(100);
    if limit == 0 || limit > PINS_MAX {
        return Err(Error::bad_request(format!(
            "limit: 1 to {PINS_MAX}, got {limit}"
        )));
    }
    if let Some(Err(e)) = list.after.as_deref().map(crate::proxy::parse_cursor) {
        return Err(Error::bad_request(e));
    }
    match &admin.store {
        None => {
            let page = admin
                .list(list.after.as_deref(), limit as usize, list.node.as_deref())
                .map_err(Error::bad_request)?;
            responder.ok(&page);
        }
        Some(store) => store.list(
            list.after,
            limit as usize,
            list.node,
            Box::new(move |r| {
                responder.answer(r.map_err(Error::Unavailable));
            }),
        ),
    }
    Ok(())
}

/// `lb.unpin`: drops pins by key or node, here and in the shared table.
fn unpin(call: &Call<Lb>, unpin: UnpinBody, responder: Responder<Unpin>) -> Result<(), Error> {
    let admin = no_proxy(call)?;
    if unpin.key.is_none() && unpin.node.is_none() {
        return Err(Error::bad_request(
            "name a key or a node to unpin: {\"key\": …} or {\"node\": …}",
        ));
    }
    match &admin.store {
        None => {
            let dropped = admin.unpin(unpin.key.as_deref(), unpin.node.as_deref());
            log::info!(
                "dropped {dropped} pins (key {:?}, node {:?})",
                unpin.key,
                unpin.node
            );
            responder.ok(&Unpinned { dropped });
        }
        Some(store) => {
            let (key, node) = (unpin.key.clone(), unpin.node.clone());
            store.unpin(
                unpin.key,
                unpin.node,
                Box::new(move |r| {
                    if let Ok(n) = &r {
                        log::info!("dropped {n} pins (key {key:?}, node {node:?})");
                    }
                    responder.answer(
                        r.map(|dropped| Unpinned { dropped })
                            .map_err(Error::Unavailable),
                    );
                }),
            );
        }
    }
    Ok(())
}

/// The reactor-side half of the balancer: frames through the pipeline,
/// proxy mode's connections to the proxy.
pub struct Balancer {
    pipeline: Arc<Pipeline<Lb>>,
    proxy: Option<Proxy>,
}

// === impl Balancer ===

impl Balancer {
    /// The service of `pipeline`.
    pub fn new(pipeline: Arc<Pipeline<Lb>>) -> Balancer {
        Balancer {
            pipeline,
            proxy: None,
        }
    }

    /// The service for another reactor on the client port: the same
    /// pipeline, no proxy (its ports stay on the first reactor).
    pub fn sibling(&self) -> Balancer {
        Balancer::new(self.pipeline.clone())
    }

    /// Serves proxy mode on the listeners from [`FIRST_PROXY_PORT`].
    pub fn with_proxy(mut self, proxy: Proxy) -> Balancer {
        self.proxy = Some(proxy);
        self
    }
}

impl Service for Balancer {
    fn on_accept(&mut self, cx: &mut Context<'_>) -> Accept {
        let Some(proxy) = self.proxy.as_mut() else {
            return Accept::Framed;
        };
        match proxy.protocol(cx.listener()) {
            Some(protocol) => {
                let snap = self.pipeline.server().current.load_full();
                proxy.accept(protocol, &snap, cx)
            }
            None => Accept::Framed,
        }
    }

    fn on_full(&mut self, listener: usize, max_conns: usize, out: &mut Vec<u8>) {
        if self
            .proxy
            .as_ref()
            .is_some_and(|p| p.protocol(Some(listener)).is_some())
        {
            // A device does not read dsf frames: closed without a word.
            return;
        }
        let e = Error::Overloaded(format!(
            "server is at its limit of {max_conns} connections; retry later or on another node"
        ));
        wire::encode_error(None, wire::envelope::UNKNOWN_ID, "", &e, out);
    }

    fn on_bytes(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> Sniffed {
        match self.proxy.as_mut() {
            Some(proxy) => {
                let snap = self.pipeline.server().current.load_full();
                proxy.bytes(bytes, &snap, cx)
            }
            None => Sniffed::Close,
        }
    }

    fn on_pipe_failed(
        &mut self,
        backend: SocketAddr,
        _error: &std::io::Error,
        cx: &mut Context<'_>,
    ) -> Option<SocketAddr> {
        let proxy = self.proxy.as_mut()?;
        let snap = self.pipeline.server().current.load_full();
        proxy.failed(backend, &snap, cx)
    }

    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        // Every route is inline: nothing comes back to run elsewhere.
        match self.pipeline.on_frame(payload, cx) {
            Front::Done => {}
            Front::Job(call) => self.pipeline.refuse_job(call, cx),
        }
        Dispatch::Done
    }

    fn on_close(&mut self, conn: ConnId) {
        if let Some(p) = self.proxy.as_mut() {
            p.closed(conn);
        }
    }
}

/// Rejects views no ring can be built from, before they are queued.
fn check_view(view: &View) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for n in &view.nodes {
        if n.id.is_empty() || n.id.len() > 256 {
            return Err(Error::bad_request("nodes[].id: 1 to 256 bytes"));
        }
        if n.addr.is_empty() || n.addr.len() > 256 {
            return Err(Error::bad_request(format!(
                "nodes[{}].addr: host:port, 1 to 256 bytes",
                n.id
            )));
        }
        if !seen.insert(n.id.as_str()) {
            return Err(Error::bad_request(format!(
                "nodes: id {:?} appears twice in view {}",
                n.id, view.version
            )));
        }
    }
    Ok(())
}

/// The builder loop: applies views in arrival order; rebuilds the ring
/// only when membership (ids, addresses, weights, states) changed. With
/// `cache` (the local cache of `--pins-db`'s table), a node that comes
/// back into the proxy ring first loses its cached pins ([`forget_returned`]).
fn build_views(
    rx: Receiver<Build>,
    current: Arc<ArcSwap<Snapshot>>,
    kind: PolicyKind,
    ring: RingConfig,
    cache: Option<Arc<Mutex<PinTable>>>,
) {
    for mut b in rx.iter() {
        let cur = current.load_full();
        let view = std::mem::take(&mut b.view);
        let same = (view.version < cur.view.version).then(|| same_membership(&cur.view, &view));
        let result = apply(&cur, view, kind, ring);
        let applied = |version| Applied {
            applied: version,
            same_membership: same,
            stats: Some(b.stats.clone()),
        };
        match result {
            Ok(Some(next)) => {
                let v = next.view.version;
                if let Some(cache) = &cache {
                    forget_returned(cache, &cur.proxy.ring, &next.proxy.ring);
                }
                current.store(Arc::new(next));
                b.responder.ok(&applied(v));
            }
            Ok(None) => {
                b.responder.ok(&applied(cur.view.version));
            }
            Err(e) => {
                log::warn!("refused a view: {e}");
                b.responder.fail(&e);
            }
        }
    }
}

/// Drops the cached pins to every node of `next` absent from `prev`,
/// before `next` is in force. While a node was out of the view, another
/// replica may have moved its devices in the shared table; a pin cached
/// here before it left would send them back to it once it returns (until
/// the cache TTL ran out), so a replica that saw it leave and return reads
/// the table for them again.
fn forget_returned(cache: &Mutex<PinTable>, prev: &Ring, next: &Ring) {
    let mut table = cache.lock().expect("the pin table's lock");
    for n in next.nodes() {
        if prev.index_of(&n.id).is_none() {
            let dropped = table.remove_node(&n.id);
            if dropped > 0 {
                log::info!(
                    "node {} is back: {dropped} cached pins to it dropped (the shared table says where those devices are now)",
                    n.id
                );
            }
        }
    }
}

/// The snapshot `view` leads to, or `None` when it is older than `cur`.
pub fn apply(
    cur: &Snapshot,
    view: View,
    kind: PolicyKind,
    ring: RingConfig,
) -> Result<Option<Snapshot>, Error> {
    if view.version < cur.view.version {
        log::debug!(
            "ignoring view {}: already at {}",
            view.version,
            cur.view.version
        );
        return Ok(None);
    }
    if same_membership(&cur.view, &view) {
        // Only loads moved (or nothing): keep the points and proxy ring,
        // take the new loads.
        let policy = cur.policy.with_loads(&view);
        let proxy = if cur.proxy.unresolved > 0 {
            Arc::new(ProxyRing::build(&view, ring)?)
        } else {
            cur.proxy.clone()
        };
        return Ok(Some(Snapshot {
            view,
            policy,
            proxy,
        }));
    }
    log_change(&cur.view, &view);
    Snapshot::build(view, kind, ring).map(Some)
}

type Membership<'a> = BTreeMap<&'a str, (&'a str, Option<&'a str>, u32, NodeState)>;

fn membership(view: &View) -> Membership<'_> {
    view.nodes
        .iter()
        .map(|n| {
            (
                n.id.as_str(),
                (n.addr.as_str(), n.proxy_addr.as_deref(), n.weight, n.state),
            )
        })
        .collect()
}

fn same_membership(a: &View, b: &View) -> bool {
    membership(a) == membership(b)
}

fn log_change(old: &View, new: &View) {
    let (before, after) = (membership(old), membership(new));
    let joined: Vec<&str> = after
        .keys()
        .filter(|id| !before.contains_key(*id))
        .copied()
        .collect();
    let left: Vec<&str> = before
        .keys()
        .filter(|id| !after.contains_key(*id))
        .copied()
        .collect();
    let drained: Vec<&str> = after
        .iter()
        .filter(|(id, (_, _, _, s))| {
            *s == NodeState::Draining && before.get(*id).is_some_and(|b| b.3 != NodeState::Draining)
        })
        .map(|(id, _)| *id)
        .collect();
    let changed: Vec<&str> = after
        .iter()
        .filter(|(id, m)| before.get(*id).is_some_and(|b| b != *m) && !drained.contains(*id))
        .map(|(id, _)| *id)
        .collect();
    log::info!(
        "view {} -> {}: {} nodes; joined {:?}, left {:?}, draining {:?}, changed {:?}",
        old.version,
        new.version,
        new.nodes.len(),
        joined,
        left,
        drained,
        changed
    );
}
