//! Faults beyond a kill, each with the workload going and the one checker
//! (`e2e::check`) over what every client recorded. `scripts/faults` runs
//! them; so does `cargo test`, since they need nothing but this machine.

mod e2e;

use std::time::{Duration, Instant};

use dsf_client::{Client, ClientConfig};
use e2e::check::Report;
use e2e::*;

/// Resumes a stalled process even when the test fails midway, so that
/// nothing is left stopped.
struct Stalled(u32);

impl Drop for Stalled {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Scenario 8: MariaDB stalled (SIGSTOP) for 5 s under four writing
/// clients. Expected: what needs no database (`sys.ping` on every node,
/// `lb.resolve`) is answered throughout, each within a 2 s deadline; the
/// writes caught by the stall finish after it (their call's deadline is
/// longer than the stall), none is lost or stored twice, none ends
/// outcome unknown; writing goes on afterwards.
#[test]
fn a_database_stalled_for_5_s() {
    let cluster = Cluster::start_with_own_db(Spec::default());
    let writers = Writers::start(&cluster, 4, 1);
    writers.wait_more(100);

    let mut pingers: Vec<Client> = cluster
        .apps
        .iter()
        .map(|(_, addr, _)| {
            let mut cfg =
                ClientConfig::new(cluster.lb_addrs(), APP, APP_SECRET.as_bytes().to_vec());
            cfg.node = Some(addr.clone());
            cfg.request_timeout = Duration::from_secs(2);
            Client::new(cfg).unwrap()
        })
        .collect();
    let mut resolver = {
        let mut cfg = ClientConfig::new(cluster.lb_addrs(), APP, APP_SECRET.as_bytes().to_vec());
        cfg.request_timeout = Duration::from_secs(2);
        Client::new(cfg).unwrap()
    };

    let before = writers.done.load(std::sync::atomic::Ordering::Relaxed);
    let pid = cluster.db_pid();
    signal(pid, "STOP");
    let stall = Stalled(pid);
    let start = Instant::now();
    let (mut pings, mut ping_errors, mut resolves, mut resolve_errors) =
        (0, Vec::new(), 0, Vec::new());
    while start.elapsed() < Duration::from_secs(5) {
        for p in &mut pingers {
            match p.call("sys.ping", &serde_json::json!({})) {
                Ok(_) => pings += 1,
                Err(e) => ping_errors.push(e.to_string()),
            }
        }
        match resolver.resolve(Some("ann"), &[]) {
            Ok(_) => resolves += 1,
            Err(e) => resolve_errors.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = writers.done.load(std::sync::atomic::Ordering::Relaxed) - before;
    drop(stall);
    writers.wait_more(100);
    let tallies = writers.finish();

    Report::default()
        .line(
            "what needs no database answered during the stall",
            format!(
                "{pings} pings and {resolves} resolves answered, {} and {} failed{}",
                ping_errors.len(),
                resolve_errors.len(),
                ping_errors
                    .iter()
                    .chain(&resolve_errors)
                    .next()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
            ping_errors.is_empty() && resolve_errors.is_empty() && pings > 0,
        )
        .line(
            "writes waited for the database",
            format!("{during} writes finished during the 5 s stall"),
            true,
        )
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("MariaDB stalled (SIGSTOP) for 5 s");
}

/// Scenario 5: a worker stalled (SIGSTOP) past its lease while it holds a
/// task, then resumed, with two clients writing meanwhile. Expected: the
/// lease runs out, another worker takes the task and completes it; the
/// stalled worker's late result is refused by the fence, and the task is
/// done once, with the result of the worker that took it over.
#[test]
fn a_worker_stalled_past_its_lease() {
    let cluster = Cluster::start(Spec::default());
    let writers = Writers::start(&cluster, 2, 1);
    let job = cluster.submit_job("stall", 1);
    // The task's result names the worker that ran it.
    let work = |pause: &str| format!("read p; sleep {pause}; echo \"\\\"$DSF_WORKER_ID\\\"\"");
    let worker = |id: &str, lease: &str, exec: &str| {
        cluster.spawn_client(
            &format!("worker-{id}"),
            &[
                "worker", "--id", id, "--lease", lease, "--exec", exec, "--json",
            ],
        )
    };
    let one = |what: &str, field: &str| {
        wait_for(what, WAIT, || {
            cluster
                .job_status(job)
                .filter(|s| s[field] == 1)
                .map(|_| ())
        })
    };
    let mut a = worker("a", "1s", &work("2"));
    one("worker a to hold the task", "running");
    signal(a.pid(), "STOP");
    let stall = Stalled(a.pid());
    // Its lease (1 s) runs out while it cannot extend it; the task is
    // claimable again, and worker b takes it over.
    let mut b = worker("b", "30s", &work("0"));
    one("the task done by worker b", "done");
    drop(stall);
    // Resumed, a reports its result under its old fence: refused. It
    // stops on SIGTERM and says what it did.
    wait_for("worker a's late result refused", WAIT, || {
        a.log_text().contains("fence").then_some(())
    });
    a.terminate();
    b.terminate();
    a.wait_exit(WAIT);
    b.wait_exit(WAIT);
    let report = |p: &Proc| -> serde_json::Value {
        p.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("worker").is_some())
            .unwrap_or_else(|| panic!("no report from {}: {}", p.name, p.log_text()))
    };
    let (ra, rb) = (report(&a), report(&b));
    writers.wait_more(10);
    let tallies = writers.finish();

    Report::default()
        .line(
            "the stalled worker's late result refused",
            format!(
                "worker a: {} done, {} refused; worker b: {} done",
                ra["done"], ra["refused"], rb["done"]
            ),
            ra["done"] == 0 && ra["refused"] == 1 && rb["done"] == 1,
        )
        .tasks(&cluster, job, 1, |_| serde_json::json!("b"))
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("a worker stalled (SIGSTOP) past its lease, then resumed");
}
