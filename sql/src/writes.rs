//! The `wire_writes` table: writes that run once, on any node.
//!
//! [`Writes::run_once`] runs a handler in one transaction with the record of
//! its request's `(app, nonce)` and reply. While it runs, every repository
//! call the handler makes on this thread through the same [`Db`] uses that
//! transaction's connection, so the handler needs no change to take part.
//! The record is inserted last, just before the commit: if the same request
//! is running at the same time on another node, that insert waits for the
//! other transaction and then meets its record (a duplicate key), and this
//! run is rolled back whole and answered with the stored reply. A node that
//! dies mid-way leaves nothing: its transaction rolls back with its
//! connection, and a resend runs afresh.
//!
//! A refusal (the handler's error) is rolled back, then recorded on its own
//! so a resend gets the same answer; errors that say "try again"
//! (`unavailable`, `overloaded`, `internal`) are not recorded.
//!
//! **A group commit** ([`Writes::begin_group`], [`Writes::commit_group`])
//! runs many writes in one transaction: each [`Writes::run_once`] on this
//! thread while the group is open runs its handler in the group's
//! transaction and keeps its record, and the commit inserts every record
//! in one statement and commits once. Anything that is not a plain
//! success (a refusal, a resend, a statement not yet prepared on Galera,
//! a deadlock) breaks the group: its commit rolls everything back and says
//! why, and the writes are run again one by one, each as above. So a group
//! either stores every write with its record or none of them, and the
//! record's unique key still keeps each to once (a duplicate fails the
//! group's insert, and the write then meets its record on its own).

use std::cell::RefCell;

use mysql::prelude::Queryable;
use mysql::PooledConn;

use crate::db::{Db, TX};
use crate::error::{Error, Result};

/// A reply as stored: `ok`, and the body (or the error object) as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub ok: bool,
    pub reply: String,
}

/// What became of a request of a type that writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// It ran now; its reply is recorded (unless it was an error that says
    /// try again).
    Ran(Stored),
    /// It had run before, here or on another node: the reply it got then.
    Replayed(Stored),
}

/// The `wire_writes` repository; get one with [`Db::writes`].
#[derive(Debug, Clone, Copy)]
pub struct Writes<'a> {
    db: &'a Db,
}

/// Holds the run-once transaction in [`TX`] while the handler runs. Taken
/// back with [`TxGuard::finish`]; dropped without it (the handler
/// panicked), it rolls the transaction back rather than hand a connection
/// with an open transaction back to the pool.
struct TxGuard;

impl TxGuard {
    fn finish(self) -> Option<PooledConn> {
        let conn = TX.with(|t| t.borrow_mut().take()).map(|(_, c)| c);
        std::mem::forget(self);
        conn
    }
}

impl Drop for TxGuard {
    fn drop(&mut self) {
        if let Some((_, mut conn)) = TX.with(|t| t.borrow_mut().take()) {
            crate::db::roll_back(&mut conn);
        }
    }
}

/// Records are stamped with the database's clock, which the janitor
/// compares with the same clock: app servers' clocks may differ.
const INSERT: &str = "INSERT INTO wire_writes (app, nonce, kind, ok, reply, created_at) \
                      VALUES (?, ?, ?, ?, ?, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))";
/// [`INSERT`] for a refusal, recorded on its own after the rollback.
const INSERT_REFUSAL: &str = "INSERT IGNORE INTO wire_writes (app, nonce, kind, ok, reply, created_at) \
                              VALUES (?, ?, ?, ?, ?, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))";

/// What a repository asks a group to run just before its commit.
type BeforeCommit = Box<dyn FnOnce(&mut PooledConn) -> mysql::Result<()>>;

/// The insert of a group's records (app, nonce, kind, reply), as text: not
/// a prepared statement, which on Galera may lose its transaction (see
/// `db::op_key`). Strings are escaped for `conn`'s session (its
/// `NO_BACKSLASH_ESCAPES`).
fn records_sql(conn: &PooledConn, records: &[[String; 4]]) -> String {
    let plain = conn.no_backslash_escape();
    let mut sql = String::with_capacity(128 + 96 * records.len());
    sql.push_str("INSERT INTO wire_writes (app, nonce, kind, reply, ok, created_at) VALUES ");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push('(');
        for v in r {
            sql.push_str(&mysql::Value::from(v.as_str()).as_sql(plain));
            sql.push(',');
        }
        sql.push_str("1, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))");
    }
    sql
}

