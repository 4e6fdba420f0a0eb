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
//! **One round trip.** A handler's write that needs nothing back but its
//! success ([`Db::exec_write`]) is not sent when the handler makes it: it
//! is staged, and goes out with `START TRANSACTION`, the record's insert
//! and `COMMIT`, all in one query (each as the `EXECUTE` of a statement
//! prepared on the connection where it can be; see `forms.rs`). A
//! handler whose writes are all staged (`blacklist.add`) costs one round
//! trip with its record, as it would without. A statement the handler
//! sends itself first sends what was staged before it, in order. If a
//! staged write fails (a duplicate key), the run is thrown away and the
//! handler runs again with every statement sent as it comes, so it meets
//! its error where it made the write. Every result of the combined query
//! is read: an error of its third statement is as visible as one of its
//! first (dropping the result unread, as `query_drop` does, would hide
//! it). On Galera the `COMMIT` goes in a round trip of its own: at the end
//! of a multi-statement query it lost writes under certification conflicts
//! while answering OK.
//!
//! **Staged writes of many connections commit together.** A write whose
//! statements were all staged is text that any thread can send, so the
//! threads of one [`Db`] that finish such writes at the same time share
//! one transaction: the first to find none in flight sends every waiting
//! write's statements (as one multi-row `INSERT` for each insert they all
//! make, when they are alike: `forms::merge`), their records in one
//! `INSERT`, and one `COMMIT`; the others wait for it (up to
//! [`SHARED_MAX`] writes a query). If that query fails anywhere, nothing
//! of it stays, and each write is sent again on its own, as above, where
//! its own error is its own. A write that has waited
//! [`DbConfig::shared_commit_wait`](crate::DbConfig) for a commit in
//! flight (one stuck on a lock, say) leaves the queue and is sent alone.
//!
//! A refusal (the handler's error) is rolled back, then recorded on its own
//! so a resend gets the same answer; errors that say "try again"
//! (`unavailable`, `overloaded`, `internal`) are not recorded.
//!
//! **A group commit** ([`Writes::begin_group`], [`Writes::commit_group`])
//! runs many writes in one transaction: each [`Writes::run_once`] on this
//! thread while the group is open runs its handler in the group's
//! transaction and keeps its record, and the commit inserts the records
//! (those not written early, below) in one statement and commits once.
//! Anything that is not a plain success (a refusal, a resend, a statement
//! not yet prepared on Galera, a deadlock) breaks the group: its commit
//! rolls everything back and says why, and the writes are run again one
//! by one, each as above. So a group either stores every write with its
//! record or none of them, and the record's unique key still keeps each to
//! once (a duplicate fails the group's insert, and the write then meets
//! its record on its own).
//!
//! **Records written early.** A group holds the rows it locks until its
//! commit, and every statement in the commit's round trip makes that
//! longer. A repository may have a write's record inserted earlier in the
//! group's transaction, before it takes its locks ([`record_early`]), with
//! a reply that lacks what only the locked rows tell (`msg.send`'s
//! number): the group then inserts no record of it. Its kind
//! registers how to complete such a reply from its rows
//! ([`Writes::complete_replies`]), and [`Writes::stored_as`] answers with
//! the completed reply. The record is the same row under the same key, in
//! the same transaction: a run of the same request anywhere meets it as
//! before (`msg.send`: [`crate::messages::sent_reply`]). One new wait
//! comes with it: a resend of a write that a group recorded early, run
//! alone elsewhere meanwhile, may hold a row the group then waits for
//! while it waits for the group's record; MariaDB ends that deadlock by
//! rolling one back, which answers `unavailable` (sent again, it meets the
//! record).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};

use mysql::prelude::Queryable;
use mysql::PooledConn;

use crate::db::{Db, TX};
use crate::error::{Error, Result};
use crate::forms::Stmt;

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
    fn finish(self) -> (Option<PooledConn>, Option<Staged>) {
        let conn = TX.with(|t| t.borrow_mut().take()).map(|(_, c)| c);
        let staged = STAGED.with(|s| s.borrow_mut().take());
        std::mem::forget(self);
        (conn, staged)
    }
}

