//! Two collectors, active and standby (`--standby-for`): the standby takes
//! every heartbeat but sends no views while the active one feeds the
//! balancers; when the active one is SIGKILLed, the standby takes over,
//! and membership changes keep reaching the balancer; when it comes back,
//! the standby stands by again. Versions at the balancer only grow.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::*;

/// The active collector, a real process so it can be SIGKILLed.
struct Active {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Active {
    fn start(listen: SocketAddr, lb: SocketAddr) -> Active {
        let mut child = collector_binary()
            .env(
                "DSF_CLUSTER_SECRET",
                std::str::from_utf8(CLUSTER_SECRET).unwrap(),
            )
            .env("RUST_LOG", "info")
            .args([
                "--listen",
                &listen.to_string(),
                "--metrics-listen",
                "127.0.0.1:0",
                "--lb",
                &lb.to_string(),
                "--dead-after",
                &format!("{}ms", DEAD_AFTER.as_millis()),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            let up = line.contains("listening on");
            log.lock().unwrap().push(line);
            if up {
                break;
            }
        }
        let rest = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                rest.lock().unwrap().push(line);
            }
        });
        Active { child, log }
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], dsf_common::testing::free_port()))
}

#[test]
fn the_standby_takes_over_when_the_active_collector_is_killed_and_stands_by_when_it_returns() {
    let lb = start_lb();
    let active_addr = free_port();
    let mut active = Active::start(active_addr, lb.cluster_addr);
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.standby_for = Some(active_addr.to_string());
    let standby = start_collector(s);
    let collectors = [active_addr, standby.listen_addr];
    let a = Node::start_to(&collectors, "a", |_| {});
    let b = Node::start_to(&collectors, "b", |_| {});

    wait_until("a and b in the balancer's view", WAIT, || {
        ids(&lb_view(&lb)) == ["a", "b"]
    });
    // Versions the balancer holds, sampled from here on, and resolves served.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, lb_view_addr) = (stop.clone(), lb.client_addr);
        std::thread::spawn(move || {
            let mut client = Client::app(lb_view_addr);
            let (mut versions, mut failed) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match client.call("lb.resolve", json!({"key": "user-1"})) {
                    Ok(r) => versions.push(r["view"].as_u64().unwrap()),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (versions, failed)
        })
    };

    // A standby standing by sends no view's nodes in its heartbeat replies
    // (app servers take their peers from the feeder alone): one more of a's.
    let a_beat = || Client::cluster(standby.listen_addr).heartbeat(&a.hb.lock().unwrap().clone());
    let reply = a_beat().unwrap();
    assert!(reply.get("nodes").is_none(), "{reply}");
    let members = || {
        let snap = standby.cluster().snapshot();
        let mut ids: Vec<String> = snap.members.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(members(), ["a", "b"], "the standby takes heartbeats too");
    holds_for(
        "the standby sends no views",
        Duration::from_millis(1500),
        || {
            standby.cluster().snapshot().balancers[0].pushes == 0
                && standby.cluster().role() == "standby"
        },
    );

    // The active collector dies; then node b does. Only the standby can
    // tell the balancer.
    active.sigkill();
    let held = lb.view().version;
    b.kill();
    wait_until(
        "b evicted from the balancer's view by the standby",
        WAIT,
        || ids(&lb_view(&lb)) == ["a"],
    );
    assert_eq!(standby.cluster().role(), "took-over");
    assert!(lb.view().version > held);
    let status = Client::app(standby.listen_addr)
        .call("cluster.status", json!({}))
        .unwrap();
    assert_eq!(status["role"], "took-over");
    assert_eq!(status["feeding"], true);
    // Feeding, it sends them.
    let reply = a_beat().unwrap();
    assert!(reply["nodes"].is_array(), "{reply}");
    assert_eq!(status["standby_for"], active_addr.to_string());

    // The active collector comes back: after its warm-up it feeds again,
    // and the standby stands by.
    let pushes_before = standby.cluster().snapshot().balancers[0].pushes;
    let _back = Active::start(active_addr, lb.cluster_addr);
    wait_until("the standby stands by again", WAIT, || {
        standby.cluster().role() == "standby"
    });
    let pushes = standby.cluster().snapshot().balancers[0].pushes;
    assert!(pushes > pushes_before, "the standby fed while it held over");
    // One push already under way when it stood by may still land.
    holds_for(
        "the standby sends no more views",
        Duration::from_millis(1500),
        || standby.cluster().snapshot().balancers[0].pushes <= pushes + 1,
    );
    assert_eq!(ids(&lb_view(&lb)), ["a"]);

    stop.store(true, Ordering::SeqCst);
    let (versions, failed) = sampler.join().unwrap();
    assert!(failed.is_empty(), "resolves failed: {failed:?}");
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "the balancer's version went back: {versions:?}"
    );
    let log = active.log.lock().unwrap();
    assert!(
        log.iter().any(|l| l.contains("sending views")),
        "the first active collector fed the balancer: {log:?}"
    );
}

#[test]
fn a_standby_whose_active_collector_never_answers_feeds_the_balancers_itself() {
    let lb = start_lb();
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.standby_for = Some(free_port().to_string());
    let standby = start_collector(s);
    let _a = Node::start(standby.listen_addr, "a");
    wait_until("a in the balancer's view", WAIT, || {
        ids(&lb_view(&lb)) == ["a"]
    });
    assert_eq!(standby.cluster().role(), "took-over");
}

/// An active collector that answers but refuses the standby's question
/// (here: another cluster secret) is alive, and may be feeding: the standby
/// says what to fix and stands by rather than make a second feeder.
#[test]
fn a_standby_refused_by_a_live_active_collector_stands_by() {
    let lb = start_lb();
    let active_addr = free_port();
    let _active = Active::start(active_addr, lb.cluster_addr);
    wait_until("the active collector feeding the balancer", WAIT, || {
        lb_view(&lb)["version"].as_u64().unwrap_or(0) > 0
    });
    let mut s = collector_settings(&[lb.cluster_addr]);
    s.cluster_secret = dsf_common::config::Secret::new(b"not-the-active-one's-secret".to_vec());
    s.standby_for = Some(active_addr.to_string());
    let standby = start_collector(s);
    // Past the time a silent active collector gets, and its warm-up.
    holds_for(
        "the standby stands by",
        2 * collector::standby::TAKE_OVER_AFTER + DEAD_AFTER,
        || {
            standby.cluster().role() == "standby"
                && standby.cluster().snapshot().balancers[0].pushes == 0
        },
    );
}
