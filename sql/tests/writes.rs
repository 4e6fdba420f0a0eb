//! Writes that run once (`wire_writes`) against a real MariaDB: a second run
//! of the same `(app, nonce)` gets the stored reply and leaves no write of
//! its own; a refusal leaves nothing but its record; two nodes running the
//! same request at once commit one of them; a write staged for the commit
//! that fails there is run again and refused.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use dsf_sql::{testing, Db, NewEntry, Once, Stored};

fn add(db: &Db, id_card: &str) -> (bool, String, bool) {
    let new = NewEntry {
        id_card,
        name: "Li",
        reason: None,
    };
    match db.blacklist().add(&new, "op") {
        Ok(e) => (true, format!("{{\"id_card\":\"{}\"}}", e.id_card), false),
        Err(e) => (
            false,
            format!("{{\"code\":\"{}\"}}", e.code().as_str()),
            true,
        ),
    }
}

fn listed(db: &Db, id_card: &str) -> bool {
    db.blacklist().get(id_card).unwrap().is_some()
}

#[test]
fn a_second_run_gets_the_stored_reply_and_its_own_write_is_undone() {
    let db = testing::fresh();
    let first = db
        .writes()
        .run_once("cli", "00112233445566aa", "blacklist.add", || {
            add(&db, "A1")
        })
        .unwrap();
    let stored = Stored {
        ok: true,
        reply: "{\"id_card\":\"A1\"}".into(),
    };
    assert_eq!(first, Once::Ran(stored.clone()));
    // The same request again (a resend), whose handler would write A2.
    let again = db
        .writes()
        .run_once("cli", "00112233445566aa", "blacklist.add", || {
            add(&db, "A2")
        })
        .unwrap();
    assert_eq!(again, Once::Replayed(stored));
    assert!(listed(&db, "A1"));
    assert!(!listed(&db, "A2"), "the resend's own write was committed");
    // Another app's request with the same nonce is its own.
    let other = db
        .writes()
        .run_once("gate", "00112233445566aa", "blacklist.add", || {
            add(&db, "A3")
        })
        .unwrap();
    assert!(matches!(other, Once::Ran(Stored { ok: true, .. })));
}

#[test]
fn a_refusal_leaves_no_write_and_is_answered_the_same_again() {
    let db = testing::fresh();
    let run = |id_card: &'static str| {
        db.writes()
            .run_once("cli", "00112233445566bb", "blacklist.add", || {
                // Writes, then refuses: the write must not stay.
                assert!(add(&db, id_card).0);
                (false, "{\"code\":\"conflict\"}".into(), true)
            })
            .unwrap()
    };
    assert!(matches!(run("B1"), Once::Ran(Stored { ok: false, .. })));
    assert!(!listed(&db, "B1"));
    assert_eq!(
        run("B2"),
        Once::Replayed(Stored {
            ok: false,
            reply: "{\"code\":\"conflict\"}".into()
        })
    );
    assert!(!listed(&db, "B2"));
}

#[test]
fn a_refusal_that_says_try_again_is_not_recorded() {
    let db = testing::fresh();
    let refused = db
        .writes()
        .run_once("cli", "00112233445566cc", "blacklist.add", || {
            (false, "{\"code\":\"unavailable\"}".into(), false)
        })
        .unwrap();
    assert!(matches!(refused, Once::Ran(Stored { ok: false, .. })));
    let retried = db
        .writes()
        .run_once("cli", "00112233445566cc", "blacklist.add", || {
            add(&db, "C1")
        })
        .unwrap();
    assert!(matches!(retried, Once::Ran(Stored { ok: true, .. })));
    assert!(listed(&db, "C1"));
}

#[test]
fn the_same_request_on_two_nodes_at_once_commits_once() {
    let db = testing::fresh();
    // Two pools on one database: two app servers.
    let other = Db::connect(&db.config()).unwrap();
    let both_wrote = Arc::new(Barrier::new(2));
    let run = |db: Db, id_card: &'static str, both_wrote: Arc<Barrier>| {
        std::thread::spawn(move || {
            db.writes()
                .run_once("cli", "00112233445566dd", "blacklist.add", || {
                    let r = add(&db, id_card);
                    // Both handlers have written before either records.
                    both_wrote.wait();
                    r
                })
                .unwrap()
        })
    };
    let a = run((*db).clone(), "D1", both_wrote.clone());
    let b = run(other, "D2", both_wrote);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let ran = [&a, &b]
        .iter()
        .filter(|o| matches!(o, Once::Ran(_)))
        .count();
    assert_eq!(ran, 1, "{a:?} {b:?}");
    assert!(
        listed(&db, "D1") != listed(&db, "D2"),
        "exactly one write stays"
    );
}

