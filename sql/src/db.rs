//! [`Db`]: the connection pool, its limits and timeouts, start-up retries and
//! the health check.
//!
//! The URL may be a comma-separated list, one database node each (a Galera
//! cluster's, say): the pool uses the first that answers, moves to the next
//! when the one in use cannot be reached, and goes back to the first once
//! [`Db::prefer_first`] finds it answering again.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsf_common::config::{Secret, SecretUrl};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn};

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
/// How long data sent on a connection may go unacknowledged before the
/// kernel gives the connection up (`TCP_USER_TIMEOUT`): a statement sent
/// into a link that went silent fails after this, not after the I/O
/// timeout, so its worker is free again (Linux only).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a caller waits for a free pooled connection.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Warming runs of one kind of transaction on one connection, at most
/// (see [`op_key`]).
const WARMING_RUNS: usize = 4;

/// Starts a transaction at READ COMMITTED, that transaction only
/// ([`Db::with_tx_read_committed`]).
pub(crate) const BEGIN_READ_COMMITTED: &str =
    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED;START TRANSACTION";

/// How long a transaction chosen as a deadlock's victim, or failing
/// certification on Galera, is run again (see [`Db::with_tx`]). On Galera
/// a row written through several nodes at once loses often: each loser
/// pauses a random time up to a cap that doubles with each loss, which
/// spreads the contenders out, and a budget in time rather than tries
/// bounds the wait however hot the row.
pub const RETRY_CONFLICTS_FOR: Duration = Duration::from_secs(1);
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

/// What a Galera node's connections run to read their writes from anywhere
/// (see [`DbConfig::causal_reads`]).
pub const CAUSAL_READS: &str = "SET SESSION wsrep_sync_wait = 1";

/// How long a pooled connection may go unused and still be handed out
/// without a liveness check (HikariCP's `aliveBypassWindowMs`).
pub const ALIVE_BYPASS: Duration = Duration::from_millis(500);
/// How long a staged write waits to join a commit shared with other
/// connections before it is sent alone (see `writes`).
pub const SHARED_COMMIT_WAIT: Duration = Duration::from_millis(50);

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
    /// Causal reads on a Galera cluster (`wsrep_sync_wait = 1`): a read
    /// waits until the node has applied every write the cluster committed
    /// before it, so a session made, a run-once record written, a task
    /// claimed or a message stored through another node is seen. Set by
    /// [`Db::connect_once`] when the server has `wsrep_on`.
    pub causal_reads: bool,
    /// How long a staged run-once write waits for a commit shared with
    /// other connections while one is in flight, before it is sent alone
    /// (default [`SHARED_COMMIT_WAIT`]): what one write stuck on a lock
    /// can cost the others.
    pub shared_commit_wait: Duration,
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
            causal_reads: false,
            shared_commit_wait: SHARED_COMMIT_WAIT,
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

    /// One setting per URL of the list (one for a single URL), in order.
    pub fn each_url(&self) -> Vec<DbConfig> {
        self.url
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| DbConfig {
                url: SecretUrl::new(u),
                ..self.clone()
            })
            .collect()
    }

    /// The statements every new connection runs.
    fn init(&self) -> Vec<&'static str> {
        let mut init = INIT.to_vec();
        if self.causal_reads {
            init.push(CAUSAL_READS);
        }
        init
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
            .tcp_user_timeout_ms(Some(TCP_USER_TIMEOUT.as_millis() as u32))
            .stmt_cache_size(Some(64))
            .init(self.init());
        if let Some(db) = &self.database {
            b = b.db_name(Some(db.clone()));
        }
        if let Some(password) = &self.password {
            b = b.pass(Some(String::from_utf8_lossy(password.expose())));
        }
        Ok(b.into())
    }
}

