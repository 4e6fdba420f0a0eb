//! Membership end to end: heartbeating nodes reach a real balancer's
//! `lb.view`, and silent, leaving and forged ones are handled as the issue
//! says.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsf_common::view::NodeState;
use dsf_common::ErrorCode;
use serde_json::json;
use support::*;

const ONE_SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_heartbeating_node_appears_in_the_balancer_view_within_a_second() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);

    let _node = Node::start(col.listen_addr, "a");
    wait_until("node a in lb.view", ONE_SECOND, || {
        ids(&lb_view(&lb)) == ["a"]
    });
    let v = lb_view(&lb);
    assert_eq!(v["nodes"][0]["state"], "up");
    assert_eq!(v["nodes"][0]["addr"], "127.0.0.1:17001");
    // Clients resolve to it.
    let r = Client::app(lb.client_addr)
        .call("lb.resolve", json!({"key": "k"}))
        .unwrap();
    assert_eq!(r["node"], "a");
}

#[test]
fn the_heartbeat_reply_carries_the_version_in_force() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let mut c = Client::cluster(col.listen_addr);
    let first = c.heartbeat(&heartbeat("a", "127.0.0.1:7001")).unwrap();
    let v1 = first["view"].as_u64().unwrap();
    assert_eq!(v1, col.view().version);
    // The same membership keeps the version; a change makes a greater one.
    let again = c.heartbeat(&heartbeat("a", "127.0.0.1:7001")).unwrap();
    assert_eq!(again["view"].as_u64(), Some(v1));
    let mut draining = heartbeat("a", "127.0.0.1:7001");
    draining.state = NodeState::Draining;
    let v2 = c.heartbeat(&draining).unwrap()["view"].as_u64().unwrap();
    assert!(v2 > v1);
}

#[test]
fn the_heartbeat_reply_carries_the_nodes_only_to_a_node_holding_another_version() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let mut c = Client::cluster(col.listen_addr);
    c.heartbeat(&heartbeat("b", "127.0.0.1:7002")).unwrap();
    let first = c.heartbeat(&heartbeat("a", "127.0.0.1:7001")).unwrap();
    let v = first["view"].as_u64().unwrap();
    let mut ids: Vec<&str> = first["nodes"]
        .as_array()
        .expect("a node that holds no view gets the nodes")
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["a", "b"]);
    assert_eq!(
        first["nodes"][0]["addr"]
            .as_str()
            .map(|a| a.starts_with("127.0.0.1:700")),
        Some(true)
    );
    let mut hb = heartbeat("a", "127.0.0.1:7001");
    hb.known_view = Some(v);
    let again = c.heartbeat(&hb).unwrap();
    assert_eq!(again["view"].as_u64(), Some(v));
    assert!(again.get("nodes").is_none(), "{again}");
    hb.known_view = Some(v - 1);
    assert!(c.heartbeat(&hb).unwrap()["nodes"].is_array());
}

#[test]
fn a_node_that_stops_heartbeating_is_gone_within_dead_after_plus_a_second() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let a = Node::start(col.listen_addr, "a");
    let _b = Node::start(col.listen_addr, "bb");
    wait_until("both nodes in lb.view", WAIT, || {
        ids(&lb_view(&lb)).len() == 2
    });

    a.kill();
    wait_until("a gone from lb.view", DEAD_AFTER + ONE_SECOND, || {
        ids(&lb_view(&lb)) == ["bb"]
    });
    let metrics = http_get(col.metrics_addr, "/metrics").1;
    assert!(
        metrics.contains("dsf_collector_evictions_total 1\n"),
        "{metrics}"
    );
}

#[test]
fn node_leave_removes_the_node_at_once() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let mut c = Client::cluster(col.listen_addr);
    c.heartbeat(&heartbeat("a", "127.0.0.1:7001")).unwrap();
    c.heartbeat(&heartbeat("b", "127.0.0.1:7002")).unwrap();
    wait_until("both in lb.view", ONE_SECOND, || {
        ids(&lb_view(&lb)).len() == 2
    });

    let before = lb.view().version;
    assert_eq!(c.call("node.leave", json!({"id": "a"})).unwrap(), json!({}));
    // "At once": long before a's heartbeat would be missed.
    wait_until("a gone from lb.view", DEAD_AFTER / 2, || {
        ids(&lb_view(&lb)) == ["b"]
    });
    assert!(lb.view().version > before);
    // Leaving again is harmless.
    assert_eq!(c.call("node.leave", json!({"id": "a"})).unwrap(), json!({}));
}

