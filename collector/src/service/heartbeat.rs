//! `node.heartbeat` (the node's key, or the cluster secret):
//! `{"id","addr","weight","state","stats"}`
//! → `{"view": version, "nodes"?}`, the version in force after this
//! heartbeat, with the view's nodes when the heartbeat's `known_view` is
//! another version. A standby standing by sends no nodes: app servers take
//! their peers from the collector that feeds the balancers, not from two
//! views numbered apart.

use dsf_common::pipeline::Call;
use dsf_common::view::{Heartbeat, MAX_WEIGHT};
use dsf_common::Error;
use dsf_proto::cluster::HeartbeatReply;

use super::State;
use crate::members::is_host_port;

/// Longest node id or address accepted (the balancer's own limit).
pub const MAX_FIELD: usize = 256;

/// Checks what serde cannot: lengths, the weight's range and the
/// address's shape.
pub fn validate(hb: &Heartbeat) -> Result<(), Error> {
    if !(1..=MAX_WEIGHT).contains(&hb.weight) {
        return Err(Error::bad_request(format!(
            "weight: 1 to {MAX_WEIGHT}, got {} (node {:?})",
            hb.weight, hb.id
        )));
    }
    if hb.id.is_empty() || hb.id.len() > MAX_FIELD {
        return Err(Error::bad_request(format!(
            "id: 1 to {MAX_FIELD} bytes, got {}",
            hb.id.len()
        )));
    }
    if hb.addr.len() > MAX_FIELD || !is_host_port(&hb.addr) {
        return Err(Error::bad_request(format!(
            "addr: HOST:PORT where clients reach node {:?}, got {:?}",
            hb.id, hb.addr
        )));
    }
    Ok(())
}

/// The handler.
pub fn handle(call: &Call<State>, hb: Heartbeat) -> Result<HeartbeatReply, Error> {
    let cluster = call.server();
    validate(&hb)?;
    let version = cluster.heartbeat(&hb, super::proven(call, &hb.id))?;
    // The nodes only when the sender holds another version: most replies
    // stay a few bytes.
    let nodes = match hb.known_view {
        Some(v) if v == version => None,
        _ if cluster.role() == "standby" => None,
        _ => {
            let view = cluster.view();
            (view.version == version).then(|| view.nodes.clone())
        }
    };
    Ok(HeartbeatReply {
        view: version,
        nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_common::view::{NodeState, Stats};

    fn hb(id: &str, addr: &str) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            addr: addr.into(),
            proxy_addr: None,
            weight: 1,
            state: NodeState::Up,
            stats: Stats::default(),
            known_view: None,
        }
    }

    #[test]
    fn ids_and_addresses_are_checked() {
        validate(&hb("a", "127.0.0.1:7000")).unwrap();
        validate(&hb("a", "app1.local:7000")).unwrap();
        for (id, addr) in [("", "h:1"), ("a", "h"), ("a", ":1"), ("a", "h:99999")] {
            assert!(validate(&hb(id, addr)).is_err(), "{id} {addr}");
        }
        assert!(validate(&hb(&"x".repeat(257), "h:1")).is_err());
    }
}
