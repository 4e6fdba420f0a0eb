//! Test support (feature `testing`): a fresh, uniquely named database on the
//! server named by `DSF_TEST_DB_URL`, dropped again when the handle drops.
//!
//! `scripts/test` starts a throwaway MariaDB and sets the variable; without
//! it, tests panic and say so, rather than being silently skipped.

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};

use rand::Rng;

use crate::db::{Db, DbConfig};
use crate::migrate;

/// The environment variable naming the test server (no database in the path).
pub const URL_VAR: &str = "DSF_TEST_DB_URL";

/// The test server's URL from `DSF_TEST_DB_URL`.
///
/// # Panics
/// When the variable is unset: the message says to run `scripts/test`.
pub fn server_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_VAR} is not set: these tests need a MariaDB. Run them through scripts/test, \
             or: scripts/mariadb start && {URL_VAR}=$(scripts/mariadb url) cargo test"
        ),
    }
}

/// The variable naming a Galera cluster's nodes for the tests that run on
/// one (`scripts/test` sets it for its Galera run): each node's server URL,
/// `mysql://USER:PASS@HOST:PORT/`, comma-separated.
pub const GALERA_VAR: &str = "DSF_TEST_GALERA_URLS";

/// The Galera nodes' server URLs from [`GALERA_VAR`], each ending in `/`,
/// or `None` when it is not set.
pub fn galera_urls() -> Option<Vec<String>> {
    let urls = std::env::var(GALERA_VAR).ok()?;
    let nodes: Vec<String> = urls
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string() + "/")
        .filter(|u| u.len() > 1)
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// [`galera_urls`] for a test that needs the cluster: `None` (the test
/// then passes, saying it skipped) when it is not set.
///
/// # Panics
/// When it is not set but `DSF_NEED_GALERA` is (`scripts/test`'s Galera
/// run), so that a missing cluster never passes quietly there.
pub fn galera_or_skip() -> Option<Vec<String>> {
    let nodes = galera_urls();
    if nodes.is_none() {
        assert!(
            std::env::var_os("DSF_NEED_GALERA").is_none(),
            "DSF_NEED_GALERA is set but {GALERA_VAR} is not: run scripts/galera start and export its urls"
        );
        eprintln!("skipping the Galera test: {GALERA_VAR} is not set (scripts/test sets it for its Galera run)");
    }
    nodes
}

/// A throwaway database; derefs to its [`Db`] and drops the database when
/// dropped.
pub struct TestDb {
    db: Db,
    config: DbConfig,
    name: String,
}

impl TestDb {
    /// The database's name (`dsf_test_…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A configuration reaching the same database, for tests that need a
    /// second pool with other settings.
    pub fn config(&self) -> DbConfig {
        self.config.clone()
    }
}

impl Deref for TestDb {
    type Target = Db;

    fn deref(&self) -> &Db {
        &self.db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Best effort: a test that stopped the server leaves its database
        // behind, and the throwaway server goes with scripts/test's stop.
        let _ = crate::db::drop_database(&server_config(), &self.name);
    }
}

fn server_config() -> DbConfig {
    let mut cfg = DbConfig::new(server_url());
    cfg.workers = 1;
    cfg.pool_margin = 0;
    cfg.startup_deadline = Some(std::time::Duration::from_secs(10));
    cfg
}

fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "dsf_test_{}_{}_{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::thread_rng().gen::<u32>()
    )
}

/// CPU seconds process `pid` has used (`self` for this one), from
/// `/proc`: for the examples that say what a statement costs the server.
///
/// # Panics
/// When the process's `stat` cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("a tick count");
    (ticks(11) + ticks(12)) / 100.0
}

/// A fresh database with every migration applied.
///
/// # Panics
/// When `DSF_TEST_DB_URL` is unset or the server cannot be used.
pub fn fresh() -> TestDb {
    let t = fresh_empty();
    migrate::migrate(&t).unwrap_or_else(|e| panic!("migrating {}: {e}", t.name));
    t
}

/// A fresh database with nothing in it (for migration tests).
///
/// # Panics
/// When `DSF_TEST_DB_URL` is unset or the server cannot be used.
pub fn fresh_empty() -> TestDb {
    let name = unique_name();
    let config = DbConfig::new(server_url()).database(name.clone());
    crate::db::ensure_database(&config)
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    let db = Db::connect(&config).unwrap_or_else(|e| panic!("connecting to {name}: {e}"));
    TestDb { db, config, name }
}

/// A MariaDB of a test's own (`scripts/mariadb` with its own folder and a
/// free port), for tests that stop and start it without disturbing the
/// shared server; stopped and its folder removed when dropped.
pub struct PrivateServer {
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivateServer {
    /// A server under a fresh folder named after `tag`; not started yet.
    pub fn new(tag: &str) -> PrivateServer {
        static N: AtomicU32 = AtomicU32::new(0);
        // Below the outgoing range: between this check and mariadbd's
        // bind, a port of that range can be taken by any connection.
        let port = dsf_common::testing::free_port();
        PrivateServer {
            dir: std::env::temp_dir().join(format!(
                "dsf-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )),
            port,
        }
    }

    /// The folder everything of this server lives in (its data, socket,
    /// log); made by the first `start` when missing.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The running server's process id (from its pid file), for faults
    /// such as a stall (SIGSTOP, then SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("mariadb.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs `scripts/mariadb CMD` (`start`, `stop`, `url`) on this server;
    /// returns what it printed.
    ///
    /// # Panics
    /// When the script fails, with its output.
    pub fn script(&self, cmd: &str) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/mariadb");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(cmd)
            .env("DSF_MARIADB_DIR", &self.dir)
            .env("DSF_MARIADB_PORT", self.port.to_string())
            .output()
            .expect("running scripts/mariadb");
        assert!(
            out.status.success(),
            "scripts/mariadb {cmd} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.script("stop"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
