//! A Galera node cut off from the others (`scripts/galera isolate 1`, as a
//! node on the wrong side of a network partition) keeps accepting
//! connections and answering pings, and refuses every statement (1047). A
//! pool on a list of the nodes answers `unavailable` meanwhile (which the
//! SDK retries), moves to the next node at its next check
//! (`Db::check_in_use`, every second in an app server), and goes back to
//! the first once it has rejoined. Its own test binary: the other Galera
//! tests would meet the cut-off node. Passes without the cluster, saying
//! so, unless `DSF_NEED_GALERA` is set.

use dsf_common::ErrorCode;
use dsf_sql::{Db, DbConfig, Role};

fn nodes() -> Option<Vec<String>> {
    let Ok(urls) = std::env::var("DSF_TEST_GALERA_URLS") else {
        assert!(
            std::env::var_os("DSF_NEED_GALERA").is_none(),
            "DSF_NEED_GALERA is set but DSF_TEST_GALERA_URLS is not"
        );
        eprintln!("skipping the Galera test: DSF_TEST_GALERA_URLS is not set (scripts/test sets it for its Galera run)");
        return None;
    };
    Some(
        urls.split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string() + "/")
            .collect(),
    )
}

/// Runs `scripts/galera CMD N`.
fn galera(cmd: &str, node: u32) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/galera");
    let out = std::process::Command::new("bash")
        .args([script, cmd, &node.to_string()])
        .output()
        .expect("running scripts/galera");
    assert!(
        out.status.success(),
        "scripts/galera {cmd} {node}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rejoins node 1 when dropped, so the tests after this one find three
/// nodes whatever happened here.
struct Rejoin;

impl Drop for Rejoin {
    fn drop(&mut self) {
        galera("rejoin", 1);
    }
}

#[test]
fn a_node_cut_off_from_the_others_is_left_for_the_next_and_come_back_to() {
    let Some(nodes) = nodes() else { return };
    let name = format!("dsf_partition_{}", std::process::id());
    let list: Vec<String> = nodes.iter().map(|n| format!("{n}{name}")).collect();
    let cfg = DbConfig::new(list.join(","));
    dsf_sql::db::ensure_database(&cfg).unwrap();
    let db = Db::connect(&cfg).unwrap();
    db.migrate().unwrap();
    assert_eq!(db.current(), 0);
    assert!(!db.check_in_use(), "the first serves");

    galera("isolate", 1);
    let rejoin = Rejoin;
    let e = db.health().unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert_eq!(db.current(), 0, "it answers pings, so a checkout stays");
    assert!(db.check_in_use());
    assert_eq!(db.current(), 1);
    db.health().unwrap();
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
