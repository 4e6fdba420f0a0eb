//! The task service from Rust: submit payloads in batches, follow a job,
//! and work tasks with an in-process handler ([`work`]); the `client job`
//! and `client worker` commands are built on these.
//!
//! ```no_run
//! use dsf_client::{ClientConfig, tasks};
//! let cfg = ClientConfig::new(vec!["127.0.0.1:6300".into()], "cli", b"secret".to_vec());
//! let mut c = dsf_client::Client::new(cfg.clone())?;
//! let payloads = vec![r#"{"n":1}"#.to_string(), r#"{"n":2}"#.to_string()];
//! let job = tasks::submit(&mut c, &tasks::Submit::new(&payloads), |_| {})?;
//! let stop = std::sync::atomic::AtomicBool::new(false);
//! tasks::work(&cfg, &tasks::WorkerOptions::new("w1"), &stop, |payload| Ok(payload.to_string()))?;
//! # Ok::<(), dsf_client::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dsf_proto::task::{self as msg, Claimed, JobStatus, Lease, NewTask, Progress, SUBMIT_MAX};
use serde_json::value::RawValue;

use crate::client::{Client, ClientConfig};
use crate::error::{Error, Result};
use crate::stream::StreamItem;

/// A submit: payloads (JSON text each) and the job's settings.
#[derive(Debug, Clone)]
pub struct Submit<'a> {
    pub payloads: &'a [String],
    pub name: Option<String>,
    pub max_attempts: Option<u32>,
    pub priority: Option<i32>,
    /// Task `i`'s key is `KEY:i`: submitting the same payloads with the
    /// same key again adds nothing.
    pub key: Option<String>,
    /// Add to this job instead of a new one.
    pub job: Option<u64>,
}

impl<'a> Submit<'a> {
    pub fn new(payloads: &'a [String]) -> Submit<'a> {
        Submit {
            payloads,
            name: None,
            max_attempts: None,
            priority: None,
            key: None,
            job: None,
        }
    }
}

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub job: u64,
    /// Tasks added (a key the job held already is not).
    pub accepted: u64,
}

/// Submits every payload, [`SUBMIT_MAX`] a call (each call runs once: a
/// resend after a lost reply adds nothing); `progress` hears how many are
/// sent after each batch.
pub fn submit(
    c: &mut Client,
    s: &Submit<'_>,
    mut progress: impl FnMut(usize),
) -> Result<Submitted> {
    if s.payloads.is_empty() {
        return Err(Error::Config("nothing to submit: no payloads".into()));
    }
    let mut job = s.job;
    let mut accepted = 0;
    let mut sent = 0;
    for (batch_no, batch) in s.payloads.chunks(SUBMIT_MAX).enumerate() {
        let tasks = batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let payload = RawValue::from_string(p.clone()).map_err(|e| {
                    Error::Config(format!(
                        "payload {} is not JSON: {e}",
                        batch_no * SUBMIT_MAX + i + 1
                    ))
                })?;
                Ok(NewTask {
                    payload,
                    key: s
                        .key
                        .as_ref()
                        .map(|k| format!("{k}:{}", batch_no * SUBMIT_MAX + i)),
                    priority: s.priority,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let body = msg::SubmitBody {
            job,
            name: if job.is_none() { s.name.clone() } else { None },
            tasks,
            max_attempts: if job.is_none() { s.max_attempts } else { None },
        };
        let r = c.send::<msg::Submit>(&body)?;
        job = Some(r.job);
        accepted += r.accepted;
        sent += batch.len();
        progress(sent);
    }
    Ok(Submitted {
        job: job.expect("one batch at least"),
        accepted,
    })
}

/// A job's counts.
pub fn status(c: &mut Client, job: u64) -> Result<JobStatus> {
    c.send::<msg::Status>(&msg::JobRef { job })
}

/// Follows job `job` to its end from whichever node the balancer names
/// (another one if that node goes away): `on_progress` hears each change
/// of the counts; returns the final status.
pub fn watch(
    c: &mut Client,
    job: u64,
    mut on_progress: impl FnMut(&Progress),
) -> Result<JobStatus> {
    // A job submitted under a session is its user's: watched under it too
    // (the stream takes the client's token).
    for item in c.stream::<msg::Watch>(&msg::JobRef { job })? {
        match item? {
            StreamItem::Event(p) => on_progress(&p),
            StreamItem::Done(status) => return Ok(status),
        }
    }
    Err(Error::BadReply {
        server: "server".into(),
        reason: "job.watch ended without its final status".into(),
    })
}

/// How a worker works.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Routes its claims (the balancer's key) and names it in logs.
    pub id: String,
    /// Tasks run at once (one thread each).
    pub concurrency: usize,
    pub lease: Duration,
    /// Stop after claiming this many tasks, all threads together: each is
    /// run and reported (done, failed or refused) before `work` returns. A
    /// thread's last claim asks for fewer than `batch` when fewer are left.
    pub max_tasks: Option<u64>,
    /// Tasks each thread claims at once, runs one after the other, and
    /// reports together (`task.finish`, one transaction): a quick
    /// handler's throughput. While one runs, the leases of the whole batch
    /// are extended.
    pub batch: u32,
}

impl WorkerOptions {
    pub fn new(id: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            id: id.into(),
            concurrency: 1,
            lease: Duration::from_secs(30),
            max_tasks: None,
            batch: 1,
        }
    }
}

