//! Proxy mode: connections spliced to a backend of the view, for clients
//! that cannot speak dsf (`--proxy-listen ADDR --proxy-protocol mqtt|tcp`).
//!
//! - `mqtt`: the first packet is read (within `--proxy-first-packet-timeout`
//!   and `--proxy-max-connect`) and parsed as a CONNECT ([`mqtt`]); the key
//!   it yields (`--proxy-key`) picks the node, the CONNECT goes to the node
//!   byte for byte, and the connection becomes a pipe whose idle timeout is
//!   1.5 × the device's keep-alive. Anything else gets the protocol's
//!   answer where it has one (a CONNACK with the right code) and a close.
//! - `tcp`: the client's IP address is the key; a pipe at once.
//!
//! Either way the key's stored route ([`pins`]) is followed while its node
//! is in the view; a new key is pinned to the ring's owner. A backend that
//! refuses or does not answer is failed over, clockwise on the ring, and
//! the key is pinned to the node that took it. With `--pins-db` the pins
//! live in MySQL ([`store`]), shared by every balancer replica; lookups
//! that miss the local cache are made off the reactor thread.
//!
//! With `--proxy-send-proxy-v2` each backend first gets a PROXY protocol v2
//! header naming the device's address and the listener it came in on.

pub mod mqtt;
pub mod pins;
pub mod store;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsf_common::reactor::{Accept, ConnId, Context, ReactorStats, Sniffed};
use dsf_proto::lb::ProxyStats as ProxyCounts;

use crate::service::Snapshot;
use mqtt::{Level, Parsed, Reason};
use pins::{decide, fail_over, Decision, KeyHash, Lookup, PinStats, PinTable};

pub use crate::service::PinAdmin;

/// Default time a device has to send its whole CONNECT.
pub const DEFAULT_FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Default idle timeout of a `tcp` pipe, and of an MQTT device that turned
/// keep-alive off (0).
pub const DEFAULT_PROXY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a pin read from `--pins-db` is trusted before it is read again.
pub const DEFAULT_PINS_CACHE: Duration = Duration::from_secs(5);

/// What a proxy listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Mqtt,
    Tcp,
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mqtt" => Ok(Protocol::Mqtt),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(format!(
                "{other:?} is not a proxy protocol; use mqtt (routed by the CONNECT packet) or tcp (routed by the client's address)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Mqtt => "mqtt",
            Protocol::Tcp => "tcp",
        })
    }
}

/// What an MQTT device is routed by (`--proxy-key`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyBy {
    /// The client id; an empty one (allowed with clean start) routes by
    /// the peer's IP address.
    #[default]
    ClientId,
    /// The username; a device without one routes by its client id.
    Username,
    /// Username, password and client id together.
    Triple,
    /// The peer's IP address.
    PeerIp,
}

impl FromStr for KeyBy {
    type Err = String;

    fn from_str(s: &str) -> Result<KeyBy, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "client-id" => Ok(KeyBy::ClientId),
            "username" => Ok(KeyBy::Username),
            "triple" => Ok(KeyBy::Triple),
            "peer-ip" => Ok(KeyBy::PeerIp),
            other => Err(format!(
                "{other:?} is not a proxy key; use client-id, username, triple or peer-ip"
            )),
        }
    }
}

impl fmt::Display for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyBy::ClientId => "client-id",
            KeyBy::Username => "username",
            KeyBy::Triple => "triple",
            KeyBy::PeerIp => "peer-ip",
        })
    }
}

/// The routing key of a CONNECT from `peer`.
pub fn routing_key(c: &mqtt::Connect<'_>, by: KeyBy, peer: SocketAddr) -> Vec<u8> {
    let ip = || peer.ip().to_string().into_bytes();
    let id = || {
        if c.client_id.is_empty() {
            ip()
        } else {
            c.client_id.as_bytes().to_vec()
        }
    };
    match by {
        KeyBy::ClientId => id(),
        KeyBy::Username => match c.username {
            Some(u) if !u.is_empty() => u.as_bytes().to_vec(),
            _ => id(),
        },
        KeyBy::Triple => {
            let mut k = c.username.unwrap_or("").as_bytes().to_vec();
            k.push(0);
            k.extend_from_slice(c.password.unwrap_or(b""));
            k.push(0);
            k.extend_from_slice(&id());
            k
        }
        KeyBy::PeerIp => ip(),
    }
}

