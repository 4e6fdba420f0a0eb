//! Faults beyond a kill, each with the workload going and the one checker
//! (`e2e::check`) over what every client recorded. `scripts/faults` runs
//! them; so does `cargo test`, since they need nothing but this machine.
//!
//! The workload: clients writing (`Writers`), six users messaging across
//! the nodes (`Chat`), and a job of tasks worked by a `client worker`
//! (`Work`). The full disk leaves the messages out: MariaDB may abort on
//! it, and a subscription that loses its database is an error the
//! messages' checker does not forgive.

mod e2e;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dsf_client::{Client, ClientConfig};
use dsf_common::call::{Connection, Failure, Signer, Stamp};
use dsf_common::wire::Key;
use e2e::chat::Chat;
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
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
    let work = Work::start(&cluster, "stall-db", 100);
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
    let (job, tasks) = work.finish(&cluster);
    let history = chat.finish();
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
        .note(
            "writes waited for the database",
            format!("{during} writes finished during the 5 s stall"),
        )
        .tasks(&cluster, job, tasks, Work::expected)
        .messages(&history)
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
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
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
    let history = chat.finish();
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
        .messages(&history)
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("a worker stalled (SIGSTOP) past its lease, then resumed");
}

/// Whether a scenario that needs `missing` (why it cannot run, or `None`)
/// can run: when it cannot, the test says why and is skipped, unless
/// `DSF_NEED_FAULT_TOOLS=1` (`scripts/test` sets it as root, having
/// installed faketime), which makes it fail instead.
fn can_run(test: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    assert!(
        std::env::var("DSF_NEED_FAULT_TOOLS").as_deref() != Ok("1"),
        "{test}: {why}"
    );
    eprintln!("{test}: skipped: {why}");
    false
}

/// A tmpfs of a given size mounted on a folder (which it makes), unmounted
/// on drop: a disk that can be filled.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let opts = format!("size={size}");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t tmpfs on {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }

    /// Fills it up with a file `filler`, to the last byte it takes.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial block, byte by byte.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Scenario 7: MariaDB's disk full (its folder on a 256 MB tmpfs, filled