/// A run-once `blacklist.add` of `id_card` under `nonce`; how many times
/// its handler ran, and what became of it.
fn add_counting_runs(db: &Db, nonce: &str, id_card: &str) -> (u32, Once) {
    let mut runs = 0;
    let once = db
        .writes()
        .run_once("cli", nonce, "blacklist.add", || {
            runs += 1;
            add(db, id_card)
        })
        .unwrap();
    (runs, once)
}

#[test]
fn a_staged_write_that_fails_at_the_commit_runs_the_handler_again_which_meets_its_error() {
    let db = testing::fresh();
    assert_eq!(
        add_counting_runs(&db, "00112233445566f1", "F1"),
        (
            1,
            Once::Ran(Stored {
                ok: true,
                reply: "{\"id_card\":\"F1\"}".into()
            })
        ),
        "staged, then sent with the record and the commit"
    );
    // F1 again: its staged insert fails in the commit's query, after the
    // handler said ok. The handler runs again, its insert sent at once,
    // and refuses; the refusal is what is recorded.
    let conflict = Stored {
        ok: false,
        reply: "{\"code\":\"conflict\"}".into(),
    };
    assert_eq!(
        add_counting_runs(&db, "00112233445566f2", "F1"),
        (2, Once::Ran(conflict.clone()))
    );
    assert_eq!(
        add_counting_runs(&db, "00112233445566f2", "F9"),
        (1, Once::Replayed(conflict)),
        "a resend is answered from the record (its handler's run undone)"
    );
    assert!(!listed(&db, "F9"));
    // The connection came back clean: the next write commits.
    assert_eq!(add_counting_runs(&db, "00112233445566f3", "F3").0, 1);
    assert!(listed(&db, "F3"));
}

#[test]
fn a_statement_the_handler_sends_itself_goes_after_what_it_staged() {
    let db = testing::fresh();
    let mut seen = None;
    let ran = db
        .writes()
        .run_once("cli", "00112233445566f4", "blacklist.add", || {
            let r = add(&db, "F4");
            // Sent now, in the write's transaction: it sees the staged add.
            seen = Some(listed(&db, "F4"));
            r
        })
        .unwrap();
    assert!(matches!(ran, Once::Ran(Stored { ok: true, .. })));
    assert_eq!(seen, Some(true));
    assert!(listed(&db, "F4"));
    // A staged write that fails when a later statement sends it: that run
    // is thrown away, and the handler meets the error in the next.
    let mut runs = 0;
    let refused = db
        .writes()
        .run_once("cli", "00112233445566f5", "blacklist.add", || {
            runs += 1;
            let r = add(&db, "F4");
            listed(&db, "F4");
            r
        })
        .unwrap();
    assert_eq!(runs, 2);
    assert!(matches!(refused, Once::Ran(Stored { ok: false, .. })));
}

/// Runs `cards` (nonce, id card) at once on threads of their own, each a
/// run-once `blacklist.add`, while the staged write of `L0` waits for a
/// row lock this test holds: they queue for the next shared commit, which
/// runs once the lock is let go. What became of each, in order.
/// `other` is a pool of its own, as another node: it inserts the first
/// write's id card and does not commit, so that write waits.
fn queued_behind_a_lock(db: &Db, other: &Db, held: &str, cards: &[(&str, &str)]) -> Vec<Once> {
    use mysql::prelude::Queryable;
    other
        .with_conn_result("test", |holder| {
            holder.query_drop("START TRANSACTION")?;
            holder.exec_drop(
                "INSERT INTO blacklist (id_card, name, created_by, created_at, updated_by, updated_at) \
                 VALUES (?, 'held', 'test', 0, 'test', 0)",
                (held,),
            )?;
            Ok(std::thread::scope(|s| {
                let nonce = format!("{:0>16}", held.to_lowercase());
                let first = s.spawn(move || add_counting_runs(db, &nonce, held).1);
                wait_until("the first write to wait for the held row", || {
                    running_insert(db)
                });
                let rest: Vec<_> = cards
                    .iter()
                    .map(|(nonce, card)| s.spawn(move || add_counting_runs(db, nonce, card).1))
                    .collect();
                wait_until("every other write to queue for a shared commit", || {
                    db.writes().shared_waiting() == cards.len()
                });
                holder.query_drop("ROLLBACK").unwrap();
                assert!(matches!(
                    first.join().unwrap(),
                    Once::Ran(Stored { ok: true, .. })
                ));
                rest.into_iter().map(|t| t.join().unwrap()).collect()
            }))
        })
        .unwrap()
}

