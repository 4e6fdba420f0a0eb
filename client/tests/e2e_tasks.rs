//! End to end, real binaries: jobs submitted with `client job submit` (and
//! the SDK), worked by `client worker --exec` processes spread over three
//! app servers, through workers SIGKILLed and SIGSTOPped, an app server
//! SIGKILLed and MariaDB restarted; every task ends done exactly once with
//! its right result.

mod e2e;

use std::process::Command;
use std::time::Duration;

use e2e::{wait_for, Cluster, Proc, Spec, WAIT};
use serde_json::{json, Value};

const TASKS: usize = 300;

fn client_cmd(cluster: &Cluster) -> Command {
    cluster.cli("no.session")
}

fn json_of(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status(cluster: &Cluster, job: u64) -> Value {
    json_of(client_cmd(cluster).args(["job", "status", &job.to_string(), "--json"]))
}

fn worker(cluster: &Cluster, i: usize, batch: u32) -> Proc {
    let id = format!("w{i}");
    let batch = batch.to_string();
    // The result is {"echo": PAYLOAD}.
    let args = [
        "worker",
        "--exec",
        r#"read p; printf '{"echo":%s}' "$p""#,
        "--concurrency",
        "4",
        "--lease",
        "2s",
        "--batch",
        &batch,
        "--id",
        &id,
        "--timeout",
        "5s",
        "--json",
    ];
    cluster.spawn_client(&format!("worker-{i}"), &args)
}

#[test]
fn a_job_is_worked_by_client_workers_over_three_nodes_and_survives_a_killed_worker() {
    let cluster = Cluster::start(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    let file = cluster.dir.join("payloads.jsonl");
    let lines: Vec<String> = (0..TASKS).map(|i| format!("{{\"n\":{i}}}")).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file = file.to_str().unwrap().to_string();
    let sub = json_of(client_cmd(&cluster).args([
        "job", "submit", "--file", &file, "--name", "e2e", "--key", "run1", "--json",
    ]));
    assert_eq!(sub["tasks"], TASKS as u64);
    let job = sub["job"].as_u64().unwrap();

    // A watcher follows it live (through the balancer, on any node).
    let watcher = client_cmd(&cluster)
        .args(["job", "watch", &job.to_string(), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Claims of 1, 2 and 3 tasks: a batch's results are kept alike.
    let mut workers: Vec<Proc> = (0..3).map(|i| worker(&cluster, i, i as u32 + 1)).collect();
    wait_for("a third of the tasks done", WAIT, || {
        (status(&cluster, job)["done"].as_u64().unwrap() >= TASKS as u64 / 3).then_some(())
    });
    // One worker dies holding leases: they expire and others finish them.
    workers[0].kill();
    let end = wait_for("every task done", WAIT * 2, || {
        let st = status(&cluster, job);
        (st["state"] == "done").then_some(st)
    });
    assert_eq!(end["done"], TASKS as u64, "{end}");
    assert_eq!(end["dead"], 0);
    // The watcher saw progress and ended with the job.
    let watched = watcher.wait_with_output().unwrap();
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (last, events) = lines.split_last().expect("the final status");
    assert_eq!(
        (last["state"].as_str(), last["done"].as_u64()),
        (Some("done"), Some(TASKS as u64))
    );
    assert!(events.len() >= 3, "progress events: {}", events.len());
    assert!(events
        .windows(2)
        .all(|w| w[0]["done"].as_u64() <= w[1]["done"].as_u64()));

    // Every task done once, with its own payload's result.
    let out = client_cmd(&cluster)
        .args(["job", "results", &job.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), TASKS);
    for r in &results {
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(r["state"], "done");
        assert_eq!(r["result"]["echo"]["n"], seq, "{r}");
    }
    // The same submit again (same key) adds nothing.
    let again = json_of(
        client_cmd(&cluster).args(["job", "submit", "--file", &file, "--key", "run1", "--json"]),
    );
    assert_eq!(
        (again["job"].as_u64(), again["tasks"].as_u64()),
        (Some(job), Some(0)),
        "the same job, nothing added"
    );
    // SIGTERM: the workers finish what they hold and exit 0.
    for w in workers.iter_mut().skip(1) {
        w.terminate();
    }
    for w in workers.iter_mut().skip(1) {
        assert_eq!(
            w.wait_exit(Duration::from_secs(20)),
            Some(0),
            "{}",
            w.log_text()
        );
    }
    let _ = cluster;
}

fn signal(p: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {}", p.pid());
}

#[test]
fn ten_thousand_tasks_survive_killed_workers_a_killed_node_a_database_restart_and_a_stalled_worker()
{
    const N: usize = 10_000;
    let mut cluster = Cluster::start_with_own_db(Spec {
        apps: 3,
        balancers: 1,
        ..Spec::default()
    });
    // Two submits through two nodes (routed by two keys), into one job.
    let first: Vec<String> = (0..N / 2).map(|i| format!("{{\"n\":{i}}}")).collect();
    let second: Vec<String> = (N / 2..N).map(|i| format!("{{\"n\":{i}}}")).collect();
    let f1 = cluster.dir.join("first.jsonl");
    let f2 = cluster.dir.join("second.jsonl");
    std::fs::write(&f1, first.join("\n")).unwrap();
    std::fs::write(&f2, second.join("\n")).unwrap();
    let sub = json_of(client_cmd(&cluster).args([
        "--route",
        "alice",
        "job",
        "submit",
        "--file",
        f1.to_str().unwrap(),
        "--json",
    ]));
    let job = sub["job"].as_u64().unwrap();
    // The SDK appends to a job; the CLI makes one a submit, so the second
    // half goes through the task.submit of another node with the job id.
    let mut c = cluster.client();
    c.set_routing_key(Some("bob".into()));
    let payloads: Vec<String> = second.clone();
    let mut s = dsf_client::tasks::Submit::new(&payloads);
    s.job = Some(job);
    let r = dsf_client::tasks::submit(&mut c, &s, |_| {}).unwrap();
    assert_eq!((r.job, r.accepted), (job, (N / 2) as u64));

    let mut workers: Vec<Proc> = (0..8).map(|i| worker(&cluster, i, 1)).collect();
    let done = |cluster: &Cluster| {
        cluster
            .job_status(job)
            .map_or(0, |st| st["done"].as_u64().unwrap())
    };
    wait_for("a tenth done", WAIT, || {
        (done(&cluster) >= N as u64 / 10).then_some(())
    });
    // Two workers die holding leases.
    workers[0].kill();
    workers[1].kill();
    // One stalls past its lease (2 s), then carries on: its completions
    // for tasks others took by then are refused.
    signal(&workers[2], "-STOP");
    // An app server dies and comes back.
    cluster.app(1).kill();
    wait_for("a quarter done", WAIT * 2, || {
        (done(&cluster) >= N as u64 / 4).then_some(())
    });
    // The fault itself: the worker stays stopped for 1.5 leases.
    std::thread::sleep(Duration::from_secs(3));
    signal(&workers[2], "-CONT");
    cluster.start_app(1);
    wait_for("half done", WAIT * 2, || {
        (done(&cluster) >= N as u64 / 2).then_some(())
    });
    // MariaDB stops (cleanly) and comes back a second later: nodes and
    // workers ride it out.
    cluster.restart_db(Duration::from_secs(1));
    let end = wait_for("every task done", WAIT * 6, || {
        cluster.job_status(job).filter(|st| st["state"] == "done")
    });
    assert_eq!(
        (end["done"].as_u64(), end["dead"].as_u64()),
        (Some(N as u64), Some(0)),
        "{end}"
    );
    assert!(
        end["failed"].as_u64().unwrap() > 0,
        "expired leases count as failed attempts: {end}"
    );

    // Every task done once (one result each), with its own result.
    let out = client_cmd(&cluster)
        .args(["job", "results", &job.to_string(), "--json"])
        .output()
        .unwrap();
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), N);
    let mut retried = 0;
    for r in &results {
        assert_eq!(r["state"], "done", "{r}");
        assert_eq!(r["result"]["echo"]["n"], r["seq"], "{r}");
        if r["attempts"].as_u64().unwrap() > 1 {
            retried += 1;
        }
    }
    assert!(
        retried > 0,
        "the killed and stalled workers' tasks were retried"
    );
    // The stalled worker was refused at least once when it came back.
    for w in workers.iter_mut().skip(2) {
        signal(w, "-TERM");
    }
    let mut refused = 0;
    for w in workers.iter_mut().skip(2) {
        assert_eq!(
            w.wait_exit(Duration::from_secs(30)),
            Some(0),
            "{}",
            w.log_text()
        );
        let text = w.log_text();
        let report: Value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no report in {text}"));
        refused += report["refused"].as_u64().unwrap();
    }
    assert!(
        refused >= 1,
        "the stalled worker's late completions were refused"
    );
}

/// A submit on one node wakes a claim parked on another over the links
/// between app servers, not by the fallback look: with `--claim-poll 1h`
/// a claim parked on app-1 for up to 20 s gets the task submitted on
/// app-0 before its wait runs out (without the wake-up it would run only
/// then, 20 s after it was sent).
#[test]
fn a_submit_wakes_a_claim_parked_on_another_node_without_the_poll() {
    let cluster = Cluster::start(Spec {
        apps: 2,
        app_args: vec!["--claim-poll", "1h"],
        ..Spec::default()
    });
    // app-0 must know app-1 to wake it: the peers come with the view.
    wait_for("app-0 to list app-1 among its peers", WAIT, || {
        let log = cluster.apps[0].2.as_ref().unwrap().log_text();
        log.lines()
            .any(|l| l.contains("peers from view") && l.contains("\"app-1\""))
            .then_some(())
    });
    let parked = {
        let mut c = cluster.client_of_app(1);
        std::thread::spawn(move || {
            let sent = std::time::Instant::now();
            let body = dsf_proto::task::ClaimBody {
                n: 1,
                lease_ms: 30_000,
                wait_ms: Some(20_000),
                finish: Vec::new(),
            };
            (c.send::<dsf_proto::task::Claim>(&body), sent.elapsed())
        })
    };
    wait_for("the claim to park on app-1", WAIT, || {
        (cluster.app_metric(1, "dsf_long_polls_parked")? == 1.0).then_some(())
    });
    let mut submitter = cluster.client_of_app(0);
    let body = serde_json::json!({"tasks": [{"payload": {"n": 1}}]});
    let submitted = submitter.call("task.submit", &body).unwrap();
    let (claimed, waited) = parked.join().unwrap();
    let claimed = claimed.unwrap();
    assert!(
        waited < Duration::from_secs(15),
        "the claim ran only when its wait ran out ({waited:?}): no wake-up came from app-0"
    );
    assert_eq!(claimed.tasks.len(), 1, "the parked claim got the task");
    assert_eq!(claimed.tasks[0].job, submitted["job"].as_u64().unwrap());
}

/// A claimed batch whose tasks each take less than a third of the lease,
/// but together more than the whole lease (five of 0.8 s under a 3 s
/// lease): the SDK worker extends the batch's leases while it runs them,
/// so its one `task.finish` keeps every result (without the extension the
/// reaper takes the leases back at 3 s and all five are refused).
#[test]
fn a_batch_longer_than_its_lease_keeps_every_result() {
    use std::sync::atomic::AtomicBool;

    use dsf_client::tasks::{work, WorkerOptions};

    let cluster = Cluster::start(Spec {
        apps: 1,
        ..Spec::default()
    });
    let job = cluster.submit_job("long-batch", 5);
    let cfg = cluster.client_config(cluster.lb_addrs());
    let mut opts = WorkerOptions::new("long");
    opts.lease = Duration::from_secs(3);
    opts.batch = 5;
    // One claim, of the five.
    opts.max_tasks = Some(5);
    let stop = AtomicBool::new(false);
    let report = work(&cfg, &opts, &stop, |payload| {
        std::thread::sleep(Duration::from_millis(800));
        Ok(payload.get().to_string())
    })
    .unwrap();
    assert_eq!((report.done, report.refused), (5, 0), "{report:?}");
    assert_eq!(status(&cluster, job)["done"], 5);
}

/// The handler runs on the worker's own thread: one that panics is a
/// failed attempt that says so, and the same thread goes on with the rest
/// of its batch and with the retry.
#[test]
fn a_handler_that_panics_fails_its_attempt_and_the_worker_goes_on() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use dsf_client::tasks::{work, WorkerOptions};

    let cluster = Cluster::start(Spec {
        apps: 1,
        ..Spec::default()
    });
    let job = cluster.submit_job("panics", 3);
    let cfg = cluster.client_config(cluster.lb_addrs());
    let mut opts = WorkerOptions::new("panicky");
    opts.batch = 3;
    // The three, then the retry of the one that panicked.
    opts.max_tasks = Some(4);
    let (stop, panicked) = (AtomicBool::new(false), AtomicBool::new(false));
    let report = work(&cfg, &opts, &stop, |payload| {
        if payload.get() == r#"{"n":1}"# && !panicked.swap(true, Ordering::SeqCst) {
            panic!("a bug in the handler");
        }
        Ok(payload.get().to_string())
    })
    .unwrap();
    assert_eq!((report.done, report.failed), (3, 1), "{report:?}");
    let st = status(&cluster, job);
    assert_eq!(
        (st["done"].as_u64(), st["failed"].as_u64()),
        (Some(3), Some(1)),
        "{st}"
    );
    let out = client_cmd(&cluster)
        .args(["job", "results", &job.to_string(), "--json"])
        .output()
        .unwrap();
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Its first attempt's error stays beside the retry's result.
    assert_eq!(
        (&rows[1]["state"], &rows[1]["attempts"], &rows[1]["error"]),
        (&json!("done"), &json!(2), &json!("the handler panicked")),
        "{rows:?}"
    );
}

/// `max_tasks` counts tasks, not claims: two threads claiming batches of
/// five stop after seven tasks of twelve between them (counted by claims,
/// they would have taken all twelve), and the other five stay ready.
#[test]
fn max_tasks_counts_the_tasks_of_every_batch() {
    use std::sync::atomic::AtomicBool;

    use dsf_client::tasks::{work, WorkerOptions};

    let cluster = Cluster::start(Spec {
        apps: 1,
        ..Spec::default()
    });
    let job = cluster.submit_job("capped", 12);
    let cfg = cluster.client_config(cluster.lb_addrs());
    let mut opts = WorkerOptions::new("capped");
    opts.concurrency = 2;
    opts.batch = 5;
    opts.max_tasks = Some(7);
    let stop = AtomicBool::new(false);
    let report = work(&cfg, &opts, &stop, |payload| Ok(payload.get().to_string())).unwrap();
    assert_eq!((report.done, report.failed, report.refused), (7, 0, 0));
    let s = status(&cluster, job);
    assert_eq!(
        (s["done"].as_u64(), s["ready"].as_u64()),
        (Some(7), Some(5)),
        "{s}"
    );
}
