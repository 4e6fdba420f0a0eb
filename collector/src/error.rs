//! The collector's one error type: what can stop it from starting. Errors
//! of single requests are the wire's [`dsf_common::Error`].

use std::net::SocketAddr;

/// Why the collector could not start; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A port could not be bound.
    #[error("cannot listen on {addr} for {what}: {source} (is another collector running? pick another port with --{flag})")]
    Bind {
        what: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    /// The routes could not make a pipeline.
    #[error(transparent)]
    Pipeline(#[from] dsf_common::pipeline::BuildError),
    /// The reactor failed while running.
    #[error("the reactor failed: {0}")]
    Reactor(std::io::Error),
}
