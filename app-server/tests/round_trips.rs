//! Round trips to MariaDB per request, counted by the server itself, so
//! that a regression on the database path shows: a `gate.check` is its two
//! statements (the blacklist lookup and the record of the check), with no
//! liveness ping for a connection in steady use.
//!
//! The app server runs over a MariaDB of its own, so the server's global
//! counters hear nobody else. New connections (the pool grows when the
//! machine is slow) are allowed their one first ping.

mod support;

use std::time::Duration;

use mysql::prelude::Queryable;
use serde_json::json;
use support::{settings, Server};

/// What the server counted: prepared statements executed
/// (`Com_stmt_execute`: both of a check's statements are), pings among
/// `Com_admin_commands`, and connections opened (`Connections`).
fn counters(c: &mut mysql::Conn) -> (u64, u64, u64) {
    let rows: Vec<(String, u64)> = c
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('Com_stmt_execute', 'Com_admin_commands', 'Connections')",
        )
        .unwrap();
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .unwrap()
    };
    (
        get("Com_stmt_execute"),
        get("Com_admin_commands"),
        get("Connections"),
    )
}

#[test]
fn a_gate_check_is_two_statements_and_no_ping() {
    let _ = dsf_sql::testing::server_url();
    let server = dsf_sql::testing::PrivateServer::new("round-trips");
    server.script("start");
    let url = server.script("url");
    let cfg = dsf_sql::DbConfig::new(url.clone()).database("dsf_rt");
    dsf_sql::db::ensure_database(&cfg).unwrap();
    dsf_sql::Db::connect(&cfg).unwrap().migrate().unwrap();
    let mut s = settings(cfg, None);
    // Nothing in the background: no inbox poll and no task reaper within
    // the test (the reaper's two statements every 250 ms would land in a
    // slow run).
    s.msg_poll = Duration::from_secs(3600);
    s.reap_every = Duration::from_secs(3600);
    let app = Server::with(s);
    let mut c = app.connect();
    let check = |c: &mut support::Conn, i: usize| {
        c.ok(
            "gate.check",
            json!({"id_card": format!("RT-{i}"), "name": "N", "gate": "north"}),
            None,
        );
    };
    // Warm: connections opened and statements prepared.
    for i in 0..20 {
        check(&mut c, i);
    }
    let mut status = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    const N: u64 = 200;
    let (e0, p0, c0) = counters(&mut status);
    for i in 0..N as usize {
        check(&mut c, i);
    }
    let (e1, p1, c1) = counters(&mut status);
    let executed = e1 - e0;
    assert_eq!(
        executed,
        2 * N,
        "statements per gate.check: {}",
        executed as f64 / N as f64
    );
    // A connection is pinged the first time the pool hands it out; one in
    // steady use never is (the old pool pinged on every check-out).
    let (pings, opened) = (p1 - p0, c1 - c0);
    assert!(
        pings <= opened,
        "{pings} pings during {N} gate checks, with {opened} connections opened"
    );
    drop(app);
    server.script("stop");
}
