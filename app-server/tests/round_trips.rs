//! Round trips to MariaDB per request, counted by the server itself, so
//! that a regression on the database path shows: a `gate.check` is its two
//! statements (the blacklist lookup and the record of the check), with no
//! liveness ping for a connection in steady use.
//!
//! The app server runs over a MariaDB of its own, so the server's global
//! counters hear nobody else.

mod support;

use std::time::Duration;

use mysql::prelude::Queryable;
use serde_json::json;
use support::{settings, Server};

/// `Questions` (statements, prepared executions included) and
/// `Com_admin_commands` (pings among them), as the server counts them.
fn counters(c: &mut mysql::Conn) -> (u64, u64) {
    let rows: Vec<(String, u64)> = c
        .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_admin_commands')")
        .unwrap();
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .unwrap()
    };
    (get("Questions"), get("Com_admin_commands"))
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
    // Nothing in the background: no inbox poll within the test.
    s.msg_poll = Duration::from_secs(3600);
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
    let (q0, p0) = counters(&mut status);
    for i in 0..N as usize {
        check(&mut c, i);
    }
    let (q1, p1) = counters(&mut status);
    // The second SHOW counts itself.
    let statements = q1 - q0 - 1;
    assert_eq!(
        statements,
        2 * N,
        "statements per gate.check: {}",
        statements as f64 / N as f64
    );
    assert_eq!(p1 - p0, 0, "pings during {N} gate checks in steady use");
    drop(app);
    server.script("stop");
}
