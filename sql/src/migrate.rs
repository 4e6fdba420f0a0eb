//! Versioned migrations, embedded in the binary and recorded in
//! `schema_migrations` with a SHA-256 checksum, each under the namespace of
//! the service it belongs to: a service's migrations are numbered on their
//! own, so a user's service never collides with dsf's.
//!
//! dsf's own live in `sql/migrations/<namespace>/NNNN_name.sql` and are
//! listed in [`DSF`] by namespace (a unit test checks the lists match the
//! folders): `dsf` (the framework's run-once records), `accounts`,
//! `blacklist`, `tasks`, `messaging`. Each statement ends with `;` at the
//! end of a line. MySQL cannot roll back DDL, so a migration is recorded
//! after all its statements ran: keep each one small, and make a failed one
//! safe to re-run (or fix it by hand).
//!
//! A database migrated before namespaces (one list, versions 1 to 6) is
//! converted once: its rows become the namespaced migrations that hold the
//! same statements ([`LEGACY`]), and nothing runs again.
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
    /// Applied in increasing order within its namespace; never reused.
    pub version: u32,
    /// The part of the file name after the number.
    pub name: &'static str,
    /// The SQL text, statements separated by `;` at the end of a line.
    pub sql: &'static str,
}

/// The framework's own: the run-once records of writes.
pub const CORE: &[Migration] = &[Migration {
    version: 1,
    name: "wire_writes",
    sql: include_str!("../migrations/dsf/0001_wire_writes.sql"),
}];

/// Users, sessions and the audit trail.
pub const ACCOUNTS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users",
        sql: include_str!("../migrations/accounts/0001_users.sql"),
    },
    Migration {
        version: 2,
        name: "audit",
        sql: include_str!("../migrations/accounts/0002_audit.sql"),
    },
    Migration {
        version: 3,
        name: "session_app",
        sql: include_str!("../migrations/accounts/0003_session_app.sql"),
    },
];

/// The blacklist and the gate checks.
pub const BLACKLIST: &[Migration] = &[Migration {
    version: 1,
    name: "blacklist",
    sql: include_str!("../migrations/blacklist/0001_blacklist.sql"),
}];

/// The task service.
pub const TASKS: &[Migration] = &[
    Migration {
        version: 1,
        name: "tasks",
        sql: include_str!("../migrations/tasks/0001_tasks.sql"),
    },
    Migration {
        version: 2,
        name: "ready_by_primary_key",
        sql: include_str!("../migrations/tasks/0002_ready_by_primary_key.sql"),
    },
];

/// Messaging: inboxes, rooms, presence.
pub const MESSAGING: &[Migration] = &[
    Migration {
        version: 1,
        name: "messages",
        sql: include_str!("../migrations/messaging/0001_messages.sql"),
    },
    Migration {
        version: 2,
        name: "inbox_acks",
        sql: include_str!("../migrations/messaging/0002_inbox_acks.sql"),
    },
];

/// The namespace of the framework's own migrations.
pub const CORE_NAMESPACE: &str = "dsf";

/// Every migration of dsf's own services, by namespace: what
/// [`Db::migrate`] applies.
pub const DSF: &[(&str, &[Migration])] = &[
    (CORE_NAMESPACE, CORE),
    ("accounts", ACCOUNTS),
    ("blacklist", BLACKLIST),
    ("tasks", TASKS),
    ("messaging", MESSAGING),
];

/// What each migration of the single list before namespaces became.
pub const LEGACY: &[(u32, &[(&str, u32)])] = &[
    (1, &[("accounts", 1), ("blacklist", 1)]),
    (2, &[(CORE_NAMESPACE, 1)]),
    (3, &[("tasks", 1)]),
    (4, &[("messaging", 1)]),
    (5, &[("accounts", 2)]),
    (6, &[("accounts", 3)]),
];

/// How long the lease on `schema_lock` runs unless renewed; renewed every
/// third of it while the holder migrates.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a waiting process tries to take the lease.
const LOCK_POLL: Duration = Duration::from_millis(200);
/// How long a process waits for another one's migration to finish.
const LOCK_DEADLINE: Duration = Duration::from_secs(600);

/// What a migration run did in one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub namespace: String,
    /// Versions this call applied, in order.
    pub applied: Vec<u32>,
    /// The namespace's version afterwards.
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

/// Applies dsf's own migrations ([`DSF`]) to `db`.
pub fn migrate(db: &Db) -> Result<Vec<Report>> {
    apply_all(db, DSF)
}

