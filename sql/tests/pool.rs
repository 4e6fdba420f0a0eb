//! Pool limits and the test-support contract.

use std::sync::mpsc;
use std::time::Duration;

use dsf_common::ErrorCode;
use dsf_sql::{testing, Db, Error};

#[test]
fn pool_exhaustion_returns_a_timeout_error_instead_of_hanging() {
    let t = testing::fresh();
    let mut cfg = t.config();
    cfg.workers = 1;
    cfg.pool_margin = 0;
    cfg.acquire_timeout = Duration::from_millis(200);
    let db = Db::connect(&cfg).unwrap();
    let held = db.pool().get_conn().unwrap(); // the only connection

    // Run the call on another thread so a hang fails the test instead of
    // blocking it forever.
    let (tx, rx) = mpsc::channel();
    let db2 = db.clone();
    std::thread::spawn(move || tx.send(db2.blacklist().get("A1")).unwrap());
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a call on an exhausted pool hung");

    let err = result.unwrap_err();
    assert!(matches!(err, Error::PoolTimeout { max: 1, .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(
        err.to_string().contains("no database connection free"),
        "{err}"
    );

    drop(held);
    assert_eq!(db.blacklist().get("A1").unwrap(), None);
}

#[test]
fn pool_is_sized_to_workers_plus_margin() {
    let mut cfg = dsf_sql::DbConfig::new("mysql://u:p@127.0.0.1:1/d").workers(8);
    assert_eq!(cfg.pool_max(), 8 + dsf_sql::db::DEFAULT_POOL_MARGIN);
    cfg.pool_margin = 0;
    cfg.workers = 0;
    assert_eq!(cfg.pool_max(), 1);
}

#[test]
fn health_check_passes_on_a_live_database() {
    let db = testing::fresh();
    db.health().unwrap();
}

#[test]
fn wrong_password_fails_at_once_without_retrying() {
    let url = testing::server_url();
    let bad = url.replacen("dsf:", "dsf:wrong", 1);
    let mut cfg = dsf_sql::DbConfig::new(bad);
    // Retry forever if it were retryable: only giving up proves it is not.
    cfg.startup_deadline = None;

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(Db::connect(&cfg).map(|_| ())).unwrap());
    let err = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("access denied was retried instead of failing")
        .unwrap_err();

    assert_eq!(err.code(), ErrorCode::Internal, "{err}");
    assert!(err.to_string().contains("1045"), "{err}");
}

/// The server thread id of the connection the pool hands out next.
fn next_id(db: &Db) -> u32 {
    db.checkout().unwrap().connection_id()
}

#[test]
fn a_connection_killed_while_idle_is_found_and_replaced_past_the_bypass_window() {
    use mysql::prelude::Queryable;
    let t = testing::fresh();
    let mut cfg = t.config();
    cfg.workers = 1;
    cfg.pool_margin = 0;
    // Every hand-out is past the window: each one is checked.
    cfg.alive_bypass = Duration::ZERO;
    let db = Db::connect(&cfg).unwrap();
    let victim = next_id(&db);
    let mut killer =
        mysql::Conn::new(mysql::Opts::from_url(&testing::server_url()).unwrap()).unwrap();
    killer.query_drop(format!("KILL {victim}")).unwrap();
    // The dead one is pinged, discarded, and a new one takes its place.
    assert_eq!(db.blacklist().get("A1").unwrap(), None);
    assert_ne!(next_id(&db), victim);

    // Within the window nothing is checked: a connection killed right
    // after use is handed out as it is, and its next query fails. (What
    // the window trades: a round trip per request against a failure only
    // for a connection that died within the last moment of its use.)
    cfg.alive_bypass = Duration::from_secs(3600);
    let db = Db::connect(&cfg).unwrap();
    let victim = next_id(&db);
    killer.query_drop(format!("KILL {victim}")).unwrap();
    let err = db.blacklist().get("A1").unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    // ...and the pool forgets it then, so it fails no second request.
    assert_ne!(next_id(&db), victim);
    assert_eq!(db.blacklist().get("A1").unwrap(), None);
}
