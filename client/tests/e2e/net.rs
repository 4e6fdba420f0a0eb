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
    pub fn cut(&mut self, uid: u32, port: u16, way: Way) {
        self.mark += 1;
        let m = self.mark;
        // The replies belong to the connection the opener's packets mark
        // (marked first, before the opener's own are dropped).
        if way != Way::Out {
            nft(&format!(
                "add rule inet {TABLE} out meta skuid {uid} tcp dport {port} ct mark set {m}"
            ))
            .unwrap();
        }
        // Outbound, no state is needed: the socket's owner says whose it is.
        if way != Way::Back {
            nft(&format!(
                "add rule inet {TABLE} out meta skuid {uid} tcp dport {port} drop"
            ))
            .unwrap();
        }
        if way != Way::Out {
            nft(&format!(
                "add rule inet {TABLE} out ct mark {m} ct direction reply drop"
            ))
            .unwrap();
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
