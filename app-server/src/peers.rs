//! Peer links: this app server's outbound connections to the others, over
//! the reactor's [`Handle::connect`], signed with the peer secret (app
//! `peer`). Any service sends its own `peer.*` types over them
//! ([`Peers::send`], [`Peers::broadcast`]): messaging's `peer.notify` ("a
//! message is waiting for this user, whose subscription you hold"), the
//! framework's `peer.wake` (topics whose state changed).
//!
//! The peers come from the view (the collector's heartbeat reply). A link
//! is opened on the first frame to a node and kept; one that closed or
//! failed to connect is opened again on the next. A frame is fire and
//! forget: if it cannot go (the node is not in the view, its link is down,
//! its output budget is full), what it said is found some other way (the
//! recipient's slow poll of its subscribers' inboxes, a stream's interval).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use dsf_common::call::Stamp;
use dsf_common::reactor::{ConnId, Handle, Outbox, SendError};
use dsf_common::view::NodeView;
use dsf_common::wire::envelope::encode_request_at;
use dsf_common::wire::keys::PEER_APP;
use dsf_common::wire::{Key, OutgoingRequest, Reply};
use dsf_proto::Message;

/// How long a link may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the peer links have done, for logs and tests.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// `peer.*` frames handed to a link.
    pub sent: AtomicU64,
    /// Frames that could not go (no such node in the view, link down,
    /// budget full).
    pub dropped: AtomicU64,
    /// Replies from peers that were errors.
    pub refused: AtomicU64,
    /// Links opened.
    pub connects: AtomicU64,
}

struct Link {
    addr: String,
    outbox: Outbox,
}

/// The peer links of one app server.
pub struct Peers {
    key: Key,
    handle: OnceLock<Handle>,
    /// The certificates a link trusts, when the peers speak TLS.
    tls: OnceLock<std::sync::Arc<rustls::ClientConfig>>,
    /// Node id → address, from the latest view.
    view: Mutex<(u64, HashMap<String, String>)>,
    links: Mutex<HashMap<String, Link>>,
    next_id: AtomicU64,
    pub counters: PeerCounters,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.view.lock().map(|v| v.0).unwrap_or_default();
        f.debug_struct("Peers").field("view", &view).finish()
    }
}

// === impl Peers ===

impl Peers {
    /// Links signed with `peer_secret`; they open once
    /// [`Peers::set_handle`] gave them the reactor.
    pub fn new(peer_secret: &[u8]) -> Peers {
        Peers {
            key: Key::new(peer_secret),
            handle: OnceLock::new(),
            tls: OnceLock::new(),
            view: Mutex::new((0, HashMap::new())),
            links: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            counters: PeerCounters::default(),
        }
    }

    /// Opens the links over TLS, trusting `config` (set once, at start).
    pub fn set_tls(&self, config: std::sync::Arc<rustls::ClientConfig>) {
        let _ = self.tls.set(config);
    }

    /// The reactor that opens the links (set once, at start).
    pub fn set_handle(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    /// The view version the peers were last taken from.
    pub fn version(&self) -> u64 {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Takes the peers from view `version`.
    pub fn set_view(&self, version: u64, nodes: &[NodeView]) {
        let map: HashMap<String, String> = nodes
            .iter()
            .map(|n| (n.id.clone(), n.addr.clone()))
            .collect();
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if version < view.0 {
            return;
        }
        let changed = view.1.len() != map.len() || map.keys().any(|id| !view.1.contains_key(id));
        if changed {
            let mut ids: Vec<&String> = map.keys().collect();
            ids.sort();
            log::info!("peers from view {version}: {ids:?}");
        }
        *view = (version, map);
    }

    /// The address of node `id` in the view.
    pub fn addr_of(&self, id: &str) -> Option<String> {
        self.view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .get(id)
            .cloned()
    }

    /// Sends `body` of `M` (a `peer.*` type) to node `node`. Never
    /// blocks on the network; whether the frame was handed to a link.
    pub fn send<M: Message>(&self, node: &str, body: &M::Body) -> bool {
        let sent = match serde_json::to_string(body) {
            Ok(body) => self.try_send(node, M::TYPE.name, &body),
            Err(e) => {
                log::error!("{}: rendering its body: {e}", M::TYPE.name);
                false
            }
        };
        let c = if sent {
            &self.counters.sent
        } else {
            &self.counters.dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
        sent
    }

    /// Sends `body` of `M` to every node of the view but `me`; how many
    /// frames went.
    pub fn broadcast<M: Message>(&self, me: &str, body: &M::Body) -> usize {
        let others: Vec<String> = {
            let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            view.1.keys().filter(|id| *id != me).cloned().collect()
        };
        others
            .iter()
            .filter(|node| self.send::<M>(node, body))
            .count()
    }

    fn try_send(&self, node: &str, kind: &'static str, body: &str) -> bool {
        let Some(handle) = self.handle.get() else {
            return false;
        };
        let Some(addr) = self.addr_of(node) else {
            log::debug!("{kind}: node {node} is not in the view");
            return false;
        };
        let stamp = Stamp::fresh();
        let mut frame = Vec::with_capacity(64 + body.len());
        encode_request_at(
            &self.key,
            &OutgoingRequest {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                kind,
                app: PEER_APP,
                token: None,
                body,
            },
            stamp.ts,
            &stamp.nonce,
            &mut frame,
        );
        // A link that closed, or to an address the node no longer has, is
        // opened again (once per frame). The address is resolved with no
        // lock held: the reactor takes this lock when a connection closes.
        let outbox = {
            let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            links
                .get(node)
                .filter(|l| !l.outbox.is_closed() && l.addr == addr)
                .map(|l| l.outbox.clone())
        };
        let outbox = match outbox {
            Some(o) => o,
            None => match handle.connect_host_tls(&addr, CONNECT_TIMEOUT, self.tls.get()) {
                Ok(outbox) => {
                    self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    self.links.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        node.to_string(),
                        Link {
                            addr,
                            outbox: outbox.clone(),
                        },
                    );
                    outbox
                }
                Err(e) => {
                    log::warn!("peer link to {node} at {addr}: {e}");
                    return false;
                }
            },
        };
        match outbox.send(frame) {
            Ok(()) => true,
            Err(SendError::Full { .. }) => {
                log::debug!("peer link to {node} is full; {kind} dropped");
                false
            }
            Err(SendError::Closed) => false,
        }
    }

    /// A frame a peer sent back on a link: the reply to a notify. Nothing
    /// depends on it; errors are counted and logged (a peer with another
    /// cluster secret says `bad_signature` here).
    pub fn on_reply(&self, conn: ConnId, payload: &[u8]) {
        let Ok(reply) = Reply::parse(payload) else {
            log::warn!("peer link {conn:?}: a frame that is not a reply");
            return;
        };
        if reply.ok {
            return;
        }
        let n = self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if n == 0 || n.is_power_of_two() {
            let why = match reply.into_result() {
                Err(e) => format!("{}: {e}", e.code()),
                Ok(_) => "an error".into(),
            };
            log::warn!("a peer refused a peer.* frame ({} so far): {why} (do all app servers have the same DSF_PEER_SECRET?)", n + 1);
        }
    }

    /// Forgets the link on `conn` if it is one (it closed).
    pub fn on_close(&self, conn: ConnId) {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, l| l.outbox.conn() != conn);
    }
}
