//! `dsf-common`: what every dsf process shares.
//!
//! - [`error`]: the wire's error codes and the library error mapping onto them.
//! - [`wire`]: frames, envelopes, HMAC-MD5 signing, app keys, the replay
//!   guard, and admission (all checks a server runs on a frame).
//! - [`view`]: the cluster view the collector pushes and balancers serve.
//! - [`reactor`]: the connection core every server runs: one mio loop with
//!   protocol adapters (framed dsf, byte pipes, first-bytes sniffing),
//!   outboxes for other threads, outbound links, budgets that hold under
//!   hostile peers, and graceful shutdown.
//! - [`pool`]: the fixed worker pool over a bounded queue.
//! - [`pipeline`]: the typed, layered request path every server runs:
//!   routes declared from catalogue types, and the layers (drain, auth,
//!   rate limits, metrics) between the reactor and a handler.
//! - [`stream`]: a blocking framed connection for the sending side.
//! - [`call`]: a signed, pipelined connection over it: the one signed-call
//!   client, used by the SDK, heartbeats and view pushes.
//! - [`signals`]: SIGTERM/SIGINT as a graceful shutdown request.
//! - [`config`]: one settings struct per binary, layered TOML file < `DSF_*`
//!   environment < flags, with `--config` and `--check-config`.
//! - [`testing`]: free ports for servers that tests start as processes.
//! - [`logging`]: env_logger set-up with millisecond timestamps and thread names.
//! - [`memory`]: freed buffers go back to the system (glibc's mmap threshold).

// Denied, not forbidden: `memory::return_large_frees` calls glibc's
// `mallopt`, which has no safe wrapper. Nothing else here is unsafe.
#![deny(unsafe_code)]

pub mod call;
pub mod clock;
pub mod config;
pub mod error;
pub mod logging;
pub mod memory;
pub mod pipeline;
pub mod pool;
pub mod reactor;
pub mod signals;
pub mod stream;
pub mod testing;
pub mod tls;
pub mod view;
pub mod wire;

pub use error::{Error, ErrorCode, Result};
