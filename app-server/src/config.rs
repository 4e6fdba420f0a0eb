//! Settings of `app-server`: every field is a flag (`--node-id`), an
//! environment variable (`DSF_NODE_ID`) and a key of the `--config` file
//! (`node_id`); flags win over the environment, the environment over the
//! file. [`AppConfig::settings`] resolves them, reading the secrets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dsf_common::config::{self, Config, ConfigError, HumanDuration, LimitArgs, SecretUrl, TlsArgs};
use dsf_common::reactor::{ReactorConfig, MAX_REACTORS};
use dsf_common::view::DEFAULT_WEIGHT;
use dsf_common::wire::keys::{self, AppKeys};
use dsf_sql::password::Cost;
use dsf_sql::DbConfig;
use serde::{Deserialize, Serialize};

use crate::accounts::{self, Registration};
use crate::error::Error;
use crate::settings::{HeartbeatKey, Settings};
use dsf_common::config::Secret;
use dsf_common::pipeline::Rate;

/// Default client port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// Default worker threads per core (workers mostly wait on MySQL).
pub const DEFAULT_WORKERS_PER_CORE: usize = 4;
/// Default requests waiting for a worker, per worker.
pub const DEFAULT_QUEUE_PER_WORKER: usize = 64;
/// Longest a token check may be cached: a logout elsewhere takes effect
/// everywhere within this.
pub const MAX_SESSION_CACHE: Duration = Duration::from_secs(2);
/// Default lifetime of a login session.
pub const DEFAULT_SESSION_TTL: Duration = dsf_sql::sessions::DEFAULT_TTL;
/// Default time between heartbeats.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// The variable the database password is read from, without
/// --db-password-file.
pub const DB_PASSWORD_ENV: &str = "DSF_DB_PASSWORD";
/// How long shutdown waits for in-flight requests.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// Settings of `app-server run` (see the module documentation).
#[derive(Debug, Default, Clone, clap::Args, Serialize, Deserialize)]
pub struct AppConfig {
    /// Client port [default: 127.0.0.1:7000].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Address clients are told to connect to [default: the listen address].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,

    /// Address a balancer's proxy mode splices devices to for this node,
    /// when it is not --advertise (an MQTT broker beside this server, say).
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_advertise: Option<String>,

    /// Stable node id on the ring [default: the advertised address].
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,

    /// Relative share of keys on the ring [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,

    /// The database, mysql://USER@HOST:PORT/DB (required); or a
    /// comma-separated list of a cluster's nodes (Galera): the first that
    /// answers is used, the next when it fails, and the first again once it
    /// is back. Its password comes from --db-password-file or
    /// DSF_DB_PASSWORD: flags show in `ps`.
    #[arg(long, value_name = "URL[,URL…]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<SecretUrl>,

    /// File (mode 0600) holding the database password; otherwise
    /// DSF_DB_PASSWORD is read.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_password_file: Option<PathBuf>,

    /// The collector's app-server port, HOST:PORT; with a standby collector
    /// (its --standby-for), both, comma-separated: each gets every
    /// heartbeat. Without it no heartbeats are sent and no balancer fed by
    /// a collector will list this node.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<Vec<String>>,

    /// Worker threads [default: 4 per core].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,

    /// Reactor threads accepting on --listen (SO_REUSEPORT), sharing the
    /// workers. One serves a 2-core machine best; more help only with cores
    /// to spare for them (see docs/BENCHMARKS.md) [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reactors: Option<usize>,

    /// Requests waiting for a worker before the reactor stops reading
    /// [default: 64 per worker].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,

    /// TOML table `app_id = "secret"` (mode 0600) of the keys clients sign with.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_keys: Option<PathBuf>,

    /// File (mode 0600) holding this node's own key, which signs its
    /// heartbeats (the collector's --node-keys lists it under this node's
    /// id); otherwise DSF_NODE_KEY is read.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_key_file: Option<PathBuf>,

    /// File (mode 0600) holding the peer secret the app servers share for
    /// peer.notify; otherwise DSF_PEER_SECRET is read.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_secret_file: Option<PathBuf>,

    /// File (mode 0600) holding the cluster secret, otherwise
    /// DSF_CLUSTER_SECRET is read: only where the collector has no node
    /// keys (it then signs heartbeats) or no peer secret is given (it then
    /// stands in for it). Without it this server holds nothing that signs
    /// lb.set_view.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secret_file: Option<PathBuf>,

    /// How long a token check is cached, at most 2s; 0s turns it off [default: 2s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_cache: Option<HumanDuration>,

    /// Whether user.register makes accounts: open (anyone with an app key
    /// registers a viewer) or closed (an admin makes them with user.create,
    /// `client user create`) [default: closed].
    #[arg(long, value_name = "open|closed")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,

    /// Logins and registrations per user name, on this node: N at once and
    /// N more each DURATION, or off [default: 10/1m].
    #[arg(long, value_name = "N/DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_rate_name: Option<Rate>,

