//! [`Settings`]: everything an app server needs, resolved from flags,
//! environment and file by the command line ([`crate::config`]) or built by
//! tests; what every part of the server reads, and so what stands below
//! them all.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dsf_common::call::Signer;
use dsf_common::config::Secret;
use dsf_common::pipeline::Rate;
use dsf_common::reactor::ReactorConfig;
use dsf_common::wire::keys;
use dsf_common::wire::{AppKeys, Key};
use dsf_sql::password::Cost;
use dsf_sql::DbConfig;
use serde::{Deserialize, Serialize};

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
    /// The database (one URL, or a Galera cluster's list).
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
    /// Signs `peer.notify` and `peer.wake` to and from the other app servers.
    pub peer_secret: Secret,
    /// The certificates trusted when connecting out (the collector, other
    /// app servers) over TLS; plain without. The server side of TLS is in
    /// `reactor.tls`.
    pub tls_ca: Option<Arc<rustls::ClientConfig>>,
    /// The connection core's limits and the server side of TLS.
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
    /// notification was lost (the messaging service's `POLL` by default).
    pub msg_poll: Duration,
    /// How often the task reaper looks for expired leases and due retries
    /// ([`REAP_EVERY`]).
    pub reap_every: Duration,
    /// How often waiting claims look for ready tasks themselves, the
    /// fallback for a lost wake-up (`--claim-poll`, [`crate::tasks::CLAIM_POLL`]).
    pub claim_poll: Duration,
    /// Whether `user.register` makes accounts.
    pub registration: Registration,
    /// Logins and registrations per user name, and per peer address (the
    /// rate limits `auth-name` and `auth-addr`).
    pub auth_rate_name: Rate,
    /// See `auth_rate_name`.
    pub auth_rate_addr: Rate,
    /// Where `GET /metrics` is served; nowhere when `None`.
    pub metrics_listen: Option<SocketAddr>,
}

// === impl Settings ===

impl Settings {
    /// The rate this server sets for the rate limit named `name`.
    pub fn rate(&self, name: &str) -> Option<Rate> {
        match name {
            AUTH_NAME => Some(self.auth_rate_name),
            AUTH_ADDR => Some(self.auth_rate_addr),
            _ => None,
        }
    }
}

/// The rate limit of logins and registrations per user name
/// (`--auth-rate-name`).
pub const AUTH_NAME: &str = "auth-name";
/// ... per peer address (`--auth-rate-addr`).
pub const AUTH_ADDR: &str = "auth-addr";

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

/// How often the task reaper looks for expired leases and due retries.
pub const REAP_EVERY: Duration = Duration::from_millis(250);

/// Whether `user.register` makes accounts (`--registration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone with an app key may register a viewer.
    Open,
    /// Only an admin makes accounts (`user.create`).
    #[default]
    Closed,
}

impl FromStr for Registration {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Registration, String> {
        match s {
            "open" => Ok(Registration::Open),
            "closed" => Ok(Registration::Closed),
            _ => Err(format!("{s:?}: registration is open or closed")),
        }
    }
}