/// Proxy mode's settings.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Each proxy listener and what it speaks.
    pub listeners: Vec<(SocketAddr, Protocol)>,
    pub key: KeyBy,
    pub first_packet_timeout: Duration,
    /// Largest CONNECT remaining length accepted.
    pub max_connect: usize,
    pub idle_timeout: Duration,
    pub send_proxy_v2: bool,
    pub pin_ttl: Duration,
    pub max_pins: usize,
    /// `--pins-db`: the shared pin table.
    pub pins_db: Option<dsf_sql::DbConfig>,
    pub pins_cache: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            listeners: Vec::new(),
            key: KeyBy::default(),
            first_packet_timeout: DEFAULT_FIRST_PACKET_TIMEOUT,
            max_connect: mqtt::DEFAULT_MAX_CONNECT,
            idle_timeout: DEFAULT_PROXY_IDLE_TIMEOUT,
            send_proxy_v2: false,
            pin_ttl: pins::DEFAULT_PIN_TTL,
            max_pins: pins::DEFAULT_MAX_PINS,
            pins_db: None,
            pins_cache: DEFAULT_PINS_CACHE,
        }
    }
}

/// Proxy mode's counters (the reactor counts the pipes and bytes).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused: [AtomicU64; 6],
    pub incomplete: AtomicU64,
    pub unavailable: AtomicU64,
    pub backend_failures: AtomicU64,
    pub pins: PinStats,
}

impl Counters {
    fn refused(&self, r: Reason) {
        let i = Reason::ALL.iter().position(|x| *x == r).expect("listed");
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as `lb.stats` reports them.
    pub fn report(&self, reactor: &ReactorStats) -> ProxyCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyCounts {
            accepted: get(&self.accepted),
            piped: get(&reactor.pipes),
            bytes: get(&reactor.pipe_bytes),
            refused: Reason::ALL
                .iter()
                .zip(&self.refused)
                .map(|(r, n)| (r.as_str().to_string(), get(n)))
                .collect(),
            incomplete: get(&self.incomplete),
            unavailable: get(&self.unavailable),
            backend_failures: get(&self.backend_failures),
            pins: self.pins.counts(),
        }
    }
}

/// What the proxy knows of one client connection until it closes.
struct Route {
    protocol: Protocol,
    /// The MQTT version, once the CONNECT is read (for a CONNACK on failure).
    level: Option<Level>,
    /// The routing key, hashed; its first 8 bytes are its ring position.
    hash: KeyHash,
    /// What operators are shown of the key.
    shown: String,
    pos: u64,
    /// Nodes whose connect failed for this client.
    failed: Vec<String>,
    /// Whether a backend was chosen (else a close counts as incomplete).
    decided: bool,
}

impl Route {
    fn new(protocol: Protocol) -> Route {
        Route {
            protocol,
            level: None,
            hash: [0; 16],
            shown: String::new(),
            pos: 0,
            failed: Vec::new(),
            decided: false,
        }
    }

    fn keyed(&mut self, key: &[u8], shown: String) {
        self.hash = pins::key_hash(key);
        self.pos = pins::position_of(&self.hash);
        self.shown = shown;
        self.decided = true;
    }
}

/// Where a key goes now.
enum Placement {
    To(SocketAddr),
    /// Asked of the shared table; the answer comes through the outbox.
    Asked,
    /// No node takes keys.
    Nowhere,
}

/// Connections kept free for the client and cluster ports when proxied
/// connections (two each: the client's and the backend's) fill the rest.
pub const RESERVED_CONNS: usize = 64;