/// A group commit open on this thread.
struct Group {
    /// Tells this group from the thread's earlier ones.
    serial: u64,
    /// The pool ([`Db::id`]) and node its transaction is on.
    db: usize,
    node: usize,
    /// Its transaction's connection. It is the thread's run-once
    /// connection ([`TX`]) only while a write's handler runs, so that
    /// what runs between handlers (the layers before them) stays out of
    /// the group.
    conn: Option<PooledConn>,
    /// Run in order before the records are inserted.
    before_commit: Vec<BeforeCommit>,
    /// The records of the writes it ran: app, nonce, kind, reply.
    records: Vec<[String; 4]>,
    /// Why it cannot commit, once something broke it.
    broken: Option<String>,
}

thread_local! {
    static GROUP: RefCell<Option<Group>> = const { RefCell::new(None) };
    static SERIAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The serial of the group commit open on this thread (unique on the
/// thread), if one is: a repository keeps what it stages for a group under
/// it.
pub fn group_serial() -> Option<u64> {
    GROUP.with(|g| g.borrow().as_ref().map(|g| g.serial))
}

/// Runs `f` on the group's connection just before the group commits (not
/// if it breaks): a repository's writes staged across the group's
/// requests, flushed in a few statements. False, and `f` dropped, when no
/// group is open on this thread.
pub fn before_commit(f: impl FnOnce(&mut PooledConn) -> mysql::Result<()> + 'static) -> bool {
    GROUP.with(|g| match g.borrow_mut().as_mut() {
        Some(g) => {
            g.before_commit.push(Box::new(f));
            true
        }
        None => false,
    })
}

/// Lends the group's connection to a write's handler (as [`TX`]) and takes
/// it back when dropped; dropped before [`Lent::give_back`] (the handler
/// panicked), it also breaks the group, so that nothing of it stays.
struct Lent(usize);

impl Lent {
    fn lend(db: usize, conn: PooledConn) -> Lent {
        crate::db::put_tx(db, conn);
        Lent(db)
    }

    fn take_back(&self) {
        let conn = crate::db::take_tx(self.0);
        GROUP.with(|g| {
            if let Some(g) = g.borrow_mut().as_mut() {
                g.conn = conn;
            }
        });
    }

    fn give_back(self) {
        self.take_back();
        std::mem::forget(self);
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.take_back();
        break_group("a write panicked");
    }
}

/// Breaks the group commit open on this thread, if any: its commit rolls
/// back and says `why`, and its writes run again one by one.
pub fn break_group(why: &str) {
    GROUP.with(|g| {
        if let Some(g) = g.borrow_mut().as_mut() {
            g.broken.get_or_insert_with(|| why.to_string());
        }
    });
}

/// Breaks the group open on this thread (see [`break_group`]) and says so
/// to the write that found why: its answer is thrown away, as the group's
/// writes run again one by one.
pub(crate) fn rerun_alone(why: &str) -> Error {
    break_group(why);
    Error::Unavailable {
        op: "wire.group",
        reason: format!("the batch runs again one by one: {why}"),
    }
}

/// Whether a group commit is open on this thread.
pub fn in_group() -> bool {
    GROUP.with(|g| g.borrow().is_some())
}

// === impl Writes ===

impl<'a> Writes<'a> {
    pub(crate) fn new(db: &'a Db) -> Writes<'a> {
        Writes { db }
    }

    /// Runs `handler` once for `(app, nonce)`: see the module documentation.
    /// `handler` returns whether it succeeded, the reply's payload (the body,
    /// or the error object), and whether a refusal should be recorded. On
    /// Galera it runs twice the first time a connection meets a `kind`: once
    /// to prepare the statements, rolled back, then for real (see
    /// `db::op_key`); it must start afresh each time.
    pub fn run_once(
        &self,
        app: &str,
        nonce: &str,
        kind: &str,
        mut handler: impl FnMut() -> (bool, String, bool),
    ) -> Result<Once> {
        const OP: &str = "wire.run_once";
        if let Some(grouped) = self.in_group_run(app, nonce, kind, &mut handler) {
            return grouped;
        }
        let (node, mut conn) = self.db.conn_at(OP)?;
        let key = crate::db::op_key(kind);
        if self.db.needs_warming(node, &conn, key) {
            conn.prep(INSERT).map_err(|e| Error::from_mysql(OP, e))?;
            conn = self.in_tx(conn, &mut handler)?.1;
            crate::db::roll_back(&mut conn);
            // Even a refusal prepared what it reached; what it did not
            // reach is rare enough to leave.
            self.db.warmed(node, &conn, key);
        }
        let ((ok, reply, keep_refusal), mut conn) = self.in_tx(conn, &mut handler)?;
        if ok {
            let params = (app, nonce, kind, true, reply.as_str());
            return match conn.exec_drop(INSERT, params) {
                // Its own round trip: the `mysql` crate reports only the
                // first statement's error of a multi-statement query, and
                // on Galera a certification failure comes at COMMIT.
                Ok(()) => {
                    conn.query_drop("COMMIT")
                        .map_err(|e| Error::from_mysql(OP, e))?;
                    Ok(Once::Ran(Stored { ok, reply }))
                }
                Err(e) => {
                    crate::db::roll_back(&mut conn);
                    drop(conn);
                    match Error::from_mysql(OP, e) {
                        // The same request committed first, elsewhere.
                        Error::Conflict { .. } => self.replayed(app, nonce),
                        other => Err(other),
                    }
                }
            };
        }
        // A refusal: nothing it did stays.
        crate::db::roll_back(&mut conn);
        drop(conn);
        if let Some(s) = self.stored(app, nonce)? {
            // It ran meanwhile elsewhere (this run tripped over its writes).
            return Ok(Once::Replayed(s));
        }
        if keep_refusal {
            let inserted = self.db.with_conn(OP, |c| {
                c.exec_drop(INSERT_REFUSAL, (app, nonce, kind, false, reply.as_str()))?;
                Ok(c.affected_rows())
            })?;
            if inserted == 0 {
                // A run of the same request committed meanwhile (its record
                // was not yet visible above): its reply is the answer.
                return self.replayed(app, nonce);
            }
        }
        Ok(Once::Ran(Stored { ok, reply }))
    }

    /// Opens a group commit on this thread (see the module documentation).
    /// A group left open before (its commit never called) is rolled back.
    pub fn begin_group(&self) -> Result<()> {
        const OP: &str = "wire.group";
        if let Some(stale) = GROUP.with(|g| g.borrow_mut().take()) {
            log::error!("a group commit was left open on this thread; rolled back");
            if let Some(mut conn) = stale.conn {
                crate::db::roll_back(&mut conn);
            }
        }
        let (node, mut conn) = self.db.conn_at(OP)?;
        conn.query_drop("START TRANSACTION").map_err(|e| {
            crate::db::forget_if_broken(&mut conn, &e);
            Error::from_mysql(OP, e)
        })?;
        let serial = SERIAL.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        GROUP.with(|g| {
            *g.borrow_mut() = Some(Group {
                serial,
                db: self.db.id(),
                node,
                conn: Some(conn),
                before_commit: Vec::new(),
                records: Vec::new(),
                broken: None,
            })
        });
        Ok(())
    }

    /// Commits the group open on this thread: every record in one
    /// statement, then `COMMIT`. An error says why nothing of it stays
    /// (broken, or the commit failed): run its writes again one by one.
    pub fn commit_group(&self) -> std::result::Result<(), String> {
        const OP: &str = "wire.group";
        let Some(mut group) = GROUP.with(|g| g.borrow_mut().take()) else {
            return Err("no group commit was open on this thread".into());
        };
        let Some(mut conn) = group.conn.take() else {
            return Err("the group's connection was lost".into());
        };
        if let Some(why) = group.broken {
            crate::db::roll_back(&mut conn);
            return Err(why);
        }
        let done = (|| {
            for f in group.before_commit {
                f(&mut conn)?;
            }
            if !group.records.is_empty() {
                conn.query_drop(records_sql(&conn, &group.records))?;
            }
            // A round trip of its own, so that its failure is seen (see
            // run_once).
            conn.query_drop("COMMIT")
        })();
        done.map_err(|e| {
            crate::db::forget_if_broken(&mut conn, &e);
            crate::db::roll_back(&mut conn);
            Error::from_mysql(OP, e).to_string()
        })
    }

    /// [`Writes::run_once`] inside the group open on this thread, if one
    /// is open on this pool: `None` otherwise.
    fn in_group_run(
        &self,
        app: &str,
        nonce: &str,
        kind: &str,
        handler: &mut impl FnMut() -> (bool, String, bool),
    ) -> Option<Result<Once>> {
        let (node, broken) = GROUP.with(|g| {
            g.borrow()
                .as_ref()
                .filter(|g| g.db == self.db.id())
                .map(|g| (g.node, g.broken.is_some()))
        })?;
        let not_now = |why: &str| Some(Err(rerun_alone(why)));
        if broken {
            return not_now("broken before");
        }
        let Some(conn) = GROUP.with(|g| g.borrow_mut().as_mut().and_then(|g| g.conn.take())) else {
            return not_now("its connection was lost");
        };
        if self.db.needs_warming(node, &conn, crate::db::op_key(kind)) {
            GROUP.with(|g| {
                if let Some(g) = g.borrow_mut().as_mut() {
                    g.conn = Some(conn);
                }
            });
            return not_now("a statement not yet prepared on this connection");
        }
        let lent = Lent::lend(self.db.id(), conn);
        let (ok, reply, _) = handler();
        lent.give_back();
        if !ok {
            // Its writes must not stay, and a group has no savepoints.
            break_group("a refusal");
        } else {
            GROUP.with(|g| {
                if let Some(g) = g.borrow_mut().as_mut() {
                    g.records
                        .push([app.into(), nonce.into(), kind.into(), reply.clone()]);
                }
            });
        }
        Some(Ok(Once::Ran(Stored { ok, reply })))
    }

    /// Opens a transaction on `conn`, runs `handler` inside it (as the
    /// run-once transaction of this thread), and gives back what it said
    /// and the connection, the transaction still open.
    fn in_tx<R>(
        &self,
        mut conn: PooledConn,
        handler: &mut impl FnMut() -> R,
    ) -> Result<(R, PooledConn)> {
        const OP: &str = "wire.run_once";
        conn.query_drop("START TRANSACTION").map_err(|e| {
            crate::db::forget_if_broken(&mut conn, &e);
            Error::from_mysql(OP, e)
        })?;
        let guard = TxGuard;
        TX.with(|t| *t.borrow_mut() = Some((self.db.id(), conn)));
        let said = handler();
        match guard.finish() {
            Some(conn) => Ok((said, conn)),
            None => Err(Error::Internal {
                op: OP,
                message: "the run-once transaction's connection was lost".into(),
            }),
        }
    }

    fn replayed(&self, app: &str, nonce: &str) -> Result<Once> {
        self.stored(app, nonce)?
            .map(Once::Replayed)
            .ok_or_else(|| Error::Internal {
                op: "wire.run_once",
                message: format!("nonce {nonce} of app {app:?} is recorded and then gone"),
            })
    }

    /// The stored reply of `(app, nonce)`, if that request ran.
    pub fn stored(&self, app: &str, nonce: &str) -> Result<Option<Stored>> {
        self.db.with_conn("wire.stored", |c| {
            let row: Option<(bool, String)> = c.exec_first(
                "SELECT ok, reply FROM wire_writes WHERE app = ? AND nonce = ?",
                (app, nonce),
            )?;
            Ok(row.map(|(ok, reply)| Stored { ok, reply }))
        })
    }

    /// Deletes up to `limit` records older than `age` by the database's
    /// clock; returns how many went.
    pub fn expire(&self, age: std::time::Duration, limit: u32) -> Result<u64> {
        self.db.with_conn("wire.expire", |c| {
            c.exec_drop(
                "DELETE FROM wire_writes \
                 WHERE created_at < CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) - ? LIMIT ?",
                (age.as_millis() as i64, limit),
            )?;
            Ok(c.affected_rows())
        })
    }
}
