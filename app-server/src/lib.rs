//! `app-server`: the framework for dsf application servers, and the
//! `app-server` binary built on it.
//!
//! An app server is composed of [`Service`]s: each brings its message types
//! and their routes, its migrations, state, hooks and background jobs. The
//! framework gives every one of them the signed wire, routing by key
//! behind the balancers, membership and heartbeats, writes that run once
//! on any node, streams and long polls woken across nodes, sessions and
//! roles, rate limits, per-type metrics and a graceful drain. A user's
//! binary is a few lines:
//!
//! ```no_run
//! // src/main.rs of a user's server
//! app_server::main(|server| {
//!     server.service(app_server::accounts())
//!     // .service(orders::service())
//! });
//! ```
//!
//! ```text
//! socket ─▶ reactor (admission, drain, route) ─▶ bounded queue ─▶ worker
//!           worker: metrics ─▶ auth ─▶ rate ─▶ long poll ─▶ run-once ─▶ handler ─▶ reply
//! ```
//!
//! - [`service`]: [`Service`], the unit of composition.
//! - [`node`]: [`Node`], what handlers share, and [`CallExt`], what a
//!   handler's [`Call`] reaches (`call.tx(…)`, `call.wake(…)`).
//! - [`server`]: [`Server`] composes services and starts them;
//!   [`Running`] is the graceful shutdown.
//! - [`cli`]: [`main`], the command line of every app server binary.
//! - [`config`]: the flags / `DSF_*` / TOML settings, resolved into
//!   [`Settings`].
//! - [`layers`]: the app server's own layers: long polls, run-once writes.
//! - [`topics`]: wake-ups by topic: parked long polls, followed streams.
//! - [`peers`]: the links to the other app servers (`peer.*` types).
//! - [`reactor`]: the reactor's side: frames through the pipeline.
//! - [`heartbeat`]: `node.heartbeat` to the collectors, `node.leave` at
//!   the end.
//! - dsf's own services: [`accounts`](mod@accounts),
//!   [`blacklist`](mod@blacklist), [`tasks`](mod@tasks),
//!   [`messaging`](mod@messaging); the framework's own (`sys.ping`, `sys.cancel`,
//!   `peer.wake`, the run-once records) is in every server.
//! - [`admin`]: `migrate` and `create-admin`; [`error`]: [`Error`].

#![forbid(unsafe_code)]

pub mod accounts;
pub mod admin;
pub mod blacklist;
pub mod cli;
pub mod config;
pub mod error;
pub mod heartbeat;
pub mod layers;
pub mod messaging;
pub mod node;
pub mod peers;
pub mod reactor;
pub mod server;
pub mod service;
pub mod settings;
mod sys;
pub mod tasks;
pub mod topics;

pub use cli::main;
pub use dsf_sql::migrate::Migration;
pub use dsf_sql::Db;
pub use error::Error;
pub use node::{Call, CallExt, Node, Route};
pub use server::{start, Running, Server, Settings, StopHandle};
pub use service::Service;
pub use topics::Step;

/// The accounts service: users, sessions, roles, audit ([`accounts`](mod@accounts)).
pub fn accounts() -> Service {
    accounts::service()
}

/// The blacklist service with gate checks ([`blacklist`](mod@blacklist)); needs accounts.
pub fn blacklist() -> Service {
    blacklist::service()
}

/// The task service ([`tasks`](mod@tasks)).
pub fn tasks() -> Service {
    tasks::service()
}

/// Messaging between users ([`messaging`](mod@messaging)); needs accounts.
pub fn messaging() -> Service {
    messaging::service()
}

/// What a service's code usually needs, in one `use`.
pub mod prelude {
    pub use crate::node::{Call, CallExt, Node, Route};
    pub use crate::service::Service;
    pub use crate::topics::Step;
    pub use dsf_common::pipeline::{Limit, Per, Rate, Stream, Wait};
    pub use dsf_common::{Error, ErrorCode, Result};
    pub use dsf_proto::{Empty, Message};
    pub use dsf_sql::Queryable;
}