/// Proxy mode, on the reactor thread.
pub struct Proxy {
    settings: ProxySettings,
    /// Listener index of the first proxy listener.
    first: usize,
    /// Most proxied clients at once: (max_conns - RESERVED_CONNS) / 2.
    max_clients: usize,
    pins: Arc<Mutex<PinTable>>,
    store: Option<Arc<store::Store>>,
    routes: HashMap<ConnId, Route>,
    next_sweep: Instant,
    pub counters: Arc<Counters>,
}

impl Proxy {
    /// Proxy mode over listeners numbered from `first`, in a reactor of
    /// `max_conns` connections; opens the shared pin table if one is given.
    pub fn new(settings: ProxySettings, first: usize, max_conns: usize) -> Result<Proxy, String> {
        let counters = Arc::new(Counters::default());
        let cache = settings.pins_db.as_ref().map(|_| settings.pins_cache);
        let pins = Arc::new(Mutex::new(PinTable::new(
            settings.pin_ttl,
            settings.max_pins,
            cache,
        )));
        let store = match &settings.pins_db {
            Some(db) => Some(Arc::new(store::Store::open(
                db,
                &settings,
                pins.clone(),
                counters.clone(),
            )?)),
            None => None,
        };
        Ok(Proxy {
            settings,
            first,
            max_clients: (max_conns.saturating_sub(RESERVED_CONNS) / 2).max(1),
            pins,
            store,
            routes: HashMap::new(),
            next_sweep: Instant::now() + pins::SWEEP_EVERY,
            counters,
        })
    }

    /// Whether listener `index` is a proxy listener, and what it speaks.
    pub fn protocol(&self, index: Option<usize>) -> Option<Protocol> {
        let i = index?.checked_sub(self.first)?;
        self.settings.listeners.get(i).map(|l| l.1)
    }