/// The database: a bounded pool of connections (one per node of a list,
/// the one in use at a time). Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    /// One pool per URL of the list, in order; pools of nodes not in use
    /// hold no connection.
    nodes: Vec<Node>,
    /// The node in use.
    current: AtomicUsize,
    acquire_timeout: Duration,
    pool_max: usize,
    alive_bypass: Duration,
    /// When each connection (by node and server thread id) was last handed
    /// out.
    used: std::sync::Mutex<std::collections::HashMap<(usize, u32), Instant>>,
    /// Whether the database is a Galera cluster: the first transaction of
    /// each kind on a connection then runs once to prepare its statements
    /// (see [`op_key`]).
    galera: bool,
    /// The (node, connection, kind of transaction) that ran that way.
    warm: std::sync::Mutex<std::collections::HashSet<(usize, u32, u64)>>,
    /// [`Db::probe`]'s connection to each node.
    probe: std::sync::Mutex<Vec<Option<Conn>>>,
    /// Staged run-once writes of many threads, committed together.
    shared: crate::writes::Shared,
    shared_commit_wait: Duration,
}

/// One database node of the list.
struct Node {
    pool: Pool,
    /// `host:port/db`, never the password: for logs and errors.
    target: String,
    /// Its settings, for [`Db::probe`]'s own connection.
    opts: Opts,
    /// Whether the last [`Db::probe`] of it got no answer: a checkout then
    /// fails at once instead of waiting on connections that hang.
    down: AtomicBool,
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

    /// Connects once: the first node of the list that answers its health
    /// check is the one in use (a single URL: that node, which must answer).
    pub fn connect_once(cfg: &DbConfig) -> Result<Db> {
        let each = cfg.each_url();
        if each.is_empty() {
            return Err(Error::Internal {
                op: "connect",
                message: "no database URL given (expected mysql://USER[:PASS]@HOST:PORT/DB, or a comma-separated list)".into(),
            });
        }
        let galera = each.iter().any(is_galera);
        if galera {
            log::info!(
                "database is a Galera cluster (wsrep_on): reads are causal (wsrep_sync_wait = 1)"
            );
        }
        let mut nodes = Vec::with_capacity(each.len());
        for (i, one) in each.iter().enumerate() {
            // Only the first opens connections up front; the others open
            // theirs when they are needed.
            let mut one = one.clone();
            one.causal_reads |= galera;
            if i > 0 {
                one.pool_min = 0;
            }
            let opts = one.opts()?;
            let pool = Pool::new(opts.clone()).map_err(|e| Error::from_mysql("connect", e));
            let pool = match pool {
                Ok(p) => p,
                Err(e) if each.len() > 1 => {
                    log::warn!(
                        "database {}: {e}; trying the next of the list",
                        target_of(&one)
                    );
                    one.pool_min = 0;
                    Pool::new(one.opts()?).map_err(|e| Error::from_mysql("connect", e))?
                }
                Err(e) => return Err(e),
            };
            nodes.push(Node {
                pool,
                target: target_of(&one),
                opts,
                down: AtomicBool::new(false),
            });
        }
        let db = Db {
            inner: Arc::new(Inner {
                nodes,
                current: AtomicUsize::new(0),
                acquire_timeout: cfg.acquire_timeout,
                pool_max: cfg.pool_max(),
                alive_bypass: cfg.alive_bypass,
                used: Default::default(),
                galera,
                warm: Default::default(),
                probe: Default::default(),
                shared: Default::default(),
                shared_commit_wait: cfg.shared_commit_wait,
            }),
        };
        // A first node that connects but cannot serve (a Galera node cut
        // off from the others): start on the next that can.
        if db.health().is_err() {
            db.check_in_use();
        }
        db.health()?;
        Ok(db)
    }

    /// A cheap health check: one round trip on a pooled connection.
    pub fn health(&self) -> Result<()> {
        self.with_conn("health", |c| c.query_drop("DO 1"))
    }