#[test]
fn a_draining_node_stays_in_the_view_as_draining() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let node = Node::start(col.listen_addr, "a");
    wait_until("a in lb.view", ONE_SECOND, || ids(&lb_view(&lb)) == ["a"]);
    node.set(|hb| hb.state = NodeState::Draining);
    wait_until("a draining in lb.view", ONE_SECOND, || {
        lb_view(&lb)["nodes"][0]["state"] == "draining"
    });
    // A draining node gets no new keys: with no other node, nothing resolves.
    let e = Client::app(lb.client_addr)
        .call("lb.resolve", json!({"key": "k"}))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
}

#[test]
fn forged_heartbeats_change_nothing() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let version = col.view().version;

    // Signed under "cluster" with the wrong secret.
    let mut forger = Client::connect(col.listen_addr, "cluster", b"not-the-secret");
    let e = forger
        .heartbeat(&heartbeat("evil", "127.0.0.1:6666"))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadSignature);
    let e = forger.call("node.leave", json!({"id": "x"})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadSignature);
    // A valid app key is not the cluster secret.
    let mut app = Client::app(col.listen_addr);
    let e = app
        .heartbeat(&heartbeat("evil", "127.0.0.1:6666"))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);

    assert_eq!(col.view().version, version);
    assert!(col.view().nodes.is_empty());
    let status = app.call("cluster.status", json!({})).unwrap();
    assert_eq!(status["nodes"], json!([]));
    holds_for(
        "the balancer sees no forged node",
        Duration::from_millis(300),
        || ids(&lb_view(&lb)).is_empty(),
    );
    let metrics = http_get(col.metrics_addr, "/metrics").1;
    assert!(
        metrics.contains("dsf_collector_refused_total 2\n"),
        "{metrics}"
    );
}

#[test]
fn bad_heartbeats_are_refused_with_what_to_fix() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let mut c = Client::cluster(col.listen_addr);
    for (body, want) in [
        (json!({"id": "", "addr": "127.0.0.1:1"}), "id"),
        (json!({"id": "a", "addr": "nowhere"}), "addr"),
        (
            json!({"id": "a", "addr": "h:1", "state": "gone"}),
            "expected one of `up`, `draining`, `degraded`",
        ),
        (json!({"id": "a", "addr": "h:1", "colour": 1}), "colour"),
    ] {
        let e = c.call("node.heartbeat", body.clone()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest, "{body}");
        assert!(e.to_string().contains(want), "{body}: {e}");
    }
    let e = c.call("node.jump", json!({})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::UnknownType);
    assert!(col.view().nodes.is_empty());
}

/// Run by [`a_killed_node_process_is_evicted`] in a child process: a node
/// heartbeating until it is killed.
#[test]
#[ignore = "run only as a child process"]
fn child_node() {
    let Ok(addr) = std::env::var("DSF_COLLECTOR_TEST_CHILD") else {
        return;
    };
    let collector: SocketAddr = addr.parse().unwrap();
    let hb = Arc::new(Mutex::new(heartbeat("child", "127.0.0.1:17999")));
    beat(collector, hb, Arc::new(AtomicBool::new(false)));
}

#[test]
fn a_killed_node_process_is_evicted() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_node", "--ignored", "--nocapture"])
        .env("DSF_COLLECTOR_TEST_CHILD", col.listen_addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the child node in lb.view", WAIT, || {
        ids(&lb_view(&lb)) == ["child"]
    });

    child.kill().unwrap(); // SIGKILL: no leave, the socket just closes.
    child.wait().unwrap();
    wait_until(
        "the child gone from lb.view",
        DEAD_AFTER + ONE_SECOND,
        || ids(&lb_view(&lb)).is_empty(),
    );
}
