//! `collector`'s settings: TOML file < `DSF_*` environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dsf_common::config::{Config, ConfigError, HumanDuration, LimitArgs, SecretUrl, TlsArgs};
use dsf_common::reactor::ReactorConfig;
use dsf_common::wire::keys::{self, AppKeys};
use dsf_sql::DbConfig;
use serde::{Deserialize, Serialize};

use crate::health::DEFAULT_CHECK_INTERVAL;
use crate::members::{is_host_port, Target};
use crate::push::PushConfig;
use crate::server::{Settings, DEFAULT_DEAD_AFTER, DEFAULT_RESEND};

/// Default collector port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6400";
/// Default metrics port.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9400";

/// Where `--db`'s password is read when no file is given.
pub const DB_PASSWORD_ENV: &str = "DSF_DB_PASSWORD";

/// Settings of `collector`. Every field is also a flag (`--dead-after`), an
/// environment variable (`DSF_DEAD_AFTER`) and a key of the `--config` file
/// (`dead_after`).
#[derive(Debug, Default, Clone, clap::Args, Serialize, Deserialize)]
pub struct CollectorConfig {
    /// Collector port: node.heartbeat and node.leave (cluster secret),
    /// cluster.status (app keys) [default: 127.0.0.1:6400].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// Metrics port: GET /metrics in the Prometheus text format, and the
    /// dashboard at / with its JSON under /api/ [default: 127.0.0.1:9400].
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,

    /// A balancer's cluster port (its --cluster-listen, 6200 by default, not
    /// the 6300 clients use); repeat the flag or separate with commas for
    /// more. Required. Its variable is DSF_COLLECTOR_LB, not DSF_LB: clients
    /// read DSF_LB as the balancers' client port, and one shell often holds
    /// both.
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_delimiter = ',',
        env = "DSF_COLLECTOR_LB"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb: Option<Vec<String>>,

    /// Run as the standby of the active collector at HOST:PORT (its
    /// --listen): take heartbeats as it does (give app servers both in
    /// their --collector), but send views to the balancers only once it
    /// has not answered for 1.5s (asked every 0.5s), or has answered
    /// without feeding them for 1.5s past its --dead-after warm-up; stand
    /// by again when it feeds. One that answers but refuses (another
    /// cluster secret) is not taken over from. Give the active collector
    /// no --standby-for.
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_for: Option<String>,

    /// A static member that sends no heartbeats, `ID=HOST:PORT[,WEIGHT]` (or
    /// HOST:PORT, the id is then the address), health-checked by TCP
    /// connect: up after 2 good checks, down after 3 failed ones. Repeat
    /// for more.
    #[arg(long, value_name = "ID=HOST:PORT[,WEIGHT]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<String>>,

    /// A node with no heartbeat for this long is evicted [default: 3s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_after: Option<HumanDuration>,

    /// Time between health checks of each --target [default: 1s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_interval: Option<HumanDuration>,

    /// TOML table `app_id = "secret"` (mode 0600) of the keys operators sign
    /// cluster.status with. Without it only the cluster secret is accepted.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_keys: Option<PathBuf>,

    /// TOML table `node_id = "secret"` (mode 0600) of each app server's own
    /// key (its --node-key-file). Heartbeats must then be signed with the
    /// key of the node they name; without it they come under the cluster
    /// secret, which lets any holder speak for any node.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_keys: Option<PathBuf>,

    /// File (mode 0600) holding the cluster secret; otherwise
    /// DSF_CLUSTER_SECRET is read.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_secret_file: Option<PathBuf>,

    /// The app servers' database, mysql://USER@HOST:PORT/DB, or a
    /// comma-separated list of them (Galera nodes, as the app servers'
    /// --db): the dashboard (on the metrics port) then shows jobs in
    /// progress. Read only; its password (one for every node) comes from
    /// --db-password-file or DSF_DB_PASSWORD.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<SecretUrl>,

