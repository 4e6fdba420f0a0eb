//! End to end, real binaries: a whole cluster with two collectors, the
//! active one and a standby (`--standby-for`), every app server
//! heartbeating to both (`--collector A,B`). The active collector is
//! SIGKILLed while clients write through two balancers; the standby takes
//! over, a node killed afterwards leaves both balancers' views through it
//! alone, and one started afterwards joins them; when the active collector
//! comes back it feeds again and the standby stands by. No acknowledged
//! write is lost and no client sees an error.

mod e2e;

use std::time::Duration;

use e2e::{assert_no_errors, check_writes, wait_for, Cluster, Spec, Writers, WAIT};

const CLIENTS: usize = 8;

#[test]
fn the_standby_collector_takes_over_a_whole_cluster_when_the_active_one_is_killed() {
    let mut cluster = Cluster::start_with_standby(Spec {
        apps: 3,
        balancers: 2,
        ..Spec::default()
    });
    let standby = cluster.standby_addr.clone().unwrap();
    let all: Vec<String> = (0..3).map(|i| format!("app-{i}")).collect();
    let role = |c: &Cluster| c.status_at(&standby).map(|s| s["role"].clone());
    let standby_ids = |c: &Cluster| {
        let mut ids: Vec<String> = c.status_at(&standby)?["nodes"]
            .as_array()?
            .iter()
            .filter_map(|n| n["id"].as_str().map(String::from))
            .collect();
        ids.sort();
        Some(ids)
    };
    assert_eq!(role(&cluster), Some("standby".into()));
    wait_for(
        "every app server's heartbeats at the standby too",
        WAIT,
        || (standby_ids(&cluster)? == all).then_some(()),
    );

    let writers = Writers::start(&cluster, CLIENTS, 1);
    writers.wait_more(200);

    // The active collector dies. The standby takes over: nothing else
    // tells the balancers about the node killed next.
    cluster.collector.as_mut().unwrap().kill();
    wait_for("the standby to take over", WAIT, || {
        (role(&cluster)? == "took-over").then_some(())
    });
    // `client status` given both shows the one feeding: the standby now.
    let both = format!("{},{standby}", cluster.collector_addr);
    let shown: serde_json::Value = serde_json::from_str(&cluster.cli_status_of(&both)).unwrap();
    assert_eq!(shown["role"], "took-over");
    cluster.app(1).kill();
    let rest = vec!["app-0".to_string(), "app-2".to_string()];
    for lb in 0..2 {
        cluster.wait_view(lb, &rest, WAIT);
    }
    writers.wait_more(200);
    cluster.start_app(1);
    for lb in 0..2 {
        cluster.wait_view(lb, &all, WAIT);
    }
    writers.wait_more(200);

    // The active collector is back: after its warm-up it feeds, and the
    // standby stands by again.
    cluster.start_collector();
    wait_for("the standby to stand by again", WAIT, || {
        (role(&cluster)? == "standby").then_some(())
    });
    let status = cluster.status_at(&cluster.collector_addr).unwrap();
    assert_eq!(status["role"], "active");
    assert_eq!(status["feeding"], true);
    // The standby first: the one feeding is shown, not the first to answer.
    let standby_first = format!("{standby},{}", cluster.collector_addr);
    let shown: serde_json::Value =
        serde_json::from_str(&cluster.cli_status_of(&standby_first)).unwrap();
    assert_eq!(
        shown["role"], "active",
        "the feeding one, of two that answer"
    );
    // It learned every node from their heartbeats, and feeds them alike.
    let mut ids = cluster.ids_in_status().unwrap();
    ids.sort();
    assert_eq!(ids, all);
    for lb in 0..2 {
        cluster.wait_view(lb, &all, Duration::from_secs(5));
    }
    writers.wait_more(200);

    let tallies = writers.finish();
    assert_no_errors(&tallies);
    check_writes(&cluster, &tallies);
}