/// Whether an insert into this database's blacklist is running now (a
/// user sees its own threads in the process list). Its values are not
/// seen: an insert prepared on its connection shows as its form, with
/// `?` for them.
fn running_insert(db: &Db) -> bool {
    use mysql::prelude::Queryable;
    let running: Option<u64> = db
        .with_conn_result("test", |c| {
            Ok(c.query_first(
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE command = 'Query' AND info LIKE '%INSERT INTO blacklist%' \
                 AND db = DATABASE() AND id <> CONNECTION_ID()",
            )?)
        })
        .unwrap();
    running == Some(1)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A fresh database, a pool on it with a connection for each of sixteen
/// writes at once (as an app server's workers) whose staged writes wait
/// `shared_commit_wait` for a shared commit, and another pool, as another
/// node.
fn pools(shared_commit_wait: Duration) -> (testing::TestDb, Db, Db) {
    let test_db = testing::fresh();
    let mut cfg = test_db.config();
    cfg.workers = 16;
    cfg.shared_commit_wait = shared_commit_wait;
    let db = Db::connect(&cfg).unwrap();
    let other = Db::connect(&test_db.config()).unwrap();
    (test_db, db, other)
}

#[test]
fn staged_writes_of_many_connections_commit_together_and_alone_when_one_fails() {
    // They wait behind the held row for as long as the test takes.
    let (_test_db, db, other) = pools(Duration::from_secs(60));
    let cards: Vec<(String, String)> = (1..=8)
        .map(|i| (format!("00000000000000m{i}"), format!("M{i}")))
        .collect();
    let cards: Vec<(&str, &str)> = cards
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let ran = queued_behind_a_lock(&db, &other, "L0", &cards);
    assert!(
        ran.iter()
            .all(|o| matches!(o, Once::Ran(Stored { ok: true, .. }))),
        "{ran:?}"
    );
    assert_eq!(
        db.writes().shared_commits(),
        dsf_sql::writes::SharedCommits {
            commits: 1,
            writes: 8,
            failed: 0,
            merged: 1,
        },
        "the eight queued writes went in one commit, their inserts merged"
    );
    assert!(cards.iter().all(|(_, c)| listed(&db, c)));
    // Eight more, one of them an id card listed already: the shared commit
    // fails, each is sent alone, and only that one is refused.
    let mut cards: Vec<(String, String)> = (1..=8)
        .map(|i| (format!("00000000000000n{i}"), format!("N{i}")))
        .collect();
    cards[3].1 = "M2".into();
    let cards: Vec<(&str, &str)> = cards
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let ran = queued_behind_a_lock(&db, &other, "L1", &cards);
    for (i, once) in ran.iter().enumerate() {
        let ok = i != 3;
        assert!(
            matches!(once, Once::Ran(Stored { ok: o, .. }) if *o == ok),
            "write {i}: {once:?}"
        );
    }
    assert_eq!(db.writes().shared_commits().failed, 1);
    assert!(cards
        .iter()
        .filter(|(_, c)| *c != "M2")
        .all(|(_, c)| listed(&db, c)));
}

#[test]
fn staged_writes_behind_a_stuck_commit_are_sent_alone_after_a_while() {
    let (_test_db, db, other) = pools(Duration::from_millis(50));
    other
        .with_conn_result("test", |holder| {
            use mysql::prelude::Queryable;
            holder.query_drop("START TRANSACTION")?;
            holder.query_drop(
                "INSERT INTO blacklist (id_card, name, created_by, created_at, updated_by, updated_at) \
                 VALUES ('P0', 'held', 'test', 0, 'test', 0)",
            )?;
            std::thread::scope(|s| {
                let first = s.spawn(|| add_counting_runs(&db, "00000000000000p0", "P0").1);
                wait_until("the first write to wait for the held row", || {
                    running_insert(&db)
                });
                // While it waits, three others commit, alone.
                for i in 1..=3 {
                    let ran = add_counting_runs(&db, &format!("00000000000000p{i}"), &format!("P{i}")).1;
                    assert!(matches!(ran, Once::Ran(Stored { ok: true, .. })), "{ran:?}");
                    assert!(listed(&db, &format!("P{i}")));
                }
                assert!(running_insert(&db), "the first still waits");
                holder.query_drop("ROLLBACK").unwrap();
                assert!(matches!(first.join().unwrap(), Once::Ran(Stored { ok: true, .. })));
            });
            Ok(())
        })
        .unwrap();
    assert_eq!(db.writes().shared_commits(), Default::default());
}

#[test]
fn a_refusal_after_a_staged_write_is_decided_again_with_the_write_sent() {
    let db = testing::fresh();
    assert_eq!(add_counting_runs(&db, "00112233445566q1", "Q1").0, 1);
    // Refuses "custom" when its add went through, else says why the add
    // failed. The add of Q1 is only staged at first: the refusal must not
    // be recorded before the add is known to fail.
    let mut runs = 0;
    let once = db
        .writes()
        .run_once("cli", "00112233445566q2", "blacklist.add", || {
            runs += 1;
            match add(&db, "Q1") {
                (true, ..) => (false, "{\"code\":\"custom\"}".into(), true),
                refused => refused,
            }
        })
        .unwrap();
    assert_eq!(runs, 2);
    assert_eq!(
        once,
        Once::Ran(Stored {
            ok: false,
            reply: "{\"code\":\"conflict\"}".into()
        })
    );
}

#[test]
fn records_older_than_the_window_are_deleted() {
    let db = testing::fresh();
    db.writes()
        .run_once("cli", "00112233445566ee", "blacklist.add", || {
            add(&db, "E1")
        })
        .unwrap();
    // Younger than a minute: kept.
    assert_eq!(db.writes().expire(Duration::from_secs(60), 100).unwrap(), 0);
    // Past an age it has reached (a moment, by the database's clock): gone.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        db.writes().expire(Duration::from_millis(5), 100).unwrap(),
        1
    );
    assert!(db
        .writes()
        .stored("cli", "00112233445566ee")
        .unwrap()
        .is_none());
}