/// to the last byte) under four writing clients, then space freed. What
/// dsf does: a statement the database cannot store is answered
/// `unavailable` (the table is full: MariaDB error 1114), reads go on.
/// Expected: a write sent straight to a node gets `unavailable`; reads
/// are answered while MariaDB is up; nothing acknowledged is lost or
/// stored twice (writes in flight when the disk filled may end unknown,
/// since no node could answer them); once the filler is deleted, writing
/// goes on by itself. MariaDB 10.11 itself sometimes aborts on the full
/// disk (InnoDB cannot roll a failed insert back); the test then starts
/// it again, as a supervisor would, and checks the same.
#[test]
fn the_databases_disk_full() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !can_run(
        "the_databases_disk_full",
        (!root).then(|| "it mounts a tmpfs, so it needs root".to_string()),
    ) {
        return;
    }
    let mut disk = None;
    let cluster = Cluster::start_with_own_db_in(Spec::default(), |dir| {
        disk = Some(SmallDisk::mount(&dir.join("data"), "256m"));
    });
    let disk = disk.unwrap();
    let writers = Writers::start(&cluster, 4, 8);
    let work = Work::start(&cluster, "full-disk", 100);
    writers.wait_more(200);
    let mut reader = cluster.client();
    reader.set_token(Some(cluster.admin_token()));
    let read =
        |c: &mut Client| c.call("blacklist.get", &serde_json::json!({"id_card": "00000000"}));

    let filler = disk.fill();
    let full_at = Instant::now();
    // Until the table needs a page it has no room for, writes still fit.
    let mut direct_ok = Vec::new();
    let direct = wait_for("a write refused on the full disk", WAIT, || {
        let id = format!("full-{}", direct_ok.len());
        let r = add_at(&cluster, 0, &id, &Stamp::fresh());
        if r.is_none() {
            direct_ok.push(id);
        }
        r
    });
    let refused_after = full_at.elapsed();
    // Thirty reads, 100 ms apart, on the full disk. Once MariaDB itself is
    // gone (it may abort, see below) reads say nothing of dsf: the loop
    // stops there (each would take the SDK's whole deadline, trying every
    // node), and the read that failed with it is counted apart.
    let (mut reads, mut read_errors, mut db_gone) = (0, Vec::new(), 0);
    for _ in 0..30 {
        if !cluster.db_running() {
            break;
        }
        match read(&mut reader) {
            Ok(_) => reads += 1,
            Err(_) if !cluster.db_running() => db_gone += 1,
            Err(e) => read_errors.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    // MariaDB 10.11 can abort on a full disk ("[FATAL] InnoDB: Error (Out
    // of disk space) in rollback", about one run in three here): then it
    // is started again, as its supervisor would, and dsf must recover.
    let target = writers.done.load(std::sync::atomic::Ordering::Relaxed) + 200;
    let mut restarted = None;
    wait_for("200 writes after space was freed", WAIT, || {
        if restarted.is_none() && !cluster.db_running() {
            let log = std::fs::read_to_string(disk.0.join("../mariadb.log")).unwrap_or_default();
            let fatal = log
                .lines()
                .find(|l| l.contains("[FATAL]"))
                .unwrap_or("no [FATAL] line in its log");
            restarted = Some(fatal.to_string());
            cluster.restart_db(Duration::ZERO);
        }
        (writers.done.load(std::sync::atomic::Ordering::Relaxed) >= target).then_some(())
    });
    let mariadb = match restarted {
        None => "stayed up".to_string(),
        Some(fatal) => format!("aborted ({fatal}) and was started again"),
    };
    let resumed_after = freed_at.elapsed();
    let (job, tasks) = work.finish(&cluster);
    let mut tallies = writers.finish();
    tallies.push(Tally {
        acked: direct_ok,
        ..Tally::default()
    });
    let unknown: usize = tallies.iter().map(|t| t.unknown.len()).sum();
    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).collect();

    Report::default()
        .line(
            "a write on the full disk answered `unavailable`",
            format!(
                "a write sent straight to app-0: {direct}, {:.1} s after the disk filled",
                refused_after.as_secs_f64()
            ),
            // Refused before it runs (`overloaded`) when MariaDB had
            // already aborted: its app server's probe found it gone.
            direct == "unavailable" || (direct == "overloaded" && mariadb != "stayed up"),
        )
        .line(
            "reads answered while the disk was full",
            format!(
                "{reads} reads answered, {} failed, {db_gone} failed with MariaDB gone{}",
                read_errors.len(),
                read_errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ),
            read_errors.is_empty() && (reads > 0 || mariadb != "stayed up"),
        )
        .note("what MariaDB did", mariadb)
        .note(
            "writing goes on by itself once space is freed",
            format!(
                "200 writes within {:.1} s of freeing; while full, {unknown} writes ended unknown and {} failed{}",
                resumed_after.as_secs_f64(),
                errors.len(),
                errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ))
        .tasks(&cluster, job, tasks, Work::expected)
        .writes(&cluster, &tallies)
        .assert("MariaDB's disk full, then space freed");
}

/// Sends `blacklist.add` for `id_card` to app server `i` directly, signed
/// with `stamp`; the error code it is refused with, or `None` when it ran.
fn add_at(cluster: &Cluster, i: usize, id_card: &str, stamp: &Stamp) -> Option<String> {
    let (id, addr) = (&cluster.apps[i].0, &cluster.apps[i].1);
    let signer = Signer {
        app: APP.into(),
        key: Key::new(APP_SECRET.as_bytes()),
    };
    let mut conn = Connection::connect(addr, id, signer, WAIT, 1 << 20).unwrap();
    let body = serde_json::json!({"id_card": id_card, "name": "Replayed"}).to_string();
    let token = cluster.admin_token();
    match conn.round_trip_stamped(
        "blacklist.add",
        &body,
        Some(&token),
        stamp,
        Instant::now() + WAIT,
    ) {
        Ok(_) => None,
        Err(Failure::Server(e)) => Some(e.code().to_string()),
        Err(f) => panic!("blacklist.add at {id}: {f}"),
    }
}

