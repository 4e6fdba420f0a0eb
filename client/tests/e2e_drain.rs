//! End to end, real binaries: an app server drained (SIGTERM) under load.

mod e2e;

use std::time::Duration;

use e2e::{
    assert_no_errors, assert_no_unknown_outcomes, check_writes, Cluster, Spec, Writers, WAIT,
};

#[test]
fn sigterm_under_load_drains_without_unretried_errors_or_lost_writes() {
    let mut cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    let writers = Writers::start(&cluster, 20, 1);
    writers.wait_more(500);

    cluster.app(1).terminate();
    assert_eq!(
        cluster.app(1).wait_exit(Duration::from_secs(15)),
        Some(0),
        "a drained app server exits 0"
    );
    let rest: Vec<String> = ["app-0", "app-2"].map(String::from).to_vec();
    cluster.wait_view(0, &rest, WAIT);
    writers.wait_more(500);

    let tallies = writers.finish();
    assert_no_errors(&tallies);
    assert_no_unknown_outcomes(&tallies, "cut off by the drain");
    let acked: usize = tallies.iter().map(|t| t.acked.len()).sum();
    eprintln!("{acked} writes acknowledged");
    check_writes(&cluster, &tallies);
}
