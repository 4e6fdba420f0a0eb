//! Node keys over real sockets: with `--node-keys` each app server's
//! heartbeats speak only for its own id; without them a live node's address
//! is not taken over; weights out of range are refused; and no bad member
//! stops the view flowing to the balancer for the others.

mod support;

use std::time::Duration;

use dsf_common::wire::AppKeys;
use dsf_common::ErrorCode;
use serde_json::json;
use support::*;

const KEY_A: &[u8] = b"node-a-key";
const KEY_B: &[u8] = b"node-b-key";

fn node_keys() -> AppKeys {
    let mut keys = AppKeys::new();
    keys.insert("node:a", KEY_A);
    keys.insert("node:b", KEY_B);
    keys
}

#[test]
fn with_node_keys_a_heartbeat_speaks_only_for_its_own_node() {
    let lb = start_lb();
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.node_keys = Some(node_keys());
    let col = start_collector(s);
    wait_for_first_push(&lb);

    let mut a = Client::connect(col.listen_addr, "node:a", KEY_A);
    a.heartbeat(&heartbeat("a", "127.0.0.1:17101")).unwrap();
    wait_until("a in the view", WAIT, || ids(&lb_view(&lb)) == ["a"]);

    // b's key cannot speak for a: not to move it, not to make it leave.
    let mut b = Client::connect(col.listen_addr, "node:b", KEY_B);
    let e = b.heartbeat(&heartbeat("a", "127.0.0.1:17666")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    assert!(e.to_string().contains("speaks only for \"b\""), "{e}");
    let e = b.call("node.leave", json!({"id": "a"})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    // The cluster secret no longer speaks for nodes here.
    let e = Client::cluster(col.listen_addr)
        .heartbeat(&heartbeat("c", "127.0.0.1:17103"))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    assert!(e.to_string().contains("only under node keys"), "{e}");
    // A node key signs heartbeats and leaves alone.
    let e = a.call("cluster.status", json!({})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Forbidden);
    // A key for a node the collector does not list is unknown.
    let e = Client::connect(col.listen_addr, "node:z", b"made-up")
        .heartbeat(&heartbeat("z", "127.0.0.1:17104"))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized, "{e}");
    assert!(
        e.to_string()
            .contains("not in this collector's --node-keys"),
        "{e}"
    );

    // a itself, proven by its key, may move (a restart elsewhere).
    a.heartbeat(&heartbeat("a", "127.0.0.1:17201")).unwrap();
    wait_until("a at its new address", WAIT, || {
        lb_view(&lb)["nodes"][0]["addr"] == "127.0.0.1:17201"
    });
    b.heartbeat(&heartbeat("b", "127.0.0.1:17102")).unwrap();
    wait_until("a and b in the view", WAIT, || {
        ids(&lb_view(&lb)) == ["a", "b"]
    });
    b.call("node.leave", json!({"id": "b"})).unwrap();
    wait_until("b gone", WAIT, || ids(&lb_view(&lb)) == ["a"]);
}

#[test]
fn without_node_keys_a_live_nodes_address_is_not_taken_over() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let node = Node::start(col.listen_addr, "a");
    let addr = node.hb.lock().unwrap().addr.clone();
    wait_until("a in the view", WAIT, || ids(&lb_view(&lb)) == ["a"]);

    let mut forger = Client::cluster(col.listen_addr);
    let e = forger
        .heartbeat(&heartbeat("a", "127.0.0.1:17666"))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    let msg = e.to_string();
    assert!(msg.contains(&addr) && msg.contains("--node-keys"), "{msg}");
    holds_for("a keeps its address", Duration::from_millis(500), || {
        lb_view(&lb)["nodes"][0]["addr"] == addr.as_str()
    });
    // Once a is silent long enough to be evicted, the id is free again.
    node.kill();
    wait_until("a evicted", WAIT, || ids(&lb_view(&lb)).is_empty());
    forger
        .heartbeat(&heartbeat("a", "127.0.0.1:17666"))
        .unwrap();
}

#[test]
fn bad_members_are_refused_and_the_view_keeps_flowing_for_the_others() {
    let lb = start_lb();
    let col = start_collector(collector_settings(&[lb.cluster_addr]));
    wait_for_first_push(&lb);
    let good = Node::start(col.listen_addr, "good");
    wait_until("good in the view", WAIT, || ids(&lb_view(&lb)) == ["good"]);

    let mut bad = Client::cluster(col.listen_addr);
    for (weight, id) in [(0, "w0"), (1001, "w1001"), (u32::MAX, "wmax")] {
        let mut hb = heartbeat(id, "127.0.0.1:17301");
        hb.weight = weight;
        let e = bad.heartbeat(&hb).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(e.to_string().contains("weight: 1 to 1000"), "{e}");
    }
    // While refused heartbeats keep coming, a change of the good node
    // still reaches the balancer.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (stop, addr) = (stop.clone(), col.listen_addr);
        std::thread::spawn(move || {
            let mut bad = Client::cluster(addr);
            let mut refused = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut hb = heartbeat("bad", "127.0.0.1:17302");
                hb.weight = 5000;
                assert!(bad.heartbeat(&hb).is_err());
                refused += 1;
            }
            refused
        })
    };
    good.set(|hb| hb.weight = 7);
    wait_until("good's new weight in the balancer's view", WAIT, || {
        lb_view(&lb)["nodes"][0]["weight"] == 7
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(hammer.join().unwrap() > 0);
    assert_eq!(ids(&lb_view(&lb)), ["good"]);
}
