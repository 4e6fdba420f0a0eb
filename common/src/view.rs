//! The view of the cluster that the collector pushes to every balancer and
//! that `lb.view` returns (a version that only grows and the member nodes),
//! and the heartbeat app servers send the collector.

pub use dsf_proto::cluster::{
    Heartbeat, Leave, Load, NodeState, NodeView, Stats, View, DEFAULT_WEIGHT, MAX_WEIGHT,
};

/// A static member as flags give it: `ID=HOST:PORT[,WEIGHT]`, or
/// `HOST:PORT[,WEIGHT]` with the address as its id. lb-server's `--backend`
/// and the collector's `--target` both read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub id: String,
    pub addr: String,
    pub weight: u32,
    /// `proxy=HOST:PORT`: where proxy mode splices to, when not `addr`.
    pub proxy_addr: Option<String>,
}

impl std::str::FromStr for MemberSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<MemberSpec, String> {
        let usage = "expected ID=HOST:PORT[,WEIGHT][,proxy=HOST:PORT] or HOST:PORT[,WEIGHT], e.g. app1=10.0.0.5:7000,2";
        let mut parts = s.split(',');
        let rest = parts.next().unwrap_or_default();
        let (mut weight, mut proxy_addr) = (None, None);
        for part in parts.map(str::trim) {
            if let Some(p) = part.strip_prefix("proxy=") {
                if proxy_addr.is_some() || !is_host_port(p) {
                    return Err(format!("{s:?}: proxy={p:?} is not one HOST:PORT; {usage}"));
                }
                proxy_addr = Some(p.to_string());
            } else if weight.is_none() && proxy_addr.is_none() {
                weight = Some(part.parse::<u32>().map_err(|_| {
                    format!("{s:?}: weight {part:?} is not a whole number; {usage}")
                })?);
            } else {
                return Err(format!("{s:?}: unexpected {part:?}; {usage}"));
            }
        }
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
            weight: weight.unwrap_or(DEFAULT_WEIGHT),
            proxy_addr,
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
        let m: MemberSpec = "a=10.0.0.5:7000,2,proxy=10.0.0.5:1883".parse().unwrap();
        assert_eq!(
            (m.weight, m.proxy_addr.as_deref()),
            (2, Some("10.0.0.5:1883"))
        );
        let m: MemberSpec = "b=10.0.0.6:7000,proxy=10.0.0.6:1883".parse().unwrap();
        assert_eq!(
            (m.weight, m.proxy_addr.as_deref()),
            (1, Some("10.0.0.6:1883"))
        );
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
            "a=h:1,proxy=broker",
            "a=h:1,proxy=b:1,proxy=c:2",
            "a=h:1,proxy=b:1,2",
            "a=h:1,2,3",
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