/// What a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkReport {
    pub done: u64,
    pub failed: u64,
    /// Completions refused: the lease had been lost (another worker took
    /// the task), so this run's result was not kept.
    pub refused: u64,
}

/// Claims and runs tasks until `stop` is set (tasks held are finished
/// first): `handler` gets the payload and returns the result (JSON text)
/// or an error message (a result that is not JSON is a failed attempt
/// that says so). Each of `concurrency` threads has its own connection;
/// while a handler runs, the leases of its batch are extended every third
/// of the lease, and once all have run the batch's outcomes ride on the
/// thread's next `task.claim` (kept in the same transaction as that
/// claim), or go in a `task.finish` of their own when they are too large
/// for one frame and when the thread stops.
pub fn work<F>(
    cfg: &ClientConfig,
    opts: &WorkerOptions,
    stop: &AtomicBool,
    handler: F,
) -> Result<WorkReport>
where
    F: Fn(&RawValue) -> std::result::Result<String, String> + Sync,
{
    if opts.concurrency == 0 {
        return Err(Error::Config("--concurrency must be at least 1".into()));
    }
    let lease_ms = opts.lease.as_millis() as u64;
    if !(msg::LEASE_MIN_MS..=msg::LEASE_MAX_MS).contains(&lease_ms) {
        return Err(Error::Config("--lease: 1s to 1h".into()));
    }
    let slots = Slots {
        max: opts.max_tasks,
        taken: AtomicU64::new(0),
    };
    let (done, failed, refused) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    // Set by a thread that met an error the others would meet too.
    let halt = AtomicBool::new(false);
    // A claim waits for work up to this long, within the request timeout.
    let wait_ms = cfg
        .request_timeout
        .saturating_sub(Duration::from_secs(2))
        .min(Duration::from_millis(msg::WAIT_MAX_MS))
        .as_millis() as u64;
    // One worker thread: claims, runs, reports; its leases extended by
    // the heartbeat thread beside it (`beat`) while a batch runs.
    let work_thread = |client: &Mutex<Client>, beat: &Beat| -> Result<()> {
        let tally = Tally {
            done: &done,
            failed: &failed,
            refused: &refused,
            worker: &opts.id,
        };
        // The last batch's outcomes ride on the next claim (one
        // transaction for both) when they fit in a frame; they
        // are reported on their own otherwise, and before the
        // thread stops. A server that takes none with a claim
        // (older than this SDK) turns it off for the thread.
        let mut carry: Vec<msg::Outcome> = Vec::new();
        let mut carrying = true;
        let budget = lock(client).config().max_frame / 2;
        let outcome = loop {
            if stop.load(Ordering::Acquire) || halt.load(Ordering::Acquire) {
                break Ok(());
            }
            // The tasks this claim may take: the batch, or
            // fewer when `max_tasks` is nearly reached.
            let n = match slots.take(opts.batch.clamp(1, msg::CLAIM_MAX)) {
                0 => break Ok(()),
                n => n,
            };
            let mut body = msg::ClaimBody {
                n,
                lease_ms,
                wait_ms: Some(wait_ms),
                finish: std::mem::take(&mut carry),
            };
            // The client is free again before what follows uses it.
            let sent = lock(client).send::<msg::Claim>(&body);
            let claimed = match sent {
                Ok(r) => match (&r.finished, body.finish.is_empty()) {
                    (Some(f), false) => {
                        tally.count(&body.finish, f);
                        r.tasks
                    }
                    // Carried, and not said kept: a server that
                    // ignores the field. They go on their own.
                    (None, false) => {
                        carrying = false;
                        if let Err(e) =
                            report(&mut lock(client), std::mem::take(&mut body.finish), &tally)
                        {
                            break Err(e);
                        }
                        r.tasks
                    }
                    (_, true) => r.tasks,
                },
                Err(e) if !body.finish.is_empty() && refuses_carried(&e) => {
                    // Outcomes this server takes only on their
                    // own (older than this SDK), that it
                    // refuses, or that this key may not send in
                    // a claim: `task.finish` tells which.
                    // Nothing was claimed.
                    carrying = false;
                    slots.give_back(n);
                    match report(&mut lock(client), std::mem::take(&mut body.finish), &tally) {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
                Err(e) => {
                    // The cluster may be failing over: the
                    // worker waits and claims again, carrying
                    // the same outcomes (their fences make a
                    // second report harmless: one already kept
                    // is refused, not kept twice).
                    log::warn!("worker {}: claim failed: {e}; retrying in 1 s", opts.id);
                    carry = std::mem::take(&mut body.finish);
                    slots.give_back(n);
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            // Those that did not come (none within the wait,
            // or fewer than asked) are free again.
            slots.give_back(n - claimed.len() as u32);
            if claimed.is_empty() {
                continue;
            }
            // The batch's tasks run one after the other, and
            // their outcomes are reported together, in one
            // transaction; until then every lease of the batch
            // is extended with the running task's.
            let leases: Vec<Lease> = claimed
                .iter()
                .map(|t| Lease {
                    task: t.task,
                    fence: t.fence,
                })
                .collect();
            // Extended when a third of the lease has passed
            // since the claim or the last extension, whichever
            // task of the batch is running then.
            beat.running(leases);
            let outcomes: Vec<msg::Outcome> =
                claimed.iter().map(|task| run_one(task, &handler)).collect();
            beat.idle();
            if carrying && outcomes.iter().map(outcome_size).sum::<usize>() <= budget {
                carry = outcomes;
                continue;
            }
            // Reported in parts that fit a frame (results are
            // up to 256 KiB each).
            if let Err(e) = report_in_parts(&mut lock(client), outcomes, budget, &tally) {
                break Err(e);
            }
        };
        // What the last claim would have carried.
        let outcome =
            outcome.and_then(|()| report_in_parts(&mut lock(client), carry, budget, &tally));
        if outcome.is_err() {
            // Malformed would be refused again each time:
            // every thread stops, and says why.
            halt.store(true, Ordering::Release);
        }
        outcome
    };
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..opts.concurrency)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut cfg = cfg.clone();
                    cfg.routing_key = Some(opts.id.clone());
                    let client = Mutex::new(Client::new(cfg)?);
                    let beat = Beat::default();
                    std::thread::scope(|hs| {
                        hs.spawn(|| beat.extend_while_running(&client, lease_ms));
                        // Over however the worker thread ends, a panic
                        // included: the scope waits for the heartbeat
                        // thread before it lets a panic go on.
                        let _over = Over(&beat);
                        work_thread(&client, &beat)
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a worker thread panicked")?;
        }
        Ok::<(), Error>(())
    })?;
    Ok(WorkReport {
        done: done.into_inner(),
        failed: failed.into_inner(),
        refused: refused.into_inner(),
    })
}

/// `client`, whichever thread used it last (a panic while it was held
/// leaves a client as usable as before).
fn lock(client: &Mutex<Client>) -> MutexGuard<'_, Client> {
    client.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a worker thread tells the thread beside it that extends the
/// leases of its batch: the handler runs on the worker thread itself, so
/// a task costs no thread of its own.
#[derive(Default)]
struct Beat {
    state: Mutex<Beating>,
    wake: Condvar,
}

#[derive(Default)]
struct Beating {
    /// The leases of the batch running now, and when they were extended
    /// last (or claimed).
    batch: Option<(Vec<Lease>, Instant)>,
    /// The worker thread has stopped.
    over: bool,
}

/// Ends a [`Beat`] when dropped.
struct Over<'a>(&'a Beat);

impl Drop for Over<'_> {
    fn drop(&mut self) {
        self.0.over();
    }
}