impl Drop for TxGuard {
    fn drop(&mut self) {
        STAGED.with(|s| s.borrow_mut().take());
        if let Some((_, mut conn)) = TX.with(|t| t.borrow_mut().take()) {
            crate::db::roll_back(&mut conn);
        }
    }
}

/// The writes a run-once handler staged ([`Db::exec_write`]), not yet sent.
#[derive(Debug)]
struct Staged {
    /// The pool ([`Db::id`]) of the run-once write.
    db: usize,
    /// Whether `START TRANSACTION` went out (before a statement the handler
    /// sent itself).
    started: bool,
    /// The staged statements, in order.
    sql: Vec<Stmt>,
    /// Sending them before a statement of the handler's failed: this run
    /// is thrown away (and `true` if the connection is gone, so that it
    /// is not run again on it).
    failed: Option<bool>,
}

impl Staged {
    /// A transaction started plainly, with nothing to stage.
    fn started(db: usize) -> Staged {
        Staged {
            db,
            started: true,
            sql: Vec::new(),
            failed: None,
        }
    }
}

/// A refusal's record, inserted on its own after the rollback (a
/// success's goes in with its transaction: [`crate::forms::RECORD`]).
/// Records are stamped with the database's clock, which the janitor
/// compares with the same clock: app servers' clocks may differ.
const INSERT_REFUSAL: &str = "INSERT IGNORE INTO wire_writes (app, nonce, kind, ok, reply, created_at) \
                              VALUES (?, ?, ?, ?, ?, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))";

/// What a repository asks a group to send with its commit: the statements
/// (text), or why the group must not commit.
type BeforeCommit = Box<dyn FnOnce() -> std::result::Result<Vec<String>, String>>;

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
    /// Asked in order for the statements that go before the records.
    before_commit: Vec<BeforeCommit>,
    /// The records of the writes it ran: app, nonce, kind, reply.
    records: Vec<[String; 4]>,
    /// The writes whose records a repository inserted ahead of them
    /// ([`record_early`]): app, nonce.
    early: Vec<(String, String)>,
    /// Why it cannot commit, once something broke it.
    broken: Option<String>,
}

