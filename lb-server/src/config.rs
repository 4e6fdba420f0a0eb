//! `lb-server`'s settings: TOML file < `DSF_*` environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use dsf_common::config::{self, Config, ConfigError, HumanDuration, LimitArgs, SecretUrl, TlsArgs};
use dsf_common::reactor::{ReactorConfig, MAX_REACTORS};
use dsf_common::wire::keys::{self, AppKeys};
use serde::{Deserialize, Serialize};

use crate::policy::PolicyKind;
use crate::proxy::{self, KeyBy, Protocol, ProxySettings};
use crate::ring::{BoundedLoad, RingConfig, DEFAULT_VNODES};
use crate::server::{Backend, Settings};

/// Default client port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6300";
/// Default cluster port.
pub const DEFAULT_CLUSTER_LISTEN: &str = "127.0.0.1:6200";
/// The variable --pins-db's password is read from, without
/// --pins-db-password-file.
pub const PINS_DB_PASSWORD_ENV: &str = "DSF_PINS_DB_PASSWORD";

/// Settings of `lb-server`. Every field is also a flag (`--cluster-listen`),
/// an environment variable (`DSF_CLUSTER_LISTEN`) and a key of the
/// `--config` file (`cluster_listen`).
#[derive(Debug, Default, Clone, clap::Args, Serialize, Deserialize)]
pub struct LbConfig {
    /// Client port: lb.resolve and lb.view [default: 127.0.0.1:6300].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Cluster port: lb.set_view from the collector, signed with the
    /// cluster secret [default: 127.0.0.1:6200].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_listen: Option<SocketAddr>,

    /// Reactor threads accepting on the client port (SO_REUSEPORT), sharing
    /// the view; the cluster and proxy ports stay on the first. One serves
    /// a 2-core machine best; more help only with cores to spare for them
    /// (see docs/BENCHMARKS.md) [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reactors: Option<usize>,

    /// A static member, `ID=HOST:PORT[,WEIGHT]` (or `HOST:PORT`, the id is then
    /// the address); repeat for more. Serves without a collector; a view
    /// from a collector replaces these.
    #[arg(long, value_name = "ID=HOST:PORT[,WEIGHT]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Vec<String>>,

    /// How a node is chosen: ring (consistent hash with bounded load),
    /// round-robin, random, or least-loaded [default: ring].
    #[arg(long, value_name = "POLICY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,

    /// Ring points per unit of weight [default: 160].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnodes: Option<u32>,

    /// Bounded-load factor c (a node at or above c × average load is
    /// skipped), or "off" [default: 1.25].
    #[arg(long, value_name = "C|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounded_load: Option<String>,

    /// TOML table `app_id = "secret"` (mode 0600) of the keys clients sign with.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_keys: Option<PathBuf>,

    /// File (mode 0600) holding the cluster secret; otherwise
    /// DSF_CLUSTER_SECRET is read.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secret_file: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsArgs,

    /// Proxy mode: a listener whose connections are spliced to a backend of
    /// the view; repeat for more, each with its --proxy-protocol.
    #[arg(long, value_name = "HOST:PORT", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_listen: Option<Vec<SocketAddr>>,

    /// What each --proxy-listen speaks, in the same order: mqtt (routed by
    /// the CONNECT packet) or tcp (routed by the client's IP address); one
    /// value applies to every listener.
    #[arg(long, value_name = "mqtt|tcp", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<Vec<String>>,

    /// What an MQTT device is routed by: client-id (an empty one routes by
    /// the peer address), username, triple (username, password and client
    /// id) or peer-ip [default: client-id].
    #[arg(long, value_name = "KEY", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_key: Option<String>,

    /// Time a device has to send its whole CONNECT [default: 10s].
    #[arg(long, value_name = "DURATION", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_first_packet_timeout: Option<HumanDuration>,

    /// Largest CONNECT accepted (its remaining length), in bytes
    /// [default: 65536].
    #[arg(long, value_name = "BYTES", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_max_connect: Option<usize>,

    /// Idle timeout of a tcp pipe, and of an MQTT device with keep-alive 0
    /// (others get 1.5 × their keep-alive) [default: 10m].
    #[arg(long, value_name = "DURATION", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_idle_timeout: Option<HumanDuration>,

    /// Send each backend a PROXY protocol v2 header first, so it sees the
    /// device's address.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_send_proxy_v2: Option<bool>,

    /// A pin lives this long after a device last connected with its key
    /// [default: 7d].
    #[arg(long, value_name = "DURATION", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_ttl: Option<HumanDuration>,

    /// Most pins held; past it new keys are routed by the ring but not
    /// stored [default: 1000000].
    #[arg(long, value_name = "N", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pins: Option<usize>,

    /// Keep the pins in this MySQL/MariaDB database, shared by every
    /// balancer replica (table dsf_lb_pins, created if missing), instead of
    /// in memory. A comma-separated list (Galera nodes) uses the first that
    /// answers and goes back to it once it answers again.
    #[arg(
        long,
        value_name = "mysql://USER@HOST:PORT/DB",
        help_heading = "Proxy mode"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins_db: Option<SecretUrl>,

