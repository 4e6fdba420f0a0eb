//! `collector`: membership and load for a dsf cluster. It takes app
//! servers' heartbeats, health-checks static backends, evicts the dead,
//! pushes versioned views to every balancer, answers `cluster.status`, and
//! serves Prometheus metrics.
//!
//! - [`members`]: the member table and its rules, free of threads and
//!   clocks: who is up, draining or down, rise/fall of static targets,
//!   eviction of the silent, and the smoothing of load figures.
//! - [`version`]: view versions that never go backwards, across restarts too.
//! - [`cluster`]: the shared state: members, the published view, and the
//!   mailbox the pushers wait on; every change of membership publishes.
//! - [`service`]: `node.heartbeat`, `node.leave` and `cluster.status` on the
//!   reactor, one file per message type.
//! - [`push`]: one thread per balancer holding a signed connection and
//!   sending it every view, reconnecting with backoff.
//! - [`standby`]: a standby collector's watch on the active one, taking
//!   over the balancers when it goes silent.
//! - [`health`]: one thread per static `--target`, a TCP connect a second.
//! - [`metrics`]: `GET /metrics` in the Prometheus text format, and the
//!   routes of that port.
//! - [`dashboard`]: the live page at `/` and its JSON under `/api/`.
//! - [`server`]: starting and stopping it all; [`config`]: the binary's
//!   settings; [`error`]: the crate's error.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod members;
pub mod metrics;
pub mod push;
pub mod server;
pub mod service;
pub mod standby;
pub mod version;

pub use error::CollectorError;