/// Applies `migrations` of `namespace` to `db`: checks every applied one
/// still has its recorded checksum, then runs the rest in order.
pub fn apply(db: &Db, namespace: &str, migrations: &[Migration]) -> Result<Report> {
    let mut reports = apply_all(db, &[(namespace, migrations)])?;
    Ok(reports.pop().expect("one report per namespace"))
}

/// The migrations of `sets` the database lacks, as `(namespace, version,
/// name)`: all of them on a database never migrated, or still in the
/// layout before namespaces (which `migrate` converts). Reads only.
pub fn pending(db: &Db, sets: &[(&str, &[Migration])]) -> Result<Vec<(String, u32, &'static str)>> {
    let op = "migrate";
    let mut conn = db.conn(op)?;
    let applied: Vec<(String, u32)> =
        match conn.query("SELECT namespace, version FROM schema_migrations") {
            Ok(rows) => rows,
            // No table yet (1146), or no namespace column yet (1054).
            Err(mysql::Error::MySqlError(m)) if m.code == 1146 || m.code == 1054 => Vec::new(),
            Err(e) => return Err(Error::from_mysql(op, e)),
        };
    let mut missing = Vec::new();
    for (ns, set) in sets {
        for m in *set {
            if !applied.iter().any(|(n, v)| n == ns && *v == m.version) {
                missing.push((ns.to_string(), m.version, m.name));
            }
        }
    }
    Ok(missing)
}

/// Applies several namespaces' migrations under one lease, in the order
/// given; one report each.
pub fn apply_all(db: &Db, sets: &[(&str, &[Migration])]) -> Result<Vec<Report>> {
    for (ns, _) in sets {
        check_namespace(ns)?;
    }
    let mut conn = db.conn("migrate")?;
    create_tables(&mut conn)?;
    let lease = Lease::take(&mut conn)?;
    let result = std::thread::scope(|s| {
        let (stop, stopped) = mpsc::channel::<()>();
        let renewing = &lease;
        s.spawn(move || renewing.keep(db, &stopped));
        let result = convert_legacy(&mut conn).and_then(|()| {
            sets.iter()
                .map(|(ns, set)| apply_locked(&mut conn, ns, set, &lease.lost))
                .collect()
        });
        drop(stop);
        result
    });
    lease.release(&mut conn);
    result
}

/// A namespace is a service's name: 1 to 64 letters, digits, `_` or `-`.
fn check_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match ok {
        true => Ok(()),
        false => Err(Error::Invalid {
            field: "namespace",
            rule: "1 to 64 ASCII letters, digits, '_' or '-' (the service's name)",
        }),
    }
}

/// The bookkeeping tables, before the lease: `IF NOT EXISTS` makes them
/// safe to create from every process at once (on Galera, DDL runs in total
/// order on every node).
fn create_tables(conn: &mut PooledConn) -> Result<()> {
    let sql_err = |e| Error::from_mysql("migrate", e);
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            namespace  VARCHAR(64) CHARACTER SET ascii NOT NULL,
            version    INT UNSIGNED NOT NULL,
            name       VARCHAR(255) NOT NULL,
            checksum   CHAR(64) CHARACTER SET ascii NOT NULL,
            applied_at BIGINT NOT NULL,
            PRIMARY KEY (namespace, version)
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

/// A `schema_migrations` from before namespaces (no `namespace` column)
/// becomes the namespaced one: each recorded version is recorded as the
/// migrations that hold its statements ([`LEGACY`]). Under the lease.
fn convert_legacy(conn: &mut PooledConn) -> Result<()> {
    let op = "migrate";
    let sql_err = |e| Error::from_mysql(op, e);
    let has: Option<u32> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = 'schema_migrations' \
             AND column_name = 'namespace'",
        )
        .map_err(sql_err)?;
    if has.unwrap_or(0) > 0 {
        return Ok(());
    }
    let old: Vec<u32> = conn
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .map_err(sql_err)?;
    log::info!(
        "schema_migrations is from before namespaces (versions {old:?}): recording them by service"
    );
    conn.query_drop(
        "ALTER TABLE schema_migrations \
         ADD COLUMN namespace VARCHAR(64) CHARACTER SET ascii NOT NULL DEFAULT '' FIRST, \
         DROP PRIMARY KEY, ADD PRIMARY KEY (namespace, version)",
    )
    .map_err(sql_err)?;
    for v in old {
        let Some((_, became)) = LEGACY.iter().find(|(l, _)| *l == v) else {
            log::warn!(
                "schema_migrations has version {v}, which no dsf release had; left as it is"
            );
            continue;
        };
        for (ns, version) in became.iter() {
            let (_, set) = DSF
                .iter()
                .find(|(n, _)| n == ns)
                .expect("LEGACY names DSF's");
            let m = set
                .iter()
                .find(|m| m.version == *version)
                .expect("LEGACY names DSF's");
            conn.exec_drop(
                "INSERT IGNORE INTO schema_migrations (namespace, version, name, checksum, applied_at) \
                 VALUES (?, ?, ?, ?, ?)",
                (ns, m.version, m.name, m.checksum(), now_ms()),
            )
            .map_err(sql_err)?;
        }
        conn.exec_drop(
            "DELETE FROM schema_migrations WHERE namespace = '' AND version = ?",
            (v,),
        )
        .map_err(sql_err)?;
    }
    conn.query_drop("ALTER TABLE schema_migrations ALTER COLUMN namespace DROP DEFAULT")
        .map_err(sql_err)?;
    Ok(())
}

