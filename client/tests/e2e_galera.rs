//! End to end on a three-node MariaDB Galera cluster (`scripts/galera`):
//! three app servers, each preferring a different database node, work a
//! job while the node under one of them is SIGKILLed. That app server moves
//! to another node, every task ends done exactly once, and the node comes
//! back. Then another job while the node under another app server is cut
//! off from the others (`scripts/galera isolate`, a network partition): it
//! still answers pings but refuses statements, and its app server moves
//! off it all the same. Runs when `DSF_TEST_GALERA_URLS` names the cluster (`scripts/test`
//! sets it for its Galera run); says so and passes otherwise, unless
//! `DSF_NEED_GALERA` is set.

mod e2e;

use std::process::Command;

use e2e::{wait_for, Cluster, Proc, Spec, WAIT};
use serde_json::Value;

const TASKS: usize = 150;

fn galera(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/galera");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/galera {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn worker(cluster: &Cluster, i: usize) -> Proc {
    let id = format!("g{i}");
    let args = [
        "worker",
        "--exec",
        r#"read p; sleep 0.02; printf '{"echo":%s}' "$p""#,
        "--concurrency",
        "3",
        "--lease",
        "3s",
        "--id",
        &id,
    ];
    cluster.spawn_client(&format!("worker-{i}"), &args)
}

#[test]
fn a_job_survives_the_database_node_under_an_app_server_being_killed() {
    if dsf_sql::testing::galera_or_skip().is_none() {
        return;
    }
    // All three nodes up (a test before may have left one down), and up
    // again at the end whatever happens.
    galera(&["start"]);
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            galera(&["start"]);
        }
    }
    let _restart = Restart;
    let mut cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    for i in 0..3 {
        let url = cluster.app_db_url(i);
        let first = url.split(',').next().unwrap().to_string();
        assert_eq!(first, cluster.db_nodes[i], "app-{i} prefers node {}", i + 1);
    }
    let job = cluster.submit_job("galera", TASKS);
    let mut workers: Vec<Proc> = (0..3).map(|i| worker(&cluster, i)).collect();
    a_third_done(&cluster, job);

    // The node app-1 uses dies.
    let before = cluster.app(1).log_text().len();
    galera(&["kill", "2"]);
    all_done_and_moved(&mut cluster, job, "node 2 dead", 1, before);
    each_done_once(&cluster, job);

    // Node 2 back; the node app-2 uses is cut off from the others.
    galera(&["start"]);
    let job = cluster.submit_job("partition", TASKS);
    a_third_done(&cluster, job);
    let before = cluster.app(2).log_text().len();
    galera(&["isolate", "3"]);
    struct Rejoin;
    impl Drop for Rejoin {
        fn drop(&mut self) {
            galera(&["rejoin", "3"]);
        }
    }
    let rejoin = Rejoin;
    all_done_and_moved(&mut cluster, job, "node 3 cut off", 2, before);
    drop(rejoin);
    each_done_once(&cluster, job);
    for w in &mut workers {
        w.kill();
    }
}

fn a_third_done(cluster: &Cluster, job: u64) {
    wait_for(&format!("a third of job {job}'s tasks done"), WAIT, || {
        cluster
            .job_status(job)
            .filter(|s| s["done"].as_u64().unwrap() >= TASKS as u64 / 3)
    });
}

/// Every task of `job` ends done, none dead, with the database fault
/// `during`; app server `app`, whose node it hit, logs that it moved to
/// another node ("now using") after byte `before` of its log. Which of its
/// threads finds the node gone first (a refused connection, a failed
/// health check, a node that connects but cannot serve) is a race, so the
/// test asks only that it moved.
fn all_done_and_moved(cluster: &mut Cluster, job: u64, during: &str, app: usize, before: usize) {
    let end = wait_for(&format!("every task done with {during}"), WAIT * 3, || {
        cluster.job_status(job).filter(|s| s["state"] == "done")
    });
    assert_eq!(end["done"], TASKS as u64, "{end}");
    assert_eq!(end["dead"], 0, "{end}");
    wait_for(
        &format!("app-{app} to move off its node ({during})"),
        WAIT,
        || {
            let log = cluster.app(app).log_text();
            log.get(before..)
                .is_some_and(|after| after.contains("now using"))
                .then_some(())
        },
    );
}

/// Each task of `job` done exactly once, with its own result.
fn each_done_once(cluster: &Cluster, job: u64) {
    let mut results = cluster.cli("no.session");
    let out = results
        .args(["job", "results", &job.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), TASKS, "one result a task");
    for r in &results {
        assert_eq!(r["state"], "done");
        assert_eq!(r["result"]["echo"]["n"], r["seq"], "{r}");
    }
}