impl Beat {
    fn set(&self, f: impl FnOnce(&mut Beating)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.wake.notify_one();
    }

    /// A batch holding `leases` starts running.
    fn running(&self, leases: Vec<Lease>) {
        self.set(|b| b.batch = Some((leases, Instant::now())));
    }

    /// The batch has run. Waits for an extension in flight, so that none
    /// goes out after the batch is reported.
    fn idle(&self) {
        self.set(|b| b.batch = None);
    }

    fn over(&self) {
        self.set(|b| b.over = true);
    }

    /// Extends the running batch's leases whenever a third of the lease
    /// has passed since they were claimed or last extended, until
    /// [`Beat::over`]. Holds the state while it extends, so the worker
    /// thread's next step waits for the extension to be answered.
    fn extend_while_running(&self, client: &Mutex<Client>, lease_ms: u64) {
        let every = Duration::from_millis(lease_ms / 3);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if st.over {
                return;
            }
            let Some((held, extended)) = st.batch.as_mut() else {
                st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let due = *extended + every;
            let now = Instant::now();
            if now < due {
                st = self
                    .wake
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            let body = msg::HeartbeatBody {
                leases: held.clone(),
                lease_ms,
            };
            // A failed extension loses no result: the fence decides when
            // it is reported.
            match lock(client).send::<msg::Heartbeat>(&body) {
                Ok(ext) => {
                    for t in ext.lost {
                        log::warn!(
                            "task {t}: lease lost (another worker may take it); its result will be refused"
                        );
                    }
                }
                Err(e) => log::warn!(
                    "extending the leases of tasks {:?} failed: {e}",
                    body.leases.iter().map(|l| l.task).collect::<Vec<_>>()
                ),
            }
            *extended = Instant::now();
        }
    }
}

/// The tasks a worker's threads may still claim under `max_tasks`, counted
/// by the tasks claimed (a claim of a batch takes as many as it asks for
/// and gives back those it did not get).
struct Slots {
    max: Option<u64>,
    taken: AtomicU64,
}

impl Slots {
    /// Takes up to `want` slots, and says how many it took: `want` without
    /// a maximum, 0 once every slot is taken.
    fn take(&self, want: u32) -> u32 {
        let Some(max) = self.max else { return want };
        match self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < max).then(|| t + (max - t).min(u64::from(want)))
            }) {
            Ok(before) => (max - before).min(u64::from(want)) as u32,
            Err(_) => 0,
        }
    }

    /// Frees `n` slots taken for tasks that were not claimed.
    fn give_back(&self, n: u32) {
        if self.max.is_some() && n > 0 {
            self.taken.fetch_sub(u64::from(n), Ordering::AcqRel);
        }
    }
}

