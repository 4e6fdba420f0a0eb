//! Versioned migrations, embedded in the binary and recorded in
//! `schema_migrations` with a SHA-256 checksum.
//!
//! Files live in `sql/migrations/NNNN_name.sql` and are listed in
//! [`MIGRATIONS`] (a unit test checks the list matches the directory). Each
//! statement ends with `;` at the end of a line. MySQL cannot roll back DDL,
//! so a migration is recorded after all its statements ran: keep each one
//! small, and make a failed one safe to re-run (or fix it by hand).
//!
//! Several processes may migrate at once: the first takes a named lock
//! (`GET_LOCK`), the others wait for it and then find nothing left to do.

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

/// How long one `GET_LOCK` call waits; kept under the connection's read
/// timeout, and repeated until [`LOCK_DEADLINE`].
const LOCK_POLL_SECS: u32 = 5;
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
    let lock = Lock::take(&mut conn)?;
    let result = apply_locked(&mut conn, migrations);
    lock.release(&mut conn);
    result
}

fn apply_locked(conn: &mut PooledConn, migrations: &[Migration]) -> Result<Report> {
    let op = "migrate";
    let sql_err = |e| Error::from_mysql(op, e);
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INT UNSIGNED NOT NULL PRIMARY KEY,
            name       VARCHAR(255) NOT NULL,
            checksum   CHAR(64) CHARACTER SET ascii NOT NULL,
            applied_at BIGINT NOT NULL
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .map_err(sql_err)?;
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

/// The server-wide named lock that serialises migrations of one database.
struct Lock;

impl Lock {
    fn take(conn: &mut PooledConn) -> Result<Lock> {
        let op = "migrate";
        let started = Instant::now();
        loop {
            // The name is derived from DATABASE() on the server, so different
            // databases on one server migrate independently.
            let got: Option<Option<i64>> = conn
                .exec_first(
                    "SELECT GET_LOCK(CONCAT('dsf_migrate:', IFNULL(DATABASE(), '')), ?)",
                    (LOCK_POLL_SECS,),
                )
                .map_err(|e| Error::from_mysql(op, e))?;
            match got.flatten() {
                Some(1) => return Ok(Lock),
                _ if started.elapsed() >= LOCK_DEADLINE => {
                    return Err(Error::Internal {
                        op,
                        message: format!(
                            "another process held the migration lock for {LOCK_DEADLINE:?}; \
                             is a migration stuck? (see SHOW PROCESSLIST)"
                        ),
                    })
                }
                _ => log::info!("waiting for another process's migration to finish"),
            }
        }
    }

    fn release(self, conn: &mut PooledConn) {
        // Best effort: if the connection is gone, so is the lock.
        if let Err(e) =
            conn.query_drop("DO RELEASE_LOCK(CONCAT('dsf_migrate:', IFNULL(DATABASE(), '')))")
        {
            log::warn!("releasing the migration lock: {e}");
        }
    }
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
