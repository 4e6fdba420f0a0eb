//! Proxy mode with real peers: mosquitto brokers on loopback, paho-mqtt
//! devices (common/src/testing/devices.py), mosquitto_pub/mosquitto_sub, and a
//! balancer with an MQTT proxy listener in front.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use dsf_common::view::{NodeState, NodeView, View};
use lb_server::proxy::Protocol;
use lb_server::ring::{key_position, Ring, RingConfig};
use serde_json::json;
use support::*;

const DEVICES: usize = 200;

/// Where each device's messages went, by backend id.
fn landed_ids(run: &Run, brokers: &[&Broker]) -> BTreeMap<String, String> {
    let ids = backend_ids(brokers);
    run.landed
        .iter()
        .map(|(dev, broker)| (dev.clone(), ids[broker].clone()))
        .collect()
}

fn view(version: u64, brokers: &[&Broker]) -> View {
    View {
        version,
        nodes: brokers
            .iter()
            .enumerate()
            .map(|(i, b)| NodeView {
                id: format!("b{}", i + 1),
                addr: b.addr(),
                proxy_addr: None,
                weight: 1,
                state: NodeState::Up,
                load: Default::default(),
            })
            .collect(),
    }
}

#[test]
fn devices_land_where_their_pins_say_and_again_after_reconnecting() {
    let brokers = [Broker::start(), Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let lb = start_lb(settings(&backends(&b), &[Protocol::Mqtt]));
    let proxy = lb.proxy_addrs[0];

    let first = devices(proxy, &b, "dev", DEVICES);
    first.all_served(DEVICES);
    let landed = landed_ids(&first, &b);
    // Every device is where its pin says, and the pin is the plain ring's
    // owner of its client id.
    let pins = pins(&lb);
    assert_eq!(pins, landed);
    let ring = Ring::from_view(&view(0, &b), RingConfig::default()).unwrap();
    for (dev, node) in &landed {
        let owner = ring.owner(key_position(dev.as_bytes())).unwrap();
        assert_eq!(&ring.node(owner).id, node, "{dev}");
    }
    let on: Vec<usize> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| landed.values().filter(|n| n == id).count())
        .collect();
    assert!(
        on.iter().all(|&n| n > 20),
        "every broker has devices: {on:?}"
    );

    // They reconnect: each lands where it was.
    let again = devices(proxy, &b, "dev", DEVICES);
    again.all_served(DEVICES);
    assert_eq!(landed_ids(&again, &b), landed);

    let stats = proxy_stats(&lb);
    assert_eq!(stats["pins"]["created"], DEVICES as u64);
    assert_eq!(stats["pins"]["held"], DEVICES as u64);
    // Two runs of 200 devices (the observers connect to the brokers straight).
    assert_eq!(stats["accepted"], 2 * DEVICES as u64);
    assert!(stats["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn a_killed_broker_moves_only_its_devices_and_neither_its_return_nor_a_new_broker_moves_any() {
    let mut brokers = vec![Broker::start(), Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let lb = start_lb(settings(&backends(&b), &[Protocol::Mqtt]));
    let proxy = lb.proxy_addrs[0];
    let before = landed_ids(&devices(proxy, &b, "dev", DEVICES), &b);
    let ports: Vec<u16> = brokers.iter().map(|b| b.port).collect();

    // b2 crashes; its devices reconnect.
    let b2 = brokers.remove(1);
    b2.kill();
    let live: Vec<&Broker> = brokers.iter().collect();
    let live_ids: BTreeMap<String, String> = [
        (live[0].addr(), "b1".to_string()),
        (live[1].addr(), "b3".to_string()),
    ]
    .into();
    let run = devices(proxy, &live, "dev", DEVICES);
    run.all_served(DEVICES);
    let after: BTreeMap<String, String> = run
        .landed
        .iter()
        .map(|(d, a)| (d.clone(), live_ids[a].clone()))
        .collect();
    let mut moved = 0;
    for (dev, node) in &before {
        if node == "b2" {
            moved += 1;
            assert_ne!(after[dev], "b2");
        } else {
            assert_eq!(&after[dev], node, "{dev} was on a live broker and moved");
        }
    }
    assert!(moved > 20, "b2 had devices: {moved}");
    assert_eq!(pins(&lb), after, "the moved devices are pinned again");
    let stats = proxy_stats(&lb);
    assert_eq!(stats["pins"]["moved"], moved);

    // b2 comes back on its port: no device moves.
    brokers.insert(1, Broker::on(ports[1]));
    let b: Vec<&Broker> = brokers.iter().collect();
    let back = landed_ids(&devices(proxy, &b, "dev", DEVICES), &b);
    assert_eq!(back, after);

    // A fourth broker joins the view: no device moves; new devices reach it.
    brokers.push(Broker::start());
    let b: Vec<&Broker> = brokers.iter().collect();
    let applied = call(
        lb.cluster_addr,
        true,
        "lb.set_view",
        serde_json::to_value(view(1, &b)).unwrap(),
    )
    .unwrap();
    assert_eq!(applied["applied"], 1);
    let joined = landed_ids(&devices(proxy, &b, "dev", DEVICES), &b);
    assert_eq!(joined, after, "a new broker takes no pinned device");
    let fresh = landed_ids(&devices(proxy, &b, "new", DEVICES), &b);
    assert!(
        fresh.values().filter(|n| *n == "b4").count() > 10,
        "new devices do reach the new broker"
    );
}

#[test]
fn an_operator_lists_and_drops_pins() {
    let brokers = [Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let lb = start_lb(settings(&backends(&b), &[Protocol::Mqtt]));
    devices(lb.proxy_addrs[0], &b, "dev", 20).all_served(20);
    let all = pins(&lb);
    assert_eq!(all.len(), 20);
    // Pages of 7 walk the table once: 7, 7, 6, every pin exactly once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({"limit": 7});
        if let Some(a) = &after {
            body["after"] = a.clone().into();
        }
        let page = call(lb.cluster_addr, true, "lb.pins", body).unwrap();
        for p in page["pins"].as_array().unwrap() {
            seen.push(p["key"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, all.keys().cloned().collect::<Vec<_>>());
    let e = call(lb.cluster_addr, true, "lb.pins", json!({"after": "nope"})).unwrap_err();
    assert!(e.contains("cursor"), "{e}");
    // Only the cluster secret may read or drop them.
    let e = call(lb.cluster_addr, false, "lb.pins", json!({})).unwrap_err();
    assert!(e.contains("cluster secret"), "{e}");
    // One key, then every pin to b1.
    let dropped = call(lb.cluster_addr, true, "lb.unpin", json!({"key": "dev-0"})).unwrap();
    assert_eq!(dropped["dropped"], 1);
    assert!(!pins(&lb).contains_key("dev-0"));
    let on_b1 = pins(&lb).values().filter(|n| *n == "b1").count() as u64;
    let dropped = call(lb.cluster_addr, true, "lb.unpin", json!({"node": "b1"})).unwrap();
    assert_eq!(dropped["dropped"], on_b1);
    let e = call(lb.cluster_addr, true, "lb.unpin", json!({})).unwrap_err();
    assert!(e.contains("name a key or a node"), "{e}");
    assert!(pins(&lb).values().all(|n| n == "b2"));
}

#[test]
fn mosquitto_clients_publish_and_subscribe_through_the_proxy_in_31_311_and_5() {
    let brokers = [Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let lb = start_lb(settings(&backends(&b), &[Protocol::Mqtt]));
    let proxy = lb.proxy_addrs[0];
    for (version, paho) in [("mqttv31", "31"), ("mqttv311", "311"), ("mqttv5", "5")] {
        // paho devices in this version...
        devices_with(proxy, &b, &format!("p{paho}"), 20, paho).all_served(20);
        // ...and the mosquitto command-line clients: a retained message
        // published through the proxy reaches a subscriber through the
        // proxy. The publisher's id is one the ring puts on the
        // subscriber's broker.
        let port = proxy.port().to_string();
        let topic = format!("cli/{version}");
        let ring = Ring::from_view(&view(0, &b), RingConfig::default()).unwrap();
        let owner = |id: &str| {
            ring.node(ring.owner(key_position(id.as_bytes())).unwrap())
                .id
                .clone()
        };
        let publisher = (0..1000)
            .map(|i| format!("cli-pub-{i}"))
            .find(|id| owner(id) == owner("cli-sub"))
            .unwrap();
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-i",
                &publisher,
            ])
            .args([
                "-t",
                &topic,
                "-m",
                "hello through the proxy",
                "-q",
                "1",
                "-r",
            ])
            .status()
            .expect("mosquitto_pub (apt-get install mosquitto-clients)");
        assert!(status.success(), "{version}: mosquitto_pub");
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-i",
                "cli-sub",
            ])
            .args(["-t", &topic, "-C", "1", "-W", "20"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "hello through the proxy",
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(pins(&lb)["cli-sub"], owner("cli-sub"));
        call(lb.cluster_addr, true, "lb.unpin", json!({"key": "cli-sub"})).unwrap();
    }
}

#[test]
fn a_node_leaving_the_view_frees_only_its_pins() {
    let brokers = [Broker::start(), Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let lb = start_lb(settings(&backends(&b), &[Protocol::Mqtt]));
    let proxy = lb.proxy_addrs[0];
    let before = landed_ids(&devices(proxy, &b, "dev", DEVICES), &b);
    // b2 leaves the view (drained away by an operator, say) while it still
    // runs: its devices are routed by the ring without it, the rest stay.
    let without_b2 = View {
        version: 1,
        nodes: view(0, &b)
            .nodes
            .into_iter()
            .filter(|n| n.id != "b2")
            .collect(),
    };
    let applied = call(
        lb.cluster_addr,
        true,
        "lb.set_view",
        serde_json::to_value(&without_b2).unwrap(),
    )
    .unwrap();
    assert_eq!(applied["applied"], 1);
    let after = landed_ids(&devices(proxy, &b, "dev", DEVICES), &b);
    let ring = Ring::from_view(&without_b2, RingConfig::default()).unwrap();
    let mut moved = 0;
    for (dev, node) in &before {
        if node == "b2" {
            moved += 1;
            let owner = &ring
                .node(ring.owner(key_position(dev.as_bytes())).unwrap())
                .id;
            assert_eq!(
                &after[dev], owner,
                "{dev} goes to the ring's owner without b2"
            );
        } else {
            assert_eq!(&after[dev], node, "{dev} was not on b2 and moved");
        }
    }
    assert!(moved > 20, "b2 had devices: {moved}");
    assert_eq!(pins(&lb), after);
    assert_eq!(proxy_stats(&lb)["pins"]["moved"], moved);
}

#[test]
fn a_long_client_id_costs_a_short_pin() {
    let broker = Broker::start();
    let lb = start_lb(settings(&backends(&[&broker]), &[Protocol::Mqtt]));
    let long = "d".repeat(60_000);
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &lb.proxy_addrs[0].port().to_string(),
        ])
        .args(["-i", &long, "-t", "t", "-m", "x"])
        .status()
        .unwrap();
    assert!(st.success(), "a 60,000-byte client id is valid MQTT");
    let pins = pins(&lb);
    assert_eq!(
        pins.keys().next().map(String::len),
        Some(64),
        "shown: 64 bytes of it"
    );
    // Dropped by the whole key, which it is stored by (hashed).
    let dropped = call(lb.cluster_addr, true, "lb.unpin", json!({"key": long})).unwrap();
    assert_eq!(dropped["dropped"], 1);
}

#[test]
fn only_nodes_that_advertise_a_proxy_address_get_devices_when_any_does() {
    let broker = Broker::start();
    let lb = start_lb(settings(&[], &[Protocol::Mqtt]));
    // app-1 has a broker beside it; app-2 advertises none, so its dsf
    // port (where no MQTT is spoken) must get no device.
    let dsf_port = free_port();
    let view = json!({"version": 3, "nodes": [
        {"id": "app-1", "addr": format!("127.0.0.1:{}", free_port()), "proxy_addr": broker.addr()},
        {"id": "app-2", "addr": format!("127.0.0.1:{dsf_port}")},
    ]});
    call(lb.cluster_addr, true, "lb.set_view", view).unwrap();
    devices(lb.proxy_addrs[0], &[&broker], "dev", 40).all_served(40);
    assert!(pins(&lb).values().all(|n| n == "app-1"));
    assert_eq!(
        proxy_stats(&lb)["backend_failures"],
        0,
        "app-2 was never tried"
    );
}