/// Scenario 6: app-1 started with its clock 30 s ahead and app-2 with it
/// 5 minutes behind, under four writing clients and a job of tasks.
/// What dsf does: an app server judges and stamps times by its database's
/// clock, which it reads at start and every janitor round, so a node with
/// a wrong clock serves like the others and says in its log how far off
/// its host is. Expected: every node comes up and serves; nothing
/// acknowledged is lost or stored twice, no write fails; every task is
/// done once; a write signed 5 minutes ago (a captured one, replayed
/// after its run-once record expired) is refused as stale by every node,
/// the one behind included, and is not stored.
#[test]
fn app_servers_with_their_clocks_off() {
    if !can_run("app_servers_with_their_clocks_off", faketime().err()) {
        return;
    }
    let cluster = Cluster::start(Spec {
        clocks: vec![(1, "+30"), (2, "-5m")],
        ..Spec::default()
    });
    let writers = Writers::start(&cluster, 4, 8);
    let chat = Chat::start(&cluster, 6, Duration::from_millis(20));
    let job = cluster.submit_job("clocks", 20);
    let mut worker = cluster.spawn_client(
        "worker",
        &[
            "worker",
            "--id",
            "w",
            "--exec",
            r#"read p; printf '{"echo":%s}' "$p""#,
            "--json",
        ],
    );
    writers.wait_more(100);
    wait_for("the job done", WAIT, || {
        cluster
            .job_status(job)
            .filter(|s| s["done"] == 20)
            .map(|_| ())
    });

    // Each node, the skewed ones included, runs a fresh write sent to it.
    let fresh: Vec<Option<String>> = (0..3)
        .map(|i| add_at(&cluster, i, &format!("fresh-{i}"), &Stamp::fresh()))
        .collect();
    // A write signed five minutes ago, as one captured then and replayed
    // now, after its record expired: every node refuses it as stale.
    let old = Stamp {
        ts: dsf_common::wire::now_ms() - 5 * 60 * 1000,
        nonce: dsf_common::wire::new_nonce(),
    };
    let replayed: Vec<Option<String>> = (0..3)
        .map(|i| add_at(&cluster, i, "replayed", &old))
        .collect();
    let warned = cluster.apps[2]
        .2
        .as_ref()
        .unwrap()
        .log_text()
        .contains("clock is 300");
    writers.wait_more(50);
    worker.terminate();
    worker.wait_exit(WAIT);
    let history = chat.finish();
    let mut tallies = writers.finish();
    // The fresh writes were acknowledged too.
    tallies.push(Tally {
        acked: (0..3).map(|i| format!("fresh-{i}")).collect(),
        ..Tally::default()
    });
    let stored = cluster.blacklist_ids();

    Report::default()
        .line(
            "every node, the skewed ones included, runs a fresh write",
            format!("refusals by app-0, app-1 (+30 s), app-2 (-5 min): {fresh:?}"),
            fresh.iter().all(Option::is_none),
        )
        .line(
            "a write signed 5 minutes ago is refused by every node and not stored",
            format!(
                "refusals: {replayed:?}; stored: {}",
                stored.iter().any(|id| id == "replayed")
            ),
            replayed
                .iter()
                .all(|r| r.as_deref() == Some("stale_timestamp"))
                && !stored.iter().any(|id| id == "replayed"),
        )
        .line(
            "the node 5 minutes behind says so in its log",
            format!("warned: {warned}"),
            warned,
        )
        .tasks(
            &cluster,
            job,
            20,
            |seq| serde_json::json!({"echo": { "n": seq }}),
        )
        .messages(&history)
        .writes(&cluster, &tallies)
        .no_unknown(&tallies)
        .assert("app servers with their clocks 30 s ahead and 5 minutes behind");
}