thread_local! {
    static STAGED: RefCell<Option<Staged>> = const { RefCell::new(None) };
    static GROUP: RefCell<Option<Group>> = const { RefCell::new(None) };
    static SERIAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Completes a reply recorded early ([`record_early`]) from the write's
/// rows: `(connection, reply as recorded)` to the whole reply, or `None`
/// when the reply needs nothing (it was recorded whole); an error when the
/// rows that would complete it are not there. See
/// [`Writes::complete_replies`].
pub type CompleteReply = fn(&mut PooledConn, &str) -> Result<Option<String>>;

/// Records, in the group open on this thread, the writes of `records`
/// (app, nonce, kind, reply) ahead of their handlers: the statement that
/// inserts them, for the repository to send in the group's transaction
/// (before it takes its locks); the group then inserts no record of those
/// writes itself. A reply recorded so may lack what only the locked rows
/// tell: its kind completes it when it is read
/// ([`Writes::complete_replies`]). `None` when no group is open or
/// `records` is empty. If the statement fails, the write that sent it
/// must fail, which breaks the group.
pub fn record_early(conn: &PooledConn, records: &[[String; 4]]) -> Option<String> {
    let refs: Vec<&[String; 4]> = records.iter().collect();
    let insert = Stmt::records(conn, &refs)?;
    GROUP.with(|g| {
        let mut g = g.borrow_mut();
        let g = g.as_mut()?;
        g.early.extend(
            records
                .iter()
                .map(|[app, nonce, ..]| (app.clone(), nonce.clone())),
        );
        Some(
            crate::forms::render(None, conn, [&insert])
                .remove(0)
                .into_owned(),
        )
    })
}

/// The serial of the group commit open on this thread (unique on the
/// thread), if one is: a repository keeps what it stages for a group under
/// it.
pub fn group_serial() -> Option<u64> {
    GROUP.with(|g| g.borrow().as_ref().map(|g| g.serial))
}

/// Asks `f`, when the group commits (not if it breaks), for statements to
/// send before the records: a repository's writes staged across the
/// group's requests, in a few statements. They go out in the commit's own
/// round trip (on Galera the one just before the `COMMIT`'s own:
/// `run_with_commit`), so that rows the group locked stay locked no longer
/// than that. `f`'s error says why the group must not commit: it rolls
/// back, and its writes run again one by one. False, and `f` dropped, when
/// no group is open on this thread.
pub fn before_commit(
    f: impl FnOnce() -> std::result::Result<Vec<String>, String> + 'static,
) -> bool {
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

/// Stages `sql` with `params` for the commit of the run-once write open
/// on this thread for pool `db` ([`Db::exec_write`]); false if none is
/// open, or it does not stage (a group's, or a warming run), or `params`
/// are named.
pub(crate) fn stage(db: usize, sql: &str, params: &mysql::Params) -> bool {
    let plain = TX.with(|t| {
        t.borrow()
            .as_ref()
            .filter(|(id, _)| *id == db)
            .map(|(_, c)| c.no_backslash_escape())
    });
    let Some(plain) = plain else {
        return false;
    };
    STAGED.with(|s| {
        let mut s = s.borrow_mut();
        let Some(staged) = s.as_mut().filter(|s| s.db == db) else {
            return false;
        };
        if staged.failed.is_some() {
            // This run is thrown away: nothing needs sending.
            return true;
        }
        match Stmt::new(sql, params, plain) {
            Some(stmt) => {
                staged.sql.push(stmt);
                true
            }
            None => false,
        }
    })
}

/// Statements as text ([`crate::forms::as_text`]) that need nothing back
/// but their success, the last a transaction on `conn` sends (a
/// repository's, which holds the connection, [`Db::with_tx`]): inside a
/// run-once write of pool `db` on this thread they are staged, to go out
/// with its record and `COMMIT` (if one fails there, the write runs again
/// with its statements sent as they come, and meets the error here);
/// otherwise they are sent now, in one round trip. [`stage`] is for a
/// statement made outside such a transaction.
pub(crate) fn stage_last(
    db: usize,
    conn: &mut PooledConn,
    statements: Vec<String>,
) -> mysql::Result<()> {
    let unstaged = STAGED.with(|s| match s.borrow_mut().as_mut().filter(|s| s.db == db) {
        Some(staged) => {
            if staged.failed.is_none() {
                staged.sql.extend(statements.into_iter().map(Stmt::Text));
            }
            None
        }
        None => Some(statements),
    });
    match unstaged {
        None => Ok(()),
        Some(statements) => run_all(conn, &statements.join(";")).map_err(|(_, e)| e),
    }
}

/// Sends what is staged for the run-once write of pool `db` on its
/// connection `conn`, with `START TRANSACTION` first if it has not gone
/// out (at READ COMMITTED if `read_committed`): called before a statement
/// the handler sends itself.
pub(crate) fn send_staged(db: &Db, conn: &mut PooledConn, read_committed: bool) {
    let pool = crate::forms::pool_of(db);
    STAGED.with(|s| {
        let mut s = s.borrow_mut();
        let Some(staged) = s.as_mut().filter(|s| s.db == db.id()) else {
            return;
        };
        if staged.failed.is_some() || (staged.started && staged.sql.is_empty()) {
            return;
        }
        if !staged.started {
            crate::forms::prepare(pool, conn, &staged.sql);
        }
        let mut sql = Vec::with_capacity(staged.sql.len() + 1);
        if !staged.started {
            sql.push(std::borrow::Cow::Borrowed(if read_committed {
                crate::db::BEGIN_READ_COMMITTED
            } else {
                "START TRANSACTION"
            }));
        }
        sql.extend(crate::forms::render(pool, conn, &staged.sql));
        let sent = run_all(conn, &sql.join(";"));
        drop(sql);
        staged.sql.clear();
        staged.started = true;
        if let Err((_, e)) = sent {
            log::debug!("a staged write failed ({e}): the write runs again");
            crate::forms::after_error(pool, conn, &e);
            staged.failed = Some(e.is_connectivity_error());
            crate::db::forget_if_broken(conn, &e);
            // A deadlock rolled the transaction back: what the handler
            // sends next must not commit on its own. A read-only
            // transaction refuses its writes, and is rolled back with the
            // run.
            if !e.is_connectivity_error() {
                let _ = run_all(conn, "ROLLBACK;START TRANSACTION READ ONLY");
            }
        }
    })
}

/// Sends `sql` (statements joined by `;`) in one round trip and reads
/// every result, so that an error of any statement is seen: on one, the
/// index of the statement and its error (the server runs none after it).
pub(crate) fn run_all(
    conn: &mut PooledConn,
    sql: &str,
) -> std::result::Result<(), (usize, mysql::Error)> {
    query_all(conn, sql).map(drop)
}

/// [`run_all`], returning the rows of each result, in order.
pub(crate) fn query_all(
    conn: &mut PooledConn,
    sql: &str,
) -> std::result::Result<Vec<Vec<mysql::Row>>, (usize, mysql::Error)> {
    let mut result = conn.query_iter(sql).map_err(|e| (0, e))?;
    let mut sets = Vec::new();
    while let Some(set) = result.iter() {
        let i = sets.len();
        sets.push(set.collect::<mysql::Result<Vec<_>>>().map_err(|e| (i, e))?);
    }
    Ok(sets)
}

/// Sends `sql` (statements, the last of them `COMMIT`) as [`run_all`]
/// does, in one round trip; on Galera the `COMMIT` goes in a round trip
/// of its own. A Galera `COMMIT` at the end of a multi-statement query
/// lost writes under certification conflicts while answering OK, even
/// with every result read (`sql/tests/galera.rs`, duplicate numbers);
/// on its own it says when it fails.
fn run_with_commit(
    conn: &mut PooledConn,
    galera: bool,
    sql: &[&str],
) -> std::result::Result<(), (usize, mysql::Error)> {
    if !galera {
        return run_all(conn, &sql.join(";"));
    }
    let (commit, before) = sql.split_last().expect("a COMMIT");
    if !before.is_empty() {
        run_all(conn, &before.join(";"))?;
    }
    run_all(conn, commit).map_err(|(_, e)| (before.len(), e))
}

/// Commits staged writes in one transaction: `START TRANSACTION` unless
/// `started`, their statements `sql`, their `records` in one `INSERT` (if
/// any), `COMMIT`; one round trip ([`run_with_commit`]). Before it, if no
/// transaction is open, one more to prepare on `conn` the forms it does
/// not hold yet ([`crate::forms::prepare`]). The step that failed, if one
/// did.
fn commit_staged(
    conn: &mut PooledConn,
    db: &Db,
    started: bool,
    sql: &[&Stmt],
    records: &[&[String; 4]],
) -> std::result::Result<(), (Step, mysql::Error)> {
    let pool = crate::forms::pool_of(db);
    let records = Stmt::records(conn, records);
    if !started {
        crate::forms::prepare(pool, conn, sql.iter().copied().chain(&records));
    }
    let first = usize::from(!started);
    let mut all = Vec::with_capacity(sql.len() + 3);
    if !started {
        all.push("START TRANSACTION".into());
    }
    all.extend(crate::forms::render(
        pool,
        conn,
        sql.iter().copied().chain(&records),
    ));
    all.push("COMMIT".into());
    let step = |i: usize| match i.checked_sub(first + sql.len()) {
        _ if i < first => Step::Start,
        None => Step::Staged,
        Some(0) if records.is_some() => Step::Record,
        Some(_) => Step::Commit,
    };
    let all: Vec<&str> = all.iter().map(|s| s.as_ref()).collect();
    run_with_commit(conn, db.is_galera(), &all).map_err(|(i, e)| {
        crate::forms::after_error(pool, conn, &e);
        (step(i), e)
    })
}

/// The most staged writes one shared commit takes.
pub const SHARED_MAX: usize = 64;

/// Staged writes waiting to be committed together: one per [`Db`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<SharedState>,
    turn: Condvar,
    /// How replies recorded early are completed, by kind
    /// ([`Writes::complete_replies`]).
    completers: RwLock<HashMap<String, CompleteReply>>,
}

#[derive(Debug, Default)]
struct SharedState {
    /// A thread is sending a shared commit.
    leading: bool,
    waiting: Vec<Waiting>,
    next_ticket: u64,
    /// How each write sent in a shared commit ended: `None` committed,
    /// `Some` given back to be sent alone.
    ended: HashMap<u64, Option<Waiting>>,
    counts: SharedCommits,
}

/// What the commits shared across connections did so far
/// ([`Writes::shared_commits`]); a write its own thread sent alone is not
/// counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedCommits {
    /// Shared commits that went through.
    pub commits: u64,
    /// The writes in them.
    pub writes: u64,
    /// Shared commits that failed (their writes were then sent alone).
    pub failed: u64,
    /// Of `commits`, those whose writes were alike and went as one
    /// multi-row `INSERT` for each insert they make.
    pub merged: u64,
}

