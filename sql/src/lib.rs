//! `dsf-sql`: the MySQL layer of dsf: the pool, migrations, one repository
//! per table, and the mapping of database failures onto wire error codes.
//!
//! - [`db`]: [`Db`], a bounded `mysql::Pool` with connect/read timeouts,
//!   start-up retries and a health check; [`DbConfig`] sizes it.
//! - [`migrate`]: versioned migrations embedded from `sql/migrations/`, each
//!   service's numbered in a namespace of its own, recorded with checksums,
//!   serialised across processes by a lease.
//! - [`users`], [`sessions`], [`blacklist`], [`gate_checks`], [`tasks`],
//!   [`messages`]: the
//!   repositories, reached from a `Db` (`db.blacklist().get("…")`); typed
//!   rows in, typed rows out, prepared statements only.
//! - [`writes`]: `wire_writes`, writes that run once on any node: a
//!   handler runs in one transaction with the record of its request's
//!   `(app, nonce)` and reply.
//! - [`validate`]: the field rules (`name: 1 to 64 characters…`) checked
//!   before any value reaches the database; limits match the columns.
//! - [`password`]: argon2id hashing and verification.
//! - [`token`]: session tokens and the hash they are stored under.
//! - [`error`]: [`Error`], whose [`Error::code`] is the wire code
//!   (`conflict`, `unavailable`, `bad_request`, `not_found`, `internal`).
//! - `testing` (feature `testing`): throwaway databases for tests.
//!
//! ```no_run
//! use dsf_sql::{Db, DbConfig};
//! let db = Db::connect(&DbConfig::new("mysql://dsf:pw@127.0.0.1:3306/dsf").workers(8))?;
//! db.migrate()?;
//! let hit = db.blacklist().get("11010119900307451X")?.is_some();
//! # Ok::<(), dsf_sql::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod audit;
pub mod blacklist;
pub mod db;
pub mod error;
mod forms;
pub mod gate_checks;
pub mod messages;
pub mod migrate;
pub mod password;
pub mod sessions;
pub mod tasks;
pub mod token;
pub mod users;
pub mod validate;
pub mod writes;

pub mod time;

#[cfg(feature = "testing")]
pub mod testing;

pub use audit::Audit;
pub use blacklist::{Blacklist, Entry, EntryChange, ListQuery, NewEntry, Page};
pub use db::{Db, DbConfig};
pub use error::{Error, Result};
pub use gate_checks::{GateCheck, GateChecks, HistoryQuery, NewCheck};
pub use messages::Messages;
pub use migrate::{Migration, Report};
pub use sessions::{NewSession, Session, Sessions};
pub use tasks::Tasks;
pub use time::now_ms;
pub use users::{Role, User, Users};
pub use writes::{Once, Stored, Writes};

/// The MySQL driver, for a service's own statements (`Queryable` brings
/// `exec_drop`, `exec_first`…).
pub use mysql;
pub use mysql::prelude::Queryable;
pub use mysql::PooledConn;

// === impl Db: repositories ===

impl Db {
    /// Applies the migrations of every dsf service (see [`migrate`]).
    pub fn migrate(&self) -> Result<Vec<Report>> {
        migrate::migrate(self)
    }

    /// The `users` repository.
    pub fn users(&self) -> Users<'_> {
        Users::new(self)
    }

    /// The `sessions` repository.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions::new(self)
    }

    /// The `wire_writes` repository: writes that run once.
    pub fn writes(&self) -> Writes<'_> {
        Writes::new(self)
    }

    /// The `blacklist` repository.
    pub fn blacklist(&self) -> Blacklist<'_> {
        Blacklist::new(self)
    }

    /// The `gate_checks` repository.
    pub fn gate_checks(&self) -> GateChecks<'_> {
        GateChecks::new(self)
    }

    /// The task service's tables.
    pub fn tasks(&self) -> Tasks<'_> {
        Tasks::new(self)
    }

    /// The audit trail.
    pub fn audit(&self) -> Audit<'_> {
        Audit::new(self)
    }

    /// Messaging's tables: inboxes, rooms, presence.
    pub fn messages(&self) -> Messages<'_> {
        Messages::new(self)
    }
}
