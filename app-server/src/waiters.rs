//! Long polls of `task.claim`: a claim with `wait_ms` that finds nothing
//! ready is parked here instead of holding a worker. One `claim-waits`
//! thread checks whether each app with parked claims has a ready task (one
//! indexed `SELECT … LIMIT 1` per app, not per claim) and hands that app's
//! claims back to the pool, oldest first; a claim whose wait is over goes
//! back too, and is answered with what it finds then (often nothing). It
//! checks at once when a submit on this node [`Wake`]s it, and every
//! [`POLL`] for submits on other nodes. A parked claim has written nothing,
//! so it runs once like any other when it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dsf_common::pool::Submitter;
use dsf_sql::Db;

use crate::service::Job;

/// How often parked claims look for ready tasks: a task submitted on
/// another node reaches a waiting worker within this (plus a claim).
pub const POLL: Duration = Duration::from_millis(25);

/// A nudge for the waiters: tasks were just submitted on this node.
#[derive(Debug, Default)]
pub struct Wake {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Waits for a nudge, at most `timeout`.
    fn wait(&self, timeout: Duration) {
        let guard = self.woken.lock().unwrap_or_else(|p| p.into_inner());
        let (mut woken, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |w| !*w)
            .unwrap_or_else(|p| p.into_inner());
        *woken = false;
    }
}

struct Parked {
    job: Job,
    app: String,
    until: Instant,
}

struct Inner {
    parked: Mutex<Vec<Parked>>,
    /// Where released claims go; taken away at shutdown, so the pool's
    /// workers are not kept waiting for jobs by this submitter.
    pool: Mutex<Option<Submitter<Job>>>,
    db: Db,
    wake: Arc<Wake>,
    stop: AtomicBool,
    /// Every parked claim runs at the next poll (the node drains).
    release: AtomicBool,
}

/// The parked claims and their thread; stops when dropped.
pub struct Waiters {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.parked.lock().map_or(0, |p| p.len());
        f.debug_struct("Waiters").field("parked", &n).finish()
    }
}

impl Waiters {
    /// Starts the `claim-waits` thread over `db`, nudged by `wake`.
    pub fn start(db: Db, wake: Arc<Wake>) -> Waiters {
        let inner = Arc::new(Inner {
            parked: Mutex::new(Vec::new()),
            pool: Mutex::new(None),
            db,
            wake,
            stop: AtomicBool::new(false),
            release: AtomicBool::new(false),
        });
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("claim-waits".into())
            .spawn(move || run(&thread))
            .expect("spawning the claim-waits thread");
        Waiters { inner }
    }

    /// Where released claims go (the pool is made after the controller).
    pub fn set_pool(&self, pool: Submitter<Job>) {
        *self.inner.pool.lock().expect("the pool's lock") = Some(pool);
    }

    /// At shutdown, before the pool stops: every parked claim runs now
    /// (with what it finds) and the pool is let go.
    pub fn close(&self) {
        self.release_all();
        let parked =
            std::mem::take(&mut *self.inner.parked.lock().expect("the parked claims' lock"));
        let pool = self.inner.pool.lock().expect("the pool's lock").take();
        for p in parked {
            let mut job = p.job;
            job.woken = true;
            if let Some(pool) = &pool {
                let _ = pool.try_submit(job);
            }
        }
    }

    /// Parks `job` (a claim of `app`'s tasks) until a task is ready or `until`.
    pub fn park(&self, job: Job, app: String, until: Instant) {
        self.inner
            .parked
            .lock()
            .expect("the parked claims' lock")
            .push(Parked { job, app, until });
    }

    /// Runs every parked claim at the next poll, and every later one at
    /// once (the node is draining for shutdown).
    pub fn release_all(&self) {
        self.inner.release.store(true, Ordering::Release);
    }

    /// Claims parked now.
    pub fn len(&self) -> usize {
        self.inner.parked.lock().map_or(0, |p| p.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Waiters {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
    }
}

fn run(inner: &Inner) {
    while !inner.stop.load(Ordering::Acquire) {
        inner.wake.wait(POLL);
        let parked = std::mem::take(&mut *inner.parked.lock().expect("the parked claims' lock"));
        if parked.is_empty() {
            continue;
        }
        let now = Instant::now();
        let mut ready: HashMap<String, bool> = HashMap::new();
        let mut keep = Vec::new();
        for p in parked {
            let due = now >= p.until || inner.release.load(Ordering::Acquire);
            let has = *ready.entry(p.app.clone()).or_insert_with(|| {
                // A database that does not answer: let the claim run and
                // report it, rather than wait on in silence.
                inner.db.tasks().has_ready(&p.app).unwrap_or(true)
            });
            if !(due || has) {
                keep.push(p);
                continue;
            }
            let mut job = p.job;
            job.woken = true;
            let pool = inner.pool.lock().expect("the pool's lock").clone();
            // No pool: the node has closed the waiters (shutdown).
            let Some(pool) = pool else { continue };
            if let Err(job) = pool.try_submit(job) {
                // The pool is full: next time round.
                keep.push(Parked { job, ..p });
            }
        }
        inner
            .parked
            .lock()
            .expect("the parked claims' lock")
            .extend(keep);
    }
}