    /// File (mode 0600) holding the database password; otherwise
    /// DSF_DB_PASSWORD is read.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_password_file: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    #[serde(flatten)]
    pub tls: TlsArgs,
}

// === impl CollectorConfig ===

impl CollectorConfig {
    /// `--listen`, or [`DEFAULT_LISTEN`].
    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"))
    }

    /// `--metrics-listen`, or [`DEFAULT_METRICS_LISTEN`].
    pub fn metrics_listen(&self) -> SocketAddr {
        self.metrics_listen
            .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.parse().expect("valid default"))
    }

    /// `--dead-after`, or [`DEFAULT_DEAD_AFTER`].
    pub fn dead_after(&self) -> Duration {
        self.dead_after
            .map_or(DEFAULT_DEAD_AFTER, HumanDuration::get)
    }

    /// `--check-interval`, or [`DEFAULT_CHECK_INTERVAL`].
    pub fn check_interval(&self) -> Duration {
        self.check_interval
            .map_or(DEFAULT_CHECK_INTERVAL, HumanDuration::get)
    }

    /// The parsed `--target`s.
    pub fn targets(&self) -> Result<Vec<Target>, ConfigError> {
        self.target
            .iter()
            .flatten()
            .map(|t| {
                t.parse()
                    .map_err(|e: String| ConfigError::invalid("target", e))
            })
            .collect()
    }

    /// The reactor's limits.
    pub fn reactor(&self) -> ReactorConfig {
        self.limits.reactor()
    }

    /// `--db` with its password, sized for the dashboard's one reader.
    pub fn db_config(&self) -> Result<Option<DbConfig>, ConfigError> {
        let Some(url) = &self.db else {
            return Ok(None);
        };
        let password = dsf_common::config::db_password(
            url,
            self.db_password_file.as_deref(),
            "db-password-file",
            DB_PASSWORD_ENV,
        )?;
        Ok(Some(
            DbConfig::new(url.expose()).password(password).workers(1),
        ))
    }

    /// Everything resolved, secrets read: what [`crate::server::start`] takes.
    pub fn settings(&self) -> Result<Settings, String> {
        self.validate().map_err(|e| e.to_string())?;
        let cluster_secret =
            keys::cluster_secret(self.cluster_secret_file.as_deref()).map_err(|e| e.to_string())?;
        let app_keys = match &self.app_keys {
            Some(path) => AppKeys::load(path).map_err(|e| e.to_string())?,
            None => {
                log::warn!("no --app-keys: cluster.status answers only requests signed with the cluster secret, so `client status` will be refused");
                AppKeys::new()
            }
        };
        let dead_after = self.dead_after();
        Ok(Settings {
            listen: self.listen(),
            metrics_listen: self.metrics_listen(),
            lbs: self.lb.clone().unwrap_or_default(),
            standby_for: self.standby_for.clone(),
            targets: self.targets().map_err(|e| e.to_string())?,
            dead_after,
            check_interval: self.check_interval(),
            resend: DEFAULT_RESEND,
            warmup: dead_after,
            push: PushConfig {
                max_frame: self.reactor().max_frame,
                tls: self.tls.client().map_err(|e| e.to_string())?,
                ..PushConfig::default()
            },
            app_keys,
            node_keys: match &self.node_keys {
                Some(path) => Some(AppKeys::load_node_keys(path).map_err(|e| e.to_string())?),
                None => None,
            },
            cluster_secret,
            db: self.db_config().map_err(|e| e.to_string())?,
            reactor: {
                let mut r = self.reactor();
                r.tls = vec![self.tls.server().map_err(|e| e.to_string())?];
                r
            },
        })
    }
}

