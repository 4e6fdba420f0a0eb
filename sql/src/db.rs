//! [`Db`]: the connection pool, its limits and timeouts, start-up retries and
//! the health check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsf_common::config::{Secret, SecretUrl};
use mysql::prelude::Queryable;
use mysql::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn};

use crate::error::{Error, Result};

/// Connections kept beyond the worker count: for the heartbeat, the health
/// check and a migration running next to the workers.
pub const DEFAULT_POOL_MARGIN: usize = 2;
/// Workers assumed when the caller does not say.
pub const DEFAULT_WORKERS: usize = 4;
/// How long a TCP connect to the database may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or write on a connection may block.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a caller waits for a free pooled connection.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a transaction chosen as a deadlock's victim is run (see
/// [`Db::with_tx`]).
pub const DEADLOCK_TRIES: u32 = 4;
/// How long [`Db::connect`] keeps retrying at start-up; `None` = forever.
pub const DEFAULT_STARTUP_DEADLINE: Option<Duration> = Some(Duration::from_secs(120));

/// Statements run on every new connection: utf8mb4 so 4-byte characters
/// round-trip whatever the server's defaults, and strict mode so an
/// over-long value is an error instead of being silently cut.
const INIT: [&str; 3] = [
    "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_520_ci",
    // A write that trips over another's locks (the same request running
    // elsewhere, a stuck transaction) gives up in 5 s, as `unavailable`,
    // well inside a client's request timeout, instead of holding a worker
    // for InnoDB's default 50 s.
    "SET SESSION innodb_lock_wait_timeout = 5",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
];

/// How long a pooled connection may go unused and still be handed out
/// without a liveness check (HikariCP's `aliveBypassWindowMs`).
pub const ALIVE_BYPASS: Duration = Duration::from_millis(500);

/// How to reach the database and how many connections to keep.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `mysql://USER[:PASS]@HOST:PORT/DB`; shown with its password as `***`.
    pub url: SecretUrl,
    /// The password, when it is kept out of the URL (`--db-password-file`,
    /// `DSF_DB_PASSWORD`).
    pub password: Option<Secret>,
    /// Overrides the database named in `url` (tests use this for their
    /// throwaway databases).
    pub database: Option<String>,
    /// Worker threads that will use the pool at once.
    pub workers: usize,
    /// Extra connections beyond `workers` (default [`DEFAULT_POOL_MARGIN`]).
    pub pool_margin: usize,
    /// Connections opened up front (default 1; at most the pool's bound).
    pub pool_min: usize,
    /// TCP connect timeout (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Read and write timeout on a connection (default [`DEFAULT_IO_TIMEOUT`]).
    pub io_timeout: Duration,
    /// How long to wait for a free connection (default [`DEFAULT_ACQUIRE_TIMEOUT`]).
    pub acquire_timeout: Duration,
    /// How long [`Db::connect`] retries (default [`DEFAULT_STARTUP_DEADLINE`]).
    pub startup_deadline: Option<Duration>,
    /// A connection unused for longer is pinged before it is handed out
    /// (default [`ALIVE_BYPASS`]).
    pub alive_bypass: Duration,
}

// === impl DbConfig ===