    /// File (mode 0600) holding --pins-db's password; otherwise
    /// DSF_PINS_DB_PASSWORD is read. Keep the password out of the URL:
    /// flags show in `ps`.
    #[arg(long, value_name = "FILE", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins_db_password_file: Option<PathBuf>,

    /// How long a pin read from --pins-db is trusted before it is read
    /// again [default: 5s].
    #[arg(long, value_name = "DURATION", help_heading = "Proxy mode")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins_cache: Option<HumanDuration>,
}

// === impl LbConfig ===

impl LbConfig {
    /// `--listen`, or [`DEFAULT_LISTEN`].
    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"))
    }

    /// `--cluster-listen`, or [`DEFAULT_CLUSTER_LISTEN`].
    pub fn cluster_listen(&self) -> SocketAddr {
        self.cluster_listen
            .unwrap_or_else(|| DEFAULT_CLUSTER_LISTEN.parse().expect("valid default"))
    }

    /// The parsed `--backend`s.
    pub fn backends(&self) -> Result<Vec<Backend>, ConfigError> {
        self.backend
            .iter()
            .flatten()
            .map(|b| {
                b.parse()
                    .map_err(|e: String| ConfigError::invalid("backend", e))
            })
            .collect()
    }

    /// `--policy`, or ring.
    pub fn policy(&self) -> Result<PolicyKind, ConfigError> {
        match &self.policy {
            None => Ok(PolicyKind::default()),
            Some(p) => p.parse().map_err(|e: crate::policy::UnknownPolicy| {
                ConfigError::invalid("policy", e.to_string())
            }),
        }
    }

    /// `--vnodes` and `--bounded-load`.
    pub fn ring(&self) -> Result<RingConfig, ConfigError> {
        let vnodes = self.vnodes.unwrap_or(DEFAULT_VNODES);
        if vnodes == 0 {
            return Err(ConfigError::invalid("vnodes", "must be at least 1"));
        }
        let bound = match &self.bounded_load {
            None => BoundedLoad::default(),
            Some(b) => b.parse().map_err(|e: crate::ring::RingError| {
                ConfigError::invalid("bounded_load", e.to_string())
            })?,
        };
        Ok(RingConfig { vnodes, bound })
    }

    /// Proxy mode's settings; `None` without --proxy-listen.
    pub fn proxy(&self) -> Result<Option<ProxySettings>, ConfigError> {
        if self.pins_db_password_file.is_some() && self.pins_db.is_none() {
            return Err(ConfigError::invalid(
                "pins_db_password_file",
                "given without --pins-db, whose password it holds",
            ));
        }
        let listens = self.proxy_listen.clone().unwrap_or_default();
        let protocols: Vec<Protocol> = self
            .proxy_protocol
            .iter()
            .flatten()
            .map(|p| {
                p.parse()
                    .map_err(|e: String| ConfigError::invalid("proxy_protocol", e))
            })
            .collect::<Result<_, _>>()?;
        if listens.is_empty() {
            if !protocols.is_empty() {
                return Err(ConfigError::invalid(
                    "proxy_protocol",
                    "given without --proxy-listen ADDR",
                ));
            }
            return Ok(None);
        }
        let protocols = match protocols.len() {
            0 => {
                return Err(ConfigError::invalid(
                    "proxy_protocol",
                    "--proxy-listen needs --proxy-protocol mqtt|tcp",
                ))
            }
            1 => vec![protocols[0]; listens.len()],
            n if n == listens.len() => protocols,
            n => {
                return Err(ConfigError::invalid(
                    "proxy_protocol",
                    format!(
                        "{n} given for {} --proxy-listen; give one for each, in the same order, or one for all",
                        listens.len()
                    ),
                ))
            }
        };
        let key: KeyBy = match &self.proxy_key {
            Some(k) => k
                .parse()
                .map_err(|e: String| ConfigError::invalid("proxy_key", e))?,
            None => KeyBy::default(),
        };
        let d = ProxySettings::default();
        let max_connect = self.proxy_max_connect.unwrap_or(d.max_connect);
        if max_connect == 0 || max_connect > 268_435_455 {
            return Err(ConfigError::invalid(
                "proxy_max_connect",
                "1 to 268435455 bytes (MQTT's largest remaining length)",
            ));
        }
        if self.max_pins == Some(0) {
            return Err(ConfigError::invalid("max_pins", "must be at least 1"));
        }
        let dur = |v: Option<HumanDuration>, default| v.map_or(default, HumanDuration::get);
        Ok(Some(ProxySettings {
            listeners: listens.into_iter().zip(protocols).collect(),
            key,
            first_packet_timeout: dur(self.proxy_first_packet_timeout, d.first_packet_timeout),
            max_connect,
            idle_timeout: dur(self.proxy_idle_timeout, d.idle_timeout),
            send_proxy_v2: self.proxy_send_proxy_v2.unwrap_or(false),
            pin_ttl: dur(self.pin_ttl, d.pin_ttl),
            max_pins: self.max_pins.unwrap_or(d.max_pins),
            pins_db: match &self.pins_db {
                Some(url) => {
                    let password = config::db_password(
                        url,
                        self.pins_db_password_file.as_deref(),
                        "pins-db-password-file",
                        PINS_DB_PASSWORD_ENV,
                    )?;
                    Some(dsf_sql::DbConfig::new(url.expose()).password(password))
                }
                None => None,
            },
            pins_cache: dur(self.pins_cache, proxy::DEFAULT_PINS_CACHE),
        }))
    }

    /// The reactor's limits.
    pub fn reactor(&self) -> ReactorConfig {
        self.limits.reactor()
    }

    /// Everything resolved, secrets read: what [`crate::server::start`] takes.
    pub fn settings(&self) -> Result<Settings, String> {
        self.validate().map_err(|e| e.to_string())?;
        let app_keys = match &self.app_keys {
            Some(path) => AppKeys::load(path).map_err(|e| e.to_string())?,
            None => {
                return Err("no app keys: pass --app-keys FILE, a TOML table app_id = \"secret\" of mode 0600 holding the keys clients sign with".into())
            }
        };
        let cluster_secret =
            keys::cluster_secret(self.cluster_secret_file.as_deref()).map_err(|e| e.to_string())?;
        Ok(Settings {
            listen: self.listen(),
            cluster_listen: self.cluster_listen(),
            backends: self.backends().map_err(|e| e.to_string())?,
            policy: self.policy().map_err(|e| e.to_string())?,
            ring: self.ring().map_err(|e| e.to_string())?,
            app_keys,
            cluster_secret,
            reactors: self.reactors.unwrap_or(1),
            reactor: {
                // The client and cluster ports; proxy listeners stay plain
                // (their bytes are the devices', spliced as they come).
                let mut r = self.reactor();
                let tls = self.tls.server().map_err(|e| e.to_string())?;
                r.tls = vec![tls.clone(), tls];
                r
            },
            proxy: self.proxy().map_err(|e| e.to_string())?,
        })
    }
}

