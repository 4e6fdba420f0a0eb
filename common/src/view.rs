//! The view of the cluster that the collector pushes to every balancer and
//! that `lb.view` returns (a version that only grows and the member nodes),
//! and the heartbeat app servers send the collector.

use serde::{Deserialize, Serialize};

/// Default weight of a node.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One version of the cluster's membership and load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// Only grows; a balancer ignores a view older than the one it holds.
    pub version: u64,
    pub nodes: Vec<NodeView>,
}

/// A member as the view describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    /// Stable id (default: the advertised address); a node restarted under
    /// the same id takes back the same ring points.
    pub id: String,
    /// Where clients connect, `host:port`.
    pub addr: String,
    /// Relative share of keys; 0 takes no new keys.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: NodeState,
    #[serde(default)]
    pub load: Load,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// Whether a node takes new keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving and taking new keys.
    #[default]
    Up,
    /// Finishing what it has; gets no new keys.
    Draining,
}

/// The load figures a node last reported (smoothed by the collector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    #[serde(default)]
    pub conns: u64,
    #[serde(default)]
    pub inflight: u64,
    #[serde(default)]
    pub rps: f64,
    #[serde(default)]
    pub p99_ms: f64,
}

/// `node.heartbeat`'s body: an app server saying it is alive, where, and
/// how loaded. Sent to the collector every second under the cluster secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Stable node id (default: the advertised address).
    pub id: String,
    /// Where clients connect, `host:port`.
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: NodeState,
    #[serde(default)]
    pub stats: Stats,
}

/// What a node measures about itself, over the last heartbeat interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Connections open now.
    #[serde(default)]
    pub conns: u64,
    /// Requests being handled now.
    #[serde(default)]
    pub inflight: u64,
    /// Requests waiting for a worker now.
    #[serde(default)]
    pub queue: u64,
    /// Requests per second answered.
    #[serde(default)]
    pub rps: f64,
    /// Error replies per second.
    #[serde(default)]
    pub errors_per_s: f64,
    /// Median latency, milliseconds.
    #[serde(default)]
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    #[serde(default)]
    pub p99_ms: f64,
}

/// `node.leave`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leave {
    pub id: String,
}

/// A static member as flags give it: `ID=HOST:PORT[,WEIGHT]`, or
/// `HOST:PORT[,WEIGHT]` with the address as its id. lb-server's `--backend`
/// and the collector's `--target` both read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub id: String,
    pub addr: String,
    pub weight: u32,
}

impl std::str::FromStr for MemberSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<MemberSpec, String> {
        let usage =
            "expected ID=HOST:PORT[,WEIGHT] or HOST:PORT[,WEIGHT], e.g. app1=10.0.0.5:7000,2";
        let (rest, weight) = match s.rsplit_once(',') {
            Some((r, w)) => {
                let w: u32 = w
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?}: weight {w:?} is not a whole number; {usage}"))?;
                (r, w)
            }
            None => (s, DEFAULT_WEIGHT),
        };
        let (id, addr) = match rest.split_once('=') {
            Some((id, addr)) => (id.trim(), addr.trim()),
            None => (rest.trim(), rest.trim()),
        };
        if id.is_empty() {
            return Err(format!("{s:?}: empty id; {usage}"));
        }
        if !is_host_port(addr) {
            return Err(format!("{s:?}: {addr:?} is not HOST:PORT; {usage}"));
        }
        Ok(MemberSpec {
            id: id.to_string(),
            addr: addr.to_string(),
            weight,
        })
    }
}

/// Whether `s` looks like `host:port` with a numeric port: a host name or
/// IPv4 address without `:` or spaces, or a bracketed IPv6 address
/// (`[::1]:7000`). A stray `:` (`web1:10.0.0.1:8080`, a `:` typed for `=`)
/// is refused rather than taken as a host.
pub fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        }
    };
    host_ok && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_reads_the_design_shape_with_defaults() {
        let v: View = serde_json::from_str(
            r#"{"version":3,"nodes":[{"id":"a","addr":"127.0.0.1:7000","weight":2,"state":"draining","load":{"conns":1,"inflight":0,"rps":2.5,"p99_ms":1.0}},{"id":"b","addr":"127.0.0.1:7001"}]}"#,
        )
        .unwrap();
        assert_eq!(v.version, 3);
        assert_eq!(v.nodes[0].state, NodeState::Draining);
        assert_eq!(v.nodes[1].weight, 1);
        assert_eq!(v.nodes[1].state, NodeState::Up);
        let back: View = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn member_specs_parse_with_and_without_id_and_weight() {
        let m: MemberSpec = "app1=10.0.0.5:7000,3".parse().unwrap();
        assert_eq!(
            (m.id.as_str(), m.addr.as_str(), m.weight),
            ("app1", "10.0.0.5:7000", 3)
        );
        let m: MemberSpec = "10.0.0.5:7000".parse().unwrap();
        assert_eq!((m.id.as_str(), m.weight), ("10.0.0.5:7000", 1));
        assert_eq!("a=h:1,0".parse::<MemberSpec>().unwrap().weight, 0);
        assert_eq!(
            "v6=[::1]:7000".parse::<MemberSpec>().unwrap().addr,
            "[::1]:7000"
        );
        for bad in [
            "",
            "a=",
            "a=host",
            "a=host:port",
            "a=h:1,x",
            "=h:1",
            ":80",
            "web1:10.0.0.1:8080",
            "web1=10.0.0.1:8080:2",
            "web1=10.0.0.1:8080 a=b:1",
            "a=[nope]:1",
        ] {
            let e = bad.parse::<MemberSpec>().unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_fields_and_states_are_refused() {
        assert!(serde_json::from_str::<View>(r#"{"version":1,"nodes":[],"x":1}"#).is_err());
        assert!(serde_json::from_str::<NodeState>(r#""gone""#).is_err());
    }
}