/// Whether a claim's error refuses the outcomes it carried (a server older
/// than this SDK, outcomes it will not take, a key without `task.finish`),
/// rather than the claim failing on its way.
fn refuses_carried(e: &Error) -> bool {
    matches!(
        e.code(),
        Some(dsf_common::ErrorCode::BadRequest | dsf_common::ErrorCode::Forbidden)
    )
}

/// About how many bytes `o` takes in a `task.finish` frame.
fn outcome_size(o: &msg::Outcome) -> usize {
    o.result.as_ref().map_or(0, |r| r.get().len()) + o.error.as_ref().map_or(0, String::len) + 96
}

/// Where a worker's threads count what became of their tasks.
struct Tally<'a> {
    done: &'a AtomicU64,
    failed: &'a AtomicU64,
    refused: &'a AtomicU64,
    worker: &'a str,
}

impl Tally<'_> {
    /// Counts `sent` by the server's answer `f`: refused (the lease was
    /// lost), failed attempts kept, and done.
    fn count(&self, sent: &[msg::Outcome], f: &msg::Finished) {
        for r in &f.refused {
            log::warn!("task {}: {}", r.task, r.message);
        }
        let lost = |t: u64| f.refused.iter().any(|r| r.task == t);
        let kept_failed = sent
            .iter()
            .filter(|o| o.error.is_some() && !lost(o.task))
            .count() as u64;
        let kept_refused = f.refused.len() as u64;
        self.refused.fetch_add(kept_refused, Ordering::Relaxed);
        self.failed.fetch_add(kept_failed, Ordering::Relaxed);
        self.done.fetch_add(
            sent.len() as u64 - kept_refused - kept_failed,
            Ordering::Relaxed,
        );
    }

    /// Says that `n` tasks ran but their outcomes did not get through.
    fn lost(&self, n: usize, e: &Error) {
        if n > 0 {
            log::warn!(
                "worker {}: {n} tasks were run but could not be reported: {e}; they will be retried after their lease",
                self.worker
            );
        }
    }
}

