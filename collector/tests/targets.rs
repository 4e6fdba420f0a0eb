//! Static `--target`s: servers that send no heartbeats, fronted by the
//! balancer through the collector's TCP health checks.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const INTERVAL: Duration = Duration::from_millis(100);

fn target_state(col: &collector::server::Running, id: &str) -> String {
    let status = Client::app(col.listen_addr)
        .call("cluster.status", json!({}))
        .unwrap();
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn a_target_whose_port_closes_is_evicted_after_three_failed_checks_and_returns_after_two_good_ones()
{
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let lb = start_lb();
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.targets = vec![format!("web={addr},3").parse().unwrap()];
    s.check_interval = INTERVAL;
    let col = start_collector(s);

    wait_until("the target in lb.view", WAIT, || {
        ids(&lb_view(&lb)) == ["web"]
    });
    let v = lb_view(&lb);
    assert_eq!(v["nodes"][0]["weight"], 3);
    assert_eq!(v["nodes"][0]["addr"], addr.to_string());

    drop(server);
    let closed = Instant::now();
    wait_until("the target gone from lb.view", WAIT, || {
        ids(&lb_view(&lb)).is_empty()
    });
    // Three failed checks, one interval apart, take two intervals at least.
    assert!(closed.elapsed() >= INTERVAL * 2, "{:?}", closed.elapsed());
    assert_eq!(target_state(&col, "web"), "down");

    let _server = TcpListener::bind(addr).unwrap();
    let reopened = Instant::now();
    wait_until("the target back in lb.view", WAIT, || {
        ids(&lb_view(&lb)) == ["web"]
    });
    assert!(reopened.elapsed() >= INTERVAL, "{:?}", reopened.elapsed());
    assert_eq!(target_state(&col, "web"), "up");
}

#[test]
fn a_heartbeat_cannot_take_over_a_targets_id() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = start_lb();
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.targets = vec![format!("web={}", server.local_addr().unwrap())
        .parse()
        .unwrap()];
    let col = start_collector(s);
    let e = Client::cluster(col.listen_addr)
        .heartbeat(&heartbeat("web", "127.0.0.1:1"))
        .unwrap_err();
    assert_eq!(e.code(), dsf_common::ErrorCode::Conflict);
}