/// A staged write waiting for a shared commit.
#[derive(Debug)]
struct Waiting {
    ticket: u64,
    sql: Vec<Stmt>,
    record: [String; 4],
}

/// The batch a thread is sending as a shared commit. Dropped (also if
/// the sending panicked), it hands the lead on and tells each write how
/// it ended: committed, or given back to be sent alone.
struct Leading<'a> {
    shared: &'a Shared,
    batch: Vec<Waiting>,
    committed: bool,
    merged: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.leading = false;
        if !self.batch.is_empty() {
            if self.committed {
                state.counts.commits += 1;
                state.counts.merged += u64::from(self.merged);
                state.counts.writes += self.batch.len() as u64;
            } else {
                state.counts.failed += 1;
            }
        }
        for w in self.batch.drain(..) {
            let ticket = w.ticket;
            state.ended.insert(ticket, (!self.committed).then_some(w));
        }
        self.shared.turn.notify_all();
    }
}

impl Waiting {
    /// Sends this write alone, as its own transaction.
    fn send_alone(
        &self,
        conn: &mut PooledConn,
        db: &Db,
    ) -> std::result::Result<(), (Step, mysql::Error)> {
        let sql: Vec<&Stmt> = self.sql.iter().collect();
        commit_staged(conn, db, false, &sql, &[&self.record])
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which statement of a write's last query failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    Staged,
    Record,
    Commit,
}

/// How a try at a run-once write ended.
enum Tried {
    Done(Once),
    /// A staged write failed: run the handler again, sending as it goes.
    Again(PooledConn),
}

// === impl Writes ===

impl<'a> Writes<'a> {
    pub(crate) fn new(db: &'a Db) -> Writes<'a> {
        Writes { db }
    }

    /// Runs `handler` once for `(app, nonce)`: see the module documentation.
    /// `handler` returns whether it succeeded, the reply's payload (the body,
    /// or the error object), and whether a refusal should be recorded. It
    /// may run up to three times, and must start afresh each time: on
    /// Galera, the first time a connection meets a `kind`, once to prepare
    /// the statements, rolled back (see `db::op_key`); and once more with
    /// its statements sent as they come when a staged write failed, or
    /// when it refused after staging writes (they might have failed, and it
    /// would have refused for that).
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
            conn = self.in_tx(conn, &mut handler, false)?.2;
            crate::db::roll_back(&mut conn);
            // Even a refusal prepared what it reached; what it did not
            // reach is rare enough to leave.
            self.db.warmed(node, &conn, key);
        }
        match self.try_once([app, nonce, kind], conn, &mut handler, true)? {
            Tried::Done(once) => Ok(once),
            Tried::Again(conn) => {
                match self.try_once([app, nonce, kind], conn, &mut handler, false)? {
                    Tried::Done(once) => Ok(once),
                    Tried::Again(_) => Err(Error::Internal {
                        op: OP,
                        message: "a run-once write with nothing staged asked to run again".into(),
                    }),
                }
            }
        }
    }