fn apply_locked(
    conn: &mut PooledConn,
    namespace: &str,
    migrations: &[Migration],
    lost: &AtomicBool,
) -> Result<Report> {
    let op = "migrate";
    let sql_err = |e| Error::from_mysql(op, e);
    let applied: Vec<(u32, String, String)> = conn
        .exec(
            "SELECT version, name, checksum FROM schema_migrations WHERE namespace = ? ORDER BY version",
            (namespace,),
        )
        .map_err(sql_err)?;

    for (version, name, checksum) in &applied {
        match migrations.iter().find(|m| m.version == *version) {
            Some(m) if m.checksum() != *checksum => {
                return Err(Error::MigrationChanged {
                    namespace: namespace.to_string(),
                    version: *version,
                    name: m.name.to_string(),
                    applied: checksum.clone(),
                    embedded: m.checksum(),
                })
            }
            Some(_) => {}
            // A newer binary migrated further; its schema is a superset.
            None => log::warn!(
                "database has migration {version} ({name}) of {namespace} that this binary does not know; \
                 is an older build running against a newer schema?"
            ),
        }
    }

    let mut report = Report {
        namespace: namespace.to_string(),
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
                    "the migration lease could not be renewed for {LEASE:?}, so another process may be migrating too; stopped before migration {} ({}) of {namespace}: run `app-server migrate` again",
                    m.version, m.name
                ),
            });
        }
        log::info!(
            "applying migration {} ({}) of {namespace}",
            m.version,
            m.name
        );
        for stmt in m.statements() {
            // Migration text is a constant compiled into the binary, never
            // user input; DDL cannot be prepared anyway.
            conn.query_drop(&stmt)
                .map_err(|e| match Error::from_mysql(op, e) {
                    Error::Internal { message, .. } => Error::Internal {
                        op,
                        message: format!(
                            "migration {} ({}) of {namespace}: {message}",
                            m.version, m.name
                        ),
                    },
                    other => other,
                })?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (namespace, version, name, checksum, applied_at) VALUES (?, ?, ?, ?, ?)",
            (namespace, m.version, m.name, m.checksum(), now_ms()),
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
    fn embedded_lists_match_the_migrations_folders() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut folders: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        folders.sort();
        let mut namespaces: Vec<String> = DSF.iter().map(|(ns, _)| ns.to_string()).collect();
        namespaces.sort();
        assert_eq!(folders, namespaces, "one folder per namespace of DSF");
        for (ns, set) in DSF {
            let mut files: Vec<String> = std::fs::read_dir(format!("{root}/{ns}"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|f| f.ends_with(".sql"))
                .collect();
            files.sort();
            let embedded: Vec<String> = set
                .iter()
                .map(|m| format!("{:04}_{}.sql", m.version, m.name))
                .collect();
            assert_eq!(
                files, embedded,
                "add new files in sql/migrations/{ns} to its list"
            );
        }
    }

    #[test]
    fn every_legacy_version_maps_to_migrations_that_exist() {
        for (v, became) in LEGACY {
            for (ns, version) in became.iter() {
                let set = DSF.iter().find(|(n, _)| n == ns).map(|(_, s)| *s);
                assert!(
                    set.is_some_and(|s| s.iter().any(|m| m.version == *version)),
                    "legacy {v} names {ns} {version}"
                );
            }
        }
        // A namespaced migration stands for part of one legacy one at most
        // (those written since namespaces, for none).
        for (ns, set) in DSF {
            for m in set.iter() {
                let n = LEGACY
                    .iter()
                    .filter(|(_, b)| b.contains(&(*ns, m.version)))
                    .count();
                assert!(
                    n <= 1,
                    "{ns} {} stands for {n} legacy migrations",
                    m.version
                );
            }
        }
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
        for (_, set) in DSF {
            for w in set.windows(2) {
                assert!(w[0].version < w[1].version);
            }
        }
    }
}