impl Config for CollectorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let lbs = self.lb.as_ref().ok_or_else(|| ConfigError::Missing {
            key: "lb".into(),
            flag: "lb".into(),
            env: "DSF_COLLECTOR_LB".into(),
        })?;
        if lbs.is_empty() {
            return Err(ConfigError::invalid(
                "lb",
                "give at least one balancer's cluster port, e.g. --lb 127.0.0.1:6200",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for lb in lbs {
            if !is_host_port(lb) {
                return Err(ConfigError::invalid(
                    "lb",
                    format!("{lb:?} is not HOST:PORT (a balancer's --cluster-listen address)"),
                ));
            }
            if !seen.insert(lb) {
                return Err(ConfigError::invalid("lb", format!("{lb} is given twice")));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for t in self.targets()? {
            if !ids.insert(t.id.clone()) {
                return Err(ConfigError::invalid(
                    "target",
                    format!("id {:?} is given twice", t.id),
                ));
            }
        }
        if let Some(active) = &self.standby_for {
            if !is_host_port(active) {
                return Err(ConfigError::invalid(
                    "standby_for",
                    format!(
                        "{active:?} is not HOST:PORT (the active collector's --listen address)"
                    ),
                ));
            }
            if active.parse::<SocketAddr>().ok() == Some(self.listen()) {
                return Err(ConfigError::invalid(
                    "standby_for",
                    format!(
                        "{active} is this collector's own --listen; name the active collector's"
                    ),
                ));
            }
        }
        if self.dead_after() < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "dead_after",
                "must be at least 100ms (nodes heartbeat every second; 3s is the usual)",
            ));
        }
        if self.check_interval() < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "check_interval",
                "must be at least 10ms",
            ));
        }
        // Port 0 (any free port) twice is two different ports.
        if self.listen() == self.metrics_listen() && self.listen().port() != 0 {
            return Err(ConfigError::invalid(
                "metrics_listen",
                format!(
                    "{} is also --listen; give the metrics their own port",
                    self.listen()
                ),
            ));
        }
        self.limits.validate()?;
        self.tls.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_common::config;

    #[test]
    fn every_field_layers_over_the_file() {
        dsf_common::config::assert_layerable::<CollectorConfig>();
    }

    #[test]
    fn file_values_are_read_with_defaults_for_the_rest() {
        let file = r#"
            lb = ["127.0.0.1:6200", "127.0.0.1:6201"]
            target = ["a=127.0.0.1:7001,2", "127.0.0.1:7002"]
            dead_after = "5s"
        "#;
        let c: CollectorConfig =
            config::layer(Some(("c.toml", file)), &CollectorConfig::default()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen().port(), 6400);
        assert_eq!(c.metrics_listen().port(), 9400);
        assert_eq!(c.lb.as_ref().unwrap().len(), 2);
        assert_eq!(c.targets().unwrap()[0].weight, 2);
        assert_eq!(c.dead_after(), Duration::from_secs(5));
        assert_eq!(c.check_interval(), Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (file, key) in [
            ("", "--lb"),
            ("lb = []", "lb"),
            ("lb = [\"nohost\"]", "lb"),
            ("lb = [\"h:1\", \"h:1\"]", "lb"),
            ("lb = [\"h:1\"]\ntarget = [\"a=nohost\"]", "target"),
            ("lb = [\"h:1\"]\ntarget = [\"a=h:1\", \"a=h:2\"]", "target"),
            ("lb = [\"h:1\"]\ndead_after = \"10ms\"", "dead_after"),
            (
                "lb = [\"h:1\"]\nmetrics_listen = \"127.0.0.1:6400\"",
                "metrics_listen",
            ),
            ("lb = [\"h:1\"]\nlisten_addr = \"x\"", "listen_addr"),
            ("lb = [\"h:1\"]\nstandby_for = \"nohost\"", "standby_for"),
            (
                "lb = [\"h:1\"]\nstandby_for = \"127.0.0.1:6400\"",
                "standby_for",
            ),
        ] {
            let e = config::layer::<CollectorConfig>(
                Some(("c.toml", file)),
                &CollectorConfig::default(),
            )
            .and_then(|c| c.validate().map(|_| c))
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{file}: {e}");
        }
    }
}