/// Runs `cards` as one group, each a `blacklist.add` of its own nonce;
/// the commit's result.
fn group(db: &Db, cards: &[(&str, &str)]) -> Result<Vec<Once>, String> {
    db.writes().begin_group().unwrap();
    let ran: Vec<Once> = cards
        .iter()
        .map(|(nonce, card)| {
            db.writes()
                .run_once("cli", nonce, "blacklist.add", || add(db, card))
                .unwrap_or_else(|e| {
                    Once::Ran(Stored {
                        ok: false,
                        reply: e.to_string(),
                    })
                })
        })
        .collect();
    db.writes().commit_group().map(|()| ran)
}

#[test]
fn a_group_commits_every_write_with_its_record_and_a_resend_is_answered_from_it() {
    let db = testing::fresh();
    let ran = group(
        &db,
        &[("00000000000000g1", "G1"), ("00000000000000g2", "G2")],
    )
    .unwrap();
    assert!(
        ran.iter()
            .all(|o| matches!(o, Once::Ran(Stored { ok: true, .. }))),
        "{ran:?}"
    );
    assert!(listed(&db, "G1") && listed(&db, "G2"));
    // A resend of the second, alone: its record answers.
    let again = db
        .writes()
        .run_once("cli", "00000000000000g2", "blacklist.add", || {
            add(&db, "G3")
        })
        .unwrap();
    assert_eq!(
        again,
        Once::Replayed(Stored {
            ok: true,
            reply: "{\"id_card\":\"G2\"}".into()
        })
    );
    assert!(!listed(&db, "G3"));
    assert!(!dsf_sql::writes::in_group(), "the commit closed the group");
}

