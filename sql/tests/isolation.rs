//! Transactions at READ COMMITTED ([`Db::with_tx_read_committed`]) against
//! a real MariaDB: between two reads of one such transaction another
//! connection commits a change, and the second read sees it; at the
//! default level (REPEATABLE READ) it does not. The level is the
//! transaction's own, also inside a run-once write, and the next
//! transaction on the same connection is back at the default.

use dsf_sql::{testing, Db, Error, Once};
use mysql::prelude::Queryable;
use mysql::PooledConn;

const OP: &str = "test.isolation";

/// A database with one row `(1, 0)` in `kv`; a pool of one connection on
/// it, and another pool (another node).
fn setup() -> (testing::TestDb, Db, Db) {
    let test_db = testing::fresh();
    test_db
        .with_conn(OP, |c| {
            c.query_drop("CREATE TABLE kv (k INT PRIMARY KEY, v INT NOT NULL) ENGINE = InnoDB")?;
            c.query_drop("INSERT INTO kv VALUES (1, 0)")
        })
        .unwrap();
    let mut cfg = test_db.config();
    cfg.workers = 1;
    cfg.pool_margin = 0;
    let db = Db::connect(&cfg).unwrap();
    let other = Db::connect(&test_db.config()).unwrap();
    (test_db, db, other)
}

/// Reads `v`, lets `other` commit `v = to`, and reads it again, on `c`.
fn read_twice(c: &mut PooledConn, other: &Db, to: i32) -> dsf_sql::Result<(i32, i32)> {
    let read = |c: &mut PooledConn| -> dsf_sql::Result<i32> {
        let v: Option<i32> = c
            .query_first("SELECT v FROM kv WHERE k = 1")
            .map_err(|e| Error::from_mysql(OP, e))?;
        Ok(v.expect("the row"))
    };
    let first = read(c)?;
    other.with_conn(OP, |o| {
        o.exec_drop("UPDATE kv SET v = ? WHERE k = 1", (to,))
    })?;
    Ok((first, read(c)?))
}

#[test]
fn read_committed_sees_what_was_committed_between_its_reads_and_the_default_does_not() {
    let (_test_db, db, other) = setup();
    let at_rc = db
        .with_tx_read_committed(OP, |c| read_twice(c, &other, 1))
        .unwrap();
    assert_eq!(at_rc, (0, 1), "READ COMMITTED sees the commit");
    // The same (only) connection: the level was that transaction's.
    let at_rr = db.with_tx(OP, |c| read_twice(c, &other, 2)).unwrap();
    assert_eq!(at_rr, (1, 1), "REPEATABLE READ keeps its snapshot");
}

#[test]
fn inside_a_run_once_write_the_level_is_its_transactions() {
    let (_test_db, db, other) = setup();
    let run = |nonce: &str, rc: bool, to: i32| {
        let mut seen = None;
        let once = db
            .writes()
            .run_once("cli", nonce, "test.isolation", || {
                let r = if rc {
                    db.with_tx_read_committed(OP, |c| read_twice(c, &other, to))
                } else {
                    db.with_tx(OP, |c| read_twice(c, &other, to))
                };
                seen = Some(r.unwrap());
                (true, "{}".into(), false)
            })
            .unwrap();
        assert!(matches!(once, Once::Ran(_)), "{once:?}");
        seen.unwrap()
    };
    // Its first statement starts the transaction: at READ COMMITTED.
    assert_eq!(run("00000000000000a1", true, 1), (0, 1));
    assert_eq!(run("00000000000000a2", false, 2), (1, 1));
    // Started already by a statement before it: at that transaction's level.
    let mut seen = None;
    db.writes()
        .run_once("cli", "00000000000000a3", "test.isolation", || {
            db.with_tx(OP, |c| read_twice(c, &other, 3)).unwrap();
            seen = Some(
                db.with_tx_read_committed(OP, |c| read_twice(c, &other, 4))
                    .unwrap(),
            );
            (true, "{}".into(), false)
        })
        .unwrap();
    assert_eq!(seen, Some((2, 2)));
}
