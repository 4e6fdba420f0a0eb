//! `dsf-client`: the dsf SDK and the `client` command-line tool.
//!
//! - [`client`]: the SDK's [`Client`]: resolves a node through the balancers
//!   (`lb.resolve`), connects to it directly, signs requests, verifies
//!   replies, and fails over to another node under the resend rules
//!   ([`is_idempotent`]). Typed calls take the catalogue's types:
//!   `client.send::<dsf_proto::blacklist::Get>(&IdCard { .. })`.
//! - [`conn`]: one signed, pipelined [`Connection`] to one server (the
//!   shared `dsf_common::call`), replies matched by id, failures sorted by
//!   whether the request may have landed, and how they become [`Error`]s.
//! - [`error`]: the crate's one [`Error`] type; each message says what to do.
//! - [`stream`]: [`Client::stream`], a stream type's events as an iterator,
//!   opened again on another node when its node goes away.
//! - `cli` (feature `cli`, on by default): the `client` tool's flags,
//!   subcommands, output and exit codes. The SDK alone builds without it
//!   (`default-features = false`) and without the tool's dependencies.
//! - [`tasks`], [`messages`]: the task service and messaging (send, history,
//!   and a [`messages::Listener`] that follows the inbox across nodes).
//! - `session` (feature `cli`): where `client login` keeps its token (mode 0600).
//! - `bench` (feature `cli`): `client bench`, a mio load generator with latency
//!   percentiles, used by every figure in `docs/BENCHMARKS.md`.

#![forbid(unsafe_code)]

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod conn;
pub mod error;
pub mod messages;
#[cfg(feature = "cli")]
pub mod session;
pub mod stream;
pub mod tasks;

pub use client::{is_idempotent, Client, ClientConfig, Resolved};
pub use conn::{Connection, Failure, Signer};
pub use error::{Error, Result};
pub use stream::{Events, RawEvents, RawItem, StreamItem};
