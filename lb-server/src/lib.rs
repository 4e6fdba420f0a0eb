//! `lb-server`: the consistent-hash balancer (MD5 virtual nodes, weights,
//! bounded load), usable standalone.
//!
//! - [`ring`]: the consistent-hash ring built from a view: MD5 points,
//!   weights, bounded load, successors for failover, each node's share.
//! - [`policy`]: the `--policy` choices (`ring`, `round-robin`, `random`,
//!   `least-loaded`) over one view, shared between threads.
//! - [`service`]: `lb.resolve`, `lb.view` and `lb.set_view` on the reactor,
//!   with the view builder that swaps new rings in.
//! - [`server`]: starting and stopping a balancer; static `--backend`s.
//! - [`config`]: the settings of the `lb-server` binary.

#![forbid(unsafe_code)]

pub mod config;
pub mod policy;
pub mod ring;
pub mod server;
pub mod service;
