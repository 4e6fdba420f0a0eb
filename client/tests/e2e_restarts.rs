//! End to end, real binaries: the balancer and the collector restarted
//! while clients write.

mod e2e;

use std::time::Duration;

use e2e::{
    assert_no_errors, assert_no_unknown_outcomes, check_writes, wait_for, Cluster, Spec, Writers,
    WAIT,
};

#[test]
fn balancer_and_collector_restarts_cost_clients_nothing_but_retried_resolves() {
    let mut cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    let all: Vec<String> = ["app-0", "app-1", "app-2"].map(String::from).to_vec();
    // Each client cycles through 3 routing keys, so every write resolves
    // and some resolves meet the balancer while it is down.
    let writers = Writers::start(&cluster, 20, 3);
    writers.wait_more(300);

    // The balancer: stopped, started again on the same ports. It comes back
    // empty and answers `unavailable` until the collector's next push.
    let mut lb = cluster.lbs[0].2.take().unwrap();
    lb.terminate();
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
    drop(lb);
    cluster.start_lb(0);
    cluster.wait_view(0, &all, WAIT);
    writers.wait_more(300);

    // The collector: the balancer keeps serving its last view meanwhile;
    // the restarted collector takes heartbeats and pushes a newer view.
    let version = cluster.view(0).unwrap()["version"].as_u64().unwrap();
    let mut collector = cluster.collector.take().unwrap();
    collector.terminate();
    assert_eq!(collector.wait_exit(Duration::from_secs(10)), Some(0));
    drop(collector);
    writers.wait_more(100);
    cluster.start_collector();
    wait_for("a view pushed by the restarted collector", WAIT, || {
        let v = cluster.view(0)?;
        (v["version"].as_u64()? > version).then_some(())
    });
    cluster.wait_view(0, &all, WAIT);
    writers.wait_more(300);

    let tallies = writers.finish();
    assert_no_errors(&tallies);
    assert_no_unknown_outcomes(&tallies, "during the restarts");
    let acked: usize = tallies.iter().map(|t| t.acked.len()).sum();
    let retried: usize = tallies.iter().map(|t| t.retried_resolves).sum();
    eprintln!(
        "{acked} writes acknowledged; {retried} resolves retried while the balancer was down"
    );
    check_writes(&cluster, &tallies);
}
