//! Two balancer replicas sharing their pins in MariaDB (`--pins-db`)
//! route every device alike, also after a failover only one of them saw.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

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
    let mut s = settings(backends, &[Protocol::Mqtt]);
    let p = s.proxy.as_mut().unwrap();
    p.pins_db = Some(db_url.to_string());
    p.pins_cache = Duration::from_millis(100);
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
    let ids: BTreeMap<String, String> = b
        .iter()
        .enumerate()
        .map(|(i, b)| (b.addr(), format!("b{}", i + 1)))
        .collect();
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
fn shared_pins_expire_a_ttl_after_their_last_use() {
    let db = dsf_sql::testing::fresh_empty();
    let url = url_for(db.name());
    let broker = Broker::start();
    let b = [&broker];
    let with_ttl = |ttl: Duration| {
        let mut s = settings(&backends(&b), &[Protocol::Mqtt]);
        let p = s.proxy.as_mut().unwrap();
        p.pins_db = Some(url.clone());
        p.pin_ttl = ttl;
        start_lb(s)
    };
    let lb = with_ttl(Duration::from_secs(1));
    devices(lb.proxy_addrs[0], &b, "dev", 20).all_served(20);
    assert_eq!(pins(&lb).len(), 20);
    lb.stop().unwrap();
    // Unused for more than the TTL: the next replica's first sweep drops
    // them (a replica sweeps at start, then every 30 s).
    let unused_since = std::time::Instant::now();
    wait_until("a TTL to pass", || {
        unused_since.elapsed() > Duration::from_millis(1100)
    });
    let next = with_ttl(Duration::from_secs(1));
    wait_until("the expired pins to be swept", || pins(&next).is_empty());
    assert_eq!(proxy_stats(&next)["pins"]["expired"], 20);
    // A long TTL keeps what is used: pinned again, and still there.
    devices(next.proxy_addrs[0], &b, "dev", 20).all_served(20);
    let kept = with_ttl(Duration::from_secs(3600));
    assert_eq!(pins(&kept).len(), 20);
}
