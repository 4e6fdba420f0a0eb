//! A fixed pool of named worker threads over a bounded crossbeam channel.
//!
//! Submission never blocks: [`WorkerPool::try_submit`] hands the job back
//! when the queue is full, so the reactor can stop reading from that
//! connection (backpressure) instead of queueing without bound. A job that
//! panics is logged and the worker goes on with the next one.

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
    busy: Arc<AtomicUsize>,
}

/// A cheap handle for submitting jobs, clonable to other threads.
pub struct Submitter<J> {
    tx: Sender<J>,
    busy: Arc<AtomicUsize>,
}

impl<J> Clone for Submitter<J> {
    fn clone(&self) -> Self {
        Submitter {
            tx: self.tx.clone(),
            busy: self.busy.clone(),
        }
    }
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
        let busy = Arc::new(AtomicUsize::new(0));
        let handles = (0..workers.max(1))
            .map(|i| {
                let rx = rx.clone();
                let handler = handler.clone();
                let done_tx = done_tx.clone();
                let busy = busy.clone();
                let thread_name = format!("{name}-{i}");
                std::thread::Builder::new()
                    .name(thread_name.clone())
                    .spawn(move || {
                        for job in rx.iter() {
                            busy.fetch_add(1, Ordering::Relaxed);
                            let outcome = catch_unwind(AssertUnwindSafe(|| handler(job)));
                            busy.fetch_sub(1, Ordering::Relaxed);
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
            busy,
        }
    }

    /// A handle for submitting from other places.
    pub fn submitter(&self) -> Submitter<J> {
        Submitter {
            tx: self.tx.clone().expect("pool is running"),
            busy: self.busy.clone(),
        }
    }

    /// Queues `job`, or hands it back if the queue is full.
    pub fn try_submit(&self, job: J) -> Result<(), J> {
        match &self.tx {
            Some(tx) => try_send(tx, job),
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
        try_send(&self.tx, job)
    }

    /// Whether the queue is full now. With a single submitting thread (the
    /// reactor) a `false` stays true until that thread submits, since
    /// workers only ever take from the queue: check it before doing
    /// anything with side effects, then submit.
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Jobs being run right now.
    pub fn running(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }
}

fn try_send<J>(tx: &Sender<J>, job: J) -> Result<(), J> {
    tx.try_send(job).map_err(|e| match e {
        TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
    })
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
