//! `lb-server`: Consistent-hash balancer (MD5 virtual nodes, weights, bounded load), usable standalone.
//!
//! - [`ring`]: the consistent-hash ring built from a view: MD5 points,
//!   weights, bounded load, successors for failover, each node's share.
//! - [`policy`]: the `--policy` choices (`ring`, `round-robin`, `random`,
//!   `least-loaded`) over one view, shared between threads.

#![forbid(unsafe_code)]

pub mod policy;
pub mod ring;
