//! Wake-ups by topic: what waits on a topic on this node, and the two
//! threads that serve it.
//!
//! - Long polls ([`dsf_common::pipeline::Route::long_poll`]) park here off
//!   the workers. The `waits` thread hands one back to the pool when its
//!   topic is woken or its wait ends (it then runs with what it finds);
//!   at shutdown every one goes back at once.
//! - Streams that follow a topic ([`crate::Node::follow`]) live on the
//!   `follow` thread, which runs each one's step when its topic is woken
//!   and every interval it asked for (a wake-up can be lost with a peer
//!   link; the interval bounds the delay then).
//!
//! A topic is woken by a commit here ([`crate::CallExt::wake`]) or on
//! another node (`peer.wake` over the peer links). Topics are free-form
//! strings; a service names its own with a prefix (`tasks:cli`,
//! `order:42`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use dsf_common::pipeline::{Call, Stream, Wait};
use dsf_common::pool::Submitter;
use dsf_common::{ErrorCode, Result};
use dsf_proto::Message;

/// How often the `waits` thread looks for ends of waits and for calls the
/// pool could not take.
const WAIT_TICK: Duration = Duration::from_millis(25);

/// What a followed stream's step decides.
#[derive(Debug)]
pub enum Step<R> {
    /// Go on: run again on the next wake-up or interval.
    Wait,
    /// End the stream with this final reply.
    Finish(R),
}

struct Parked<S: Send + Sync + 'static> {
    call: Call<S>,
    until: Instant,
}

struct Waits<S: Send + Sync + 'static> {
    /// By topic.
    parked: HashMap<String, Vec<Parked<S>>>,
    /// Released, for the pool.
    ready: Vec<Call<S>>,
    /// Every parked call runs now, and every later one at once.
    release: bool,
}

impl<S: Send + Sync + 'static> Default for Waits<S> {
    fn default() -> Self {
        Waits {
            parked: HashMap::new(),
            ready: Vec::new(),
            release: false,
        }
    }
}

/// The wait registry and its threads; see the module documentation. `S`
/// is the server the parked calls are of (the app server's [`Node`]).
///
/// [`Node`]: crate::Node
pub struct Topics<S: Send + Sync + 'static> {
    waits: Arc<(Mutex<Waits<S>>, Condvar)>,
    pool: Arc<Mutex<Option<Submitter<Call<S>>>>>,
    follow: Sender<Follow>,
    stop: Arc<AtomicBool>,
}

impl<S: Send + Sync + 'static> std::fmt::Debug for Topics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("parked", &self.parked())
            .finish()
    }
}

enum Follow {
    Add(Follower),
    Wake(String),
}

struct Follower {
    topic: String,
    every: Duration,
    next: Instant,
    /// Runs the step; whether the stream goes on.
    step: Box<dyn FnMut() -> bool + Send>,
}

// === impl Topics ===