    /// Asks each node of the list for one round trip (`DO 1`) on a
    /// connection of the probe's own, waiting at most `timeout` to connect
    /// and to hear back, and records whether it answered: while a node does
    /// not, a checkout from it fails at once with `unavailable` (after the
    /// other nodes of a list are tried) instead of waiting out the I/O
    /// timeout on a connection to a host that went silent, so that a
    /// client's request moves to another app server at once. Call it every
    /// second or so off the request path (the app server's `db-probe` job
    /// does). Returns whether the node in use answered.
    pub fn probe(&self, timeout: Duration) -> bool {
        let mut held = self.inner.probe.lock().unwrap_or_else(|p| p.into_inner());
        held.resize_with(self.inner.nodes.len(), || None);
        for (node, conn) in self.inner.nodes.iter().zip(held.iter_mut()) {
            let fresh = || {
                Conn::new(
                    OptsBuilder::from_opts(node.opts.clone())
                        .tcp_connect_timeout(Some(timeout))
                        .read_timeout(Some(timeout))
                        .write_timeout(Some(timeout))
                        .init(Vec::<String>::new()),
                )
                .and_then(|mut c| c.query_drop("DO 1").map(|_| c))
            };
            // The connection kept from the last round may have been closed
            // meanwhile (a restart, an idle timeout): a fresh one decides,
            // unless it waited out the timeout already.
            let answer = match conn.take() {
                Some(mut c) => {
                    let asked = Instant::now();
                    c.query_drop("DO 1").map(|_| c).or_else(|e| {
                        if asked.elapsed() >= timeout {
                            Err(e)
                        } else {
                            fresh()
                        }
                    })
                }
                None => fresh(),
            };
            let was_down = node.down.load(Ordering::Relaxed);
            match answer {
                Ok(c) => {
                    *conn = Some(c);
                    if was_down {
                        node.down.store(false, Ordering::Relaxed);
                        log::info!("database: {} answers again", node.target);
                    }
                }
                Err(e) if !was_down => {
                    node.down.store(true, Ordering::Relaxed);
                    log::warn!(
                        "database: {} did not answer within {timeout:?} ({e}); requests that need it are answered `unavailable` until it does",
                        node.target
                    );
                }
                Err(_) => {}
            }
        }
        !self.inner.nodes[self.current()]
            .down
            .load(Ordering::Relaxed)
    }

    /// Whether the node in use answered its last [`Db::probe`] (true
    /// before any probe).
    pub fn answers(&self) -> bool {
        !self.inner.nodes[self.current()]
            .down
            .load(Ordering::Relaxed)
    }

    /// Reads the database's clock: how far it is ahead of this host's
    /// (negative: behind), and the round trip it was read in (the error
    /// is at most half of it). See [`dsf_common::clock`].
    pub fn clock_offset(&self) -> Result<(i64, Duration)> {
        self.with_conn("clock", |c| {
            let started = Instant::now();
            let before = dsf_common::clock::host_ms();
            let db: Option<i64> =
                // UTC, and no conversion through the session's time zone
                // (UNIX_TIMESTAMP(NOW()) is an hour off around a change of
                // daylight saving time).
                c.query_first("SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) DIV 1000")?;
            let after = dsf_common::clock::host_ms();
            let offset = dsf_common::clock::offset_of(db.unwrap_or(before), before, after);
            Ok((offset, started.elapsed()))
        })
    }

    /// `host:port/db` of the node in use, for logs (never the password).
    pub fn target(&self) -> &str {
        &self.inner.nodes[self.current()].target
    }

