//! A fixed pool of named worker threads over a bounded crossbeam channel.
//!
//! Submission never blocks: [`WorkerPool::try_submit`] hands the job back
//! when the queue is full, so the reactor can stop reading from that
//! connection (backpressure) instead of queueing without bound. A job that
//! panics is logged and the worker goes on with the next one.
//!
//! Several threads may submit (one per reactor): [`Submitter::try_reserve`]
//! takes a place in the queue before the caller does anything it could not
//! undo, and the [`Slot`] it returns always submits.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// A fixed set of threads running one handler over a bounded queue.
pub struct WorkerPool<J: Send + 'static> {
    tx: Option<Sender<J>>,
    done_rx: Receiver<()>,
    handles: Vec<JoinHandle<()>>,
    counts: Arc<Counts>,
}

/// Jobs queued or promised a place (`taken`, never above `queue`), and jobs
/// running.
#[derive(Debug)]
struct Counts {
    taken: AtomicUsize,
    queue: usize,
    busy: AtomicUsize,
}

/// A cheap handle for submitting jobs, clonable to other threads.
pub struct Submitter<J> {
    tx: Sender<J>,
    counts: Arc<Counts>,
}

impl<J> Clone for Submitter<J> {
    fn clone(&self) -> Self {
        Submitter {
            tx: self.tx.clone(),
            counts: self.counts.clone(),
        }
    }
}

/// A place in the queue, taken by [`Submitter::try_reserve`]: submitting
/// through it never finds the queue full. Dropped unused, it gives the
/// place back.
pub struct Slot<J> {
    tx: Sender<J>,
    counts: Arc<Counts>,
    used: bool,
}

// === impl WorkerPool ===