impl<S: Send + Sync + 'static> Topics<S> {
    pub(crate) fn new() -> Topics<S> {
        let waits: Arc<(Mutex<Waits<S>>, Condvar)> = Arc::default();
        let pool: Arc<Mutex<Option<Submitter<Call<S>>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (waits, pool, stop) = (waits.clone(), pool.clone(), stop.clone());
            std::thread::Builder::new()
                .name("waits".into())
                .spawn(move || run_waits(&waits, &pool, &stop))
                .expect("spawning the waits thread");
        }
        let (follow, rx) = unbounded();
        {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("follow".into())
                .spawn(move || run_follow(&rx, &stop))
                .expect("spawning the follow thread");
        }
        Topics {
            waits,
            pool,
            follow,
            stop,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waits<S>> {
        self.waits.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where released long polls go (the pool is made after the node).
    pub(crate) fn set_pool(&self, pool: Submitter<Call<S>>) {
        *self.pool.lock().unwrap_or_else(|p| p.into_inner()) = Some(pool);
    }

    /// Queues `call` on the pool again (a connection's next batch, behind
    /// the others' work); hands it back when the queue is full or the pool
    /// was let go, to run where it is.
    pub(crate) fn requeue(&self, call: Call<S>) -> Option<Call<S>> {
        match &*self.pool.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(pool) => pool.try_submit(call).err(),
            None => Some(call),
        }
    }

    /// Parks `call` until `wait.topic` is woken or `wait.until`.
    pub(crate) fn park(&self, call: Call<S>, wait: Wait) {
        let mut w = self.lock();
        if w.release {
            // The node drains: it runs now, with what it finds.
            w.ready.push(call);
        } else {
            w.parked.entry(wait.topic).or_default().push(Parked {
                call,
                until: wait.until,
            });
        }
        drop(w);
        self.waits.1.notify_one();
    }

    /// Wakes what waits on `topic` here: every stream that follows it, and
    /// the long polls parked on it, or only the `limit` parked longest
    /// (a submit of one task wakes one claim, not every idle worker).
    pub(crate) fn wake(&self, topic: &str, limit: Option<usize>) {
        let mut w = self.lock();
        let mut woken: Vec<Parked<S>> = match (w.parked.get_mut(topic), limit) {
            (None, _) => Vec::new(),
            (Some(parked), Some(n)) => {
                // A wake-up for `n` goes to clients still there: those
                // whose connection closed are dropped, and those that sent
                // EOF (half-closed, or gone without the server knowing yet)
                // come after the rest (a stable sort: oldest first within
                // each).
                parked.retain(|p| !p.call.client_gone());
                parked.sort_by_key(|p| p.call.client_done_sending());
                let taken = parked.drain(..n.min(parked.len())).collect();
                if parked.is_empty() {
                    w.parked.remove(topic);
                }
                taken
            }
            (Some(_), None) => w.parked.remove(topic).unwrap_or_default(),
        };
        woken.retain(|p| !p.call.client_gone());
        if woken.is_empty() {
            drop(w);
        } else {
            w.ready.extend(woken.into_iter().map(|p| p.call));
            drop(w);
            self.waits.1.notify_one();
        }
        let _ = self.follow.send(Follow::Wake(topic.to_string()));
    }

    /// The topics with parked long polls, starting with `prefix`.
    pub(crate) fn parked_topics(&self, prefix: &str) -> Vec<String> {
        self.lock()
            .parked
            .keys()
            .filter(|t| t.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Long polls parked now.
    pub(crate) fn parked(&self) -> usize {
        self.lock().parked.values().map(Vec::len).sum()
    }

    /// At shutdown, before the pool stops: every parked long poll runs now
    /// (with what it finds), later ones at once, and the pool is let go
    /// once they are handed over.
    pub(crate) fn release_all(&self) {
        let mut w = self.lock();
        w.release = true;
        let parked: Vec<Parked<S>> = w.parked.drain().flat_map(|(_, v)| v).collect();
        w.ready.extend(parked.into_iter().map(|p| p.call));
        let ready = std::mem::take(&mut w.ready);
        drop(w);
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner()).take();
        for mut call in ready {
            call.set_woken();
            if let Some(pool) = &pool {
                let _ = pool.try_submit(call);
            }
        }
    }

    pub(crate) fn follow<M: Message>(
        &self,
        topic: String,
        every: Duration,
        stream: Stream<M>,
        mut step: impl FnMut(&mut Stream<M>) -> Result<Step<M::Reply>> + Send + 'static,
    ) {
        let mut stream = Some(stream);
        let run = move || {
            let Some(s) = stream.as_mut() else {
                return false;
            };
            if s.is_ended() {
                return false;
            }
            match step(s) {
                Ok(Step::Wait) => s.flush().is_ok(),
                Ok(Step::Finish(reply)) => {
                    if let Some(s) = stream.take() {
                        let _ = s.finish(&reply);
                    }
                    false
                }
                // The database is away: the stream waits for it.
                Err(e) if e.code() == ErrorCode::Unavailable => s.flush().is_ok(),
                Err(e) => {
                    if let Some(s) = stream.take() {
                        let _ = s.fail(&e);
                    }
                    false
                }
            }
        };
        let _ = self.follow.send(Follow::Add(Follower {
            topic,
            every,
            next: Instant::now(),
            step: Box::new(run),
        }));
    }
}

impl<S: Send + Sync + 'static> Drop for Topics<S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waits.1.notify_one();
    }
}

fn run_waits<S: Send + Sync + 'static>(
    waits: &(Mutex<Waits<S>>, Condvar),
    pool: &Mutex<Option<Submitter<Call<S>>>>,
    stop: &AtomicBool,
) {
    let (lock, cv) = waits;
    let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
    while !stop.load(Ordering::Acquire) {
        w = cv
            .wait_timeout(w, WAIT_TICK)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        let now = Instant::now();
        let mut due = Vec::new();
        w.parked.retain(|_, calls| {
            // A long poll whose client left is dropped unanswered (it never
            // ran, so nothing of it is recorded: a resend runs afresh).
            calls.retain(|p| !p.call.client_gone());
            let (over, keep): (Vec<Parked<S>>, Vec<Parked<S>>) = std::mem::take(calls)
                .into_iter()
                .partition(|p| now >= p.until);
            due.extend(over.into_iter().map(|p| p.call));
            *calls = keep;
            !calls.is_empty()
        });
        due.append(&mut w.ready);
        if due.is_empty() {
            continue;
        }
        let pool = pool.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // No pool: the node has let it go (shutdown); nothing more runs.
        let Some(pool) = pool else {
            continue;
        };
        for mut call in due {
            call.set_woken();
            if let Err(call) = pool.try_submit(call) {
                // The pool is full: next time round.
                w.ready.push(call);
            }
        }
    }
}

fn run_follow(rx: &Receiver<Follow>, stop: &AtomicBool) {
    let mut followers: Vec<Follower> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let next = followers
            .iter()
            .map(|f| f.next)
            .min()
            .map_or(Duration::from_secs(1), |n| n.saturating_duration_since(now))
            .min(Duration::from_secs(1));
        let mut woken: Vec<String> = Vec::new();
        match rx.recv_timeout(next) {
            Ok(Follow::Add(f)) => followers.push(f),
            Ok(Follow::Wake(t)) => woken.push(t),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        for m in rx.try_iter() {
            match m {
                Follow::Add(f) => followers.push(f),
                Follow::Wake(t) => woken.push(t),
            }
        }
        let now = Instant::now();
        followers.retain_mut(|f| {
            if now < f.next && !woken.contains(&f.topic) {
                return true;
            }
            // A step that panics ends its stream, not the thread.
            let go_on = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (f.step)()))
                .unwrap_or_else(|_| {
                    log::error!(
                        "follow: a step of topic {} panicked; its stream ends",
                        f.topic
                    );
                    false
                });
            f.next = Instant::now() + f.every;
            go_on
        });
    }
}