    /// A connection accepted on a proxy listener.
    pub fn accept(
        &mut self,
        protocol: Protocol,
        snap: &Arc<Snapshot>,
        cx: &mut Context<'_>,
    ) -> Accept {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if now >= self.next_sweep {
            self.housekeeping(now);
        }
        if self.routes.len() >= self.max_clients {
            // The rest of --max-conns belongs to the client and cluster
            // ports (the collector's views must get through).
            self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "{:?} from {}: {} proxied clients, the most --max-conns leaves room for; closed",
                cx.conn(),
                cx.peer(),
                self.max_clients
            );
            return Accept::Close;
        }
        if self.settings.send_proxy_v2 {
            if let Some(local) = cx.local_addr() {
                cx.set_preamble(proxy_v2_header(cx.peer(), local));
            }
        }
        let mut route = Route::new(protocol);
        match protocol {
            Protocol::Mqtt => {
                self.routes.insert(cx.conn(), route);
                Accept::Sniff {
                    // The fixed header is at most 5 bytes.
                    max: self.settings.max_connect + 5,
                    deadline: self.settings.first_packet_timeout,
                }
            }
            Protocol::Tcp => {
                cx.set_idle_timeout(self.settings.idle_timeout);
                let ip = cx.peer().ip().to_string();
                route.keyed(ip.as_bytes(), ip.clone());
                let placed = self.place(&route, snap, cx);
                self.routes.insert(cx.conn(), route);
                match placed {
                    Placement::To(addr) => Accept::Pipe(addr),
                    // A tcp client waits on the shared table like an MQTT
                    // device: a sniff that reads nothing and is decided
                    // from the store's thread.
                    Placement::Asked => Accept::Sniff {
                        max: 1,
                        deadline: self.settings.first_packet_timeout,
                    },
                    Placement::Nowhere => {
                        self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                        Accept::Close
                    }
                }
            }
        }
    }

    /// The bytes an MQTT device has sent so far.
    pub fn bytes(&mut self, bytes: &[u8], snap: &Arc<Snapshot>, cx: &mut Context<'_>) -> Sniffed {
        let Some(mut route) = self.routes.remove(&cx.conn()) else {
            return Sniffed::Close;
        };
        if route.protocol == Protocol::Tcp {
            // Waiting on the store: nothing to read yet.
            self.routes.insert(cx.conn(), route);
            return Sniffed::Wait;
        }
        let connect = match mqtt::parse(bytes, self.settings.max_connect) {
            Parsed::Incomplete => {
                self.routes.insert(cx.conn(), route);
                return Sniffed::NeedMore;
            }
            Parsed::Refused(r) => {
                self.counters.refused(r.reason);
                log::info!("refused a first packet from {}: {r}", cx.peer());
                if let Some(ack) = r.connack() {
                    cx.out().extend_from_slice(&ack);
                }
                return Sniffed::Close;
            }
            Parsed::Connect(c) => c,
        };
        let idle = if connect.keep_alive == 0 {
            self.settings.idle_timeout
        } else {
            // 1.5 × keep-alive, as MQTT's own servers time a device out.
            Duration::from_millis(u64::from(connect.keep_alive) * 1500)
        };
        cx.set_idle_timeout(idle);
        route.level = Some(connect.level);
        let key = routing_key(&connect, self.settings.key, cx.peer());
        route.keyed(&key, shown_key(&connect, self.settings.key, &key));
        log::debug!(
            "{:?} from {}: CONNECT {:?} level {}, keep-alive {}s",
            cx.conn(),
            cx.peer(),
            pins::shown(connect.client_id),
            connect.level.byte(),
            connect.keep_alive
        );
        let placed = self.place(&route, snap, cx);
        let level = route.level;
        self.routes.insert(cx.conn(), route);
        match placed {
            Placement::To(addr) => Sniffed::Pipe(addr),
            Placement::Asked => Sniffed::Wait,
            Placement::Nowhere => {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                cx.out().extend_from_slice(&unavailable_connack(level));
                Sniffed::Close
            }
        }
    }

    /// A backend refused or did not answer: fail over clockwise, and pin
    /// the key to the node tried next.
    pub fn failed(
        &mut self,
        backend: SocketAddr,
        snap: &Arc<Snapshot>,
        cx: &mut Context<'_>,
    ) -> Option<SocketAddr> {
        self.counters
            .backend_failures
            .fetch_add(1, Ordering::Relaxed);
        let route = self.routes.get_mut(&cx.conn())?;
        let pr = &snap.proxy;
        let ring = &pr.ring;
        // The node at that address (the pin may name it, or the owner).
        if let Some(i) = pr.targets.iter().position(|t| *t == backend) {
            let id = ring.node(i).id.clone();
            if !route.failed.contains(&id) {
                route.failed.push(id);
            }
        }
        let Some(next) = fail_over(ring, route.pos, &route.failed) else {
            log::warn!(
                "{:?} from {}: no node took the connection (tried {:?})",
                cx.conn(),
                cx.peer(),
                route.failed
            );
            self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            if route.protocol == Protocol::Mqtt {
                cx.out()
                    .extend_from_slice(&unavailable_connack(route.level));
            }
            return None;
        };
        let (node, addr) = (&ring.node(next).id, pr.targets[next]);
        let stats = &self.counters.pins;
        stats.moved.fetch_add(1, Ordering::Relaxed);
        self.pins.lock().expect("the pin table's lock").set(
            &route.hash,
            &route.shown,
            node,
            Instant::now(),
            stats,
        );
        if let Some(store) = &self.store {
            store.repin(route.hash, route.failed.clone(), node.clone());
        }
        log::info!(
            "{:?} from {}: {backend} failed; re-pinned to {node} ({addr})",
            cx.conn(),
            cx.peer()
        );
        Some(addr)
    }

    /// A connection closed: a device that was routed has just used its
    /// pin, so a device connected for longer than the TTL keeps it.
    pub fn closed(&mut self, conn: ConnId) {
        let Some(r) = self.routes.remove(&conn) else {
            return;
        };
        if !r.decided {
            self.counters.incomplete.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let stale = self
            .pins
            .lock()
            .expect("the pin table's lock")
            .touch(&r.hash, Instant::now());
        if stale {
            if let Some(store) = &self.store {
                store.touch(r.hash);
            }
        }
    }

    /// Every [`pins::SWEEP_EVERY`]: the keys of connected devices are marked
    /// used, then pins unused for a TTL are dropped.
    fn housekeeping(&mut self, now: Instant) {
        self.next_sweep = now + pins::SWEEP_EVERY;
        let mut table = self.pins.lock().expect("the pin table's lock");
        for r in self.routes.values().filter(|r| r.decided) {
            if table.touch(&r.hash, now) {
                if let Some(store) = &self.store {
                    store.touch(r.hash);
                }
            }
        }
        table.sweep(now, &self.counters.pins);
    }

    /// Where `route`'s key goes: its pin while the pinned node is in the
    /// view, else the ring's owner, pinned now.
    fn place(&mut self, route: &Route, snap: &Arc<Snapshot>, cx: &mut Context<'_>) -> Placement {
        let ring = &snap.proxy.ring;
        let now = Instant::now();
        let mut table = self.pins.lock().expect("the pin table's lock");
        let pinned = match table.get(&route.hash, now) {
            Lookup::Hit { node, stale_use } => {
                if let Some(i) = ring.index_of(&node) {
                    if stale_use {
                        if let Some(store) = &self.store {
                            store.touch(route.hash);
                        }
                    }
                    drop(table);
                    return Placement::To(snap.proxy.targets[i]);
                }
                Some(node)
            }
            Lookup::Miss => None,
        };
        if let Some(store) = &self.store {
            drop(table);
            let asked = store.route(store::Ask {
                outbox: cx.outbox(),
                hash: route.hash,
                shown: route.shown.clone(),
                pos: route.pos,
                snap: snap.clone(),
                level: route.level,
                until: now + self.settings.first_packet_timeout,
            });
            return if asked {
                Placement::Asked
            } else {
                // The store's queue is full: what the cache last said, or
                // the ring, unpinned.
                self.counters.pins.db_errors.fetch_add(1, Ordering::Relaxed);
                let cached = self
                    .pins
                    .lock()
                    .expect("the pin table's lock")
                    .peek(&route.hash)
                    .map(str::to_string);
                match decide(ring, cached.as_deref(), route.pos) {
                    Some(d) => Placement::To(snap.proxy.targets[d.node()]),
                    None => Placement::Nowhere,
                }
            };
        }
        let Some(d) = decide(ring, pinned.as_deref(), route.pos) else {
            return Placement::Nowhere;
        };
        self.counters.pins.count(d);
        if !matches!(d, Decision::Kept(_)) {
            table.set(
                &route.hash,
                &route.shown,
                &ring.node(d.node()).id,
                now,
                &self.counters.pins,
            );
        }
        drop(table);
        Placement::To(snap.proxy.targets[d.node()])
    }

    /// What the `lb.pins` and `lb.unpin` routes share with it.
    pub fn admin(&self) -> PinAdmin {
        PinAdmin {
            pins: self.pins.clone(),
            store: self.store.clone(),
            counters: self.counters.clone(),
        }
    }
}

