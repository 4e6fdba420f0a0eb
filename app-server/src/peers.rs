//! Peer links: this app server's outbound connections to the others, over
//! the reactor's [`Handle::connect`], signed with the cluster secret. They
//! carry `peer.notify {"user","seq"}`: "a message is waiting for this user,
//! whose subscription you hold", with the message itself, which that
//! server pushes without reading it back when it is the next one due.
//!
//! The peers come from the view (the collector's heartbeat reply). A link
//! is opened on the first notify to a node and kept; one that closed or
//! failed to connect is opened again on the next. A notify is fire and
//! forget: if it cannot go (the node is not in the view, its link is down,
//! its output budget is full), the recipient's server still finds the
//! message by its slow poll of its subscribers' inboxes.

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

/// How long a link may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the peer links have done, for logs and tests.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// `peer.notify` frames handed to a link.
    pub sent: AtomicU64,
    /// Notifies that could not go (no such node in the view, link down,
    /// budget full); the recipient's poll delivers those messages.
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
        log::debug!(
            "peers from view {version}: {:?}",
            map.keys().collect::<Vec<_>>()
        );
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

    /// Tells node `node` that `user` has message `seq` waiting, and what
    /// it is (`event`, its `message` event's body). Never blocks on the
    /// network; whether the frame was handed to a link.
    pub fn notify(&self, node: &str, user: u64, seq: u64, event: Option<&str>) -> bool {
        let sent = self.try_notify(node, user, seq, event);
        let c = if sent {
            &self.counters.sent
        } else {
            &self.counters.dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
        sent
    }

    fn try_notify(&self, node: &str, user: u64, seq: u64, event: Option<&str>) -> bool {
        let Some(handle) = self.handle.get() else {
            return false;
        };
        let Some(addr) = self.addr_of(node) else {
            log::debug!("peer.notify: node {node} is not in the view; its poll will find user {user}'s message");
            return false;
        };
        let body = serde_json::to_string(&dsf_proto::msg::NotifyBody {
            user,
            seq,
            message: event
                .and_then(|e| serde_json::value::RawValue::from_string(e.to_string()).ok()),
        })
        .expect("a notify serialises");
        let stamp = Stamp::fresh();
        let mut frame = Vec::with_capacity(256);
        encode_request_at(
            &self.key,
            &OutgoingRequest {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                kind: "peer.notify",
                app: PEER_APP,
                token: None,
                body: &body,
            },
            stamp.ts,
            &stamp.nonce,
            &mut frame,
        );
        // A link that closed, or to an address the node no longer has, is
        // opened again (once per notify). The address is resolved with no
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
                log::debug!(
                    "peer link to {node} is full; its poll will find user {user}'s message"
                );
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
            log::warn!("a peer refused peer.notify ({} so far): {why} (do all app servers have the same DSF_CLUSTER_SECRET?)", n + 1);
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
