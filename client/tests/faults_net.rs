//! Faults that cut links: nftables rules inside a network namespace of
//! this test's own, with the workload going, and the one checker
//! (`e2e::check`) over what every client recorded. Run through
//! `scripts/faults`, which makes the namespace; elsewhere each test says
//! it was skipped (and fails under `DSF_NEED_FAULTS=1`).
//!
//! Every scenario runs the whole workload: clients writing (`Writers`),
//! six users messaging across the nodes (`Chat`), and a job of tasks
//! worked by a `client worker` (`Work`).

mod e2e;

use std::time::{Duration, Instant};

use dsf_client::{Client, ClientConfig};
use dsf_common::call::{Connection, Failure, Signer};
use dsf_common::wire::Key;
use e2e::chat::Chat;
use e2e::check::Report;
use e2e::net::{can_cut, Net, Way};
use e2e::*;

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Scenario 1: an app server cut from the collector (both ways) while its
/// clients and the database still reach it, under four writing clients
/// whose keys cover every node, and MQTT devices through two balancers'
/// proxies (a broker beside each app server, pins shared in the
/// database). Expected: the collector evicts it after `--dead-after`, its
/// keys move to the others, nothing acknowledged is lost or stored twice
/// and no write ends unknown; its devices, reconnecting through the other
/// balancer, move to other nodes and are pinned there. Healed, it comes
/// back into the view and takes its keys back; the pins converge: both
/// balancers send every device where the shared table pins it (the moved
/// devices stay where they went: a node that joins moves no device).
#[test]
fn an_app_server_cut_from_the_collector() {
    if !can_cut("an_app_server_cut_from_the_collector") {
        return;
    }
    let mut net = Net::new();
    let cluster = Cluster::start(Spec {
        own_uids: true,
        balancers: 2,
        proxy: true,
        ..Spec::default()
    });
    let all: Vec<String> = cluster.apps.iter().map(|a| a.0.clone()).collect();
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    let before = cluster.owners(0, &keys);
    let on_cut: Vec<&String> = keys.iter().filter(|k| before[*k] == "app-0").collect();
    const DEVICES: usize = 60;
    let first = cluster.devices(0, "dev", DEVICES);
    let writers = Writers::start(&cluster, 4, 8);
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
    let work = Work::start(&cluster, "cut-collector", 100);
    writers.wait_more(100);

    net.cut(app_uid(0), port_of(&cluster.collector_addr), Way::Both);
    let cut_at = Instant::now();
    let rest: Vec<String> = all[1..].to_vec();
    cluster.wait_view(0, &rest, WAIT);
    cluster.wait_view(1, &rest, WAIT);
    let evicted_after = cut_at.elapsed();
    let during = cluster.owners(0, &keys);
    let moved = on_cut.iter().filter(|k| during[**k] != "app-0").count();
    let others_stayed = keys
        .iter()
        .filter(|k| before[*k] != "app-0")
        .all(|k| during[k] == before[k]);
    // The devices come back through the other balancer.
    let devices_during = cluster.devices(1, "dev", DEVICES);
    let on_app0 = first.values().filter(|n| *n == "app-0").count();
    let devices_moved = first
        .iter()
        .filter(|(d, n)| *n == "app-0" && devices_during[*d] != "app-0")
        .count();
    let devices_stayed = first
        .iter()
        .filter(|(_, n)| *n != "app-0")
        .all(|(d, n)| devices_during[d] == *n);
    writers.wait_more(100);
    // Still cut: still out of both balancers' views.
    let still_out = (0..2).all(|lb| {
        cluster
            .ids_in_view(lb)
            .is_some_and(|ids| !ids.iter().any(|id| id == "app-0"))
    });
    let out_for = cut_at.elapsed() - evicted_after;

    net.heal();
    let healed_at = Instant::now();
    cluster.wait_view(0, &all, WAIT);
    cluster.wait_view(1, &all, WAIT);
    let back_after = healed_at.elapsed();
    let after = cluster.owners(0, &keys);
    // Through both balancers again: each device where the table pins it.
    let via = [
        cluster.devices(0, "dev", DEVICES),
        cluster.devices(1, "dev", DEVICES),
    ];
    let pins = [cluster.pins(0), cluster.pins(1)];
    let split = (0..2)
        .flat_map(|lb| {
            let (via, pins) = (&via[lb], &pins[lb]);
            via.iter().filter(move |(d, n)| pins.get(*d) != Some(*n))
        })
        .count();
    let moved_back = devices_during
        .iter()
        .filter(|(d, n)| *n != "app-0" && via.iter().any(|v| v[*d] == "app-0"))
        .count();
    let pins_converged = split == 0 && via[0] == devices_during && via[1] == devices_during;
    writers.wait_more(100);
    let (job, tasks) = work.finish(&cluster);
    let history = chat.finish();
    let tallies = writers.finish();

    Report::default()
        .line(
            "the cut node evicted, out while cut, only its keys moved",
            format!(
                "evicted {:.1} s after the cut, still out {:.1} s later: {still_out}; {moved} of its {} keys moved, the other {} stayed: {others_stayed}",
                evicted_after.as_secs_f64(),
                out_for.as_secs_f64(),
                on_cut.len(),
                keys.len() - on_cut.len()
            ),
            still_out && moved == on_cut.len() && !on_cut.is_empty() && others_stayed,
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
        .line(
            "its devices moved once, and the pins converge",
            format!(
                "{devices_moved} of its {on_app0} devices moved while it was out, the other {} stayed: {devices_stayed}; healed, {split} of {} device connections through the two balancers went elsewhere than the table pins them, {} moved back",
                DEVICES - on_app0,
                2 * DEVICES,
                moved_back
            ),
            devices_moved == on_app0 && on_app0 > 0 && devices_stayed && pins_converged,
        )
        .tasks(&cluster, job, tasks, Work::expected)
        .messages(&history)
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("an app server cut from the collector, not from its clients or the database");
}

/// Sends `blacklist.add` for `id_card` straight to app server `i` and
/// says how it ended: `ok`, the error code, or the transport failure.
fn add_at(cluster: &Cluster, token: &str, i: usize, id_card: &str, within: Duration) -> String {
    let (id, addr) = (&cluster.apps[i].0, &cluster.apps[i].1);
    let signer = Signer {
        app: APP.into(),
        key: Key::new(APP_SECRET.as_bytes()),
    };
    let mut conn = Connection::connect(addr, id, signer, within, 1 << 20).unwrap();
    let body = serde_json::json!({"id_card": id_card, "name": "Direct"}).to_string();
    match conn.round_trip("blacklist.add", &body, Some(token), Instant::now() + within) {
        Ok(_) => "ok".into(),
        Err(Failure::Server(e)) => e.code().to_string(),
        Err(f) => f.to_string(),
    }
}

/// Scenario 2: an app server cut from the database (both ways) while its
/// clients and the collector still reach it, under four writing clients
/// whose keys cover every node and a job of tasks with a worker. What dsf
/// does: every app server probes its database each second
/// (`Db::probe`, 2 s to answer); one that gets no answer refuses what
/// would take a worker before running it (`overloaded`), and the SDK sends
/// the request to another node (a write under its first stamp, so it runs
/// once); its heartbeats say `degraded`, and the collector takes it out of
/// the ring while others are up. Expected: the cut node refuses a write
/// sent straight to it with `overloaded` at once, and
/// `sys.ping` still; it is `degraded` in the view, and `up` again once
/// healed; nothing
/// acknowledged is lost or stored twice, no write fails or ends unknown,
/// every task is done once; healed, the node runs writes again.
#[test]
fn an_app_server_cut_from_the_database() {
    if !can_cut("an_app_server_cut_from_the_database") {
        return;
    }
    let mut net = Net::new();
    let cluster = Cluster::start(Spec {
        own_uids: true,
        ..Spec::default()
    });
    let db_port = port_of(
        cluster
            .db_url
            .trim_start_matches("mysql://")
            .split(['/', '?'])
            .next()
            .unwrap(),
    );
    let writers = Writers::start(&cluster, 4, 8);
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
    let job = cluster.submit_job("cut-db", 200);
    let mut worker = cluster.spawn_client(
        "worker",
        &[
            "worker",
            "--id",
            "w",
            "--lease",
            "3s",
            "--exec",
            r#"read p; sleep 0.05; printf '{"echo":%s}' "$p""#,
            "--json",
        ],
    );
    writers.wait_more(100);

    net.cut(app_uid(0), db_port, Way::Both);
    let cut_at = Instant::now();
    // Until the probe finds it, a request there waits on a connection that
    // hangs; after, it is answered at once.
    // Its probe finds the database gone, and its heartbeats say so: the
    // collector takes it out of the ring while the others are up.
    let rest: Vec<String> = vec!["app-1".into(), "app-2".into()];
    cluster.wait_view(0, &rest, WAIT);
    let out_after = cut_at.elapsed();
    let state = cluster.view(0).and_then(|v| {
        v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == "app-0")
            .map(|n| n["state"].as_str().unwrap_or("").to_string())
    });
    // A write sent straight to it now is refused before it runs, at once,
    // however many of its workers wait on connections that hang.
    let token = cluster.admin_token();
    let direct_at = Instant::now();
    let direct = add_at(&cluster, &token, 0, "direct-cut", Duration::from_secs(2));
    let direct_took = direct_at.elapsed();
    let mut ping = {
        let mut cfg = ClientConfig::new(cluster.lb_addrs(), APP, APP_SECRET.as_bytes().to_vec());
        cfg.node = Some(cluster.apps[0].1.clone());
        Client::new(cfg).unwrap()
    };
    let pong = ping.call("sys.ping", &serde_json::json!({}));
    writers.wait_more(300);
    let during = cut_at.elapsed();

    net.heal();
    let healed_at = Instant::now();
    let all: Vec<String> = cluster.apps.iter().map(|a| a.0.clone()).collect();
    cluster.wait_view(0, &all, WAIT);
    let back_after = healed_at.elapsed();
    wait_for("app-0 to run writes again", WAIT, || {
        (add_at(&cluster, &token, 0, "direct-healed", Duration::from_secs(5)) == "ok").then_some(())
    });
    writers.wait_more(100);
    wait_for("the job done", WAIT, || {
        cluster
            .job_status(job)
            .filter(|s| s["done"] == 200)
            .map(|_| ())
    });
    worker.terminate();
    worker.wait_exit(WAIT);
    let history = chat.finish();
    let mut tallies = writers.finish();
    let slowest = tallies.iter().map(|t| t.slowest).max().unwrap_or_default();
    // The write sent straight to app-0 after healing was acknowledged too.
    tallies.push(Tally {
        acked: vec!["direct-healed".into()],
        ..Tally::default()
    });

    Report::default()
        .line(
            "the cut node refuses what needs the database, before running it",
            format!(
                "a write sent straight to it: {direct} in {:.0} ms; sys.ping: {}",
                direct_took.as_secs_f64() * 1000.0,
                match &pong {
                    Ok(_) => "answered".to_string(),
                    Err(e) => e.to_string(),
                }
            ),
            direct == "overloaded" && pong.is_ok(),
        )
        .line(
            "it leaves the ring while cut, and comes back when healed",
            format!(
                "{state:?} in the view {:.1} s after the cut; up again {:.1} s after healing",
                out_after.as_secs_f64(),
                back_after.as_secs_f64()
            ),
            state.as_deref() == Some("degraded"),
        )
        .note(
            "the writes moved to the other nodes",
            format!(
                "300 writes in the {:.1} s after the cut; the slowest write of the run took {:.1} s",
                during.as_secs_f64(),
                slowest.as_secs_f64()
            ))
        .tasks(&cluster, job, 200, |seq| serde_json::json!({"echo": { "n": seq }}))
        .messages(&history)
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("an app server cut from the database, not from its clients");
}

