//! The database goes away and comes back: calls fail with `unavailable`
//! while it is down and succeed again afterwards, in the same process.
//!
//! Uses a second private MariaDB (its own DSF_MARIADB_DIR and port, started
//! through scripts/mariadb) so the shared test server is not disturbed.

use std::time::{Duration, Instant};

use dsf_common::ErrorCode;
use dsf_sql::testing::PrivateServer;
use dsf_sql::{Db, DbConfig, NewEntry};

/// Polls `f` until it returns `Some`, failing the test after `deadline`.
fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn calls_fail_unavailable_while_the_database_is_down_and_recover_after() {
    // Only to make sure the tests were started the documented way.
    let _ = dsf_sql::testing::server_url();
    let server = PrivateServer::new("sql-restart");
    server.script("start");
    let mut cfg = DbConfig::new(server.script("url")).database("dsf_restart");
    cfg.workers = 2;
    cfg.acquire_timeout = Duration::from_secs(2);
    dsf_sql::db::ensure_database(&cfg).unwrap();
    let db = Db::connect(&cfg).unwrap();
    db.migrate().unwrap();
    db.blacklist()
        .add(
            &NewEntry {
                id_card: "R1",
                name: "before",
                reason: None,
            },
            "op",
        )
        .unwrap();
    // Two pooled connections, so both stale-connection paths are exercised.
    let (a, b) = (db.pool().get_conn().unwrap(), db.pool().get_conn().unwrap());
    drop((a, b));

    server.script("stop");

    let err = db.blacklist().get("R1").unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    assert!(
        err.to_string()
            .starts_with("blacklist.get: database unavailable"),
        "{err}"
    );
    let err = db.health().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    let err = db
        .blacklist()
        .add(
            &NewEntry {
                id_card: "R2",
                name: "during",
                reason: None,
            },
            "op",
        )
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    let wire: dsf_common::Error = err.into();
    assert_eq!(wire.code(), ErrorCode::Unavailable);

    server.script("start");

    // The same Db (same process, same pool) works again.
    let entry = wait_for("the pool to reconnect", Duration::from_secs(30), || {
        db.blacklist().get("R1").ok()
    });
    assert_eq!(entry.unwrap().name, "before");
    db.blacklist()
        .add(
            &NewEntry {
                id_card: "R2",
                name: "after",
                reason: None,
            },
            "op",
        )
        .unwrap();
    db.health().unwrap();
}

#[test]
fn connect_waits_for_a_database_that_starts_later() {
    let _ = dsf_sql::testing::server_url();
    let server = PrivateServer::new("sql-late");
    // Initialise (to learn the URL), then stop: the app starts first.
    server.script("start");
    let url = server.script("url");
    server.script("stop");

    let mut cfg = DbConfig::new(url);
    cfg.startup_deadline = Some(Duration::from_secs(120));
    let connecting = std::thread::spawn(move || Db::connect(&cfg));
    // The server takes about a second to start, so the first attempts
    // are refused and connect has to retry.
    server.script("start");

    let db = connecting.join().unwrap().unwrap();
    db.health().unwrap();
}
