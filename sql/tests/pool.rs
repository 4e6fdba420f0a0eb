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
