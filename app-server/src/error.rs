//! [`Error`]: why the server (or one of its commands) could not start or run.
//! Errors met while serving a request are wire errors
//! ([`dsf_common::Error`]) and go back to the client instead.

use dsf_common::config::ConfigError;
use dsf_common::wire::KeyError;

/// What stops `app-server` from starting or a command from completing; each
/// message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The app keys or the cluster secret could not be read.
    #[error(transparent)]
    Keys(#[from] KeyError),

    /// No `--app-keys`: clients would have nothing to sign with.
    #[error(
        "no app keys: pass --app-keys FILE (or set DSF_APP_KEYS), a TOML table \
         app_id = \"secret\" of mode 0600 holding the keys clients sign with"
    )]
    NoAppKeys,

    /// Nothing to sign heartbeats with, while a collector is given.
    #[error(
        "no key for heartbeats: pass --node-key-file FILE (or set DSF_NODE_KEY), this node's own key, \
         which the collector lists in its --node-keys; or, for a collector without node keys, \
         the cluster secret (DSF_CLUSTER_SECRET or --cluster-secret-file)"
    )]
    NoHeartbeatKey,

    /// Nothing to sign `peer.notify` with.
    #[error(
        "no peer secret: set DSF_PEER_SECRET or pass --peer-secret-file FILE (mode 0600), \
         the secret every app server shares for peer.notify; the cluster secret \
         (DSF_CLUSTER_SECRET) stands in for it when given"
    )]
    NoPeerSecret,

    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] dsf_sql::Error),

    /// A socket or thread could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (`listening on 127.0.0.1:7000`).
        what: String,
        /// What failed.
        source: std::io::Error,
    },

    /// The services cannot be composed: a name twice, one missing that
    /// another needs, two providing sessions.
    #[error("{0}")]
    Compose(String),

    /// The services' routes cannot make a pipeline: two services declaring
    /// one message type, a scoped key naming a type none serves.
    #[error(transparent)]
    Pipeline(#[from] dsf_common::pipeline::BuildError),

    /// The database lacks migrations of the composed services.
    #[error(
        "the database lacks migrations of this server's services: {0}; run this server's `migrate --db URL` first"
    )]
    Unmigrated(String),

    /// A service's start-up failed.
    #[error("service {service:?} could not start: {message}")]
    Service {
        /// The service's name.
        service: String,
        /// What its hook said.
        message: String,
    },

    /// `create-admin` got no usable password.
    #[error("password: {0}")]
    Password(String),
}