impl Config for LbConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let backends = self.backends()?;
        let mut ids = std::collections::HashSet::new();
        for b in &backends {
            if !ids.insert(&b.id) {
                return Err(ConfigError::invalid(
                    "backend",
                    format!("id {:?} is given twice", b.id),
                ));
            }
        }
        if !(1..=MAX_REACTORS).contains(&self.reactors.unwrap_or(1)) {
            return Err(ConfigError::invalid(
                "reactors",
                format!("must be 1 to {MAX_REACTORS} (one per core at most is useful)"),
            ));
        }
        self.policy()?;
        self.ring()?;
        self.proxy()?;
        self.limits.validate()?;
        self.tls.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_layers_over_the_file() {
        dsf_common::config::assert_layerable::<LbConfig>();
    }

    #[test]
    fn file_values_are_read_and_checked() {
        let file = r#"
            listen = "127.0.0.1:1"
            backend = ["a=127.0.0.1:2,2", "127.0.0.1:3"]
            policy = "least-loaded"
            bounded_load = "off"
        "#;
        let c: LbConfig =
            dsf_common::config::layer(Some(("lb.toml", file)), &LbConfig::default()).unwrap();
        assert_eq!(c.listen().port(), 1);
        assert_eq!(c.backends().unwrap().len(), 2);
        assert_eq!(c.policy().unwrap(), PolicyKind::LeastLoaded);
        assert_eq!(c.ring().unwrap().bound, BoundedLoad::Off);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (file, key) in [
            ("policy = \"fastest\"", "policy"),
            ("backend = [\"a=nohost\"]", "backend"),
            ("backend = [\"a=h:1\", \"a=h:2\"]", "backend"),
            ("vnodes = 0", "vnodes"),
            ("reactors = 0", "reactors"),
            ("bounded_load = \"lots\"", "bounded_load"),
            ("proxy_listen = [\"127.0.0.1:1883\"]", "proxy_protocol"),
            ("proxy_protocol = [\"mqtt\"]", "proxy_protocol"),
            ("proxy_listen = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\nproxy_protocol = [\"mqtt\", \"tcp\"]", "proxy_protocol"),
            ("proxy_listen = [\"127.0.0.1:1\"]\nproxy_protocol = [\"amqp\"]", "proxy_protocol"),
            ("proxy_listen = [\"127.0.0.1:1\"]\nproxy_protocol = [\"mqtt\"]\nproxy_key = \"ip\"", "proxy_key"),
            ("proxy_listen = [\"127.0.0.1:1\"]\nproxy_protocol = [\"mqtt\"]\nmax_pins = 0", "max_pins"),
            ("listen_addr = \"x\"", "listen_addr"),
        ] {
            let e = dsf_common::config::layer::<LbConfig>(
                Some(("lb.toml", file)),
                &LbConfig::default(),
            )
            .and_then(|c| c.validate().map(|_| c))
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{file}: {e}");
        }
    }
}
