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
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use dsf_common::reactor::{
    Accept, ConnId, Context, Dispatch, ReactorStats, ReplyTo, Service, Sniffed,
};
use dsf_common::view::{NodeState, NodeView, View};
use dsf_common::wire::keys::CLUSTER_APP;
use dsf_common::wire::{self, Admission, Admitted, Key};
use dsf_common::Error;
// What `lb.resolve` takes and answers: the catalogue's types.
use dsf_proto::cluster::Applied;
use dsf_proto::lb::{
    PinsBody, ResolveBody, Resolved, Stats, UnpinBody, Unpinned, MAX_EXCLUDE, MAX_KEY, PINS_MAX,
};
use serde::Serialize;

use crate::policy::{Policy, PolicyKind};
use crate::proxy::Proxy;
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
    pub fn describe(&self) -> String {
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
        .to_string()
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
    reply: ReplyTo,
    id: u64,
    nonce: String,
    key: Key,
}

/// The reactor-side half of the balancer.
pub struct Balancer {
    admission: Arc<Admission>,
    current: Arc<ArcSwap<Snapshot>>,
    builds: Sender<Build>,
    proxy: Option<Proxy>,
    /// The reactor's counters (set once the reactor is bound), for `lb.stats`.
    reactor: Option<Arc<ReactorStats>>,
}

/// The builder thread and the snapshot it maintains.
pub struct ViewBuilder {
    pub current: Arc<ArcSwap<Snapshot>>,
    pub thread: JoinHandle<()>,
}

// === impl Balancer ===

impl Balancer {
    /// The service over `initial`, with a `view-builder` thread for updates.
    pub fn new(
        admission: Arc<Admission>,
        initial: Snapshot,
        kind: PolicyKind,
        ring: RingConfig,
    ) -> (Balancer, ViewBuilder) {
        let current = Arc::new(ArcSwap::from_pointee(initial));
        let (builds, rx) = bounded(BUILD_QUEUE);
        let thread = {
            let current = current.clone();
            std::thread::Builder::new()
                .name("view-builder".into())
                .spawn(move || build_views(rx, current, kind, ring))
                .expect("spawning the view builder")
        };
        let balancer = Balancer {
            admission,
            current: current.clone(),
            builds,
            proxy: None,
            reactor: None,
        };
        (balancer, ViewBuilder { current, thread })
    }

    /// The service for another reactor on the client port: the same
    /// admission and view, no proxy (its ports stay on the first reactor).
    pub fn sibling(&self) -> Balancer {
        Balancer {
            admission: self.admission.clone(),
            current: self.current.clone(),
            builds: self.builds.clone(),
            proxy: None,
            reactor: self.reactor.clone(),
        }
    }

    /// Serves proxy mode on the listeners from [`FIRST_PROXY_PORT`].
    pub fn with_proxy(mut self, proxy: Proxy) -> Balancer {
        self.proxy = Some(proxy);
        self
    }

    /// Where `lb.stats` reads the connection counters.
    pub fn set_reactor_stats(&mut self, stats: Arc<ReactorStats>) {
        self.reactor = Some(stats);
    }

    /// `lb.stats`'s reply.
    pub fn stats(&self) -> Stats {
        let reactor = self.reactor.as_deref();
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

    fn resolve(&self, req: &Admitted, peer: SocketAddr) -> Result<String, Error> {
        let body: ResolveBody = req.request.body()?;
        let key = match &body.key {
            Some(k) if k.len() > MAX_KEY => {
                return Err(Error::bad_request(format!(
                    "key: at most {MAX_KEY} bytes, got {}",
                    k.len()
                )))
            }
            Some(k) => k.clone(),
            // No key: the peer's IP address is the key (sticky per client host).
            None => peer.ip().to_string(),
        };
        if body.exclude.len() > MAX_EXCLUDE {
            return Err(Error::bad_request(format!(
                "exclude: at most {MAX_EXCLUDE} ids, got {}",
                body.exclude.len()
            )));
        }
        let snap = self.current.load();
        let node = snap
            .policy
            .pick(key.as_bytes(), &body.exclude)
            .map_err(crate::ring_error)?;
        let reply = Resolved {
            node: node.id.clone(),
            addr: node.addr.clone(),
            view: snap.view.version,
        };
        Ok(serde_json::to_string(&reply).expect("strings and numbers serialise"))
    }

    fn set_view(&self, admitted: Admitted, cx: &mut Context<'_>) -> Result<(), Error> {
        if admitted.request.app != CLUSTER_APP {
            return Err(Error::Forbidden(format!(
                "lb.set_view needs the cluster secret (app \"cluster\"), not app {:?}",
                admitted.request.app
            )));
        }
        let view: View = admitted.request.body()?;
        check_view(&view)?;
        let reply = cx.defer();
        let build = Build {
            view,
            stats: self.stats(),
            reply,
            id: admitted.request.id,
            nonce: admitted.request.nonce,
            key: admitted.key,
        };
        match self.builds.try_send(build) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                cx.cancel(b.reply);
                Err(Error::Overloaded(
                    "views are arriving faster than this balancer builds rings; the next push will catch up".into(),
                ))
            }
        }
    }
}

