//! The app server among others: two servers over one database, graceful
//! shutdown under load, heartbeats to a stand-in collector (up, down, back).

mod support;

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsf_common::stream::FramedStream;
use dsf_common::wire::{encode_request, Key, OutgoingRequest, Reply};
use dsf_common::ErrorCode;
use dsf_sql::testing;
use mysql::prelude::Queryable;
use serde_json::{json, Value};
use support::{settings, wait_until, Collector, Received, Server, APP, SECRET, WAIT};

#[test]
fn a_session_made_on_one_server_is_accepted_by_another_and_logout_reaches_it_within_2s() {
    let db = testing::fresh();
    let a = Server::start(&db);
    let b = Server::start(&db);
    let (mut ca, mut cb) = (a.connect(), b.connect());
    let token = ca.user("gil");
    assert_eq!(cb.ok("user.me", json!({}), Some(&token))["name"], "gil");

    ca.ok("user.logout", json!({}), Some(&token));
    let logged_out = Instant::now();
    // At once on the server that handled the logout...
    ca.err("user.me", json!({}), Some(&token), ErrorCode::Unauthorized);
    // ...and on the other once its cached check (at most 2 s old) ages out.
    wait_until("the other server to refuse the token", || {
        cb.call("user.me", json!({}), Some(&token)).is_err()
    });
    let took = logged_out.elapsed();
    assert!(
        took <= Duration::from_secs(2) + Duration::from_secs(2),
        "refused only after {took:?}; the cache must not hold a check past 2 s"
    );
    cb.err("user.me", json!({}), Some(&token), ErrorCode::Unauthorized);
}

/// Keeps `depth` gate checks in flight on one connection until it closes;
/// every id card acknowledged with `ok` goes into `acked`.
fn load(
    addr: std::net::SocketAddr,
    worker: usize,
    depth: usize,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut s) = FramedStream::connect(addr, WAIT, 1 << 20) else {
        return;
    };
    let key = Key::new(SECRET);
    let mut pending = std::collections::HashMap::new();
    let mut n = 0u64;
    loop {
        while pending.len() < depth && !stop.load(Ordering::Relaxed) {
            n += 1;
            let id_card = format!("L{worker}-{n}");
            let body = json!({"id_card": id_card, "name": "load"}).to_string();
            let mut out = Vec::new();
            let req = OutgoingRequest {
                id: n,
                kind: "gate.check",
                app: APP,
                token: None,
                body: &body,
            };
            let nonce = encode_request(&key, &req, &mut out);
            if s.send(&out).is_err() {
                return;
            }
            pending.insert(n, (id_card, nonce));
        }
        if pending.is_empty() {
            return;
        }
        let payload = match s.recv(Instant::now() + WAIT) {
            Ok(Some(p)) => p,
            _ => return, // closed by the shutdown: the rest are unanswered
        };
        let reply = Reply::parse(&payload).unwrap();
        let (id_card, nonce) = pending.remove(&reply.id).expect("a pending id");
        reply.verify(&key, &nonce).unwrap();
        if reply.into_result().is_ok() {
            acked.lock().unwrap().push(id_card);
        }
    }
}

#[test]
fn graceful_shutdown_under_load_keeps_every_acknowledged_write() {
    let db = testing::fresh();
    let mut server = Server::start(&db);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|w| {
            let (addr, acked, stop) = (server.addr, acked.clone(), stop.clone());
            std::thread::spawn(move || load(addr, w, 8, acked, stop))
        })
        .collect();
    wait_until("load to be under way", || {
        acked.lock().unwrap().len() >= 300
    });

    let report = server.stop();
    assert!(report.workers_finished, "{report:?}");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    // Nothing is accepted any more.
    assert!(std::net::TcpStream::connect(server.addr).is_err());

    let acked = acked.lock().unwrap().clone();
    let recorded: HashSet<String> = db
        .pool()
        .get_conn()
        .unwrap()
        .query("SELECT id_card FROM gate_checks")
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|a| !recorded.contains(*a)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged checks are not in the database: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

fn heartbeat_from(bodies: &[Value], node: &str) -> Vec<Value> {
    bodies.iter().filter(|b| b["id"] == node).cloned().collect()
}

