//! End to end, real binaries: an app server killed (SIGKILL) while 20
//! clients write, then restarted.

mod e2e;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{
    assert_no_errors, assert_no_unknown_outcomes, check_writes, wait_for, write_many, Cluster,
    Spec, WAIT,
};

const CLIENTS: usize = 20;
const WRITES: usize = 200;
/// The design's bound on a dead node leaving `client status` and `lb.view`.
const GONE_WITHIN: Duration = Duration::from_secs(4);

#[test]
fn a_killed_node_is_evicted_within_4s_no_acknowledged_write_is_lost_and_on_restart_only_its_keys_return(
) {
    let mut cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
    let before = cluster.owners(0, &keys);
    let victim = "app-1";
    let token = cluster.admin_token();

    // 20 clients, 200 writes each, every one routed by its own key.
    let done = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (lbs, token, done) = (cluster.lb_addrs(), token.clone(), done.clone());
            std::thread::spawn(move || {
                write_many(lbs, token, i, WRITES, 1, || {
                    done.fetch_add(1, Ordering::Relaxed);
                    true
                })
            })
        })
        .collect();

    // Under way: kill one node outright.
    wait_for("a quarter of the writes", WAIT, || {
        (done.load(Ordering::Relaxed) >= CLIENTS * WRITES / 4).then_some(())
    });
    cluster.app(1).kill();
    let killed = Instant::now();

    // Gone from the collector's status and the balancer's view within 4 s.
    let mut gone_from_status = None;
    let mut gone_from_view = None;
    wait_for("the killed node to leave status and view", WAIT, || {
        if gone_from_status.is_none()
            && cluster
                .ids_in_status()
                .is_some_and(|ids| !ids.iter().any(|i| i == victim))
        {
            gone_from_status = Some(killed.elapsed());
        }
        if gone_from_view.is_none()
            && cluster
                .ids_in_view(0)
                .is_some_and(|ids| !ids.iter().any(|i| i == victim))
        {
            gone_from_view = Some(killed.elapsed());
        }
        (gone_from_status.is_some() && gone_from_view.is_some()).then_some(())
    });
    let (in_status, in_view) = (gone_from_status.unwrap(), gone_from_view.unwrap());
    assert!(
        in_status <= GONE_WITHIN && in_view <= GONE_WITHIN,
        "the killed node left cluster.status after {in_status:?} and lb.view after {in_view:?}; both must take at most {GONE_WITHIN:?}"
    );
    eprintln!(
        "killed {victim} after {} writes; gone from status after {in_status:?}, from the view after {in_view:?}, {} writes done by then",
        CLIENTS * WRITES / 4,
        done.load(Ordering::Relaxed)
    );
    let status = cluster.cli_status();
    assert!(
        !status.contains(victim),
        "client status still lists {victim}: {status}"
    );

    // Every client finishes; every write is acknowledged (those the kill cut
    // off were resent with their nonce and answered by another node, run
    // there or found stored) and stored exactly once.
    let tallies: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_no_errors(&tallies);
    assert_no_unknown_outcomes(&tallies, "cut off by the SIGKILL");
    let acked: usize = tallies.iter().map(|t| t.acked.len()).sum();
    assert_eq!(acked, CLIENTS * WRITES);
    eprintln!("{acked} writes acknowledged, none with an unknown outcome");
    check_writes(&cluster, &tallies);

    // Without the victim, only its keys moved.
    let without = cluster.owners(0, &keys);
    for (k, owner) in &before {
        if owner != victim {
            assert_eq!(&without[k], owner, "key {k} moved though its node stayed");
        } else {
            assert_ne!(&without[k], victim);
        }
    }

    // Restarted under the same id, it rejoins and takes back exactly its keys.
    cluster.start_app(1);
    let all: Vec<String> = ["app-0", "app-1", "app-2"].map(String::from).to_vec();
    cluster.wait_view(0, &all, WAIT);
    let after = cluster.owners(0, &keys);
    for k in &keys {
        let moved = after[k] != without[k];
        let was_victims = before[k] == victim;
        assert_eq!(
            moved, was_victims,
            "key {k}: owner before {}, without {victim} {}, after rejoin {}",
            before[k], without[k], after[k]
        );
    }
    assert_eq!(
        after, before,
        "the rejoined cluster routes as before the kill"
    );
}
