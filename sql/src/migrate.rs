//! Versioned migrations, embedded in the binary and recorded in
//! `schema_migrations` with a SHA-256 checksum.
//!
//! Files live in `sql/migrations/NNNN_name.sql` and are listed in
//! [`MIGRATIONS`] (a unit test checks the list matches the directory). Each
//! statement ends with `;` at the end of a line. MySQL cannot roll back DDL,
//! so a migration is recorded after all its statements ran: keep each one
//! small, and make a failed one safe to re-run (or fix it by hand).
//!
//! Several processes may migrate at once, also through different nodes of
//! a Galera cluster: the first takes a lease on the one row of
//! `schema_lock`, the others wait for it and then find nothing left to do.
//! A lease, not `GET_LOCK`: a named lock lives on one server, so on Galera
//! two processes on two nodes would both hold it and both run a migration's
//! statements. The row is replicated like any other, and the conditional
//! `UPDATE` that takes it succeeds for one writer only (on Galera the other
//! fails certification or finds it taken). The holder renews it from a
//! second connection while it migrates; one that dies mid-migration holds
//! it [`LEASE`] longer at most.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::PooledConn;
use sha2::{Digest, Sha256};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::time::now_ms;

/// One migration: its number, name and SQL text.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in increasing order; never reused.
    pub version: u32,
    /// The part of the file name after the number.
    pub name: &'static str,
    /// The SQL text, statements separated by `;` at the end of a line.
    pub sql: &'static str,
}

/// Every migration of this version of dsf, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "wire_writes",
        sql: include_str!("../migrations/0002_wire_writes.sql"),
    },
    Migration {
        version: 3,
        name: "tasks",
        sql: include_str!("../migrations/0003_tasks.sql"),
    },
    Migration {
        version: 4,
        name: "messages",
        sql: include_str!("../migrations/0004_messages.sql"),
    },
    Migration {
        version: 5,
        name: "audit",
        sql: include_str!("../migrations/0005_audit.sql"),
    },
    Migration {
        version: 6,
        name: "session_app",
        sql: include_str!("../migrations/0006_session_app.sql"),
    },
];

/// How long the lease on `schema_lock` runs unless renewed; renewed every
/// third of it while the holder migrates.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a waiting process tries to take the lease.
const LOCK_POLL: Duration = Duration::from_millis(200);
/// How long a process waits for another one's migration to finish.
const LOCK_DEADLINE: Duration = Duration::from_secs(600);

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Versions this call applied, in order.
    pub applied: Vec<u32>,
    /// The schema version afterwards.
    pub version: u32,
}

// === impl Migration ===

impl Migration {
    /// Hex SHA-256 of the text, as recorded when applied.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// The statements, without comments, in order.
    pub fn statements(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = String::new();
        for line in self.sql.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with("--") {
                continue;
            }
            current.push_str(line);
            current.push('\n');
            if trimmed.ends_with(';') {
                let stmt = current.trim().trim_end_matches(';').trim().to_string();
                if !stmt.is_empty() {
                    out.push(stmt);
                }
                current.clear();
            }
        }
        let rest = current.trim();
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
        out
    }
}

/// Applies [`MIGRATIONS`] to `db`.
pub fn migrate(db: &Db) -> Result<Report> {
    apply(db, MIGRATIONS)
}

/// Applies `migrations` (sorted by version) to `db`: checks every applied
/// one still has its recorded checksum, then runs the rest in order.
pub fn apply(db: &Db, migrations: &[Migration]) -> Result<Report> {
    let mut conn = db.conn("migrate")?;
    create_tables(&mut conn)?;
    let lease = Lease::take(&mut conn)?;
    let result = std::thread::scope(|s| {
        let (stop, stopped) = mpsc::channel::<()>();
        let renewing = &lease;
        s.spawn(move || renewing.keep(db, &stopped));
        let result = apply_locked(&mut conn, migrations, &lease.lost);
        drop(stop);
        result
    });
    lease.release(&mut conn);
    result
}