    /// Logins and registrations per peer address, on this node
    /// [default: 60/1m].
    #[arg(long, value_name = "N/DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_rate_addr: Option<Rate>,

    /// Where to serve GET /metrics (Prometheus): requests, errors and
    /// latency by message type. Not served unless given.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,

    /// Lifetime of a login session [default: 12h].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_ttl: Option<HumanDuration>,

    /// How often a waiting `task.claim` looks for ready tasks itself
    /// [default: 25ms]. A submit wakes the claims parked on every node
    /// (over the links between app servers); this look is the fallback
    /// for a wake-up lost with a link.
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_poll: Option<HumanDuration>,

    /// The connection core's limits (`--max-frame`, `--max-conns`, ...).
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,

    /// TLS on the client port and the links out (`--tls-cert`, ...).
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsArgs,
}

// === impl AppConfig ===

impl AppConfig {
    /// `--listen`, or [`DEFAULT_LISTEN`].
    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"))
    }

    /// `--workers`, or 4 per core.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            cores * DEFAULT_WORKERS_PER_CORE
        })
    }

    /// `--queue`, or 64 per worker.
    pub fn queue(&self) -> usize {
        self.queue
            .unwrap_or_else(|| self.workers() * DEFAULT_QUEUE_PER_WORKER)
    }

    /// `--session-cache`, or [`MAX_SESSION_CACHE`].
    pub fn session_cache(&self) -> Duration {
        self.session_cache
            .map_or(MAX_SESSION_CACHE, HumanDuration::get)
    }

    /// The reactor's limits.
    pub fn reactor(&self) -> ReactorConfig {
        ReactorConfig {
            shutdown_grace: SHUTDOWN_DEADLINE,
            ..self.limits.reactor()
        }
    }

    /// The database settings, the pool sized for the workers.
    pub fn db_config(&self) -> Result<DbConfig, ConfigError> {
        let url = config::required(&self.db, "db")?;
        let password = config::db_password(
            url,
            self.db_password_file.as_deref(),
            "db-password-file",
            DB_PASSWORD_ENV,
        )?;
        Ok(DbConfig::new(url.expose())
            .password(password)
            .workers(self.workers()))
    }

    /// The heartbeats' key and the peer secret. The node key and the peer
    /// secret are preferred; the cluster secret stands in for either.
    fn secrets(&self) -> Result<(Option<HeartbeatKey>, Secret), Error> {
        let file = |f: &Option<PathBuf>, env| keys::secret_from(f.as_deref(), env);
        let node_key = file(&self.node_key_file, keys::NODE_KEY_ENV)?;
        let peer = file(&self.peer_secret_file, keys::PEER_SECRET_ENV)?;
        let cluster = file(&self.cluster_secret_file, keys::CLUSTER_SECRET_ENV)?;
        if cluster.is_some() && node_key.is_some() && peer.is_some() {
            log::warn!(
                "the cluster secret is given but unused: this node signs heartbeats with its node key and peer.notify \
                 with the peer secret; remove DSF_CLUSTER_SECRET / --cluster-secret-file from app servers, since it signs lb.set_view"
            );
        }
        let heartbeat_key = match (node_key, &cluster) {
            (Some(k), _) => Some(HeartbeatKey::Node(k)),
            (None, Some(c)) => Some(HeartbeatKey::Cluster(c.clone())),
            (None, None) if !self.collectors().is_empty() => return Err(Error::NoHeartbeatKey),
            // No heartbeats are sent: nothing signs any.
            (None, None) => None,
        };
        let peer_secret = match (peer, &cluster) {
            (Some(p), _) => p,
            (None, Some(c)) => c.clone(),
            (None, None) => return Err(Error::NoPeerSecret),
        };
        Ok((heartbeat_key, peer_secret))
    }

    /// `--collector`'s addresses, blanks dropped.
    pub fn collectors(&self) -> Vec<String> {
        self.collector
            .iter()
            .flatten()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// Everything resolved and the secrets read: what [`crate::server::start`]
    /// takes. Refuses to go on without app keys or a cluster secret.
    pub fn settings(&self) -> Result<Settings, Error> {
        self.validate()?;
        let db = self.db_config()?;
        let app_keys = match &self.app_keys {
            Some(path) => AppKeys::load(path)?,
            None => return Err(Error::NoAppKeys),
        };
        let (heartbeat_key, peer_secret) = self.secrets()?;
        let mut reactor = self.reactor();
        reactor.tls = vec![self.tls.server()?];
        Ok(Settings {
            listen: self.listen(),
            advertise: self.advertise.clone(),
            proxy_advertise: self.proxy_advertise.clone(),
            node_id: self.node_id.clone(),
            weight: self.weight.unwrap_or(DEFAULT_WEIGHT),
            db,
            collectors: self.collectors(),
            workers: self.workers(),
            reactors: self.reactors.unwrap_or(1),
            queue: self.queue(),
            app_keys,
            heartbeat_key,
            peer_secret,
            tls_ca: self.tls.client()?,
            reactor,
            session_cache: self.session_cache(),
            session_ttl: self
                .session_ttl
                .map_or(DEFAULT_SESSION_TTL, HumanDuration::get),
            heartbeat_every: DEFAULT_HEARTBEAT,
            password_cost: Cost::DEFAULT,
            msg_poll: crate::messaging::mailroom::POLL,
            reap_every: crate::settings::REAP_EVERY,
            claim_poll: self
                .claim_poll
                .map_or(crate::tasks::CLAIM_POLL, HumanDuration::get),
            registration: self.registration.unwrap_or_default(),
            auth_rate_name: self
                .auth_rate_name
                .unwrap_or_else(|| accounts::DEFAULT_PER_NAME.parse().expect("valid default")),
            auth_rate_addr: self
                .auth_rate_addr
                .unwrap_or_else(|| accounts::DEFAULT_PER_ADDR.parse().expect("valid default")),
            metrics_listen: self.metrics_listen,
        })
    }
}

