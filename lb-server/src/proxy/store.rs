//! The shared pin table (`--pins-db URL`): pins in MySQL, so every
//! balancer replica routes a device alike, with the local [`PinTable`] as
//! a cache in front.
//!
//! Lookups that miss the cache, and every write, run on the store's own
//! threads, never on the reactor: the reactor hands over the connection's
//! outbox ([`Ask`]) and the thread ends the wait with
//! [`Outbox::pipe`](dsf_common::reactor::Outbox::pipe) once the route is
//! known. Replicas agree without a lock:
//!
//! - a new key's node is the ring's owner, the same on every replica given
//!   the same view; the first `INSERT IGNORE` wins and the others read it;
//! - a re-pin (the pinned node left, or refused) is a compare-and-set on
//!   the old node, so two replicas moving one key do not overwrite each
//!   other, and the loser reads the winner's pin.
//!
//! Each statement stands alone (autocommit): on Galera one that loses
//! certification is run again by the node itself
//! (`wsrep_retry_autocommit`), and one that still fails counts as a
//! failure below; nothing here needs a transaction's all-or-nothing.
//!
//! A database that fails does not stop devices: the key goes where the
//! local cache last said (however old), else to the ring's owner, and
//! `db_errors` counts it. Its queries time out after 2 s, and a device
//! whose lookup waited past its first-packet deadline (or that left) is
//! skipped rather than routed late. With a list of nodes (`--pins-db
//! A,B`), a failing node passes the query to the next, and the keeper
//! thread moves off a node that cannot serve and goes back to the first
//! once it serves again. A use of a pin reaches the table at most about
//! four times a TTL (a conditional update), and each replica
//! sweeps rows unused for a TTL; the reactor marks the keys of connected
//! devices used every 30 s, so theirs stay.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use dsf_common::reactor::Outbox;
use dsf_proto::lb::{Pin, PinPage};
use dsf_sql::{Db, DbConfig};
use mysql::prelude::Queryable;
use mysql::PooledConn;

use super::mqtt::Level;
use super::pins::{decide, Decision, KeyHash, PinTable};
use super::{unavailable_connack, Counters, ProxySettings};
use crate::service::Snapshot;

/// Threads that serve the devices' lookups and the operators' requests;
/// one more, the keeper, sweeps and watches the node in use.
const THREADS: usize = 2;
/// Jobs waiting for them; past it a device is routed by the ring unpinned.
const QUEUE: usize = 4096;
/// How often each replica sweeps expired rows and counts the table.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often a replica on a later node of a `--pins-db A,B,…` list checks
/// whether the first answers again, to go back to it.
const FIRST_NODE_EVERY: Duration = Duration::from_secs(10);
/// How often a replica with a list checks that the node in use serves (a
/// Galera node cut off from the others answers but refuses statements).
const IN_USE_EVERY: Duration = Duration::from_secs(1);
/// How long one query may take before the device is routed without it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS dsf_lb_pins (
    key_hash BINARY(16) NOT NULL PRIMARY KEY,
    pin_key VARCHAR(64) NOT NULL,
    node VARCHAR(256) NOT NULL,
    pinned_at DATETIME(6) NOT NULL,
    last_used DATETIME(6) NOT NULL,
    KEY by_node (node),
    KEY by_last_used (last_used)
) ENGINE=InnoDB";

/// A device waiting for its route.
pub struct Ask {
    pub outbox: Outbox,
    pub hash: KeyHash,
    /// What operators are shown of the key.
    pub shown: String,
    pub pos: u64,
    pub snap: Arc<Snapshot>,
    pub level: Option<Level>,
    /// The device's first-packet deadline: past it the reactor has closed
    /// it, so the lookup is skipped.
    pub until: Instant,
}

/// What an operator's request yields, answered by the caller's closure.
pub type Answer<T> = Box<dyn FnOnce(Result<T, String>) + Send>;

enum Job {
    Route(Ask),
    /// The key moved off the `from` nodes to `to` (a failover).
    Repin {
        key: KeyHash,
        from: Vec<String>,
        to: String,
    },
    Touch(KeyHash),
    List {
        after: Option<String>,
        limit: usize,
        node: Option<String>,
        answer: Answer<PinPage>,
    },
    Unpin {
        key: Option<String>,
        node: Option<String>,
        answer: Answer<u64>,
    },
}

/// The reactor's handle on the store's threads; they stop when it drops.
pub struct Store {
    jobs: Sender<Job>,
    _keeper: Sender<()>,
}

