//! Two balancer replicas sharing their pins in MariaDB (`--pins-db`)
//! route every device alike, also after a failover only one of them saw.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dsf_sql::testing::PrivateServer;
use lb_server::proxy::Protocol;
use lb_server::server::Running;
use support::*;

/// The test server's URL naming database `name`.
fn url_for(name: &str) -> String {
    let base = dsf_sql::testing::server_url();
    let at = base.find('@').map_or(0, |i| i + 1);
    let root = match base[at..].find('/') {
        Some(slash) => &base[..at + slash],
        None => base.as_str(),
    };
    format!("{root}/{name}")
}

fn replica(backends: &[String], db_url: &str) -> Running {
    replica_caching(backends, db_url, Duration::from_millis(100))
}

/// A replica that trusts a pin it read for `cache`.
fn replica_caching(backends: &[String], db_url: &str, cache: Duration) -> Running {
    let mut s = settings(backends, &[Protocol::Mqtt]);
    let p = s.proxy.as_mut().unwrap();
    p.pins_db = Some(dsf_sql::DbConfig::new(db_url));
    p.pins_cache = cache;
    start_lb(s)
}

fn by_id(run: &Run, ids: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    run.landed
        .iter()
        .map(|(d, a)| (d.clone(), ids[a].clone()))
        .collect()
}

