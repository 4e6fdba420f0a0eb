//! Help for tests that start servers as separate processes, that hold a
//! `/metrics` page to Prometheus's own checker, and that need real MQTT
//! peers ([`mqtt`]).

pub mod mqtt;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port [`free_port`] hands out.
const LOW: u32 = 12_000;
/// One past the highest: Linux hands out 32768–60999 to outgoing
/// connections (`ip_local_port_range`), so a port below it is never taken
/// by one.
const HIGH: u32 = 32_000;

/// A loopback port free now and below the range Linux hands out to
/// outgoing connections, for a server a test starts as another process
/// (or stops and starts again on the same port). A port bound with
/// `127.0.0.1:0` comes from that range, and between its release and the
/// server's bind any connection this machine opens may take it (a
/// MariaDB failing with "Address already in use" in CI was that).
///
/// Ports are handed out in turn from a start that differs by process, and
/// each is checked free when handed out; one process never gets the same
/// port twice.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = HIGH - LOW;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{HIGH} on 127.0.0.1");
}

/// Holds a `/metrics` page to `promtool check metrics` (Debian's
/// `prometheus` package; `scripts/test` installs it and sets
/// `DSF_NEED_PROMTOOL`, so that a missing promtool fails the test there
/// rather than skipping the check).
pub fn assert_promtool_accepts(page: &str) {
    match promtool_check(page) {
        Some((ok, said)) => assert!(ok, "promtool check metrics:\n{said}\n{page}"),
        None if std::env::var_os("DSF_NEED_PROMTOOL").is_some() => {
            panic!("promtool is missing and DSF_NEED_PROMTOOL is set: scripts/need promtool installs it")
        }
        None => eprintln!(
            "promtool not installed: skipped `promtool check metrics` (scripts/need promtool installs it)"
        ),
    }
}

/// `promtool check metrics` on `page`: whether it passed, and what it
/// said; `None` when promtool cannot be run.
fn promtool_check(page: &str) -> Option<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(page.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), said))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_outgoing_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|&p| (LOW..HIGH).contains(&(p as u32))));
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}
