//! Faults of a Galera cluster (`scripts/galera`), one test at a time, in a
//! test binary of their own: the other Galera tests would meet them.
//!
//! - A node cut off from the others (`scripts/galera isolate 1`, as a node
//!   on the wrong side of a network partition) keeps accepting connections
//!   and answering pings, and refuses every statement (1047). A pool on a
//!   list of the nodes answers `unavailable` meanwhile (which the SDK
//!   retries), moves to the next node at its next check
//!   (`Db::check_in_use`, every second in an app server), and goes back to
//!   the first once it has rejoined.
//! - A cluster stopped, or crashed, after node 1 died starts again from
//!   its most advanced node, so nothing written after node 1 died is lost.
//!
//! Each passes without the cluster, saying so, unless `DSF_NEED_GALERA` is
//! set.

use std::sync::Mutex;

use dsf_common::ErrorCode;
use dsf_sql::{Db, DbConfig, Role};

/// The cluster is shared: one fault at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `scripts/galera ARGS`.
fn galera(args: &[&str]) {
    if let Err(e) = try_galera(args) {
        panic!("{e}");
    }
}

fn try_galera(args: &[&str]) -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/galera");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("running scripts/galera: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "scripts/galera {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Runs `scripts/galera ARGS` when dropped, so that the tests after one
/// find three nodes whatever happened in it.
struct Finally(&'static [&'static str]);

impl Drop for Finally {
    fn drop(&mut self) {
        match try_galera(self.0) {
            Ok(()) => {}
            // A second panic would abort the binary and hide the first.
            Err(e) if std::thread::panicking() => eprintln!("after the failure: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A database named for this process and `tag`, on every node, as one
/// `--db` list; with the URL of each node's.
fn database(nodes: &[String], tag: &str) -> (String, DbConfig, Vec<DbConfig>) {
    let name = format!("dsf_{tag}_{}", std::process::id());
    let each: Vec<String> = nodes.iter().map(|n| format!("{n}{name}")).collect();
    let cfg = DbConfig::new(each.join(","));
    dsf_sql::db::ensure_database(&cfg).unwrap();
    (name, cfg, each.into_iter().map(DbConfig::new).collect())
}

#[test]
fn a_node_cut_off_from_the_others_is_left_for_the_next_and_come_back_to() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(nodes) = dsf_sql::testing::galera_or_skip() else {
        return;
    };
    let (name, cfg, _) = database(&nodes, "partition");
    let db = Db::connect(&cfg).unwrap();
    db.migrate().unwrap();
    assert_eq!(db.current(), 0);
    assert!(!db.check_in_use(), "the first serves");

    galera(&["isolate", "1"]);
    let rejoin = Finally(&["rejoin", "1"]);
    let e = db.health().unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert_eq!(db.current(), 0, "it answers pings, so a checkout stays");
    assert!(db.check_in_use());
    assert_eq!(db.current(), 1);
    db.health().unwrap();
    // A pool made meanwhile starts on the next node, not on the first.
    let started = Db::connect(&cfg).unwrap();
    assert_eq!(started.current(), 1);
    drop(started);
    db.users().create("during", "x", Role::Viewer).unwrap();
    assert!(!db.prefer_first(), "the first still cannot serve");
    assert_eq!(db.current(), 1);

    drop(rejoin);
    assert!(db.prefer_first());
    assert_eq!(db.current(), 0);
    // The write made meanwhile reached it (by IST), and reads are causal.
    assert!(db.users().get("during").unwrap().is_some());
    dsf_sql::db::drop_database(&cfg, &name).unwrap();
}

#[test]
fn a_cluster_stopped_or_crashed_after_node_1_died_starts_again_from_its_most_advanced_node() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(nodes) = dsf_sql::testing::galera_or_skip() else {
        return;
    };
    let (name, cfg, each) = database(&nodes, "bootstrap");
    Db::connect(&cfg).unwrap().migrate().unwrap();
    let _start = Finally(&["start"]);
    // Stopped: node 2 stops last, and Galera marks it safe to start from.
    // Crashed: nothing is marked; --wsrep-recover tells each node's last
    // transaction.
    let endings: [(&str, &[&[&str]]); 2] = [
        ("stopped", &[&["stop"]]),
        ("crashed", &[&["kill", "2"], &["kill", "3"]]),
    ];
    for (how, ending) in endings {
        galera(&["kill", "1"]);
        let user = format!("written-after-1-died-then-{how}");
        Db::connect(&each[1])
            .unwrap()
            .users()
            .create(&user, "x", Role::Viewer)
            .unwrap();
        for args in ending {
            galera(args);
        }
        // Node 1 lacks that row.
        galera(&["start"]);
        let through_1 = Db::connect(&each[0]).unwrap();
        assert!(
            through_1.users().get(&user).unwrap().is_some(),
            "{how}: the cluster started from node 1, which lacked the last writes"
        );
    }
    dsf_sql::db::drop_database(&cfg, &name).unwrap();
}