impl Store {
    /// Connects (retrying while the database starts), creates the table if
    /// it is missing, and starts the threads.
    pub fn open(
        db: &DbConfig,
        settings: &ProxySettings,
        cache: Arc<Mutex<PinTable>>,
        counters: Arc<Counters>,
    ) -> Result<Store, String> {
        let mut cfg = db.clone().workers(THREADS);
        cfg.connect_timeout = QUERY_TIMEOUT;
        cfg.io_timeout = QUERY_TIMEOUT;
        cfg.acquire_timeout = QUERY_TIMEOUT;
        dsf_sql::db::ensure_database(&cfg).map_err(|e| format!("--pins-db: {e}"))?;
        let db = Db::connect(&cfg).map_err(|e| format!("--pins-db: {e}"))?;
        let mut conn = db.checkout().map_err(|e| format!("--pins-db: {e}"))?;
        conn.query_drop(SCHEMA)
            .map_err(|e| format!("--pins-db: creating table dsf_lb_pins: {e}"))?;
        log::info!(
            "pins in {} (table dsf_lb_pins), cached here for {:?}",
            db.target(),
            settings.pins_cache
        );
        let (jobs, rx) = bounded(QUEUE);
        let worker = |_| Worker {
            db: db.clone(),
            rx: rx.clone(),
            cache: cache.clone(),
            counters: counters.clone(),
            ttl: settings.pin_ttl,
            max_pins: settings.max_pins as u64,
            warned: None,
        };
        for i in 0..THREADS {
            let w = worker(i);
            std::thread::Builder::new()
                .name(format!("pins-db-{i}"))
                .spawn(move || w.run())
                .map_err(|e| format!("starting the pins-db thread: {e}"))?;
        }
        let (keeper, stop) = bounded(0);
        let w = worker(THREADS);
        std::thread::Builder::new()
            .name("pins-db-keeper".into())
            .spawn(move || w.keep(&stop))
            .map_err(|e| format!("starting the pins-db thread: {e}"))?;
        Ok(Store {
            jobs,
            _keeper: keeper,
        })
    }

    /// Queues a lookup; `false` when the queue is full.
    pub fn route(&self, ask: Ask) -> bool {
        self.jobs.try_send(Job::Route(ask)).is_ok()
    }

    pub fn repin(&self, key: KeyHash, from: Vec<String>, to: String) {
        let _ = self.jobs.try_send(Job::Repin { key, from, to });
    }

    pub fn touch(&self, key: KeyHash) {
        let _ = self.jobs.try_send(Job::Touch(key));
    }

    pub fn list(
        &self,
        after: Option<String>,
        limit: usize,
        node: Option<String>,
        answer: Answer<PinPage>,
    ) {
        let job = Job::List {
            after,
            limit,
            node,
            answer,
        };
        if let Err(TrySendError::Full(Job::List { answer, .. })) = self.jobs.try_send(job) {
            answer(Err("the pins database is busy; retry".into()));
        }
    }

    pub fn unpin(&self, key: Option<String>, node: Option<String>, answer: Answer<u64>) {
        let job = Job::Unpin { key, node, answer };
        if let Err(TrySendError::Full(Job::Unpin { answer, .. })) = self.jobs.try_send(job) {
            answer(Err("the pins database is busy; retry".into()));
        }
    }
}

struct Worker {
    db: Db,
    rx: Receiver<Job>,
    cache: Arc<Mutex<PinTable>>,
    counters: Arc<Counters>,
    ttl: Duration,
    max_pins: u64,
    /// When a database failure was last logged at warn.
    warned: Option<Instant>,
}