/// The version of the view balancer `i` holds.
fn version_at(cluster: &Cluster, i: usize) -> Option<u64> {
    cluster.view(i)?["version"].as_u64()
}

/// Scenario 3: a balancer (lb-0 of two) cut from both collectors, the
/// active and its standby, while its clients reach it; during the cut an
/// app server dies. Four clients write through lb-0 first.
#[test]
fn a_balancer_cut_from_both_collectors() {
    if !can_cut("a_balancer_cut_from_both_collectors") {
        return;
    }
    let mut net = Net::new();
    let mut cluster = Cluster::start_with_standby(Spec {
        own_uids: true,
        balancers: 2,
        ..Spec::default()
    });
    let lb0_cluster = port_of(&cluster.lbs[0].1);
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    let writers = Writers::start(&cluster, 4, 8);
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
    let work = Work::start(&cluster, "cut-balancer", 100);
    writers.wait_more(100);
    let held = version_at(&cluster, 0).unwrap();

    // The active runs as root, the standby as STANDBY_UID.
    net.cut(0, lb0_cluster, Way::Both);
    net.cut(STANDBY_UID, lb0_cluster, Way::Both);
    cluster.app(2).kill();
    let rest: Vec<String> = vec!["app-0".into(), "app-1".into()];
    cluster.wait_view(1, &rest, WAIT);
    let current = version_at(&cluster, 1).unwrap();
    // lb-0 resolves from the view it held.
    let owners = cluster.owners(0, &keys);
    let still = version_at(&cluster, 0);
    // `client status` says which balancer is behind.
    let out = std::process::Command::new(binary("client"))
        .args([
            "--app",
            APP,
            "status",
            "--collector",
            &cluster.collector_addr,
        ])
        .env("DSF_APP_SECRET", APP_SECRET)
        .env_remove("DSF_APP_SECRET_FILE")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    let said = |addr: &str| -> String {
        status
            .lines()
            .find(|l| l.contains(addr))
            .unwrap_or("")
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (said0, said1) = (said(&cluster.lbs[0].1), said(&cluster.lbs[1].1));
    writers.wait_more(100);

    net.heal();
    let healed_at = Instant::now();
    wait_for("lb-0 to hold the current view", WAIT, || {
        (version_at(&cluster, 0) >= Some(current)).then_some(())
    });
    let converged_after = healed_at.elapsed();
    let after0 = cluster.owners(0, &keys);
    let after1 = cluster.owners(1, &keys);
    writers.wait_more(100);
    let (job, tasks) = work.finish(&cluster);
    let history = chat.finish();
    let tallies = writers.finish();

    Report::default()
        .line(
            "cut off, the balancer resolves from its last view",
            format!(
                "{} keys resolved at view {still:?} (held {held}, current {current}); {} of them to the dead app-2",
                owners.len(),
                owners.values().filter(|n| *n == "app-2").count()
            ),
            owners.len() == keys.len() && still == Some(held),
        )
        .line(
            "`client status` says the view there is stale",
            format!("lb-0: {said0:?}; lb-1: {said1:?}"),
            said0.starts_with("stale") && said1 == "current",
        )
        .line(
            "healed, it converges",
            format!(
                "current view {:.1} s after healing; owners as at the other balancer: {}",
                converged_after.as_secs_f64(),
                after0 == after1
            ),
            after0 == after1,
        )
        .tasks(&cluster, job, tasks, Work::expected)
        .messages(&history)
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("a balancer cut from both collectors");
}

/// Scenario 4: the active and standby collectors cut from each other
/// (both ways) for 10 s, while both reach the balancer and every app
/// server reaches both. Four clients writing.
#[test]
fn the_collectors_cut_from_each_other() {
    if !can_cut("the_collectors_cut_from_each_other") {
        return;
    }
    let mut net = Net::new();
    let cluster = Cluster::start_with_standby(Spec {
        own_uids: true,
        ..Spec::default()
    });
    let keys: Vec<String> = (0..60).map(|i| format!("key-{i}")).collect();
    let before = cluster.owners(0, &keys);
    let writers = Writers::start(&cluster, 4, 8);
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
    let work = Work::start(&cluster, "collectors-apart", 100);
    writers.wait_more(100);
    let first = version_at(&cluster, 0).unwrap();

    net.cut(STANDBY_UID, port_of(&cluster.collector_addr), Way::Both);
    let cut_at = Instant::now();
    let mut versions = vec![first];
    while cut_at.elapsed() < Duration::from_secs(10) {
        if let Some(v) = version_at(&cluster, 0) {
            if versions.last() != Some(&v) {
                versions.push(v);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = cluster.owners(0, &keys);
    net.heal();
    let healed_at = Instant::now();
    while healed_at.elapsed() < Duration::from_secs(5) {
        if let Some(v) = version_at(&cluster, 0) {
            if versions.last() != Some(&v) {
                versions.push(v);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = cluster.owners(0, &keys);
    writers.wait_more(100);
    let (job, tasks) = work.finish(&cluster);
    let history = chat.finish();
    let tallies = writers.finish();
    let flips = versions.len() - 1;

    Report::default()
        .line(
            "the balancer's view flipped at most once (the takeover)",
            format!("{flips} new versions in the 10 s cut and 5 s after: {versions:?}"),
            flips <= 1,
        )
        .line(
            "no key moved",
            format!(
                "owners during the cut as before: {}; after: {}",
                during == before,
                after == before
            ),
            during == before && after == before,
        )
        .tasks(&cluster, job, tasks, Work::expected)
        .messages(&history)
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("the active and standby collectors cut from each other");
}

/// One fault of the soak.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// App server `i` cut from both collectors.
    AppFromCollectors(usize),
    /// App server `i` cut from the database.
    AppFromDatabase(usize),
    /// Balancer 0 cut from both collectors.
    BalancerFromCollectors,
    /// The two collectors cut from each other.
    CollectorsApart,
    /// Worker `i` stalled (SIGSTOP) past its lease.
    WorkerStalled(usize),
    /// MariaDB stalled (SIGSTOP), 5 s at most.
    DatabaseStalled,
}

/// "90s", "10m", "1h": the soak's length.
fn parse_length(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("DSF_SOAK={s}: expected a length like 90s, 10m or 1h"));
    match unit {
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("DSF_SOAK={s}: the unit is s, m or h"),
    }
}

/// `scripts/faults --soak LENGTH`: random faults, one at a time, for
/// LENGTH, over a cluster of three app servers, two balancers, an active
/// and a standby collector and a MariaDB of its own, with the whole
/// workload going (four writing clients, six users messaging, a job of 20
/// tasks every round with two workers). Each round picks a fault
/// (`DSF_SOAK_SEED` repeats a run), holds it 2 to 8 s (a database stall 5 s
/// at most), heals it, and waits until every balancer's view lists every
/// app server again and the writes go on. At the end the one checker
/// runs, and the report (every fault with its times, then the checker's
/// lines) goes to target/faults/soak-report.txt.
#[test]
fn soak() {
    let Ok(length) = std::env::var("DSF_SOAK") else {
        eprintln!("soak: skipped: scripts/faults --soak 10m runs it");
        return;
    };
    if !can_cut("soak") {
        return;
    }
    use rand::{Rng, SeedableRng};
    let length = parse_length(&length);
    let seed: u64 = std::env::var("DSF_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut net = Net::new();
    let cluster = Cluster::start_with_own_db(Spec {
        own_uids: true,
        balancers: 2,
        standby: true,
        ..Spec::default()
    });
    let all: Vec<String> = cluster.apps.iter().map(|a| a.0.clone()).collect();
    let db_port = port_of(
        cluster
            .db_url
            .trim_start_matches("mysql://")
            .split(['/', '?'])
            .next()
            .unwrap(),
    );
    let collectors = [
        port_of(&cluster.collector_addr),
        port_of(cluster.standby_addr.as_deref().unwrap()),
    ];
    let writers = Writers::start(&cluster, 4, 8);
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
    let work = r#"read p; sleep 0.05; printf '{"echo":%s}' "$p""#;
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| {
            let id = format!("w{i}");
            cluster.spawn_client(
                &format!("worker-{i}"),
                &[
                    "worker", "--id", &id, "--lease", "2s", "--exec", work, "--json",
                ],
            )
        })
        .collect();
    let mut jobs = Vec::new();
    let mut log =
        format!("soak of {length:?}, seed {seed} (DSF_SOAK_SEED={seed} repeats the faults)\n");
    let started = Instant::now();
    let mut rounds = 0;
    let mut slowest_settle = Duration::ZERO;
    while started.elapsed() < length {
        jobs.push((cluster.submit_job(&format!("soak-{rounds}"), 20), 20));
        let fault = match rng.gen_range(0..6) {
            0 => Fault::AppFromCollectors(rng.gen_range(0..3)),
            1 => Fault::AppFromDatabase(rng.gen_range(0..3)),
            2 => Fault::BalancerFromCollectors,
            3 => Fault::CollectorsApart,
            4 => Fault::WorkerStalled(rng.gen_range(0..2)),
            _ => Fault::DatabaseStalled,
        };
        let mut hold = Duration::from_millis(rng.gen_range(2_000..8_000));
        let at = started.elapsed();
        let mut stalled = None;
        match fault {
            Fault::AppFromCollectors(i) => {
                for port in collectors {
                    net.cut(app_uid(i), port, Way::Both);
                }
            }
            Fault::AppFromDatabase(i) => net.cut(app_uid(i), db_port, Way::Both),
            Fault::BalancerFromCollectors => {
                let port = port_of(&cluster.lbs[0].1);
                net.cut(0, port, Way::Both);
                net.cut(STANDBY_UID, port, Way::Both);
            }
            Fault::CollectorsApart => net.cut(STANDBY_UID, collectors[0], Way::Both),
            Fault::WorkerStalled(i) => {
                signal(workers[i].pid(), "STOP");
                stalled = Some(workers[i].pid());
            }
            Fault::DatabaseStalled => {
                // As long as scenario 8's: a write's deadline outlasts it.
                hold = hold.min(Duration::from_secs(5));
                signal(cluster.db_pid(), "STOP");
                stalled = Some(cluster.db_pid());
            }
        }
        // The fault holds; the workload goes on meanwhile.
        let writes_before = writers.done.load(std::sync::atomic::Ordering::Relaxed);
        let until = Instant::now() + hold;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        let writes_during = writers.done.load(std::sync::atomic::Ordering::Relaxed) - writes_before;
        net.heal();
        if let Some(pid) = stalled {
            signal(pid, "CONT");
        }
        let healed = Instant::now();
        for lb in 0..cluster.lbs.len() {
            cluster.wait_view(lb, &all, WAIT);
        }
        writers.wait_more(20);
        let settle = healed.elapsed();
        slowest_settle = slowest_settle.max(settle);
        log += &format!(
            "  {:>7.1} s  {fault:?} for {:.1} s ({writes_during} writes meanwhile); settled {:.1} s after healing\n",
            at.as_secs_f64(),
            hold.as_secs_f64(),
            settle.as_secs_f64()
        );
        rounds += 1;
    }
    wait_for("every job done", WAIT * 2, || {
        jobs.iter()
            .all(|(job, n)| cluster.job_status(*job).is_some_and(|s| s["done"] == *n))
            .then_some(())
    });
    for w in &mut workers {
        w.terminate();
        w.wait_exit(WAIT);
    }
    let history = chat.finish();
    let tallies = writers.finish();
    let mut report = Report::default();
    report
        .note(
            "every fault healed and settled",
            format!(
                "{rounds} faults; the slowest back to every node in every view with writes going on: {:.1} s",
                slowest_settle.as_secs_f64()
            ))
        .jobs(&cluster, &jobs, |seq| serde_json::json!({"echo": { "n": seq }}))
        .messages(&history)
        .writes(&cluster, &tallies)
        .no_unknown(&tallies);
    log += &report.text("soak");
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/faults/soak-report.txt");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &log).unwrap();
    println!("{log}report written to {}", path.display());
    report.assert("soak");
}
