//! `app-server`: the application server. One mio reactor thread reads and
//! writes framed, signed requests; a fixed pool of worker threads runs the
//! controller over MySQL; replies return signed through the reactor.
//!
//! ```text
//! socket ─▶ reactor (admission: signature, replay guard) ─▶ bounded queue ─▶ worker
//!           worker: controller (session, role, route) ─▶ handler ─▶ dsf-sql ─▶ reply ─▶ reactor
//! ```
//!
//! - [`config`]: [`config::AppConfig`], the flags / `DSF_*` / TOML settings,
//!   resolved into [`server::Settings`] (secrets read, defaults filled).
//! - [`server`]: [`server::start`] binds and runs everything;
//!   [`server::Running`] is the graceful shutdown (draining, in-flight
//!   finished, `node.leave`).
//! - [`service`]: the reactor's side: backpressure, admission, handing work
//!   to the pool.
//! - [`controller`]: the table from message type to [`controller::Route`]
//!   (auth level, where it runs, handler), authentication and rendering.
//! - [`handlers`]: one file per handler group (`sys`, `user`, `blacklist`,
//!   `gate`, `tasks`, `messages`), each holding body types, validation and
//!   handlers; the models are the repositories of `dsf-sql`.
//! - [`waiters`], [`watches`]: parked `task.claim` long polls and
//!   `job.watch` streams.
//! - [`mailroom`]: `msg.subscribe` streams and the thread that fills them;
//!   [`peers`]: the outbound links that carry `peer.notify` to other app
//!   servers.
//! - [`sessions`]: the short-lived (≤ 2 s) in-memory cache of token checks.
//! - [`stats`]: request counters and the HDR latency histogram reported in
//!   heartbeats.
//! - [`heartbeat`]: the thread sending `node.heartbeat` every second (and
//!   `node.leave` at the end) to the collector, with backoff while it is down.
//! - [`admin`]: the `migrate` and `create-admin` commands.
//! - [`error`]: [`Error`], what can stop the server from starting.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod controller;
pub mod error;
pub mod handlers;
pub mod heartbeat;
pub mod limits;
pub mod mailroom;
pub mod peers;
pub mod server;
pub mod service;
pub mod sessions;
pub mod stats;
pub mod waiters;
pub mod watches;

pub use error::Error;
pub use server::{start, Running, Settings, StopHandle};