impl Service for Balancer {
    fn on_accept(&mut self, cx: &mut Context<'_>) -> Accept {
        let Some(proxy) = self.proxy.as_mut() else {
            return Accept::Framed;
        };
        match proxy.protocol(cx.listener()) {
            Some(protocol) => {
                let snap = self.current.load_full();
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
                let snap = self.current.load_full();
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
        let snap = self.current.load_full();
        proxy.failed(backend, &snap, cx)
    }

    fn on_frame(&mut self, payload: &[u8], cx: &mut Context<'_>) -> Dispatch {
        let admitted = match self.admission.admit(payload) {
            Ok(a) => a,
            Err(refused) => {
                cx.refuse(&refused);
                return Dispatch::Done;
            }
        };
        let port = cx.listener();
        let answer = match (admitted.request.kind.as_str(), port) {
            ("lb.resolve", Some(CLIENT_PORT)) => self.resolve(&admitted, cx.peer()),
            ("lb.view", _) => Ok(self.current.load().describe()),
            ("lb.stats", _) => Ok(serde_json::to_string(&self.stats()).expect("numbers serialise")),
            ("lb.pins" | "lb.unpin", Some(CLUSTER_PORT)) => {
                self.pins(admitted, cx);
                return Dispatch::Done;
            }
            ("lb.set_view", Some(CLUSTER_PORT)) => {
                let (id, nonce, key) = (
                    admitted.request.id,
                    admitted.request.nonce.clone(),
                    admitted.key.clone(),
                );
                // Answered by the builder once the view is in force.
                if let Err(e) = self.set_view(admitted, cx) {
                    wire::encode_error(Some(&key), id, &nonce, &e, cx.out());
                }
                return Dispatch::Done;
            }
            (other, _) => Err(Error::UnknownType(format!(
                "type {other:?} is not served on this port; the client port serves lb.resolve, lb.view and lb.stats, the cluster port lb.set_view, lb.pins, lb.unpin, lb.view and lb.stats"
            ))),
        };
        match answer {
            Ok(body) => admitted.ok(&body, cx.out()),
            // A run of these closes the connection, as refused frames do.
            Err(e) if e.code() == dsf_common::ErrorCode::UnknownType => cx.reject(&admitted, &e),
            Err(e) => admitted.error(&e, cx.out()),
        }
        Dispatch::Done
    }

    fn on_close(&mut self, conn: ConnId) {
        if let Some(p) = self.proxy.as_mut() {
            p.closed(conn);
        }
    }
}

// === impl Balancer (pins) ===

impl Balancer {
    /// `lb.pins` and `lb.unpin`, under the cluster secret: from memory at
    /// once, or from the shared table on its thread.
    fn pins(&mut self, admitted: Admitted, cx: &mut Context<'_>) {
        if admitted.request.app != CLUSTER_APP {
            let e = Error::Forbidden(format!(
                "{} needs the cluster secret (app \"cluster\"), not app {:?}",
                admitted.request.kind, admitted.request.app
            ));
            return admitted.error(&e, cx.out());
        }
        let Some(proxy) = self.proxy.as_ref() else {
            let e = Error::NotFound(
                "this balancer has no proxy listener, so no pins (start it with --proxy-listen ADDR --proxy-protocol mqtt|tcp)".into(),
            );
            return admitted.error(&e, cx.out());
        };
        if admitted.request.kind == "lb.pins" {
            let list: PinsBody = match admitted.request.body() {
                Ok(b) => b,
                Err(e) => return admitted.error(&e, cx.out()),
            };
            let limit = list.limit.unwrap_or(100);
            if limit == 0 || limit > PINS_MAX {
                let e = Error::bad_request(format!("limit: 1 to {PINS_MAX}, got {limit}"));
                return admitted.error(&e, cx.out());
            }
            if let Some(Err(e)) = list.after.as_deref().map(crate::proxy::parse_cursor) {
                return admitted.error(&Error::bad_request(e), cx.out());
            }
            match proxy.store() {
                None => {
                    let page = proxy
                        .list(list.after.as_deref(), limit as usize, list.node.as_deref())
                        .map_err(Error::bad_request);
                    match page {
                        Ok(page) => admitted.ok(
                            &serde_json::to_string(&page).expect("pins serialise"),
                            cx.out(),
                        ),
                        Err(e) => admitted.error(&e, cx.out()),
                    }
                }
                Some(store) => {
                    let answer = deferred(admitted, cx);
                    store.list(
                        list.after,
                        limit as usize,
                        list.node,
                        Box::new(move |r| {
                            answer(r.map(|p| serde_json::to_string(&p).expect("pins serialise")))
                        }),
                    );
                }
            }
            return;
        }
        let unpin: UnpinBody = match admitted.request.body() {
            Ok(b) => b,
            Err(e) => return admitted.error(&e, cx.out()),
        };
        if unpin.key.is_none() && unpin.node.is_none() {
            let e =
                Error::bad_request("name a key or a node to unpin: {\"key\": …} or {\"node\": …}");
            return admitted.error(&e, cx.out());
        }
        match proxy.store() {
            None => {
                let dropped = proxy.unpin(unpin.key.as_deref(), unpin.node.as_deref());
                log::info!(
                    "dropped {dropped} pins (key {:?}, node {:?})",
                    unpin.key,
                    unpin.node
                );
                let body =
                    serde_json::to_string(&Unpinned { dropped }).expect("a number serialises");
                admitted.ok(&body, cx.out());
            }
            Some(store) => {
                let answer = deferred(admitted, cx);
                let (key, node) = (unpin.key.clone(), unpin.node.clone());
                store.unpin(
                    unpin.key,
                    unpin.node,
                    Box::new(move |r| {
                        if let Ok(n) = &r {
                            log::info!("dropped {n} pins (key {key:?}, node {node:?})");
                        }
                        answer(r.map(|dropped| {
                            serde_json::to_string(&Unpinned { dropped })
                                .expect("a number serialises")
                        }))
                    }),
                );
            }
        }
    }
}

/// An answer to `admitted` from another thread.
fn deferred(
    admitted: Admitted,
    cx: &mut Context<'_>,
) -> impl FnOnce(Result<String, String>) + Send {
    let reply = cx.defer();
    let (id, nonce, key) = (admitted.request.id, admitted.request.nonce, admitted.key);
    move |r: Result<String, String>| {
        let mut out = Vec::new();
        match r {
            Ok(body) => wire::encode_ok(Some(&key), id, &nonce, &body, &mut out),
            Err(why) => {
                wire::encode_error(Some(&key), id, &nonce, &Error::Unavailable(why), &mut out)
            }
        }
        reply.send(out);
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
/// only when membership (ids, addresses, weights, states) changed.
fn build_views(
    rx: Receiver<Build>,
    current: Arc<ArcSwap<Snapshot>>,
    kind: PolicyKind,
    ring: RingConfig,
) {
    for mut b in rx.iter() {
        let cur = current.load_full();
        let view = std::mem::take(&mut b.view);
        let result = apply(&cur, view, kind, ring);
        let mut out = Vec::new();
        match result {
            Ok(Some(next)) => {
                let v = next.view.version;
                current.store(Arc::new(next));
                reply_applied(&b, v, &mut out);
            }
            Ok(None) => reply_applied(&b, cur.view.version, &mut out),
            Err(e) => {
                log::warn!("refused a view: {e}");
                wire::encode_error(Some(&b.key), b.id, &b.nonce, &e, &mut out);
            }
        }
        b.reply.send(out);
    }
}

fn reply_applied(b: &Build, version: u64, out: &mut Vec<u8>) {
    let applied = Applied {
        applied: version,
        stats: Some(b.stats.clone()),
    };
    let body = serde_json::to_string(&applied).expect("numbers serialise");
    wire::encode_ok(Some(&b.key), b.id, &b.nonce, &body, out);
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