#[test]
fn heartbeats_carry_identity_state_and_stats_then_draining_and_leave() {
    let db = testing::fresh();
    let received: Received = Default::default();
    let collector = Collector::start("127.0.0.1:0".parse().unwrap(), received);
    let mut server = Server::with(settings(db.config(), Some(collector.addr.to_string())));
    let mut c = server.connect();
    let node = server.node.clone();

    // Traffic for the stats: pings, checks and an error, on an open connection.
    let busy_until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < busy_until {
        c.ok("sys.ping", json!({}), None);
        c.ok("gate.check", json!({"id_card": "H-1", "name": "h"}), None);
        c.err("nope", json!({}), None, ErrorCode::UnknownType);
    }
    wait_until("a heartbeat with traffic in it", || {
        heartbeat_from(&collector.bodies("node.heartbeat"), &node)
            .iter()
            .any(|b| b["stats"]["errors_per_s"].as_f64() > Some(0.0))
    });
    let beats = heartbeat_from(&collector.bodies("node.heartbeat"), &node);
    let hb = beats
        .iter()
        .find(|b| b["stats"]["errors_per_s"].as_f64() > Some(0.0))
        .unwrap();
    assert_eq!(hb["addr"], server.addr.to_string());
    assert_eq!(hb["weight"], 1);
    assert_eq!(hb["state"], "up");
    let st = &hb["stats"];
    for field in [
        "conns",
        "inflight",
        "queue",
        "rps",
        "errors_per_s",
        "p50_ms",
        "p99_ms",
    ] {
        assert!(st[field].is_number(), "stats.{field} missing: {st}");
    }
    assert!(st["conns"].as_u64() >= Some(1), "{st}");
    assert!(st["rps"].as_f64() >= st["errors_per_s"].as_f64(), "{st}");
    assert!(st["p50_ms"].as_f64() > Some(0.0), "{st}");
    assert!(st["p99_ms"].as_f64() >= st["p50_ms"].as_f64(), "{st}");

    let report = server.stop();
    assert!(report.reported_draining && report.left, "{report:?}");
    let all = collector.received.lock().unwrap().clone();
    let draining = all
        .iter()
        .position(|(k, b)| k == "node.heartbeat" && b["state"] == "draining")
        .expect("a draining heartbeat");
    let (last_kind, last_body) = all.last().unwrap();
    assert_eq!(last_kind, "node.leave");
    assert_eq!(last_body, &json!({"id": node}));
    assert!(draining < all.len() - 1);
}

#[test]
fn the_server_serves_while_the_collector_is_down_and_finds_it_again() {
    let db = testing::fresh();
    // A free port with nobody listening yet.
    let port_holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let collector_addr = port_holder.local_addr().unwrap();
    drop(port_holder);
    let server = Server::with(settings(db.config(), Some(collector_addr.to_string())));
    let mut c = server.connect();

    // Several heartbeat intervals with no collector: every request answered.
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        c.ok("sys.ping", json!({}), None);
        c.ok("gate.check", json!({"id_card": "D-1", "name": "d"}), None);
    }

    let received: Received = Default::default();
    let mut collector = Collector::start(collector_addr, received);
    wait_until("heartbeats once the collector is up", || {
        !collector.bodies("node.heartbeat").is_empty()
    });

    // Down again mid-run: still serving.
    collector.stop();
    let until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < until {
        c.ok("sys.ping", json!({}), None);
    }
    let collector = Collector::start(collector_addr, Default::default());
    wait_until("heartbeats after the collector came back", || {
        !collector.bodies("node.heartbeat").is_empty()
    });
    c.ok("sys.ping", json!({}), None);
}

/// An active collector and its standby: `--collector A,B` sends every
/// heartbeat to both, one of them going down stops nothing for the other,
/// and `node.leave` reaches the one still up.
#[test]
fn heartbeats_go_to_each_collector_and_one_down_does_not_hold_up_the_other() {
    let db = testing::fresh();
    let (got_a, got_b): (Received, Received) = Default::default();
    let mut a = Collector::start("127.0.0.1:0".parse().unwrap(), got_a);
    let b = Collector::start("127.0.0.1:0".parse().unwrap(), got_b);
    let mut s = settings(db.config(), None);
    s.collectors = vec![a.addr.to_string(), b.addr.to_string()];
    let mut server = Server::with(s);
    let node = server.node.clone();
    wait_until("heartbeats at both collectors", || {
        !heartbeat_from(&a.bodies("node.heartbeat"), &node).is_empty()
            && !heartbeat_from(&b.bodies("node.heartbeat"), &node).is_empty()
    });

    a.stop();
    let before = b.bodies("node.heartbeat").len();
    wait_until("more heartbeats at the collector still up", || {
        b.bodies("node.heartbeat").len() >= before + 2
    });
    let mut c = server.connect();
    c.ok("sys.ping", json!({}), None);

    let report = server.stop();
    assert!(report.reported_draining && report.left, "{report:?}");
    assert!(b
        .bodies("node.leave")
        .iter()
        .any(|l| l["id"] == node.as_str()));
}

/// A collector whose host went silent (connections are taken but nothing
/// answers, so every exchange waits out the heartbeat's 1 s timeout) does
/// not slow the heartbeats to the other, which is the standby taking over
/// from it: it goes on hearing every interval (200 ms here), inside any
/// `--dead-after`.
#[test]
fn a_silent_collector_does_not_slow_the_heartbeats_to_the_other() {
    let db = testing::fresh();
    // Connections complete in the backlog and are never read.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let got: Received = Default::default();
    let b = Collector::start("127.0.0.1:0".parse().unwrap(), got);
    let mut s = settings(db.config(), None);
    s.collectors = vec![silent.local_addr().unwrap().to_string(), b.addr.to_string()];
    let mut server = Server::with(s);
    let node = server.node.clone();
    let beats = || heartbeat_from(&b.bodies("node.heartbeat"), &node).len();
    wait_until("a first heartbeat at the collector that answers", || {
        beats() > 0
    });
    // Taking turns with the silent one, five would take over 5 s; one
    // thread per collector sends them in about 1 s. The bound is the
    // silent one's third timeout, under the 3 s of the default
    // --dead-after.
    let (from, start) = (beats(), Instant::now());
    let bound = 3 * app_server::heartbeat::EXCHANGE_TIMEOUT;
    while beats() < from + 5 {
        assert!(
            start.elapsed() < bound,
            "{} heartbeats in {bound:?} at the collector that answers",
            beats() - from
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Clients are served meanwhile.
    server.connect().ok("sys.ping", json!({}), None);
    server.stop();
}