    /// One run of [`Writes::run_once`]'s handler in a transaction on
    /// `conn`, its writes staged if `staging`, and its end: the record and
    /// `COMMIT` (in one round trip with what was staged), or the refusal.
    fn try_once(
        &self,
        [app, nonce, kind]: [&str; 3],
        conn: PooledConn,
        handler: &mut impl FnMut() -> (bool, String, bool),
        staging: bool,
    ) -> Result<Tried> {
        const OP: &str = "wire.run_once";
        let ((ok, reply, keep_refusal), staged, mut conn) = self.in_tx(conn, handler, staging)?;
        let gone = || Error::Unavailable {
            op: OP,
            reason: "the database connection broke during the write".into(),
        };
        match staged.failed {
            Some(true) => return Err(gone()),
            Some(false) => {
                crate::db::roll_back(&mut conn);
                return Ok(Tried::Again(conn));
            }
            None => {}
        }
        if !ok && !staged.sql.is_empty() {
            // A refusal made after writes that were never sent: they might
            // have failed, and the handler would have refused for that. It
            // decides again, its statements sent as they come.
            if staged.started {
                crate::db::roll_back(&mut conn);
            }
            return Ok(Tried::Again(conn));
        }
        if ok {
            let record = [app.into(), nonce.into(), kind.into(), reply.clone()];
            let sent = if staged.started {
                let sql: Vec<&Stmt> = staged.sql.iter().collect();
                commit_staged(&mut conn, self.db, true, &sql, &[&record])
            } else {
                self.commit_shared(&mut conn, staged.sql, record)
            };
            let Err((step, e)) = sent else {
                return Ok(Tried::Done(Once::Ran(Stored { ok, reply })));
            };
            let broken = e.is_connectivity_error();
            crate::db::forget_if_broken(&mut conn, &e);
            crate::db::roll_back(&mut conn);
            return match (step, Error::from_mysql(OP, e)) {
                (Step::Staged, _) if broken => Err(gone()),
                (Step::Staged, e) => {
                    log::debug!("a staged write failed ({e}): the write runs again");
                    Ok(Tried::Again(conn))
                }
                // The same request committed first, elsewhere.
                (Step::Record, Error::Conflict { .. }) => {
                    drop(conn);
                    self.replayed(app, nonce, kind).map(Tried::Done)
                }
                (_, e) => Err(e),
            };
        }
        // A refusal: nothing it did stays (and nothing went out if it
        // started no transaction).
        if staged.started {
            crate::db::roll_back(&mut conn);
        }
        drop(conn);
        if let Some(s) = self.stored_as(kind, app, nonce)? {
            // It ran meanwhile elsewhere (this run tripped over its writes).
            return Ok(Tried::Done(Once::Replayed(s)));
        }
        if keep_refusal {
            let inserted = self.db.with_conn(OP, |c| {
                c.exec_drop(INSERT_REFUSAL, (app, nonce, kind, false, reply.as_str()))?;
                Ok(c.affected_rows())
            })?;
            if inserted == 0 {
                // A run of the same request committed meanwhile (its record
                // was not yet visible above): its reply is the answer.
                return self.replayed(app, nonce, kind).map(Tried::Done);
            }
        }
        Ok(Tried::Done(Once::Ran(Stored { ok, reply })))
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
                early: Vec::new(),
                broken: None,
            })
        });
        Ok(())
    }

    /// Commits the group open on this thread: the statements its
    /// repositories asked for ([`before_commit`]), the records not written
    /// early ([`record_early`]) in one statement, and `COMMIT`, in one
    /// round trip (two on Galera, the `COMMIT` alone). An error says why nothing of it stays (broken, or
    /// the commit failed): run its writes again one by one.
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
        let mut sql = Vec::new();
        for f in group.before_commit {
            match f() {
                Ok(statements) => sql.extend(statements.into_iter().map(Stmt::Text)),
                Err(why) => {
                    crate::db::roll_back(&mut conn);
                    return Err(why);
                }
            }
        }
        let sql: Vec<&Stmt> = sql.iter().collect();
        let records: Vec<&[String; 4]> = group.records.iter().collect();
        commit_staged(&mut conn, self.db, true, &sql, &records).map_err(|(_, e)| {
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
        // Its repository recorded it early: the group inserts no record.
        let early = GROUP.with(|g| {
            g.borrow().as_ref().is_some_and(|g| {
                g.early
                    .iter()
                    .any(|(a, n)| (a.as_str(), n.as_str()) == (app, nonce))
            })
        });
        if !ok {
            // Its writes must not stay, and a group has no savepoints.
            break_group("a refusal");
        } else if !early {
            GROUP.with(|g| {
                if let Some(g) = g.borrow_mut().as_mut() {
                    g.records
                        .push([app.into(), nonce.into(), kind.into(), reply.clone()]);
                }
            });
        }
        Some(Ok(Once::Ran(Stored { ok, reply })))
    }

    /// What the commits shared across this pool's connections did so far.
    pub fn shared_commits(&self) -> SharedCommits {
        self.db.shared().lock().counts
    }

    /// How many staged writes wait for a shared commit now.
    pub fn shared_waiting(&self) -> usize {
        self.db.shared().lock().waiting.len()
    }

    /// Commits a write whose statements were all staged, with its record:
    /// together with the staged writes other threads of this pool finish
    /// meanwhile, or alone (see the module documentation). The error is
    /// that of the write's own query, sent alone.
    fn commit_shared(
        &self,
        conn: &mut PooledConn,
        sql: Vec<Stmt>,
        record: [String; 4],
    ) -> std::result::Result<(), (Step, mysql::Error)> {
        let shared = self.db.shared();
        let mut state = shared.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push(Waiting {
            ticket,
            sql,
            record,
        });
        loop {
            match state.ended.remove(&ticket) {
                Some(None) => return Ok(()),
                Some(Some(mine)) => {
                    drop(state);
                    return mine.send_alone(conn, self.db);
                }
                None => {}
            }
            if state.leading {
                let waited = shared
                    .turn
                    .wait_timeout(state, self.db.shared_commit_wait())
                    .unwrap_or_else(|p| p.into_inner());
                state = waited.0;
                if waited.1.timed_out() {
                    // The commit in flight is slow (a lock, say): not worth
                    // waiting for. Sent alone, unless a commit took it.
                    if let Some(at) = state.waiting.iter().position(|w| w.ticket == ticket) {
                        let mine = state.waiting.remove(at);
                        drop(state);
                        return mine.send_alone(conn, self.db);
                    }
                }
                continue;
            }
            state.leading = true;
            let n = state.waiting.len().min(SHARED_MAX);
            let mut lead = Leading {
                shared,
                batch: state.waiting.drain(..n).collect(),
                committed: false,
                merged: false,
            };
            drop(state);
            if let [only] = lead.batch.as_slice() {
                if only.ticket == ticket {
                    // Alone: its own query, its own error.
                    let mine = lead.batch.pop().expect("one");
                    // The lead is held until it is sent: writes that come
                    // meanwhile wait, to go together after it.
                    let sent = mine.send_alone(conn, self.db);
                    drop(lead);
                    return sent;
                }
            }
            let writes: Vec<&[Stmt]> = lead.batch.iter().map(|w| w.sql.as_slice()).collect();
            let merged = crate::forms::merge(&writes);
            lead.merged = merged.is_some();
            let sql: Vec<&Stmt> = match &merged {
                Some(merged) => merged.iter().collect(),
                None => writes.iter().flat_map(|w| w.iter()).collect(),
            };
            let records: Vec<&[String; 4]> = lead.batch.iter().map(|w| &w.record).collect();
            match commit_staged(conn, self.db, false, &sql, &records).map_err(|(_, e)| e) {
                Ok(()) => lead.committed = true,
                Err(e) => {
                    log::debug!(
                        "a commit shared by {} writes failed ({e}): each is sent alone",
                        lead.batch.len()
                    );
                    crate::db::forget_if_broken(conn, &e);
                    crate::db::roll_back(conn);
                }
            }
            drop(lead);
            state = shared.lock();
        }
    }

    /// Runs `handler` in a transaction on `conn` (as the run-once
    /// transaction of this thread), and gives back what it said, what it
    /// staged and the connection, the transaction still open. If
    /// `staging`, the transaction starts with the first statement that goes
    /// out ([`send_staged`]), maybe only at the commit; otherwise now.
    fn in_tx<R>(
        &self,
        mut conn: PooledConn,
        handler: &mut impl FnMut() -> R,
        staging: bool,
    ) -> Result<(R, Staged, PooledConn)> {
        const OP: &str = "wire.run_once";
        if !staging {
            conn.query_drop("START TRANSACTION").map_err(|e| {
                crate::db::forget_if_broken(&mut conn, &e);
                Error::from_mysql(OP, e)
            })?;
        }
        let guard = TxGuard;
        TX.with(|t| *t.borrow_mut() = Some((self.db.id(), conn)));
        if staging {
            STAGED.with(|s| {
                *s.borrow_mut() = Some(Staged {
                    started: false,
                    ..Staged::started(self.db.id())
                })
            });
        }
        let said = handler();
        let lost = |what: &str| Error::Internal {
            op: OP,
            message: format!("the run-once transaction's {what} was lost"),
        };
        match guard.finish() {
            (Some(conn), Some(staged)) => Ok((said, staged, conn)),
            (Some(conn), None) if !staging => Ok((said, Staged::started(self.db.id()), conn)),
            (Some(mut conn), None) => {
                crate::db::roll_back(&mut conn);
                Err(lost("staged writes"))
            }
            (None, _) => Err(lost("connection")),
        }
    }

    fn replayed(&self, app: &str, nonce: &str, kind: &str) -> Result<Once> {
        self.stored_as(kind, app, nonce)?
            .map(Once::Replayed)
            .ok_or_else(|| Error::Internal {
                op: "wire.run_once",
                message: format!("nonce {nonce} of app {app:?} is recorded and then gone"),
            })
    }

    /// Writes of `kind` may be recorded early by their repository, in a
    /// group ([`record_early`]), with a reply that `complete` makes whole
    /// from the write's rows when it is read ([`Writes::stored_as`]).
    pub fn complete_replies(&self, kind: &str, complete: CompleteReply) {
        let mut completers = self
            .db
            .shared()
            .completers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        completers.insert(kind.to_string(), complete);
    }

    fn completer(&self, kind: &str) -> Option<CompleteReply> {
        let completers = self
            .db
            .shared()
            .completers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        completers.get(kind).copied()
    }

    /// The stored reply of `(app, nonce)`, a request of `kind`, if it ran,
    /// completed if it was recorded early ([`Writes::complete_replies`]).
    pub fn stored_as(&self, kind: &str, app: &str, nonce: &str) -> Result<Option<Stored>> {
        let complete = self.completer(kind);
        self.db.with_conn_result("wire.stored", |c| {
            let Some(mut stored) =
                read_record(c, app, nonce).map_err(|e| Error::from_mysql("wire.stored", e))?
            else {
                return Ok(None);
            };
            if let Some(complete) = complete.filter(|_| stored.ok) {
                if let Some(whole) = complete(c, &stored.reply)? {
                    stored.reply = whole;
                }
            }
            Ok(Some(stored))
        })
    }

    /// The stored reply of `(app, nonce)` as recorded.
    pub fn stored(&self, app: &str, nonce: &str) -> Result<Option<Stored>> {
        self.db
            .with_conn("wire.stored", |c| read_record(c, app, nonce))
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

/// The record of `(app, nonce)`, as stored.
fn read_record(c: &mut PooledConn, app: &str, nonce: &str) -> mysql::Result<Option<Stored>> {
    let row: Option<(bool, String)> = c.exec_first(
        "SELECT ok, reply FROM wire_writes WHERE app = ? AND nonce = ?",
        (app, nonce),
    )?;
    Ok(row.map(|(ok, reply)| Stored { ok, reply }))
}
