//! The drain layer: while a server drains for shutdown, every new request
//! is answered `overloaded` without being run, so that its client learns
//! from a reply, not from a closed connection, that it may send it (write
//! or not) to another node. It runs on the reactor, before a request takes
//! a worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::error::Error;

/// Whether the server drains; set once, never cleared.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    node: OnceLock<String>,
}

// === impl Drain ===

impl Drain {
    /// Names the node in refusals (once known).
    pub fn set_node(&self, node: &str) {
        let _ = self.node.set(node.to_string());
    }

    /// Starts draining: new requests are refused from now on.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The refusal of a request of type `kind` while draining.
    pub fn refusal(&self, kind: &str) -> Error {
        let node = self.node.get().map_or("this node", String::as_str);
        Error::Overloaded(format!(
            "node {node} is draining for shutdown: {kind} was not run; send it to another node"
        ))
    }
}