// === impl PinAdmin ===

impl PinAdmin {
    /// A page of pins (memory only; the store answers for `--pins-db`).
    /// `after` is the hex key hash a page ended on.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        node: Option<&str>,
    ) -> Result<dsf_proto::lb::PinPage, String> {
        let after = match after {
            None => None,
            Some(a) => Some(parse_cursor(a)?),
        };
        let table = self.pins.lock().expect("the pin table's lock");
        let (pins, next) = table.list(after, limit, node);
        Ok(dsf_proto::lb::PinPage {
            pins,
            next: next.map(hex::encode),
        })
    }

    /// Drops pins by key or node (memory; the store also drops its rows).
    pub fn unpin(&self, key: Option<&str>, node: Option<&str>) -> u64 {
        let mut table = self.pins.lock().expect("the pin table's lock");
        let mut n = 0;
        if let Some(k) = key {
            n += u64::from(table.remove(&pins::key_hash(k.as_bytes())));
        }
        if let Some(id) = node {
            n += table.remove_node(id) as u64;
        }
        self.counters.pins.dropped.fetch_add(n, Ordering::Relaxed);
        n
    }
}

/// A page cursor: the 32 hex digits of a key hash.
pub fn parse_cursor(a: &str) -> Result<KeyHash, String> {
    let mut h = [0u8; 16];
    hex::decode_to_slice(a, &mut h).map_err(|_| {
        format!("after: {a:?} is not a cursor (the 32 hex digits a page's next gave)")
    })?;
    Ok(h)
}