#[test]
fn a_group_with_a_refusal_or_a_recorded_nonce_leaves_nothing() {
    let db = testing::fresh();
    // A refusal (a duplicate id card) breaks the group: the first write
    // goes too.
    let broken = group(
        &db,
        &[("00000000000000h1", "H1"), ("00000000000000h2", "H1")],
    );
    assert_eq!(broken.unwrap_err(), "a refusal");
    assert!(!listed(&db, "H1"), "nothing of a broken group stays");
    // A nonce recorded already: the group's insert of records fails whole.
    db.writes()
        .run_once("cli", "00000000000000h3", "blacklist.add", || {
            add(&db, "H3")
        })
        .unwrap();
    let dup = group(
        &db,
        &[("00000000000000h4", "H4"), ("00000000000000h3", "H5")],
    );
    assert!(
        dup.unwrap_err().contains("Duplicate"),
        "the duplicate record is named"
    );
    assert!(!listed(&db, "H4") && !listed(&db, "H5"));
    // Both then run on their own, as the pipeline runs them: once each.
    assert!(matches!(
        db.writes()
            .run_once("cli", "00000000000000h3", "blacklist.add", || add(
                &db, "H5"
            ))
            .unwrap(),
        Once::Replayed(_)
    ));
    assert!(!listed(&db, "H5"));
}

/// The server's id of the connection this thread's statements go to now.
fn connection_id(db: &Db) -> u64 {
    use mysql::prelude::Queryable;
    db.with_conn("test", |c| c.query_first("SELECT CONNECTION_ID()"))
        .unwrap()
        .unwrap()
}

#[test]
fn a_group_lends_its_connection_only_to_its_writes_handlers() {
    let db = testing::fresh();
    db.writes().begin_group().unwrap();
    let mut inside = 0;
    db.writes()
        .run_once("cli", "00000000000000i1", "blacklist.add", || {
            inside = connection_id(&db);
            add(&db, "I1")
        })
        .unwrap();
    // What runs between the writes (the layers before a handler: a
    // session looked up, say) is not part of the group.
    assert_ne!(connection_id(&db), inside);
    db.writes().commit_group().unwrap();
    assert!(listed(&db, "I1"));
}

/// Executions of prepared statements by name on the pool's connection.
fn executes(db: &Db) -> u64 {
    use mysql::prelude::Queryable;
    db.with_conn_result("test", |c| {
        let row: Option<(String, u64)> =
            c.query_first("SHOW SESSION STATUS LIKE 'Com_execute_sql'")?;
        Ok(row.expect("the counter").1)
    })
    .unwrap()
}

#[test]
fn staged_writes_go_as_statements_prepared_on_their_connection_and_survive_their_loss() {
    let test_db = testing::fresh();
    let mut cfg = test_db.config();
    (cfg.workers, cfg.pool_margin) = (1, 0);
    let db = Db::connect(&cfg).unwrap();
    let ran_once = |nonce: &str, card: &str| {
        let (runs, once) = add_counting_runs(&db, nonce, card);
        assert!(
            matches!(once, Once::Ran(Stored { ok: true, .. })),
            "{once:?}"
        );
        assert!(listed(&db, card));
        runs
    };
    // The first write prepares its insert and the record's on the
    // connection; the next executes them.
    assert_eq!(ran_once("00000000000000e1", "E1"), 1);
    let before = executes(&db);
    assert_eq!(ran_once("00000000000000e2", "E2"), 1);
    assert_eq!(
        executes(&db) - before,
        2,
        "the add and its record, executed"
    );
    // The server forgets them (as a server that restarted and gave the
    // connection's id again would): the write fails there, runs again
    // with its statements sent as they come, and the next prepares them
    // again.
    db.with_conn_result("test", |c| Ok(c.change_user()?))
        .unwrap();
    assert_eq!(ran_once("00000000000000e3", "E3"), 2);
    assert_eq!(ran_once("00000000000000e4", "E4"), 1);
    let before = executes(&db);
    assert_eq!(ran_once("00000000000000e5", "E5"), 1);
    assert_eq!(executes(&db) - before, 2);
}