impl Worker {
    /// The keeper's loop, until `stop` hangs up: sweeps expired rows and
    /// counts the table, moves off a node of the list that cannot serve,
    /// and goes back to the first once it serves again. Off the devices'
    /// path: each check may wait a connect timeout.
    fn keep(mut self, stop: &Receiver<()>) {
        let mut next_sweep = Instant::now();
        let mut next_first = Instant::now() + FIRST_NODE_EVERY;
        loop {
            self.db.check_in_use();
            if Instant::now() >= next_first {
                self.db.prefer_first();
                next_first = Instant::now() + FIRST_NODE_EVERY;
            }
            if Instant::now() >= next_sweep {
                if let Err(e) = self.sweep() {
                    self.failed("sweeping expired pins", &e);
                }
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
            match stop.recv_timeout(IN_USE_EVERY) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// A serving thread's loop, until the store drops.
    fn run(mut self) {
        loop {
            let Ok(job) = self.rx.recv() else {
                return;
            };
            match job {
                Job::Route(ask) => self.route(ask),
                Job::Repin { key, from, to } => {
                    if let Err(e) = self
                        .conn()
                        .and_then(|mut c| repin(&mut c, &key, &from, &to))
                    {
                        self.failed("re-pinning", &e);
                    }
                }
                Job::Touch(key) => {
                    let touched = self.conn().and_then(|mut c| {
                        c.exec_drop(
                            "UPDATE dsf_lb_pins SET last_used = NOW(6) WHERE key_hash = ?",
                            (key.to_vec(),),
                        )
                    });
                    if let Err(e) = touched {
                        self.failed("recording a pin's use", &e);
                    }
                }
                Job::List {
                    after,
                    limit,
                    node,
                    answer,
                } => answer(
                    self.conn()
                        .and_then(|mut c| list(&mut c, after.as_deref(), limit, node.as_deref()))
                        .map_err(|e| format!("reading the pins database: {e}")),
                ),
                Job::Unpin { key, node, answer } => {
                    let r = self
                        .conn()
                        .and_then(|mut c| unpin(&mut c, key.as_deref(), node.as_deref()));
                    if r.is_ok() {
                        let mut cache = self.cache.lock().expect("the pin table's lock");
                        if let Some(k) = &key {
                            cache.remove(&super::pins::key_hash(k.as_bytes()));
                        }
                        if let Some(n) = &node {
                            cache.remove_node(n);
                        }
                    }
                    if let Ok(n) = r {
                        self.counters.pins.dropped.fetch_add(n, Ordering::Relaxed);
                    }
                    answer(r.map_err(|e| format!("writing the pins database: {e}")))
                }
            }
        }
    }

    fn conn(&self) -> mysql::Result<PooledConn> {
        self.db.checkout()
    }

    /// Logs a database failure: at warn once a minute, else at debug.
    fn failed(&mut self, what: &str, e: &mysql::Error) {
        self.counters.pins.db_errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if self
            .warned
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            log::warn!(
                "pins database {}: {what} failed: {e}; devices are routed by the ring until it answers",
                self.db.target()
            );
            self.warned = Some(now);
        } else {
            log::debug!("pins database: {what} failed: {e}");
        }
    }

    /// Routes one device: the stored pin if its node is in the view, else
    /// the ring's owner, stored.
    fn route(&mut self, ask: Ask) {
        if ask.outbox.is_closed() || Instant::now() >= ask.until {
            // The device left, or its deadline passed while this waited.
            return;
        }
        let ring = &ask.snap.proxy.ring;
        let decided = self.conn().and_then(|mut c| self.decide(&mut c, &ask));
        let node = match decided {
            Ok(node) => node,
            Err(e) => {
                self.failed("looking up a pin", &e);
                let cache = self.cache.lock().expect("the pin table's lock");
                decide(ring, cache.peek(&ask.hash), ask.pos).map(Decision::node)
            }
        };
        let target = node.map(|i| (i, ask.snap.proxy.targets[i]));
        match target {
            Some((i, addr)) => {
                let mut cache = self.cache.lock().expect("the pin table's lock");
                cache.set(
                    &ask.hash,
                    &ask.shown,
                    &ring.node(i).id,
                    Instant::now(),
                    &self.counters.pins,
                );
                drop(cache);
                ask.outbox.pipe(addr);
            }
            None => {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                if ask.level.is_some() {
                    let _ = ask.outbox.send(unavailable_connack(ask.level));
                }
                ask.outbox.close();
            }
        }
    }

    /// The node for `ask`, with the table updated; `None` when no node
    /// takes keys.
    fn decide(&self, c: &mut PooledConn, ask: &Ask) -> mysql::Result<Option<usize>> {
        let ring = &ask.snap.proxy.ring;
        let key_hash = ask.hash.to_vec();
        // A lost race is settled by reading the winner; three rounds at most.
        for _ in 0..3 {
            let pinned: Option<String> = c.exec_first(
                "SELECT node FROM dsf_lb_pins WHERE key_hash = ?",
                (&key_hash,),
            )?;
            let Some(d) = decide(ring, pinned.as_deref(), ask.pos) else {
                return Ok(None);
            };
            let node = &ring.node(d.node()).id;
            match d {
                Decision::Kept(i) => {
                    // A use: recorded when the last one is a quarter TTL old.
                    let quarter = (self.ttl / 4).as_micros() as u64;
                    c.exec_drop(
                        "UPDATE dsf_lb_pins SET last_used = NOW(6) \
                         WHERE key_hash = ? AND last_used < NOW(6) - INTERVAL ? MICROSECOND",
                        (&key_hash, quarter),
                    )?;
                    return Ok(Some(i));
                }
                Decision::New(i) => {
                    if self.counters.pins.held.load(Ordering::Relaxed) >= self.max_pins {
                        self.counters.pins.full.fetch_add(1, Ordering::Relaxed);
                        return Ok(Some(i));
                    }
                    c.exec_drop(
                        "INSERT IGNORE INTO dsf_lb_pins (key_hash, pin_key, node, pinned_at, last_used) \
                         VALUES (?, ?, ?, NOW(6), NOW(6))",
                        (&key_hash, &ask.shown, node),
                    )?;
                    if c.affected_rows() == 1 {
                        self.counters.pins.count(d);
                        self.counters.pins.held.fetch_add(1, Ordering::Relaxed);
                        return Ok(Some(i));
                    }
                }
                Decision::Moved(i) => {
                    c.exec_drop(
                        "UPDATE dsf_lb_pins SET node = ?, pinned_at = NOW(6), last_used = NOW(6) \
                         WHERE key_hash = ? AND node = ?",
                        (node, &key_hash, pinned.as_deref().unwrap_or_default()),
                    )?;
                    if c.affected_rows() == 1 {
                        self.counters.pins.count(d);
                        return Ok(Some(i));
                    }
                }
            }
        }
        // Still racing: the ring's owner, as every replica would choose.
        Ok(ring.owner(ask.pos))
    }

    /// Drops rows unused for a TTL and counts what is left.
    fn sweep(&mut self) -> mysql::Result<()> {
        let mut c = self.conn()?;
        let ttl = self.ttl.as_micros() as u64;
        loop {
            c.exec_drop(
                "DELETE FROM dsf_lb_pins WHERE last_used < NOW(6) - INTERVAL ? MICROSECOND LIMIT 10000",
                (ttl,),
            )?;
            let n = c.affected_rows();
            self.counters.pins.expired.fetch_add(n, Ordering::Relaxed);
            if n < 10000 {
                break;
            }
        }
        let held: Option<u64> = c.query_first("SELECT COUNT(*) FROM dsf_lb_pins")?;
        self.counters
            .pins
            .held
            .store(held.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }
}

fn repin(c: &mut PooledConn, key: &KeyHash, from: &[String], to: &str) -> mysql::Result<()> {
    let key_hash = key.to_vec();
    for old in from {
        c.exec_drop(
            "UPDATE dsf_lb_pins SET node = ?, pinned_at = NOW(6), last_used = NOW(6) \
             WHERE key_hash = ? AND node = ?",
            (to, &key_hash, old),
        )?;
        if c.affected_rows() == 1 {
            return Ok(());
        }
    }
    Ok(())
}

/// `key_hash, pin_key, node, idle_ms, pinned_at_ms`.
type PinRow = (Vec<u8>, String, String, u64, u64);

/// A page in key-hash order; `after` is the hex hash the page before ended on.
fn list(
    c: &mut PooledConn,
    after: Option<&str>,
    limit: usize,
    node: Option<&str>,
) -> mysql::Result<PinPage> {
    let after = after.and_then(|a| hex::decode(a).ok()).unwrap_or_default();
    let rows: Vec<PinRow> = c.exec(
        "SELECT key_hash, pin_key, node, \
            CAST(TIMESTAMPDIFF(MICROSECOND, last_used, NOW(6)) / 1000 AS UNSIGNED), \
            CAST(UNIX_TIMESTAMP(pinned_at) * 1000 AS UNSIGNED) \
         FROM dsf_lb_pins WHERE key_hash > ? AND (? IS NULL OR node = ?) \
         ORDER BY key_hash LIMIT ?",
        (after, node, node, limit as u64),
    )?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| hex::encode(&r.0)))
        .flatten();
    let pins = rows
        .into_iter()
        .map(|(_, key, node, idle_ms, pinned_at_ms)| Pin {
            key,
            node,
            idle_ms,
            pinned_at_ms,
        })
        .collect();
    Ok(PinPage { pins, next })
}

fn unpin(c: &mut PooledConn, key: Option<&str>, node: Option<&str>) -> mysql::Result<u64> {
    let mut n = 0;
    if let Some(k) = key {
        c.exec_drop(
            "DELETE FROM dsf_lb_pins WHERE key_hash = ?",
            (super::pins::key_hash(k.as_bytes()).to_vec(),),
        )?;
        n += c.affected_rows();
    }
    if let Some(id) = node {
        c.exec_drop("DELETE FROM dsf_lb_pins WHERE node = ?", (id,))?;
        n += c.affected_rows();
    }
    Ok(n)
}
