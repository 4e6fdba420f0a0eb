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