impl DbConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> DbConfig {
        DbConfig {
            url: SecretUrl::new(url),
            password: None,
            database: None,
            workers: DEFAULT_WORKERS,
            pool_margin: DEFAULT_POOL_MARGIN,
            pool_min: 1,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            startup_deadline: DEFAULT_STARTUP_DEADLINE,
            alive_bypass: ALIVE_BYPASS,
        }
    }

    /// Sizes the pool for `workers` threads.
    pub fn workers(mut self, workers: usize) -> DbConfig {
        self.workers = workers;
        self
    }

    /// Logs in with `password` (the URL then holds none).
    pub fn password(mut self, password: Option<Secret>) -> DbConfig {
        self.password = password;
        self
    }

    /// Uses `name` instead of the database in the URL.
    pub fn database(mut self, name: impl Into<String>) -> DbConfig {
        self.database = Some(name.into());
        self
    }

    /// The most connections the pool opens: workers plus the margin, at least 1.
    pub fn pool_max(&self) -> usize {
        (self.workers + self.pool_margin).max(1)
    }

    fn opts(&self) -> Result<Opts> {
        let base = Opts::from_url(self.url.expose()).map_err(|e| Error::Internal {
            op: "connect",
            message: format!("bad database URL: {e} (expected mysql://USER[:PASS]@HOST:PORT/DB)"),
        })?;
        let max = self.pool_max();
        let min = self.pool_min.min(max);
        let constraints = PoolConstraints::new(min, max).ok_or(Error::Internal {
            op: "connect",
            message: format!("pool bounds {min}..{max} are not valid"),
        })?;
        // reset_connection(false): a reset drops the connection's prepared
        // statements, which would re-prepare every statement on every call.
        // We leave no session state behind (transactions roll back on drop,
        // the migration lock is released explicitly).
        // No check_health: the pool would ping every connection it hands
        // out, one round trip per request. `Db::checkout` pings only those
        // unused for longer than ALIVE_BYPASS.
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            .with_reset_connection(false)
            .with_check_health(false);
        let mut b = OptsBuilder::from_opts(base)
            .pool_opts(pool_opts)
            .tcp_connect_timeout(Some(self.connect_timeout))
            .read_timeout(Some(self.io_timeout))
            .write_timeout(Some(self.io_timeout))
            .tcp_keepalive_time_ms(Some(30_000))
            .stmt_cache_size(Some(64))
            .init(INIT.to_vec());
        if let Some(db) = &self.database {
            b = b.db_name(Some(db.clone()));
        }
        if let Some(password) = &self.password {
            b = b.pass(Some(String::from_utf8_lossy(password.expose())));
        }
        Ok(b.into())
    }
}

/// The database: a bounded pool of connections. Cheap to clone; clones share
/// the pool.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    inner: Arc<Inner>,
}

struct Inner {
    acquire_timeout: Duration,
    pool_max: usize,
    alive_bypass: Duration,
    /// When each connection (by its server thread id) was last handed out.
    used: std::sync::Mutex<std::collections::HashMap<u32, Instant>>,
    /// `host:port/db`, never the password: for logs and errors.
    target: String,
}

// === impl Db ===