/// What operators see of a key: for `triple`, the username and client id
/// without the password.
fn shown_key(c: &mqtt::Connect<'_>, by: KeyBy, key: &[u8]) -> String {
    match by {
        KeyBy::Triple => pins::shown(&format!("{}/{}", c.username.unwrap_or(""), c.client_id)),
        _ => pins::shown(&String::from_utf8_lossy(key)),
    }
}

/// The CONNACK for "no broker can take you now": 3.x return code 3
/// (server unavailable), 5.0 reason 0x88.
fn unavailable_connack(level: Option<Level>) -> Vec<u8> {
    match level {
        Some(Level::V5) => vec![0x20, 0x03, 0x00, 0x88, 0x00],
        _ => vec![0x20, 0x02, 0x00, 0x03],
    }
}

/// A PROXY protocol v2 header: a proxied TCP connection from `client` to
/// `local` (the listener it came in on). Mixed families are given as IPv6.
pub fn proxy_v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let (src, dst) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        _ => (as_v6(client), as_v6(local)),
    };
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
        .build()
        .expect("a header of two addresses fits")
}

fn as_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect<'a>(
        id: &'a str,
        user: Option<&'a str>,
        pass: Option<&'a [u8]>,
    ) -> mqtt::Connect<'a> {
        mqtt::Connect {
            level: Level::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: id,
            username: user,
            password: pass,
            will: false,
            len: 0,
        }
    }

    #[test]
    fn keys_follow_the_proxy_key_and_fall_back_to_the_peer() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let c = connect("dev-1", Some("alice"), Some(b"pw"));
        assert_eq!(routing_key(&c, KeyBy::ClientId, peer), b"dev-1");
        assert_eq!(routing_key(&c, KeyBy::Username, peer), b"alice");
        assert_eq!(routing_key(&c, KeyBy::Triple, peer), b"alice\0pw\0dev-1");
        assert_eq!(routing_key(&c, KeyBy::PeerIp, peer), b"10.1.2.3");
        let anonymous = connect("", None, None);
        assert_eq!(routing_key(&anonymous, KeyBy::ClientId, peer), b"10.1.2.3");
        assert_eq!(
            routing_key(&connect("d", None, None), KeyBy::Username, peer),
            b"d"
        );
    }

    #[test]
    fn the_proxy_v2_header_is_the_specs_layout() {
        let h = proxy_v2_header(
            "192.0.2.1:51000".parse().unwrap(),
            "127.0.0.1:1883".parse().unwrap(),
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        // v2 PROXY, TCP over IPv4, 12 address bytes.
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 0, 2, 1, 127, 0, 0, 1]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&1883u16.to_be_bytes());
        assert_eq!(h, want);
        let mixed = proxy_v2_header("192.0.2.1:1".parse().unwrap(), "[::1]:2".parse().unwrap());
        assert_eq!(&mixed[12..16], &[0x21, 0x21, 0x00, 36]);
    }

    #[test]
    fn protocols_and_keys_parse_with_a_useful_error() {
        assert_eq!("MQTT".parse::<Protocol>(), Ok(Protocol::Mqtt));
        assert!("http".parse::<Protocol>().unwrap_err().contains("mqtt"));
        assert_eq!("peer-ip".parse::<KeyBy>(), Ok(KeyBy::PeerIp));
        assert!("ip".parse::<KeyBy>().unwrap_err().contains("client-id"));
    }
}