#[test]
fn two_replicas_with_pins_db_route_every_device_alike() {
    let db = dsf_sql::testing::fresh_empty();
    let url = url_for(db.name());
    let mut brokers = vec![Broker::start(), Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let ids = backend_ids(&b);
    let a = replica(&backends(&b), &url);
    let r = replica(&backends(&b), &url);

    let via_a = devices(a.proxy_addrs[0], &b, "dev", 200);
    via_a.all_served(200);
    let first = by_id(&via_a, &ids);
    let via_b = devices(r.proxy_addrs[0], &b, "dev", 200);
    via_b.all_served(200);
    assert_eq!(by_id(&via_b, &ids), first, "replica B routes like A");
    assert_eq!(pins(&a), first);
    assert_eq!(pins(&r), first, "both read one table");

    // b2 crashes; its devices reconnect through A only.
    let port2 = brokers[1].port;
    brokers.remove(1).kill();
    let live: Vec<&Broker> = brokers.iter().collect();
    let moved = by_id(&devices(a.proxy_addrs[0], &live, "dev", 200), &ids);
    assert!(moved.values().all(|n| n != "b2"));
    wait_until("A's re-pins to reach the table", || pins(&a) == moved);

    // b2 is back. B never saw the failover, and its cache has aged out: it
    // reads the table and sends every device where A re-pinned it, not
    // back to b2 (pins kept in B's memory would have).
    brokers.insert(1, Broker::on(port2));
    let b: Vec<&Broker> = brokers.iter().collect();
    let via_b = by_id(&devices(r.proxy_addrs[0], &b, "dev", 200), &ids);
    assert_eq!(via_b, moved);
    let via_a = by_id(&devices(a.proxy_addrs[0], &b, "dev", 200), &ids);
    assert_eq!(via_a, moved);
    let stats = proxy_stats(&a);
    assert_eq!(stats["pins"]["db_errors"], 0);
    assert_eq!(stats["pins"]["created"], 200, "A pinned every device once");
}

#[test]
fn shared_pins_expire_a_ttl_after_their_last_use_not_their_making() {
    let db = dsf_sql::testing::fresh_empty();
    let url = url_for(db.name());
    let broker = Broker::start();
    let b = [&broker];
    let with_ttl = |ttl: Duration| {
        let mut s = settings(&backends(&b), &[Protocol::Mqtt]);
        let p = s.proxy.as_mut().unwrap();
        p.pins_db = Some(dsf_sql::DbConfig::new(url.clone()));
        p.pins_cache = Duration::from_millis(100);
        p.pin_ttl = ttl;
        start_lb(s)
    };
    let ttl = Duration::from_secs(2);
    let lb = with_ttl(ttl);
    let made = std::time::Instant::now();
    devices(lb.proxy_addrs[0], &b, "dev", 20).all_served(20);
    // Used again half a TTL later (past the cache TTL, so read from the
    // table, and past a quarter TTL, so the use is written).
    wait_until("half a TTL", || made.elapsed() > ttl / 2);
    devices(lb.proxy_addrs[0], &b, "dev", 20).all_served(20);
    let used = std::time::Instant::now();
    lb.stop().unwrap();
    // A TTL after their making but not after their last use: a replica's
    // first sweep (at its start) keeps them.
    wait_until("a TTL since the pins were made", || {
        made.elapsed() > ttl + Duration::from_millis(100)
    });
    assert!(
        used.elapsed() < ttl,
        "the check below needs the last use under a TTL ago"
    );
    let next = with_ttl(ttl);
    assert_eq!(pins(&next).len(), 20, "used under a TTL ago: kept");
    next.stop().unwrap();
    // A TTL after their last use: swept.
    wait_until("a TTL since the last use", || {
        used.elapsed() > ttl + Duration::from_millis(100)
    });
    let last = with_ttl(ttl);
    wait_until("the expired pins to be swept", || pins(&last).is_empty());
    assert_eq!(proxy_stats(&last)["pins"]["expired"], 20);
}

#[test]
fn replicas_move_a_leaving_nodes_devices_alike() {
    let db = dsf_sql::testing::fresh_empty();
    let url = url_for(db.name());
    let brokers = [Broker::start(), Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let ids = backend_ids(&b);
    let a = replica(&backends(&b), &url);
    let r = replica(&backends(&b), &url);
    let before = by_id(&devices(a.proxy_addrs[0], &b, "dev", 200), &ids);
    // Both replicas get a view without b3; half the devices reconnect
    // through each, at the same time. (Not the same devices through both:
    // a broker drops the older of two connections with one client id.)
    let keep: Vec<String> = backends(&b).into_iter().take(2).collect();
    for lb in [&a, &r] {
        set_view(lb, 1, &keep);
    }
    let (pa, pr) = (a.proxy_addrs[0], r.proxy_addrs[0]);
    let two: Vec<&Broker> = b[..2].to_vec();
    let half = |proxy, devs: std::ops::Range<usize>| {
        let run = devices_in(proxy, &two, "dev", devs.clone(), "311");
        run.all_served(devs.len());
        by_id(&run, &ids)
    };
    let moved: BTreeMap<String, String> = std::thread::scope(|s| {
        let via_r = s.spawn(|| half(pr, 100..200));
        let mut moved = half(pa, 0..100);
        moved.extend(via_r.join().unwrap());
        moved
    });
    for (dev, node) in &before {
        if node != "b3" {
            assert_eq!(&moved[dev], node, "{dev} was not on b3 and moved");
        }
    }
    // Each replica routes the devices the other moved where it moved them.
    assert_eq!(served(pa, &two), moved, "A routes every device as moved");
    assert_eq!(served(pr, &two), moved, "and so does B");
    wait_until("the table to agree", || {
        pins(&a) == moved && pins(&r) == moved
    });
}

/// Both replicas see b3 leave; its devices reconnect through A alone,
/// which moves them in the table. Then both see b3 come back: B, whose
/// cache (trusted for a minute here) still says b3 for them, sends them
/// where the table says, not back to b3. Without dropping a returning
/// node's cached pins, B would split every moved device from its pin
/// until its cache ran out.
#[test]
fn a_node_back_in_the_view_gets_only_what_the_table_pins_to_it() {
    let db = dsf_sql::testing::fresh_empty();
    let url = url_for(db.name());
    let brokers = [Broker::start(), Broker::start(), Broker::start()];
    let b: Vec<&Broker> = brokers.iter().collect();
    let all = backends(&b);
    let trusting = || replica_caching(&all, &url, Duration::from_secs(60));
    let (a, r) = (trusting(), trusting());
    let before = served(a.proxy_addrs[0], &b);
    assert_eq!(served(r.proxy_addrs[0], &b), before, "B read A's pins");
    let on_b3 = before.values().filter(|n| *n == "b3").count();
    assert!(on_b3 > 0, "some devices on b3");

    for lb in [&a, &r] {
        set_view(lb, 1, &all[..2]);
    }
    let moved = served(a.proxy_addrs[0], &b[..2]);
    for lb in [&a, &r] {
        set_view(lb, 2, &all);
    }
    let via_b = served(r.proxy_addrs[0], &b);
    let back_on_b3 = via_b.values().filter(|n| *n == "b3").count();
    assert_eq!(
        back_on_b3, 0,
        "{back_on_b3} of the {on_b3} devices A moved off b3 were sent back to it by B's cache"
    );
    assert_eq!(via_b, moved, "B routes as the table says");
    assert_eq!(served(a.proxy_addrs[0], &b), moved, "and so does A");
}

/// Gives `lb` view `version` of the backends `specs` (`ID=HOST:PORT`),
/// as a collector would.
fn set_view(lb: &Running, version: u64, specs: &[String]) {
    let view = dsf_common::view::View {
        version,
        nodes: specs
            .iter()
            .map(|spec| {
                let m: dsf_common::view::MemberSpec = spec.parse().unwrap();
                dsf_common::view::NodeView {
                    id: m.id,
                    addr: m.addr,
                    proxy_addr: None,
                    weight: 1,
                    state: Default::default(),
                    load: Default::default(),
                }
            })
            .collect(),
    };
    let applied = call(
        lb.cluster_addr,
        true,
        "lb.set_view",
        serde_json::to_value(view).unwrap(),
    )
    .unwrap();
    assert_eq!(applied["applied"], version);
}

/// 200 devices through `proxy`, every one reaching one of `brokers`.
fn served(proxy: std::net::SocketAddr, brokers: &[&Broker]) -> BTreeMap<String, String> {
    let run = devices(proxy, brokers, "dev", 200);
    run.all_served(200);
    by_id(&run, &backend_ids(brokers))
}

/// The keys of the pins `lb` lists (read from the node it is on), or
/// `None` while its database fails.
fn listed(lb: &Running) -> Option<BTreeSet<String>> {
    let page = call(
        lb.cluster_addr,
        true,
        "lb.pins",
        serde_json::json!({"limit": 1000}),
    )
    .ok()?;
    let keys = page["pins"].as_array()?.iter();
    Some(
        keys.map(|p| p["key"].as_str().unwrap().to_string())
            .collect(),
    )
}

fn keys(prefix: &str, count: usize) -> BTreeSet<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

/// `--pins-db A,B`: a replica passes to B while A is down and goes back to
/// A once it answers again. Two servers that do not replicate stand in for
/// two Galera nodes, so which one a replica is on shows in what it lists.
#[test]
fn a_pins_db_list_moves_to_the_next_node_and_back_to_the_first() {
    let _ = dsf_sql::testing::server_url(); // DSF_TEST_DB_URL, as every test needs
    let (a, b) = (PrivateServer::new("pins-a"), PrivateServer::new("pins-b"));
    a.script("start");
    b.script("start");
    let (url_a, url_b) = (
        format!("{}dsf_pins", a.script("url")),
        format!("{}dsf_pins", b.script("url")),
    );
    let broker = Broker::start();
    let brokers = [&broker];
    // B needs the table a Galera node would have from A; a replica on B
    // alone makes it.
    replica(&backends(&brokers), &url_b).stop().unwrap();
    let lb = replica(&backends(&brokers), &format!("{url_a},{url_b}"));
    devices(lb.proxy_addrs[0], &brokers, "first", 10).all_served(10);
    assert_eq!(listed(&lb), Some(keys("first", 10)), "on A");

    a.script("stop");
    // Devices are served while A is down (by the ring while the replica
    // finds A gone), and their pins go to B.
    devices(lb.proxy_addrs[0], &brokers, "second", 10).all_served(10);
    wait_until("the replica to be on B", || {
        listed(&lb).is_some_and(|k| !k.is_empty() && k.is_subset(&keys("second", 10)))
    });

    a.script("start");
    wait_until("the replica to be back on A", || {
        listed(&lb) == Some(keys("first", 10))
    });
    devices(lb.proxy_addrs[0], &brokers, "third", 10).all_served(10);
    let mut on_a = keys("first", 10);
    on_a.extend(keys("third", 10));
    assert_eq!(listed(&lb), Some(on_a), "new pins are written to A again");
}
