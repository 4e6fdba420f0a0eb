//! One `check` thread per static `--target`: a TCP connect every interval
//! (1 s by default), the result handed to the member table, which applies
//! rise and fall. A connect that succeeds is closed at once: the check says
//! only that something accepts connections on the port, which is all a
//! server that sends no heartbeats lets us know.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::members::Target;

/// Default time between checks of one target.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a single connect may take; shorter when checks come faster.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether something accepts TCP connections at `addr` within `timeout`.
pub fn probe(addr: &str, timeout: Duration) -> Result<(), std::io::Error> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "resolves to no address");
    // Resolved on every check: a target given by name may move.
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The loop of one `check` thread; returns when the cluster stops.
pub fn run_checker(target: Target, cluster: Arc<Cluster>, interval: Duration) {
    let timeout = interval.min(MAX_CONNECT_TIMEOUT);
    loop {
        let started = Instant::now();
        let result = probe(&target.addr, timeout);
        if let Err(e) = &result {
            log::debug!("check of {} at {} failed: {e}", target.id, target.addr);
        }
        cluster.check(&target.id, result.is_ok());
        if cluster.wait_stop(interval.saturating_sub(started.elapsed())) {
            return;
        }
    }
}