impl Config for AppConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == Some(0) {
            return Err(ConfigError::invalid("workers", "must be at least 1"));
        }
        if !(1..=MAX_REACTORS).contains(&self.reactors.unwrap_or(1)) {
            return Err(ConfigError::invalid(
                "reactors",
                format!("must be 1 to {MAX_REACTORS} (one per core at most is useful)"),
            ));
        }
        if self.queue == Some(0) {
            return Err(ConfigError::invalid("queue", "must be at least 1"));
        }
        if self.session_cache() > MAX_SESSION_CACHE {
            return Err(ConfigError::invalid(
                "session_cache",
                "at most 2s (a logout must take effect everywhere within 2 s)",
            ));
        }
        if self
            .session_ttl
            .is_some_and(|d| d.get() < Duration::from_secs(1))
        {
            return Err(ConfigError::invalid("session_ttl", "must be at least 1s"));
        }
        if self
            .claim_poll
            .is_some_and(|d| d.get() < Duration::from_millis(1))
        {
            return Err(ConfigError::invalid("claim_poll", "must be at least 1ms"));
        }
        self.limits.validate()?;
        self.tls.validate()?;
        let collectors = self.collectors();
        let addrs = [
            ("advertise", self.advertise.as_ref()),
            ("proxy_advertise", self.proxy_advertise.as_ref()),
        ]
        .into_iter()
        .chain(collectors.iter().map(|c| ("collector", Some(c))));
        for (key, value) in addrs {
            if let Some(v) = value {
                let ok = v
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(ConfigError::invalid(key, format!("{v:?} is not HOST:PORT")));
                }
            }
        }
        if self
            .weight
            .is_some_and(|w| !(1..=dsf_common::view::MAX_WEIGHT).contains(&w))
        {
            return Err(ConfigError::invalid(
                "weight",
                format!(
                    "1 to {} (the collector refuses others)",
                    dsf_common::view::MAX_WEIGHT
                ),
            ));
        }
        if collectors.len() > 2 {
            return Err(ConfigError::invalid(
                "collector",
                "at most two: an active collector and its standby (--standby-for)",
            ));
        }
        if collectors.len() == 2 && collectors[0] == collectors[1] {
            return Err(ConfigError::invalid(
                "collector",
                format!("{} is given twice", collectors[0]),
            ));
        }
        if self.node_id.as_deref() == Some("") {
            return Err(ConfigError::invalid("node_id", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_layers_over_the_file() {
        config::assert_layerable::<AppConfig>();
    }

    #[test]
    fn bad_values_name_the_key() {
        for (file, key) in [
            ("workers = 0", "workers"),
            ("reactors = 0", "reactors"),
            ("reactors = 65", "reactors"),
            ("weight = 0", "weight"),
            ("weight = 1001", "weight"),
            ("session_cache = \"3s\"", "session_cache"),
            ("collector = [\"nohost\"]", "collector"),
            ("collector = [\"a:1\", \"b:1\", \"c:1\"]", "collector"),
            ("collector = [\"a:1\", \"a:1\"]", "collector"),
            ("listen_addr = \"x\"", "listen_addr"),
        ] {
            let e = config::layer::<AppConfig>(Some(("app.toml", file)), &AppConfig::default())
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(e.contains(key), "{file}: {e}");
        }
    }

    #[test]
    fn debug_output_never_holds_the_database_password() {
        let cfg = AppConfig {
            db: Some(SecretUrl::new("mysql://dsf:hunter2@127.0.0.1:3306/dsf")),
            ..AppConfig::default()
        };
        let db = cfg.db_config().unwrap();
        let with_file = db.clone().password(Some(config::Secret::new("hunter3")));
        for shown in [
            format!("{cfg:?}"),
            format!("{db:?}"),
            format!("{with_file:?}"),
        ] {
            assert!(!shown.contains("hunter"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn missing_db_says_how_to_set_it() {
        let e = AppConfig::default().db_config().unwrap_err().to_string();
        assert!(e.contains("--db") && e.contains("DSF_DB"), "{e}");
    }
}