impl Db {
    /// Connects, retrying with backoff while the database is unreachable,
    /// still starting, or its database does not exist yet, until
    /// `cfg.startup_deadline`. A server started before its database waits and
    /// logs instead of crashing. Wrong credentials or a bad URL fail at once.
    pub fn connect(cfg: &DbConfig) -> Result<Db> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match Db::connect_once(cfg) {
                Ok(db) => {
                    if attempt > 1 {
                        log::info!(
                            "database {} reachable after {attempt} attempts",
                            db.target()
                        );
                    }
                    return Ok(db);
                }
                Err(e) if retryable_at_startup(&e) => {
                    let waited = started.elapsed();
                    if cfg.startup_deadline.is_some_and(|d| waited + backoff > d) {
                        return Err(e);
                    }
                    log::warn!(
                        "database {} not ready (attempt {attempt}): {e}; retrying in {backoff:?}",
                        target_of(cfg)
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects once: opens `pool_min` connections and runs the health check.
    pub fn connect_once(cfg: &DbConfig) -> Result<Db> {
        let pool = Pool::new(cfg.opts()?).map_err(|e| Error::from_mysql("connect", e))?;
        let db = Db {
            pool,
            inner: Arc::new(Inner {
                acquire_timeout: cfg.acquire_timeout,
                pool_max: cfg.pool_max(),
                alive_bypass: cfg.alive_bypass,
                used: Default::default(),
                target: target_of(cfg),
            }),
        };
        db.health()?;
        Ok(db)
    }

    /// A cheap health check: one round trip on a pooled connection.
    pub fn health(&self) -> Result<()> {
        self.with_conn("health", |c| c.query_drop("DO 1"))
    }

    /// `host:port/db` of the database, for logs (never the password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The underlying pool, for callers that need the raw driver (the
    /// benchmark's baseline, tests holding connections).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Takes a connection, waiting at most the acquire timeout.
    /// A pooled connection, checked alive (`COM_PING`) only when it has
    /// not been handed out for [`DbConfig::alive_bypass`] (default
    /// [`ALIVE_BYPASS`]), as HikariCP does: a
    /// connection in steady use costs no extra round trip, and one left
    /// dead by a database restart (which takes longer than the window) is
    /// found and replaced before a request meets it. A dead one is
    /// discarded, so the pool opens a new one in its place.
    pub fn checkout(&self) -> mysql::Result<PooledConn> {
        for _ in 0..=self.inner.pool_max {
            let mut c = self.pool.try_get_conn(self.inner.acquire_timeout)?;
            let now = Instant::now();
            let recent = {
                let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
                // Ids of connections long gone: forgetting all costs one
                // ping each.
                if used.len() > 4 * self.inner.pool_max {
                    used.clear();
                }
                used.insert(c.connection_id(), now)
                    .is_some_and(|t| now.duration_since(t) <= self.inner.alive_bypass)
            };
            if recent || c.as_mut().ping().is_ok() {
                return Ok(c);
            }
            // The reset on return fails on a dead connection, which makes
            // the pool forget it instead of taking it back.
            c.reset_connection(true);
            drop(c);
        }
        Err(mysql::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "every pooled connection was dead",
        )))
    }

    pub(crate) fn conn(&self, op: &'static str) -> Result<PooledConn> {
        self.checkout().map_err(|e| match e {
            mysql::Error::DriverError(mysql::DriverError::Timeout) => Error::PoolTimeout {
                op,
                waited: self.inner.acquire_timeout,
                max: self.inner.pool_max,
            },
            other => Error::from_mysql(op, other),
        })
    }

    /// Runs `f` on the connection of the run-once write this thread is
    /// inside ([`Writes::run_once`](crate::Writes::run_once)), if any;
    /// gives `f` back otherwise. The connection is given back to the write
    /// even if `f` panics, so that run_once's guard rolls its transaction
    /// back instead of the pool getting one with a transaction open.
    fn on_run_once<T, F: FnOnce(&mut PooledConn) -> T>(&self, f: F) -> std::result::Result<T, F> {
        let Some(conn) = crate::writes::take_tx(self.id()) else {
            return Err(f);
        };
        struct GiveBack(usize, Option<PooledConn>);
        impl Drop for GiveBack {
            fn drop(&mut self) {
                if let Some(c) = self.1.take() {
                    crate::writes::put_tx(self.0, c);
                }
            }
        }
        let mut held = GiveBack(self.id(), Some(conn));
        Ok(f(held.1.as_mut().expect("just put there")))
    }

    /// Runs `f` on a pooled connection (the run-once write's transaction,
    /// inside one), mapping driver errors for `op`.
    pub(crate) fn with_conn<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut PooledConn) -> mysql::Result<T>,
    ) -> Result<T> {
        let f = match self.on_run_once(f) {
            Ok(r) => return r.map_err(|e| Error::from_mysql(op, e)),
            Err(f) => f,
        };
        let mut conn = self.conn(op)?;
        f(&mut conn).map_err(|e| {
            forget_if_broken(&mut conn, &e);
            Error::from_mysql(op, e)
        })
    }

    /// Runs `f` in one transaction: the run-once write's, inside
    /// [`Writes::run_once`](crate::Writes::run_once) on this thread (it
    /// commits with the write's record, and a deadlock there is the
    /// caller's to retry, as `unavailable`); otherwise a new one, committed
    /// when `f` returns `Ok` and rolled back on an error or a panic, and run
    /// again, up to [`DEADLOCK_TRIES`] times, when InnoDB chose it as a
    /// deadlock's victim (it rolled the whole transaction back).
    pub(crate) fn with_tx<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        let mut f = match self.on_run_once(f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        let mut tries = 1;
        loop {
            match self.tx_once(op, &mut f) {
                Err(e) if e.is_deadlock() && tries < DEADLOCK_TRIES => {
                    log::debug!("{op}: deadlock victim, running the transaction again: {e}");
                    std::thread::sleep(Duration::from_millis(2 << tries));
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn tx_once<T>(
        &self,
        op: &'static str,
        f: &mut impl FnMut(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        /// Rolls back unless committed, so a panic in `f` never returns a
        /// connection to the pool with a transaction open.
        struct Tx(PooledConn, bool);
        impl Drop for Tx {
            fn drop(&mut self) {
                if !self.1 {
                    roll_back(&mut self.0);
                }
            }
        }
        let mut tx = Tx(self.conn(op)?, false);
        tx.0.query_drop("START TRANSACTION")
            .map_err(|e| Error::from_mysql(op, e))?;
        let v = f(&mut tx.0)?;
        tx.0.query_drop("COMMIT")
            .map_err(|e| Error::from_mysql(op, e))?;
        tx.1 = true;
        Ok(v)
    }

    /// Identifies the pool (clones share it), for the run-once transaction.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("target", &self.inner.target)
            .field("pool_max", &self.inner.pool_max)
            .finish()
    }
}

/// Makes the pool forget `conn` once it is dropped, when `e` says the
/// connection is broken: within the bypass window it would otherwise be
/// handed out again unchecked.
pub(crate) fn forget_if_broken(conn: &mut PooledConn, e: &mysql::Error) {
    if e.is_connectivity_error() {
        // The reset on return fails on a dead connection, so the pool
        // drops it instead of taking it back.
        conn.reset_connection(true);
    }
}

/// Rolls back the transaction open on `conn`; a connection that cannot do
/// even that is broken, and the pool forgets it.
pub(crate) fn roll_back(conn: &mut PooledConn) {
    if let Err(e) = conn.query_drop("ROLLBACK") {
        log::debug!("ROLLBACK failed ({e}): the connection is dropped, not pooled");
        conn.reset_connection(true);
    }
}

fn retryable_at_startup(e: &Error) -> bool {
    match e {
        Error::Unavailable { .. } | Error::PoolTimeout { .. } => true,
        // 1049: unknown database; someone (scripts, an operator) is about to create it.
        Error::Internal { message, .. } => message.starts_with("server error 1049"),
        _ => false,
    }
}

fn target_of(cfg: &DbConfig) -> String {
    match Opts::from_url(cfg.url.expose()) {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_ip_or_hostname(),
            o.get_tcp_port(),
            cfg.database.as_deref().or(o.get_db_name()).unwrap_or("")
        ),
        Err(_) => "(bad url)".to_string(),
    }
}

/// A database name we are willing to put into DDL (which cannot take
/// parameters): letters, digits, `_`, at most 64 characters.
fn check_identifier(name: &str) -> Result<()> {
    if !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "database",
            rule: "1 to 64 ASCII letters, digits or '_'",
        })
    }
}