impl<J: Send + 'static> WorkerPool<J> {
    /// Starts `workers` threads named `{name}-{i}` sharing a queue of
    /// `queue` jobs, each job run by `handler`.
    pub fn new<F>(name: &str, workers: usize, queue: usize, handler: F) -> WorkerPool<J>
    where
        F: Fn(J) + Send + Sync + 'static,
    {
        let (tx, rx) = bounded::<J>(queue.max(1));
        let (done_tx, done_rx) = bounded::<()>(workers.max(1));
        let handler = Arc::new(handler);
        let counts = Arc::new(Counts {
            taken: AtomicUsize::new(0),
            queue: queue.max(1),
            busy: AtomicUsize::new(0),
        });
        let handles = (0..workers.max(1))
            .map(|i| {
                let rx = rx.clone();
                let handler = handler.clone();
                let done_tx = done_tx.clone();
                let counts = counts.clone();
                let thread_name = format!("{name}-{i}");
                std::thread::Builder::new()
                    .name(thread_name.clone())
                    .spawn(move || {
                        for job in rx.iter() {
                            counts.busy.fetch_add(1, Ordering::Relaxed);
                            counts.taken.fetch_sub(1, Ordering::AcqRel);
                            let outcome = catch_unwind(AssertUnwindSafe(|| handler(job)));
                            counts.busy.fetch_sub(1, Ordering::Relaxed);
                            if outcome.is_err() {
                                log::error!("{thread_name}: a job panicked; the worker goes on");
                            }
                        }
                        let _ = done_tx.send(());
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        WorkerPool {
            tx: Some(tx),
            done_rx,
            handles,
            counts,
        }
    }

    /// A handle for submitting from other places.
    pub fn submitter(&self) -> Submitter<J> {
        Submitter {
            tx: self.tx.clone().expect("pool is running"),
            counts: self.counts.clone(),
        }
    }

    /// Queues `job`, or hands it back if the queue is full.
    pub fn try_submit(&self, job: J) -> Result<(), J> {
        match &self.tx {
            Some(tx) => Submitter {
                tx: tx.clone(),
                counts: self.counts.clone(),
            }
            .try_submit(job),
            None => Err(job),
        }
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.handles.len()
    }

    /// Stops taking jobs, lets the workers finish what is queued, and waits
    /// for them up to `deadline`. Returns whether every worker exited in
    /// time; late workers are left to finish on their own.
    pub fn shutdown(mut self, deadline: Duration) -> bool {
        self.tx = None;
        let until = Instant::now() + deadline;
        let mut exited = 0;
        while exited < self.handles.len() {
            match self.done_rx.recv_deadline(until) {
                Ok(()) => exited += 1,
                Err(_) => break,
            }
        }
        let all = exited == self.handles.len();
        if all {
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        } else {
            log::warn!(
                "{} of {} workers still busy after {:?}; exiting without them",
                self.handles.len() - exited,
                self.handles.len(),
                deadline
            );
        }
        all
    }
}

// === impl Submitter ===

impl<J> Submitter<J> {
    /// Queues `job`, or hands it back if the queue is full.
    pub fn try_submit(&self, job: J) -> Result<(), J> {
        match self.try_reserve() {
            Some(slot) => slot.submit(job),
            None => Err(job),
        }
    }

    /// Takes a place in the queue, or `None` if it is full. Take it before
    /// doing anything with side effects (a reactor: before admission
    /// remembers the nonce), then submit through it.
    pub fn try_reserve(&self) -> Option<Slot<J>> {
        let c = &self.counts;
        c.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < c.queue).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            tx: self.tx.clone(),
            counts: self.counts.clone(),
            used: false,
        })
    }

    /// Whether the queue is full now (every place queued or reserved).
    pub fn is_full(&self) -> bool {
        self.counts.taken.load(Ordering::Acquire) >= self.counts.queue
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Jobs being run right now.
    pub fn running(&self) -> usize {
        self.counts.busy.load(Ordering::Relaxed)
    }
}

// === impl Slot ===

impl<J> Slot<J> {
    /// Queues `job` in the place taken. Hands it back only when the pool
    /// is shutting down.
    pub fn submit(mut self, job: J) -> Result<(), J> {
        match self.tx.try_send(job) {
            Ok(()) => {
                // The worker that takes it gives the place back.
                self.used = true;
                Ok(())
            }
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => Err(j),
        }
    }
}

impl<J> Drop for Slot<J> {
    fn drop(&mut self) {
        if !self.used {
            self.counts.taken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    #[test]
    fn runs_jobs_on_named_threads() {
        let (tx, rx) = unbounded();
        let pool = WorkerPool::new("w", 2, 8, move |n: u32| {
            let name = std::thread::current().name().unwrap().to_string();
            tx.send((n, name)).unwrap();
        });
        for n in 0..10 {
            while pool.try_submit(n).is_err() {
                std::thread::yield_now();
            }
        }
        let mut got: Vec<_> = (0..10)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|g| g.1 == "w-0" || g.1 == "w-1"));
        assert!(pool.shutdown(Duration::from_secs(5)));
    }

    #[test]
    fn a_full_queue_hands_the_job_back() {
        let (gate_tx, gate_rx) = bounded::<()>(0);
        let (started_tx, started_rx) = bounded::<()>(1);
        let pool = WorkerPool::new("w", 1, 1, move |_: u32| {
            let _ = started_tx.send(());
            let _ = gate_rx.recv();
        });
        pool.try_submit(1).unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        pool.try_submit(2).unwrap(); // fills the queue of one
        assert_eq!(pool.try_submit(3), Err(3));
        gate_tx.send(()).unwrap();
        gate_tx.send(()).unwrap();
        assert!(pool.shutdown(Duration::from_secs(5)));
    }

    #[test]
    fn a_reserved_place_is_never_refused_with_many_submitters() {
        let (gate_tx, gate_rx) = bounded::<()>(0);
        let (started_tx, started_rx) = bounded::<()>(1);
        let pool = WorkerPool::new("w", 1, 8, move |_: u32| {
            let _ = started_tx.try_send(());
            let _ = gate_rx.recv();
        });
        // The worker holds one job, so the queue's 8 places are free.
        pool.try_submit(0).unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let reserved = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let submitter = pool.submitter();
                let reserved = reserved.clone();
                std::thread::spawn(move || {
                    for n in 0..50 {
                        if let Some(slot) = submitter.try_reserve() {
                            reserved.fetch_add(1, Ordering::Relaxed);
                            std::thread::yield_now();
                            assert!(slot.submit(t * 100 + n).is_ok(), "a reserved place refused");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(reserved.load(Ordering::Relaxed), 8);
        assert!(pool.submitter().is_full());
        // A place reserved and dropped is given back.
        drop(gate_tx);
        let s = pool.submitter();
        // Once the worker has taken every job, nothing holds a place.
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.counts.taken.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "the queue never drained");
            std::thread::yield_now();
        }
        drop(s.try_reserve().unwrap());
        assert_eq!(s.counts.taken.load(Ordering::Acquire), 0);
        drop(s);
        assert!(pool.shutdown(Duration::from_secs(5)));
    }

    #[test]
    fn a_panicking_job_does_not_kill_its_worker() {
        let (tx, rx) = unbounded();
        let pool = WorkerPool::new("w", 1, 4, move |n: u32| {
            if n == 0 {
                panic!("job 0 fails on purpose");
            }
            tx.send(n).unwrap();
        });
        pool.try_submit(0).unwrap();
        pool.try_submit(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert!(pool.shutdown(Duration::from_secs(5)));
    }

    #[test]
    fn shutdown_gives_up_after_its_deadline() {
        let (gate_tx, gate_rx) = bounded::<()>(0);
        let (started_tx, started_rx) = bounded::<()>(1);
        let pool = WorkerPool::new("w", 1, 1, move |_: u32| {
            let _ = started_tx.send(());
            let _ = gate_rx.recv();
        });
        pool.try_submit(1).unwrap();
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!pool.shutdown(Duration::from_millis(50)));
        drop(gate_tx);
    }
}