/// Reports `outcomes` in `task.finish`es of at most about `budget` bytes.
fn report_in_parts(
    c: &mut Client,
    outcomes: Vec<msg::Outcome>,
    budget: usize,
    tally: &Tally<'_>,
) -> Result<()> {
    let mut rest = outcomes.into_iter().peekable();
    while rest.peek().is_some() {
        let mut part = Vec::new();
        let mut size = 0;
        while let Some(o) = rest.next_if(|o| part.is_empty() || size + outcome_size(o) <= budget) {
            size += outcome_size(&o);
            part.push(o);
        }
        report(c, part, tally)?;
    }
    Ok(())
}

/// Sends `part` in one `task.finish` and counts what was kept and refused.
/// A refusal as malformed is returned (it would come again); any other
/// failure is logged, and those tasks are retried after their lease.
fn report(c: &mut Client, part: Vec<msg::Outcome>, tally: &Tally<'_>) -> Result<()> {
    let body = msg::FinishBody { outcomes: part };
    match c.send::<msg::Finish>(&body) {
        Ok(f) => {
            tally.count(&body.outcomes, &f);
            Ok(())
        }
        Err(e) if e.code() == Some(dsf_common::ErrorCode::BadRequest) => Err(e),
        Err(e) => {
            tally.lost(body.outcomes.len(), &e);
            Ok(())
        }
    }
}

/// Runs one claimed task on this thread (a panic in its handler is a
/// failed attempt that says so). Its outcome, to report.
fn run_one<F>(task: &Claimed, handler: &F) -> msg::Outcome
where
    F: Fn(&RawValue) -> std::result::Result<String, String> + Sync,
{
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&task.payload)))
        .unwrap_or_else(|_| Err("the handler panicked".to_string()));
    let (result, error) = match result {
        Ok(json) if json.len() > msg::RESULT_MAX => (
            None,
            Some(format!(
                "the handler's result is {} bytes; at most {} are kept",
                json.len(),
                msg::RESULT_MAX
            )),
        ),
        Ok(json) => match RawValue::from_string(json) {
            Ok(r) => (Some(r), None),
            // A failed attempt that says why, rather than a result lost.
            Err(e) => (None, Some(format!("the handler's result is not JSON: {e}"))),
        },
        Err(mut error) => {
            if error.len() > msg::ERROR_MAX {
                let mut end = msg::ERROR_MAX;
                while !error.is_char_boundary(end) {
                    end -= 1;
                }
                error.truncate(end);
            }
            (None, Some(error))
        }
    };
    msg::Outcome {
        task: task.task,
        fence: task.fence,
        result,
        error,
    }
}
