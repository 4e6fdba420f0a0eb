//! A database URL list (`--db A,B`) against two real MariaDBs of the
//! test's own: the pool uses the first, moves to the second when the first
//! is stopped, stays there while the first is down, and goes back once
//! `prefer_first` finds it answering. Each server says which it is with
//! `@@port`.

use std::time::Duration;

use dsf_sql::testing::PrivateServer;
use dsf_sql::{Db, DbConfig};
use mysql::prelude::Queryable;

fn port_in_use(db: &Db) -> Result<u16, dsf_sql::Error> {
    // Through the pool's checkout, as every repository reads.
    db.health()?;
    let mut c = db.checkout().expect("a connection after the health check");
    Ok(c.query_first::<u16, _>("SELECT @@port").unwrap().unwrap())
}

fn port_of(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_list_moves_to_the_next_node_and_back_to_the_first() {
    let _ = dsf_sql::testing::server_url(); // DSF_TEST_DB_URL, as every test needs
    let (a, b) = (PrivateServer::new("fail-a"), PrivateServer::new("fail-b"));
    a.script("start");
    b.script("start");
    let (url_a, url_b) = (a.script("url"), b.script("url"));
    let (port_a, port_b) = (port_of(&url_a), port_of(&url_b));
    let mut cfg = DbConfig::new(format!("{url_a}dsf_fail,{url_b}dsf_fail"));
    // Short waits: a stopped server refuses at once, and the alive check
    // runs on every checkout.
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.alive_bypass = Duration::ZERO;
    dsf_sql::db::ensure_database(&cfg).unwrap();
    // The second node needs the database too (a Galera cluster would have
    // it already).
    dsf_sql::db::ensure_database(&DbConfig::new(format!("{url_b}dsf_fail"))).unwrap();
    let db = Db::connect(&cfg).unwrap();
    assert_eq!((db.current(), port_in_use(&db).unwrap()), (0, port_a));
    assert!(!db.prefer_first(), "already on the first");

    a.script("stop");
    assert_eq!(port_in_use(&db).unwrap(), port_b, "moved to the second");
    assert_eq!(db.current(), 1);
    assert!(db.target().contains(&port_b.to_string()), "{}", db.target());
    assert!(!db.prefer_first(), "the first is still down");
    assert_eq!(port_in_use(&db).unwrap(), port_b);

    a.script("start");
    // Requests stay where they are until the first is found answering.
    assert_eq!(port_in_use(&db).unwrap(), port_b);
    assert!(db.prefer_first());
    assert_eq!((db.current(), port_in_use(&db).unwrap()), (0, port_a));

    // With every node down the error is the last node's, and says so.
    a.script("stop");
    b.script("stop");
    let e = db.health().unwrap_err();
    assert_eq!(e.code(), dsf_common::ErrorCode::Unavailable, "{e}");
}

#[test]
fn a_list_starts_on_the_next_node_when_the_first_is_down() {
    let _ = dsf_sql::testing::server_url();
    let (a, b) = (PrivateServer::new("down-a"), PrivateServer::new("down-b"));
    // a is never started: its port refuses.
    b.script("start");
    let url_b = b.script("url");
    let url_a = url_b.replace(&port_of(&url_b).to_string(), &free_port().to_string());
    drop(a);
    let cfg = DbConfig::new(format!("{url_a}dsf_down,{url_b}dsf_down"));
    dsf_sql::db::ensure_database(&cfg).unwrap();
    let db = Db::connect(&cfg).unwrap();
    assert_eq!(port_in_use(&db).unwrap(), port_of(&url_b));
    assert_eq!(db.current(), 1);
}

fn free_port() -> u16 {
    dsf_common::testing::free_port()
}
