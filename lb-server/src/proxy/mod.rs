//! Proxy mode: connections spliced to a backend of the view, for clients
//! that cannot speak dsf.
//!
//! - [`mqtt`]: the CONNECT parser that routing reads.
pub mod mqtt;
