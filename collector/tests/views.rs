//! Views end to end: re-sent every second, versions that only grow across
//! a collector restart, a restarted balancer caught up, one unreachable
//! balancer delaying nobody.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use dsf_common::view::{NodeView, View};
use dsf_common::wire::now_ms;
use serde_json::json;
use support::*;

const ONE_SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_stopped_collector_leaves_the_balancer_serving_and_a_restarted_one_sends_a_greater_version() {
    let lb = start_lb();
    let first = start_collector(collector_settings(&[lb.cluster_addr]));
    let addr = first.listen_addr;
    let _node = Node::start(addr, "a");
    wait_until("a in lb.view", WAIT, || ids(&lb_view(&lb)) == ["a"]);
    let old = lb.view().version;

    first.stop().unwrap();
    // Longer than dead-after and than a re-send: the balancer keeps the
    // last view, and clients keep resolving to the node.
    holds_for(
        "the balancer keeps its last view",
        DEAD_AFTER + ONE_SECOND,
        || {
            let v = lb_view(&lb);
            v["version"] == old && ids(&v) == ["a"]
        },
    );
    let r = Client::app(lb.client_addr)
        .call("lb.resolve", json!({"key": "k"}))
        .unwrap();
    assert_eq!(r["node"], "a");

    // Same port, so the node's heartbeats find the new collector.
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.listen = addr;
    let second = start_collector(s);
    wait_until("a newer view with a in it", WAIT, || {
        let v = lb_view(&lb);
        v["version"].as_u64().unwrap() > old && ids(&v) == ["a"]
    });
    assert!(second.view().version > old);
}

#[test]
fn a_restarted_balancer_has_the_view_within_a_second() {
    let lb = start_lb();
    let cluster_addr = lb.cluster_addr;
    let col = start_collector(collector_settings(&[cluster_addr]));
    let _node = Node::start(col.listen_addr, "a");
    wait_until("a in lb.view", WAIT, || ids(&lb_view(&lb)) == ["a"]);

    lb.stop().unwrap();
    let lb = lb_server::server::start(lb_settings(cluster_addr)).unwrap();
    assert_eq!(lb.view().version, 0, "a new balancer starts empty");
    wait_until("the restarted balancer has a", ONE_SECOND, || {
        ids(&lb_view(&lb)) == ["a"]
    });
    assert_eq!(lb.view().version, col.view().version);
}

#[test]
fn one_unreachable_balancer_does_not_delay_the_others() {
    // One that accepts connections and never answers, one that is not
    // there at all, and a real one.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let lb = start_lb();
    let lbs: [SocketAddr; 3] = [silent.local_addr().unwrap(), gone, lb.cluster_addr];
    let col = start_collector(collector_settings(&lbs));
    wait_for_first_push(&lb);

    let _node = Node::start(col.listen_addr, "a");
    wait_until("a in the working balancer's view", ONE_SECOND, || {
        ids(&lb_view(&lb)) == ["a"]
    });
    let status = Client::app(col.listen_addr)
        .call("cluster.status", json!({}))
        .unwrap();
    let balancers = status["balancers"].as_array().unwrap();
    let by_addr = |a: SocketAddr| {
        balancers
            .iter()
            .find(|b| b["addr"] == a.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(by_addr(lb.cluster_addr)["connected"], true);
    assert_eq!(by_addr(gone)["connected"], false);
    assert!(by_addr(gone)["last_error"]
        .as_str()
        .unwrap()
        .contains("connect"));
}

#[test]
fn loads_reach_the_balancer_with_the_resend_without_a_new_version() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let node = Node::start(col.listen_addr, "a");
    wait_until("a in lb.view", ONE_SECOND, || ids(&lb_view(&lb)) == ["a"]);
    let version = lb.view().version;

    node.set(|hb| hb.stats.conns = 40);
    // Smoothed, so it climbs toward 40 over a few seconds; the re-send
    // carries it every second.
    wait_until("the load climbs in the balancer's view", WAIT, || {
        lb_view(&lb)["nodes"][0]["load"]["conns"].as_u64().unwrap() >= 20
    });
    assert_eq!(
        lb.view().version,
        version,
        "loads alone make no new version"
    );
}

#[test]
fn a_balancer_holding_a_newer_version_is_overtaken() {
    // A balancer given a version far ahead of the clock (as by a collector
    // whose host clock was ahead, before a restart on a corrected clock).
    let lb = start_lb();
    let ahead = now_ms() + 1_000_000_000;
    let stale = View {
        version: ahead,
        nodes: vec![NodeView {
            id: "old".into(),
            addr: "127.0.0.1:7999".into(),
            proxy_addr: None,
            weight: 1,
            state: Default::default(),
            load: Default::default(),
        }],
    };
    let applied = Client::cluster(lb.cluster_addr)
        .call("lb.set_view", serde_json::to_value(&stale).unwrap())
        .unwrap();
    assert_eq!(applied["applied"].as_u64(), Some(ahead));

    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    let _node = Node::start(col.listen_addr, "a");
    let start = Instant::now();
    wait_until("the collector's view replaces the newer one", WAIT, || {
        let v = lb_view(&lb);
        v["version"].as_u64().unwrap() > ahead && ids(&v) == ["a"]
    });
    assert!(col.view().version > ahead, "after {:?}", start.elapsed());
}

#[test]
fn a_starting_collector_waits_before_its_first_push() {
    let lb = start_lb();
    let old = View {
        version: 1,
        nodes: vec![NodeView {
            id: "a".into(),
            addr: "127.0.0.1:7001".into(),
            proxy_addr: None,
            weight: 1,
            state: Default::default(),
            load: Default::default(),
        }],
    };
    Client::cluster(lb.cluster_addr)
        .call("lb.set_view", serde_json::to_value(&old).unwrap())
        .unwrap();

    let mut s = collector_settings(&[lb.cluster_addr]);
    s.warmup = Duration::from_millis(800);
    let started = Instant::now();
    let _col = start_collector(s);
    // Node a has not heartbeated yet: an early push would drop it.
    holds_for(
        "the balancer keeps its view during warm-up",
        Duration::from_millis(400),
        || lb.view().version == 1,
    );
    wait_until("the first push after warm-up", WAIT, || {
        lb.view().version > 1
    });
    assert!(started.elapsed() >= Duration::from_millis(800));
}
