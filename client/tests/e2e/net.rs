//! Cut links with nftables, inside a network namespace of the test's own
//! (`scripts/faults` makes one with `unshare --net`: its own loopback, so a
//! rule here never touches the machine's traffic).
//!
//! Links are told apart by the user id of the socket that opened them
//! (`meta skuid`: each app server runs under its own with
//! [`super::Spec::own_uids`]) and the port they go to; a connection so
//! matched is marked in conntrack, so its packets are dropped both ways,
//! or one way only.

use std::process::Command;

/// The table every rule goes in; dropped to heal.
const TABLE: &str = "dsf_faults";

/// Whether this process runs in a network namespace other than the one
/// `scripts/faults` was started in (which it names in
/// `DSF_FAULTS_HOST_NETNS` before it makes the test's own).
pub fn in_own_netns() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let host = std::env::var_os("DSF_FAULTS_HOST_NETNS");
    matches!((ours, host), (Some(a), Some(b)) if a.as_os_str() != b)
}

/// Whether the link-cutting scenarios can run here; when they cannot, a
/// test returns early saying why, unless `DSF_NEED_FAULTS=1`
/// (`scripts/faults` sets it), which makes it fail instead.
pub fn can_cut(test: &str) -> bool {
    if in_own_netns() {
        return true;
    }
    let why = "it cuts links with nftables, so it runs only in a network namespace of its own: run it through scripts/faults";
    assert!(
        std::env::var("DSF_NEED_FAULTS").as_deref() != Ok("1"),
        "{test}: {why}"
    );
    eprintln!("{test}: skipped: {why}");
    false
}

/// Which way a cut drops packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the opener of the connection to the port only.
    Out,
    /// Back from the port to the opener only.
    Back,
    /// Both.
    Both,
}

/// The rules in force; healed (the table dropped) on drop.
pub struct Net {
    mark: u32,
}

// === impl Net ===

impl Net {
    /// An empty table with an output chain (every packet on loopback is
    /// sent locally, so output sees them all). Make it before the cluster
    /// starts: its rule turns connection tracking on in the namespace, so
    /// every connection is tracked from its first packet (one picked up
    /// midway may be judged invalid, and then no mark would hold it).
    pub fn new() -> Net {
        let _ = nft(&format!("delete table inet {TABLE}"));
        nft(&format!("add table inet {TABLE}")).unwrap();
        nft(&format!(
            "add chain inet {TABLE} out {{ type filter hook output priority 0 ; }}"
        ))
        .unwrap();
        let net = Net { mark: 0 };
        net.track();
        net
    }

    fn track(&self) {
        nft(&format!("add rule inet {TABLE} out ct state new counter")).unwrap();
    }

    /// Cuts the connections that user `uid` opens to `port`: new ones and
    /// those already open.
    ///
    /// `meta skuid` reads the owner of the socket's open file, so it stops
    /// matching once the program closes the socket; the kernel then still
    /// sends what the socket held (a request queued behind the cut,
    /// retransmitted after the program gave up on it and closed). The first
    /// packet matched therefore marks the connection in conntrack, and the
    /// mark drops the rest, whoever owns them by then.
    pub fn cut(&mut self, uid: u32, port: u16, way: Way) {
        self.mark += 1;
        let m = self.mark;
        let rule = |r: String| nft(&format!("add rule inet {TABLE} out {r}")).unwrap();
        rule(format!("meta skuid {uid} tcp dport {port} ct mark set {m}"));
        if way != Way::Back {
            rule(format!("meta skuid {uid} tcp dport {port} drop"));
            rule(format!("ct mark {m} ct direction original drop"));
        }
        if way != Way::Out {
            rule(format!("ct mark {m} ct direction reply drop"));
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        nft(&format!("flush chain inet {TABLE} out")).unwrap();
        self.track();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {TABLE}"));
    }
}

fn nft(cmd: &str) -> Result<(), String> {
    let out = Command::new("nft")
        .args(cmd.split(' '))
        .output()
        .map_err(|e| format!("running nft (scripts/need faults installs nftables): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