/// The database `cfg` names (`cfg.database`, else the URL's path).
fn database_name(cfg: &DbConfig) -> Result<String> {
    let from_url = Opts::from_url(cfg.url.expose())
        .ok()
        .and_then(|o| o.get_db_name().map(str::to_string));
    cfg.database.clone().or(from_url).ok_or(Error::Invalid {
        field: "database",
        rule: "name a database in the URL (mysql://USER@HOST:PORT/DB)",
    })
}

/// Runs one statement on a short-lived connection to the server, without
/// selecting a database.
fn on_server(cfg: &DbConfig, op: &'static str, stmt: &str) -> Result<()> {
    let mut server = cfg.clone();
    server.database = None;
    let opts: Opts = OptsBuilder::from_opts(server.opts()?)
        .db_name(None::<String>)
        .into();
    let mut conn = mysql::Conn::new(opts).map_err(|e| Error::from_mysql(op, e))?;
    conn.query_drop(stmt).map_err(|e| Error::from_mysql(op, e))
}

/// Creates the database `cfg` names if it does not exist (utf8mb4), so
/// `migrate` can start from an empty server.
pub fn ensure_database(cfg: &DbConfig) -> Result<()> {
    let name = database_name(cfg)?;
    check_identifier(&name)?;
    on_server(
        cfg,
        "create database",
        &format!(
            "CREATE DATABASE IF NOT EXISTS `{name}` \
             CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci"
        ),
    )
}

/// Drops database `name` on the server `cfg` reaches, if it exists.
pub fn drop_database(cfg: &DbConfig, name: &str) -> Result<()> {
    check_identifier(name)?;
    on_server(
        cfg,
        "drop database",
        &format!("DROP DATABASE IF EXISTS `{name}`"),
    )
}
