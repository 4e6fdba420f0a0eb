//! Faults that cut links: nftables rules inside a network namespace of
//! this test's own, with the workload going, and the one checker
//! (`e2e::check`) over what every client recorded. Run through
//! `scripts/faults`, which makes the namespace; elsewhere each test says
//! it was skipped (and fails under `DSF_NEED_FAULTS=1`).

mod e2e;

use std::time::Instant;

use e2e::check::Report;
use e2e::net::{can_cut, Net, Way};
use e2e::*;

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Scenario 1: an app server cut from the collector (both ways) while its
/// clients and the database still reach it, under four writing clients
/// whose keys cover every node. Expected: the collector evicts it after
/// `--dead-after`, its keys move to the others, nothing acknowledged is
/// lost or stored twice and no write ends unknown; healed, it comes back
/// into the view and takes its keys back.
#[test]
fn an_app_server_cut_from_the_collector() {
    if !can_cut("an_app_server_cut_from_the_collector") {
        return;
    }
    let mut net = Net::new();
    let cluster = Cluster::start(Spec {
        own_uids: true,
        ..Spec::default()
    });
    let all: Vec<String> = cluster.apps.iter().map(|a| a.0.clone()).collect();
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    let before = cluster.owners(0, &keys);
    let on_cut: Vec<&String> = keys.iter().filter(|k| before[*k] == "app-0").collect();
    let writers = Writers::start(&cluster, 4, 8);
    writers.wait_more(100);

    net.cut(app_uid(0), port_of(&cluster.collector_addr), Way::Both);
    let cut_at = Instant::now();
    let rest: Vec<String> = all[1..].to_vec();
    cluster.wait_view(0, &rest, WAIT);
    let evicted_after = cut_at.elapsed();
    let during = cluster.owners(0, &keys);
    let moved = on_cut.iter().filter(|k| during[**k] != "app-0").count();
    let others_stayed = keys
        .iter()
        .filter(|k| before[*k] != "app-0")
        .all(|k| during[k] == before[k]);
    writers.wait_more(100);

    net.heal();
    let healed_at = Instant::now();
    cluster.wait_view(0, &all, WAIT);
    let back_after = healed_at.elapsed();
    let after = cluster.owners(0, &keys);
    writers.wait_more(100);
    let tallies = writers.finish();

    Report::default()
        .line(
            "the cut node evicted, only its keys moved",
            format!(
                "evicted {:.1} s after the cut; {moved} of its {} keys moved, the other {} stayed: {others_stayed}",
                evicted_after.as_secs_f64(),
                on_cut.len(),
                keys.len() - on_cut.len()
            ),
            moved == on_cut.len() && !on_cut.is_empty() && others_stayed,
        )
        .line(
            "healed, the view and the keys converge",
            format!(
                "back in the view {:.1} s after healing; owners as before the cut: {}",
                back_after.as_secs_f64(),
                after == before
            ),
            after == before,
        )
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("an app server cut from the collector, not from its clients or the database");
}