/// The bookkeeping tables, before the lease: `IF NOT EXISTS` makes them
/// safe to create from every process at once (on Galera, DDL runs in total
/// order on every node).
fn create_tables(conn: &mut PooledConn) -> Result<()> {
    let sql_err = |e| Error::from_mysql("migrate", e);
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INT UNSIGNED NOT NULL PRIMARY KEY,
            name       VARCHAR(255) NOT NULL,
            checksum   CHAR(64) CHARACTER SET ascii NOT NULL,
            applied_at BIGINT NOT NULL
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .map_err(sql_err)?;
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_lock (
            id         TINYINT UNSIGNED NOT NULL PRIMARY KEY,
            holder     VARCHAR(255) NOT NULL,
            expires_at BIGINT NOT NULL
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .map_err(sql_err)?;
    // Two processes inserting at once on two Galera nodes: one of them
    // fails certification, and the row is there either way.
    match conn
        .query_drop("INSERT IGNORE INTO schema_lock (id, holder, expires_at) VALUES (1, '', 0)")
    {
        Err(e) if !failed_certification(&e) => Err(sql_err(e)),
        _ => Ok(()),
    }
}

fn apply_locked(
    conn: &mut PooledConn,
    migrations: &[Migration],
    lost: &AtomicBool,
) -> Result<Report> {
    let op = "migrate";
    let sql_err = |e| Error::from_mysql(op, e);
    let applied: Vec<(u32, String, String)> = conn
        .exec(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            (),
        )
        .map_err(sql_err)?;

    for (version, name, checksum) in &applied {
        match migrations.iter().find(|m| m.version == *version) {
            Some(m) if m.checksum() != *checksum => {
                return Err(Error::MigrationChanged {
                    version: *version,
                    name: m.name.to_string(),
                    applied: checksum.clone(),
                    embedded: m.checksum(),
                })
            }
            Some(_) => {}
            // A newer binary migrated further; its schema is a superset.
            None => log::warn!(
                "database has migration {version} ({name}) that this binary does not know; \
                 is an older build running against a newer schema?"
            ),
        }
    }

    let mut report = Report {
        applied: Vec::new(),
        version: applied.iter().map(|a| a.0).max().unwrap_or(0),
    };
    let mut sorted: Vec<&Migration> = migrations.iter().collect();
    sorted.sort_by_key(|m| m.version);
    for m in sorted {
        if applied.iter().any(|a| a.0 == m.version) {
            continue;
        }
        if lost.load(Ordering::SeqCst) {
            return Err(Error::Internal {
                op,
                message: format!(
                    "the migration lease could not be renewed for {LEASE:?}, so another process may be migrating too; stopped before migration {} ({}): run `app-server migrate` again",
                    m.version, m.name
                ),
            });
        }
        log::info!("applying migration {} ({})", m.version, m.name);
        for stmt in m.statements() {
            // Migration text is a constant compiled into the binary, never
            // user input; DDL cannot be prepared anyway.
            conn.query_drop(&stmt)
                .map_err(|e| match Error::from_mysql(op, e) {
                    Error::Internal { message, .. } => Error::Internal {
                        op,
                        message: format!("migration {} ({}): {message}", m.version, m.name),
                    },
                    other => other,
                })?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
            (m.version, m.name, m.checksum(), now_ms()),
        )
        .map_err(sql_err)?;
        report.applied.push(m.version);
        report.version = report.version.max(m.version);
    }
    Ok(report)
}

/// The database's clock in milliseconds since the epoch, to the second:
/// leases are timed by it, so app servers whose clocks differ agree on when
/// one runs out (on Galera, the nodes' clocks must then agree: run NTP).
/// `UNIX_TIMESTAMP()` with no argument reads the epoch without going
/// through the session's time zone, which `UNIX_TIMESTAMP(NOW())` does (an
/// hour off around a daylight-saving change). Truncation to the second
/// only makes a lease look alive a little longer.
const DB_NOW_MS: &str = "(UNIX_TIMESTAMP() * 1000)";

/// The lease on `schema_lock`'s row, held while migrating.
struct Lease {
    /// Who holds it: host, process and a random tag, so a process that
    /// migrates twice never mistakes an old lease of its own for the new one.
    holder: String,
    /// Set when a renewal found the lease taken by another, or could not
    /// renew it in time.
    lost: AtomicBool,
}

impl Lease {
    fn take(conn: &mut PooledConn) -> Result<Lease> {
        let op = "migrate";
        let holder = format!(
            "{}:{}:{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        let started = Instant::now();
        let mut said = false;
        loop {
            let taken = conn
                .exec_drop(
                    format!(
                        "UPDATE schema_lock SET holder = ?, expires_at = {DB_NOW_MS} + ? \
                         WHERE id = 1 AND (holder = '' OR expires_at < {DB_NOW_MS})"
                    ),
                    (&holder, LEASE.as_millis() as i64),
                )
                .map(|()| conn.affected_rows() == 1);
            match taken {
                Ok(true) => {
                    return Ok(Lease {
                        holder,
                        lost: AtomicBool::new(false),
                    })
                }
                Ok(false) => {}
                // Taken at the same moment through another Galera node.
                Err(e) if failed_certification(&e) => {}
                Err(e) => return Err(Error::from_mysql(op, e)),
            }
            if started.elapsed() >= LOCK_DEADLINE {
                return Err(Error::Internal {
                    op,
                    message: format!(
                        "another process held the migration lease for {LOCK_DEADLINE:?}; \
                         is a migration stuck? (SELECT * FROM schema_lock shows who holds it)"
                    ),
                });
            }
            if !said {
                let by: Option<(String, i64)> = conn
                    .query_first(format!(
                        "SELECT holder, expires_at - {DB_NOW_MS} FROM schema_lock WHERE id = 1"
                    ))
                    .map_err(|e| Error::from_mysql(op, e))?;
                if let Some((by, left)) = by {
                    log::info!(
                        "waiting for the migration of {by} to finish (its lease ends in {} s unless renewed)",
                        left.max(0) / 1000
                    );
                }
                said = true;
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// Renews the lease every third of [`LEASE`] until `stop` hangs up,
    /// each time on a connection from the pool; marks it lost when it was
    /// taken over or not renewed before it ran out.
    fn keep(&self, db: &Db, stop: &mpsc::Receiver<()>) {
        let mut renewed = Instant::now();
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(LEASE / 3) {
            match self.renew(db) {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    log::error!("the migration lease was taken over by another process");
                    self.lost.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    log::warn!("renewing the migration lease: {e}");
                    if renewed.elapsed() >= LEASE {
                        self.lost.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
    }

    fn renew(&self, db: &Db) -> Result<bool> {
        let op = "migrate";
        let mut conn = db.conn(op)?;
        conn.exec_drop(
            format!(
                "UPDATE schema_lock SET expires_at = {DB_NOW_MS} + ? WHERE id = 1 AND holder = ?"
            ),
            (LEASE.as_millis() as i64, &self.holder),
        )
        .map_err(|e| Error::from_mysql(op, e))?;
        // An unchanged expiry (same millisecond) counts as not affected.
        let held: Option<String> = conn
            .query_first("SELECT holder FROM schema_lock WHERE id = 1")
            .map_err(|e| Error::from_mysql(op, e))?;
        Ok(held.as_deref() == Some(self.holder.as_str()))
    }

    fn release(self, conn: &mut PooledConn) {
        // Best effort: a lease not released runs out after LEASE.
        if let Err(e) = conn.exec_drop(
            "UPDATE schema_lock SET holder = '', expires_at = 0 WHERE id = 1 AND holder = ?",
            (&self.holder,),
        ) {
            log::warn!("releasing the migration lease: {e} (it runs out by itself in {LEASE:?})");
        }
    }
}

/// Whether a statement lost to a concurrent write of the same row through
/// another Galera node (reported as a deadlock, 1213).
fn failed_certification(e: &mysql::Error) -> bool {
    matches!(e, mysql::Error::MySqlError(m) if m.code == 1213)
}

/// This host's name, for telling who holds the lease.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_the_migrations_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            files, embedded,
            "add new files in sql/migrations to MIGRATIONS"
        );
    }

    #[test]
    fn statements_split_at_semicolons_ending_a_line() {
        let m = Migration {
            version: 9,
            name: "t",
            sql: "-- comment; not a statement\nCREATE TABLE a (x INT);\n\nINSERT INTO a VALUES (1);\nSELECT ';'\n;\n",
        };
        assert_eq!(
            m.statements(),
            vec![
                "CREATE TABLE a (x INT)",
                "INSERT INTO a VALUES (1)",
                "SELECT ';'"
            ]
        );
    }

    #[test]
    fn versions_are_increasing_and_unique() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
    }
}