    /// Which node of the list is in use, from 0.
    pub fn current(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed)
    }

    /// The pool of the node in use, for callers that need the raw driver
    /// (the benchmark's baseline, tests holding connections).
    pub fn pool(&self) -> &Pool {
        &self.inner.nodes[self.current()].pool
    }

    /// Goes back to the first node of the list if another is in use and the
    /// first answers a health check again. Call it now and then off the
    /// request path (the app server's janitor does, every few seconds): the
    /// check may wait a connect timeout. Returns whether it moved.
    pub fn prefer_first(&self) -> bool {
        if self.current() == 0 {
            return false;
        }
        let answers = self
            .checkout_from(0)
            .and_then(|mut c| c.query_drop("DO 1"))
            .is_ok();
        if answers {
            let from = self.inner.current.swap(0, Ordering::Relaxed);
            log::info!(
                "database: back on {} (the first of the list) from {}",
                self.inner.nodes[0].target,
                self.inner.nodes[from].target
            );
        }
        answers
    }

    /// Moves off the node in use when it accepts connections but cannot
    /// serve, to the next of the list that can: a Galera node that left the
    /// primary component (cut off from the others) answers pings and
    /// refuses every statement with error 1047, so a checkout alone never
    /// leaves it. Call it every second or so off the request path (the app
    /// server's janitor does); the check may wait a connect timeout.
    /// Returns whether it moved.
    pub fn check_in_use(&self) -> bool {
        let n = self.inner.nodes.len();
        if n < 2 {
            return false;
        }
        let from = self.current();
        let serves = |i: usize| self.checkout_from(i).and_then(|mut c| c.query_drop("DO 1"));
        let why = match serves(from) {
            Err(e) if unreachable(&e) => e,
            _ => return false,
        };
        for step in 1..n {
            let to = (from + step) % n;
            if serves(to).is_err() {
                continue;
            }
            if self
                .inner
                .current
                .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                log::warn!(
                    "database: {} cannot serve ({why}); now using {}",
                    self.inner.nodes[from].target,
                    self.inner.nodes[to].target
                );
                return true;
            }
            // Another thread moved it meanwhile.
            return false;
        }
        false
    }

    /// Takes a connection, waiting at most the acquire timeout.
    /// A pooled connection, checked alive (`COM_PING`) only when it has
    /// not been handed out for [`DbConfig::alive_bypass`] (default
    /// [`ALIVE_BYPASS`]), as HikariCP does: a
    /// connection in steady use costs no extra round trip, and one left
    /// dead by a database restart (which takes longer than the window) is
    /// found and replaced before a request meets it. A dead one is
    /// discarded, so the pool opens a new one in its place.
    ///
    /// With a list of nodes, a node that cannot be reached (refused, timed
    /// out, every connection dead, or a Galera node not ready) passes the
    /// request to the next, which is then the one in use.
    pub fn checkout(&self) -> mysql::Result<PooledConn> {
        self.checkout_at().map(|(_, c)| c)
    }

    /// [`Db::checkout`], with the index of the node it is on.
    fn checkout_at(&self) -> mysql::Result<(usize, PooledConn)> {
        let n = self.inner.nodes.len();
        let start = self.current();
        let mut last = None;
        for step in 0..n {
            let i = (start + step) % n;
            match self.checkout_from(i) {
                Ok(c) => {
                    if i != start
                        && self
                            .inner
                            .current
                            .compare_exchange(start, i, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        log::warn!(
                            "database: {} cannot be reached ({}); now using {}",
                            self.inner.nodes[start].target,
                            last.as_ref()
                                .map_or(String::new(), |e: &mysql::Error| e.to_string()),
                            self.inner.nodes[i].target
                        );
                    }
                    return Ok((i, c));
                }
                Err(e) if n > 1 && unreachable(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a list has at least one node"))
    }

    /// [`Db::checkout`] from node `i` only.
    fn checkout_from(&self, i: usize) -> mysql::Result<PooledConn> {
        let node = &self.inner.nodes[i];
        if node.down.load(Ordering::Relaxed) {
            return Err(mysql::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} did not answer its last health check", node.target),
            )));
        }
        let pool = &node.pool;
        for _ in 0..=self.inner.pool_max {
            let mut c = pool.try_get_conn(self.inner.acquire_timeout)?;
            let now = Instant::now();
            let recent = {
                let mut used = self.inner.used.lock().unwrap_or_else(|p| p.into_inner());
                // Ids of connections long gone: forgetting all costs one
                // ping each.
                if used.len() > 4 * self.inner.pool_max * self.inner.nodes.len() {
                    used.clear();
                }
                used.insert((i, c.connection_id()), now)
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
        self.conn_at(op).map(|(_, c)| c)
    }

    /// [`Db::conn`], with the index of the node it is on.
    pub(crate) fn conn_at(&self, op: &'static str) -> Result<(usize, PooledConn)> {
        self.checkout_at().map_err(|e| match e {
            mysql::Error::DriverError(mysql::DriverError::Timeout) => Error::PoolTimeout {
                op,
                waited: self.inner.acquire_timeout,
                max: self.inner.pool_max,
            },
            other => Error::from_mysql(op, other),
        })
    }

    /// Runs `f` on the connection of the run-once write this thread is
    /// inside ([`Writes::run_once`](crate::Writes::run_once)), if any,
    /// after the writes staged before it ([`Db::exec_write`]); gives `f`
    /// back otherwise. The connection is given back to the write
    /// even if `f` panics, so that run_once's guard rolls its transaction
    /// back instead of the pool getting one with a transaction open.
    fn on_run_once<T, F: FnOnce(&mut PooledConn) -> T>(&self, f: F) -> std::result::Result<T, F> {
        self.on_run_once_at(false, f)
    }

    /// [`Db::on_run_once`], its transaction started at READ COMMITTED if
    /// `read_committed` and if it has not started yet.
    fn on_run_once_at<T, F: FnOnce(&mut PooledConn) -> T>(
        &self,
        read_committed: bool,
        f: F,
    ) -> std::result::Result<T, F> {
        let Some(conn) = take_tx(self.id()) else {
            return Err(f);
        };
        struct GiveBack(usize, Option<PooledConn>);
        impl Drop for GiveBack {
            fn drop(&mut self) {
                if let Some(c) = self.1.take() {
                    put_tx(self.0, c);
                }
            }
        }
        let mut held = GiveBack(self.id(), Some(conn));
        let conn = held.1.as_mut().expect("just put there");
        crate::writes::send_staged(self, conn, read_committed);
        Ok(f(conn))
    }

    /// Runs a write whose caller needs nothing back but its success:
    /// `sql` with positional `params`, no `?` in it but the placeholders.
    /// Inside a run-once write ([`Writes::run_once`](crate::Writes::run_once))
    /// it is staged instead, and goes out with the write's record and
    /// `COMMIT` in one round trip. If it fails there, the write's handler
    /// runs again with its statements sent as they come, and meets the
    /// error here. So a staged write's success is a promise: act on it only
    /// in the database and in the reply, as a run-once handler must anyway
    /// (it may run twice).
    pub fn exec_write(
        &self,
        op: &'static str,
        sql: &str,
        params: impl Into<mysql::Params>,
    ) -> Result<()> {
        let params = params.into();
        if crate::writes::stage(self.id(), sql, &params) {
            return Ok(());
        }
        self.with_conn(op, |c| c.exec_drop(sql, params))
    }

    /// Runs `f` on a pooled connection (the run-once write's transaction,
    /// inside one), mapping driver errors for `op`.
    pub fn with_conn<T>(
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

    /// [`Db::with_conn`] for a closure that says its own errors (a
    /// handler's statements, `?` on the driver's errors).
    pub fn with_conn_result<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        let f = match self.on_run_once(f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        let mut conn = self.conn(op)?;
        let r = f(&mut conn);
        if matches!(r, Err(Error::Unavailable { .. })) {
            // Maybe the connection broke: the pool makes a new one.
            conn.reset_connection(true);
        }
        r
    }

    /// Runs `f` in one transaction: the run-once write's, inside
    /// [`Writes::run_once`](crate::Writes::run_once) on this thread (it
    /// commits with the write's record, and a deadlock there is the
    /// caller's to retry, as `unavailable`); otherwise a new one, committed
    /// when `f` returns `Ok` and rolled back on an error or a panic, and run
    /// again, for up to [`RETRY_CONFLICTS_FOR`], when InnoDB chose it as a
    /// deadlock's victim (it rolled the whole transaction back) or Galera
    /// failed it in certification.
    pub fn with_tx<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        self.tx_at(false, op, f)
    }

    /// [`Db::with_tx`] at READ COMMITTED: each statement reads what was
    /// committed before it, and a locking read locks only the rows it
    /// returns. For a transaction whose correctness rests on the rows it
    /// locks, not on one snapshot or on gap locks: a queue's claim
    /// (`SELECT … FOR UPDATE SKIP LOCKED`), which at REPEATABLE READ locks
    /// every row it passes over, the deleted ones not yet purged included.
    /// Inside a run-once write whose transaction has already started, it
    /// runs at that transaction's level.
    pub fn with_tx_read_committed<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        self.tx_at(true, op, f)
    }

    fn tx_at<T>(
        &self,
        read_committed: bool,
        op: &'static str,
        f: impl FnMut(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        let mut f = match self.on_run_once_at(read_committed, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        let (started, mut tries) = (Instant::now(), 1);
        loop {
            match self.tx_once(op, read_committed, &mut f) {
                Err(e) if e.is_deadlock() && started.elapsed() < RETRY_CONFLICTS_FOR => {
                    log::debug!("{op}: deadlock victim or certification failure, running the transaction again (try {tries}): {e}");
                    std::thread::sleep(retry_pause(tries));
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn tx_once<T>(
        &self,
        op: &'static str,
        read_committed: bool,
        f: &mut impl FnMut(&mut PooledConn) -> Result<T>,
    ) -> Result<T> {
        let begin = if read_committed {
            BEGIN_READ_COMMITTED
        } else {
            "START TRANSACTION"
        };
        let start = |c: &mut PooledConn| {
            crate::writes::run_all(c, begin).map_err(|(_, e)| Error::from_mysql(op, e))
        };
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
        let (node, conn) = self.conn_at(op)?;
        let mut tx = Tx(conn, false);
        // A warming run cut short (a deadlock) prepared only part of the
        // statements: another one prepares the rest.
        for _ in 0..WARMING_RUNS {
            if !self.needs_warming(node, &tx.0, op_key(op)) {
                break;
            }
            start(&mut tx.0)?;
            let ran = f(&mut tx.0).is_ok();
            roll_back(&mut tx.0);
            if ran {
                self.warmed(node, &tx.0, op_key(op));
            }
        }
        start(&mut tx.0)?;
        let v = f(&mut tx.0)?;
        tx.0.query_drop("COMMIT")
            .map_err(|e| Error::from_mysql(op, e))?;
        tx.1 = true;
        Ok(v)
    }

    /// Whether the database is a Galera cluster (the server says `wsrep_on`).
    pub fn is_galera(&self) -> bool {
        self.inner.galera
    }

    /// On Galera, whether transactions of kind `key` ([`op_key`]) have not
    /// yet run on `conn` of node `node`: the caller then runs one and rolls
    /// it back, so that the real one prepares nothing (see [`op_key`]).
    pub(crate) fn needs_warming(&self, node: usize, conn: &PooledConn, key: u64) -> bool {
        if !self.inner.galera {
            return false;
        }
        let warm = self.inner.warm.lock().unwrap_or_else(|p| p.into_inner());
        !warm.contains(&(node, conn.connection_id(), key))
    }

    /// Records that a warming run of kind `key` went through on `conn`.
    pub(crate) fn warmed(&self, node: usize, conn: &PooledConn, key: u64) {
        let mut warm = self.inner.warm.lock().unwrap_or_else(|p| p.into_inner());
        // Connections long gone: forgetting them costs a warming run each.
        if warm.len() > 64 * self.inner.pool_max * self.inner.nodes.len() {
            warm.clear();
        }
        warm.insert((node, conn.connection_id(), key));
    }

    /// Identifies the pool (clones share it), for the run-once transaction.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Where this pool's threads meet to commit their staged writes
    /// together.
    pub(crate) fn shared(&self) -> &crate::writes::Shared {
        &self.inner.shared
    }

    /// [`DbConfig::shared_commit_wait`].
    pub(crate) fn shared_commit_wait(&self) -> Duration {
        self.inner.shared_commit_wait
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("target", &self.target())
            .field("nodes", &self.inner.nodes.len())
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

/// Galera, under writes to one row through several nodes, can lose a
/// transaction that prepared a statement: its `COMMIT` answers OK and
/// nothing of it stays (MariaDB 10.11.19 with galera-4 26.4.23; found by
/// `certification_failures_are_retried_and_lose_nothing` in
/// `sql/tests/galera.rs`, and shown without dsf by
/// `sql/examples/galera_prepare_loss.rs`). A statement is prepared the
/// first time a connection runs it, so on Galera the first transaction of
/// each kind on a connection is run once to prepare its statements and
/// rolled back, then run for real.
pub(crate) fn op_key(op: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    op.hash(&mut h);
    h.finish()
}

/// The pause before running a transaction again after its `tries`-th
/// loss: 1 ms plus a random part up to 2^tries ms, capped at 50 ms
/// ("full jitter": contenders that lost together do not come back
/// together).
pub(crate) fn retry_pause(tries: u32) -> Duration {
    let cap = (1u64 << tries.min(16)).min(50);
    Duration::from_millis(1 + rand::random::<u64>() % (cap + 1))
}

/// Rolls back the transaction open on `conn`; a connection that cannot do
/// even that is broken, and the pool forgets it.
pub(crate) fn roll_back(conn: &mut PooledConn) {
    if let Err(e) = conn.query_drop("ROLLBACK") {
        log::debug!("ROLLBACK failed ({e}): the connection is dropped, not pooled");
        conn.reset_connection(true);
    }
}

/// Whether the server `cfg` reaches runs Galera replication (`wsrep_on`);
/// `false` if it cannot be asked (a server without wsrep has no such
/// variable).
fn is_galera(cfg: &DbConfig) -> bool {
    let mut server = cfg.clone();
    server.database = None;
    let Ok(opts) = server.opts() else {
        return false;
    };
    let opts: Opts = OptsBuilder::from_opts(opts).db_name(None::<String>).into();
    let Ok(mut conn) = mysql::Conn::new(opts) else {
        return false;
    };
    let on: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
        .unwrap_or(None);
    on.is_some_and(|(_, v)| v.eq_ignore_ascii_case("ON"))
}

/// Whether `e` says the node cannot be reached (as opposed to a query's own
/// failure, or every connection busy): the next node of a list may serve.
fn unreachable(e: &mysql::Error) -> bool {
    match e {
        // Every connection in use: waiting elsewhere would not help.
        mysql::Error::DriverError(mysql::DriverError::Timeout) => false,
        // 1047: a Galera node not yet (or no longer) part of the primary
        // component ("WSREP has not yet prepared node for application use").
        mysql::Error::MySqlError(m) => m.code == 1047,
        other => other.is_connectivity_error(),
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
    let first = cfg.url.expose().split(',').next().unwrap_or("").trim();
    match Opts::from_url(first) {
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
    let first = cfg.url.expose().split(',').next().unwrap_or("").trim();
    let from_url = Opts::from_url(first)
        .ok()
        .and_then(|o| o.get_db_name().map(str::to_string));
    cfg.database.clone().or(from_url).ok_or(Error::Invalid {
        field: "database",
        rule: "name a database in the URL (mysql://USER@HOST:PORT/DB)",
    })
}

/// Runs one statement on a short-lived connection to the server, without
/// selecting a database.
/// With a list, the first node that can be reached runs it (a Galera
/// cluster replicates it to the others).
fn on_server(cfg: &DbConfig, op: &'static str, stmt: &str) -> Result<()> {
    let mut last = None;
    for one in cfg.each_url() {
        let mut server = one;
        server.database = None;
        let opts: Opts = OptsBuilder::from_opts(server.opts()?)
            .db_name(None::<String>)
            .into();
        match mysql::Conn::new(opts) {
            Ok(mut conn) => return conn.query_drop(stmt).map_err(|e| Error::from_mysql(op, e)),
            Err(e) if unreachable(&e) => last = Some(Error::from_mysql(op, e)),
            Err(e) => return Err(Error::from_mysql(op, e)),
        }
    }
    Err(last.unwrap_or(Error::Internal {
        op,
        message: "no database URL given".into(),
    }))
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

thread_local! {
    /// The connection of the run-once transaction open on this thread, with
    /// the identity of the pool it belongs to.
    pub(crate) static TX: RefCell<Option<(usize, PooledConn)>> = const { RefCell::new(None) };
}

/// The run-once transaction's connection, if one is open on this thread
/// for the pool `db_id`; give it back with [`put_tx`].
pub(crate) fn take_tx(db_id: usize) -> Option<PooledConn> {
    TX.with(|t| {
        let mut t = t.borrow_mut();
        match &*t {
            Some((id, _)) if *id == db_id => t.take().map(|(_, c)| c),
            _ => None,
        }
    })
}

/// Gives back what [`take_tx`] took.
pub(crate) fn put_tx(db_id: usize, conn: PooledConn) {
    TX.with(|t| *t.borrow_mut() = Some((db_id, conn)));
}
