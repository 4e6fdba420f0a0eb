//! The task service's tables (migration 0003): jobs of tasks, claimed by
//! workers on any app server, one lease per task at a time.
//!
//! - A task that can be claimed now has a row in `ready_tasks`; a claim
//!   takes rows with `SELECT … FOR UPDATE SKIP LOCKED` in priority and id
//!   order, so claimers on every node skip each other's rows instead of
//!   queueing on them, and moves them to `claimed_tasks` with a lease and a
//!   fence (the task's attempt number). The claim writes nothing else: the
//!   task's row (`tasks.state`, `attempts`, `started_at`) takes the attempt
//!   when it ends (done, failed, expired or cancelled), and a reader sees a
//!   task with a lease as running its lease's attempt ([`Tasks::results`]).
//! - `task.complete` / `task.fail` must name the current fence: a worker
//!   that stalled past its lease, whose task another worker took, is
//!   refused (`conflict`) and cannot overwrite the other's result.
//! - A failed attempt, or a lease that expired ([`Tasks::reap`]), waits in
//!   `scheduled_tasks` for its backoff (0.5 s, doubling, at most 5 min), then
//!   is ready again; after `max_attempts` the task is dead with its last
//!   error.
//! - Finished counts are sharded in `job_counts` (16 rows a job), so
//!   completions do not queue on one row; running is counted from
//!   `claimed_tasks`, and ready follows from the others ([`Tasks::status`]).
//!
//! Every time is the database clock's (`NOW(3)`).

use mysql::prelude::Queryable;
use mysql::PooledConn;

use crate::db::Db;
use crate::error::{Error, Result};

pub use dsf_proto::task::{Claimed, JobStatus, TaskResult, CLAIM_MAX, SUBMIT_MAX};

/// Shards of a job's finished counts.
const SHARDS: u64 = 16;
/// First retry's backoff, doubled per attempt.
const BACKOFF_BASE_MS: u64 = 500;
/// Longest backoff.
const BACKOFF_MAX_MS: u64 = 300_000;
/// Most attempts a job may give its tasks.
pub const MAX_ATTEMPTS_MAX: u32 = 100;

/// Who is asking: the app, the user when a session was given, and whether
/// that user may see every app's jobs (an operator).
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub app: &'a str,
    pub user: Option<u64>,
    pub operator: bool,
}

/// A task to submit: its payload as JSON text.
#[derive(Debug, Clone, Copy)]
pub struct NewTask<'a> {
    pub payload: &'a str,
    pub key: Option<&'a str>,
    pub priority: i32,
}

/// What [`Tasks::reap`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Leases that had expired: their tasks wait for a retry, or are dead.
    pub expired: u64,
    /// Waiting tasks whose backoff was over: ready again.
    pub promoted: u64,
}

/// One job as [`Tasks::recent`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobSummary {
    pub app: String,
    pub name: Option<String>,
    pub created_at_ms: i64,
    #[serde(flatten)]
    pub status: JobStatus,
}

/// The task repository; get one with [`Db::tasks`].
#[derive(Debug, Clone, Copy)]
pub struct Tasks<'a> {
    db: &'a Db,
}

fn sql(op: &'static str) -> impl Fn(mysql::Error) -> Error {
    move |e| Error::from_mysql(op, e)
}

/// A retry's backoff after `attempts` attempts.
pub fn backoff_ms(attempts: u32) -> u64 {
    BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(BACKOFF_MAX_MS)
}

// === impl Tasks ===

impl<'a> Tasks<'a> {
    pub(crate) fn new(db: &'a Db) -> Tasks<'a> {
        Tasks { db }
    }

    /// Adds `tasks` to job `job` (the owner's, not cancelled), or to a new
    /// job; returns the job and how many were added. A key is unique per
    /// app: a task whose key the app holds already is not added again, and
    /// a new-job submit whose every key is held answers with the job that
    /// holds them (the same submit, run again).
    pub fn submit(
        &self,
        owner: &Owner<'_>,
        job: Option<u64>,
        name: Option<&str>,
        tasks: &[NewTask<'_>],
        max_attempts: u32,
    ) -> Result<(u64, u64)> {
        const OP: &str = "tasks.submit";
        if tasks.is_empty() || tasks.len() > SUBMIT_MAX {
            return Err(Error::Invalid {
                field: "tasks",
                rule: "1 to 1000 tasks a submit",
            });
        }
        if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_MAX {
            return Err(Error::Invalid {
                field: "max_attempts",
                rule: "1 to 100",
            });
        }
        if name.is_some_and(|n| n.is_empty() || n.chars().count() > 200) {
            return Err(Error::Invalid {
                field: "name",
                rule: "1 to 200 characters",
            });
        }
        for t in tasks {
            if t.key
                .is_some_and(|k| k.is_empty() || k.chars().count() > 200)
            {
                return Err(Error::Invalid {
                    field: "tasks[].key",
                    rule: "1 to 200 characters",
                });
            }
        }
        let q = sql(OP);
        self.db.with_tx(OP, |c| {
            let created = job.is_none();
            let (job, first_seq, attempts) = match job {
                Some(id) => {
                    let row: Option<(String, Option<u64>, bool, u32, u32)> = c
                        .exec_first(
                            "SELECT app, user_id, cancelled, next_seq, max_attempts FROM jobs WHERE id = ? FOR UPDATE",
                            (id,),
                        )
                        .map_err(&q)?;
                    let Some((app, user, cancelled, next_seq, attempts)) = row else {
                        return Err(no_job(id));
                    };
                    if !owner.may_see(&app, user) {
                        return Err(no_job(id));
                    }
                    if cancelled {
                        return Err(Error::Conflict {
                            op: OP,
                            message: format!("job {id} is cancelled; submit to a new job"),
                        });
                    }
                    (id, next_seq, attempts)
                }
                None => {
                    c.exec_drop(
                        "INSERT INTO jobs (app, user_id, name, max_attempts, created_at) VALUES (?, ?, ?, ?, NOW(3))",
                        (owner.app, owner.user, name, max_attempts),
                    )
                    .map_err(&q)?;
                    (c.last_insert_id(), 0, max_attempts)
                }
            };
            let mut accepted = 0u64;
            // Rows of 200 keep each statement well under max_allowed_packet
            // for 64 KiB payloads.
            for (chunk_no, chunk) in tasks.chunks(200).enumerate() {
                let base = first_seq as usize + chunk_no * 200;
                let mut stmt = String::from(
                    "INSERT IGNORE INTO tasks (job_id, app, seq, task_key, payload, priority, state, max_attempts, created_at) VALUES ",
                );
                let mut params: Vec<mysql::Value> = Vec::with_capacity(chunk.len() * 6);
                for (i, t) in chunk.iter().enumerate() {
                    if i > 0 {
                        stmt.push(',');
                    }
                    stmt.push_str("(?, ?, ?, ?, ?, ?, 'ready', ?, NOW(3))");
                    params.extend([
                        job.into(),
                        owner.app.into(),
                        ((base + i) as u64).into(),
                        t.key.into(),
                        t.payload.into(),
                        t.priority.into(),
                        attempts.into(),
                    ]);
                }
                c.exec_drop(stmt, params).map_err(&q)?;
                accepted += c.affected_rows();
            }
            if accepted == 0 && created {
                // Every key is held already: the submit ran before (a
                // script run again). Its job, not a new empty one.
                if let Some(key) = tasks[0].key {
                    let held: Option<u64> = c
                        .exec_first(
                            "SELECT job_id FROM tasks WHERE app = ? AND task_key = ?",
                            (owner.app, key),
                        )
                        .map_err(&q)?;
                    if let Some(old) = held {
                        c.exec_drop("DELETE FROM jobs WHERE id = ?", (job,)).map_err(&q)?;
                        return Ok((old, 0));
                    }
                }
            }
            let last_seq = first_seq as u64 + tasks.len() as u64;
            let ready = text(
                c,
                OP,
                "INSERT INTO ready_tasks (task_id, app, job_id, neg_priority) \
                 SELECT t.id, ?, t.job_id, -t.priority FROM tasks t \
                 WHERE t.job_id = ? AND t.seq >= ? AND t.seq < ?",
                vec![owner.app.into(), job.into(), first_seq.into(), last_seq.into()],
            )?;
            let counted = text(
                c,
                OP,
                "UPDATE jobs SET total = total + ?, next_seq = ? WHERE id = ?",
                vec![accepted.into(), last_seq.into(), job.into()],
            )?;
            // In a run-once write, with its record and COMMIT.
            crate::writes::stage_last(self.db.id(), c, vec![ready, counted]).map_err(&q)?;
            Ok((job, accepted))
        })
    }

    /// Leases up to `n` of the app's ready tasks to `worker` for
    /// `lease_ms`, highest priority first, then oldest.
    pub fn claim(&self, app: &str, worker: &str, n: u32, lease_ms: u64) -> Result<Vec<Claimed>> {
        const OP: &str = "tasks.claim";
        if n == 0 || n > CLAIM_MAX {
            return Err(Error::Invalid {
                field: "n",
                rule: "1 to 100 tasks a claim",
            });
        }
        check_lease(lease_ms)?;
        if worker.is_empty() || worker.chars().count() > 128 {
            return Err(Error::Invalid {
                field: "worker",
                rule: "1 to 128 characters",
            });
        }
        let q = sql(OP);
        // Each claim passes over the rows that claims before it deleted
        // and that are not purged yet: at REPEATABLE READ it would lock
        // every one of them. What it relies on is the lock of each row it
        // takes.
        self.db.with_tx_read_committed(OP, |c| {
            // The rows to take, locked, with what their leases need: the
            // attempt this claim makes is the one after those finished
            // (`tasks.attempts`, brought up to date when an attempt ends:
            // a claim does not write the task's row). Read in the ready
            // table's key order, that table first, each task by its key,
            // whatever the optimizer would choose: on small tables it
            // chose a join buffer and a sort, which locks every row read
            // before the limit, and concurrent claims skipped rows that no
            // claim took (a woken claim found nothing).
            let rows: Vec<(u64, u64, String, u32, i64)> = c
                .exec(
                    "SELECT r.task_id, t.job_id, t.payload, t.attempts + 1, \
                            CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED) \
                     FROM ready_tasks r FORCE INDEX (PRIMARY) \
                     STRAIGHT_JOIN tasks t FORCE INDEX (PRIMARY) ON t.id = r.task_id WHERE r.app = ? \
                     ORDER BY r.neg_priority, r.task_id LIMIT ? FOR UPDATE SKIP LOCKED",
                    (app, n),
                )
                .map_err(&q)?;
            let Some(&(.., now_ms)) = rows.first() else {
                return Ok(Vec::new());
            };
            // Out of the ready table and into leases, in one round trip:
            // the attempt is the fence.
            let ids: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
            let mut params: Vec<mysql::Value> = Vec::with_capacity(rows.len() * 6);
            for (task, job, _, attempt, _) in &rows {
                params.extend([
                    (*task).into(),
                    app.into(),
                    (*job).into(),
                    worker.into(),
                    (*attempt).into(),
                    (lease_ms * 1000).into(),
                ]);
            }
            let lease = text(
                c,
                OP,
                &format!(
                    "INSERT INTO claimed_tasks (task_id, app, job_id, worker, fence, lease_until, claimed_at) \
                     VALUES {}",
                    vec!["(?, ?, ?, ?, ?, NOW(3) + INTERVAL ? MICROSECOND, NOW(3))"; rows.len()]
                        .join(", ")
                ),
                params,
            )?;
            let unready = format!("DELETE FROM ready_tasks WHERE task_id IN ({})", ids.join(","));
            together(c, OP, &[unready, lease])?;
            // Each lease ends `lease_ms` after the read's clock, which is
            // at or before the insert's: the worker is told an end at or
            // before the stored one.
            rows.into_iter()
                .map(|(task, job, payload, attempt, _)| {
                    Ok(Claimed {
                        task,
                        job,
                        payload: raw(&payload, OP)?,
                        attempt,
                        fence: u64::from(attempt),
                        lease_until: now_ms + lease_ms as i64,
                    })
                })
                .collect()
        })
    }

    /// How many of `app`'s tasks are ready to claim now, counted up to
    /// `cap` (a cheap look, no lock).
    pub fn ready_count(&self, app: &str, cap: u32) -> Result<u32> {
        self.db.with_conn("tasks.ready_count", |c| {
            c.exec_first::<u32, _, _>(
                "SELECT COUNT(*) FROM (SELECT 1 FROM ready_tasks WHERE app = ? LIMIT ?) r",
                (app, cap),
            )
            .map(Option::unwrap_or_default)
        })
    }

    /// Whether `app` has a task ready to claim now (a cheap look, no lock).
    pub fn has_ready(&self, app: &str) -> Result<bool> {
        Ok(self.ready_count(app, 1)? > 0)
    }

    /// Extends the leases `(task, fence)` still held; returns the tasks
    /// extended and those lost (expired and taken, completed, cancelled).
    pub fn heartbeat(
        &self,
        app: &str,
        leases: &[(u64, u64)],
        lease_ms: u64,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        const OP: &str = "tasks.heartbeat";
        check_lease(lease_ms)?;
        if leases.len() > 1000 {
            return Err(Error::Invalid {
                field: "leases",
                rule: "at most 1000 a heartbeat",
            });
        }
        self.db.with_conn(OP, |c| {
            let (mut extended, mut lost) = (Vec::new(), Vec::new());
            for &(task, fence) in leases {
                c.exec_drop(
                    "UPDATE claimed_tasks SET lease_until = NOW(3) + INTERVAL ? MICROSECOND \
                     WHERE task_id = ? AND fence = ? AND app = ? AND lease_until >= NOW(3)",
                    (lease_ms * 1000, task, fence, app),
                )?;
                if c.affected_rows() == 1 {
                    extended.push(task);
                } else {
                    lost.push(task);
                }
            }
            Ok((extended, lost))
        })
    }

    /// Records task `task`'s result under `fence`; `conflict` when the
    /// fence is not the current lease's.
    pub fn complete(&self, app: &str, task: u64, fence: u64, result: &str) -> Result<()> {
        self.finish(app, task, fence, Ok(result))
    }

    /// Records a failed attempt under `fence`: the task waits for its
    /// retry, or is dead after its last attempt.
    pub fn fail(&self, app: &str, task: u64, fence: u64, error: &str) -> Result<()> {
        self.finish(app, task, fence, Err(error))
    }

    /// Records many outcomes in one transaction, each under its own fence
    /// (`Ok(result)`: done; `Err(error)`: a failed attempt). A task whose
    /// fence is not its current lease's, or that holds no lease, is
    /// refused alone: its message is at its index of the returned list,
    /// and the others are kept. Each task at most once.
    pub fn finish_many(
        &self,
        app: &str,
        batch: &[(u64, u64, std::result::Result<&str, &str>)],
    ) -> Result<Vec<Option<String>>> {
        const OP: &str = "tasks.finish";
        let q = sql(OP);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let marks = |n: usize| vec!["?"; n].join(",");
        self.db.with_tx(OP, |c| {
            // The done ones: their leases given up in one statement, in
            // key order, each only under its fence; what it returns is
            // what was held.
            let done: Vec<(u64, u64, &str)> = batch
                .iter()
                .filter_map(|&(task, fence, outcome)| outcome.ok().map(|r| (task, fence, r)))
                .collect();
            // Task → its job and when its lease began.
            let mut kept: std::collections::HashMap<u64, (u64, mysql::Value)> =
                std::collections::HashMap::new();
            if !done.is_empty() {
                let mut params: Vec<mysql::Value> = vec![app.into()];
                params.extend(done.iter().map(|d| mysql::Value::from(d.0)));
                for &(task, fence, _) in &done {
                    params.push(task.into());
                    params.push(fence.into());
                }
                let gone: Vec<(u64, u64, mysql::Value)> = c
                    .exec(
                        format!(
                            "DELETE FROM claimed_tasks WHERE app = ? AND task_id IN ({}) \
                             AND fence = CASE task_id {} END RETURNING task_id, job_id, claimed_at",
                            marks(done.len()),
                            vec!["WHEN ? THEN ?"; done.len()].join(" ")
                        ),
                        params,
                    )
                    .map_err(&q)?;
                kept.extend(gone.into_iter().map(|(task, job, at)| (task, (job, at))));
            }
            // The failed attempts: their rows locked in one statement, in
            // key order.
            let failed: Vec<u64> = batch
                .iter()
                .filter(|b| b.2.is_err())
                .map(|b| b.0)
                .collect();
            // Each lease's fence and app, of `ids`; locked if `lock`.
            let mut held: std::collections::HashMap<u64, (u64, String)> =
                std::collections::HashMap::new();
            let mut read_held = |c: &mut PooledConn, ids: Vec<u64>, lock: &str| {
                if ids.is_empty() {
                    return Ok(());
                }
                let rows: Vec<(u64, u64, String)> = c.exec(
                    format!(
                        "SELECT task_id, fence, app FROM claimed_tasks WHERE task_id IN ({}) {lock}",
                        marks(ids.len())
                    ),
                    ids,
                )?;
                held.extend(rows.into_iter().map(|(t, f, a)| (t, (f, a))));
                Ok::<_, mysql::Error>(())
            };
            read_held(c, failed, "ORDER BY task_id FOR UPDATE").map_err(&q)?;
            // A done one not given up: what holds it, said in its refusal.
            let missed: Vec<u64> = done
                .iter()
                .filter(|d| !kept.contains_key(&d.0))
                .map(|d| d.0)
                .collect();
            read_held(c, missed, "").map_err(&q)?;
            let refusals: Vec<Option<String>> = batch
                .iter()
                .map(|&(task, fence, outcome)| {
                    let holds = match outcome {
                        Ok(_) => kept.contains_key(&task),
                        Err(_) => held.get(&task).is_some_and(|(f, a)| *f == fence && a == app),
                    };
                    (!holds).then(|| match held.get(&task) {
                        Some((f, a)) if a == app => format!(
                            "task {task}: fence {fence} is not the current lease's ({f}); the lease expired and the task went to another worker"
                        ),
                        _ => format!(
                            "task {task} holds no lease under fence {fence} (it expired, or the task is finished or cancelled)"
                        ),
                    })
                })
                .collect();
            for (&(task, _, outcome), refusal) in batch.iter().zip(&refusals) {
                if let (Err(error), None) = (outcome, refusal) {
                    retry_or_bury(c, task, error).map_err(&q)?;
                }
            }
            let results: Vec<(u64, u64, &str)> = done
                .iter()
                .filter(|d| kept.contains_key(&d.0))
                .copied()
                .collect();
            if !results.is_empty() {
                // One statement for every result; the attempt (its fence)
                // and its start come to the task's row now, as its lease
                // ends.
                let mut params: Vec<mysql::Value> = Vec::with_capacity(results.len() * 7);
                for (task, _, result) in &results {
                    params.extend([(*task).into(), (*result).into()]);
                }
                for (task, fence, _) in &results {
                    params.extend([(*task).into(), (*fence).into()]);
                }
                for (task, _, _) in &results {
                    params.extend([(*task).into(), kept[task].1.clone()]);
                }
                params.extend(results.iter().map(|r| mysql::Value::from(r.0)));
                let cases = vec!["WHEN ? THEN ?"; results.len()].join(" ");
                let rows = text(
                    c,
                    OP,
                    &format!(
                        "UPDATE tasks SET state = 'done', finished_at = NOW(3), \
                         result = CASE id {cases} END, attempts = CASE id {cases} END, \
                         started_at = CASE id {cases} END WHERE id IN ({})",
                        marks(results.len())
                    ),
                    params,
                )?;
                // Counted by job, from the leases' rows.
                let mut jobs: std::collections::BTreeMap<u64, u64> =
                    std::collections::BTreeMap::new();
                for (job, _) in kept.values() {
                    *jobs.entry(*job).or_default() += 1;
                }
                let (sql, params) = counts(results[0].0, &jobs, "done");
                let counted = text(c, OP, &sql, params)?;
                // They need nothing back: in a run-once write they go
                // with its record and COMMIT.
                crate::writes::stage_last(self.db.id(), c, vec![rows, counted]).map_err(&q)?;
            }
            Ok(refusals.clone())
        })
    }

    /// [`Tasks::finish_many`] of one task, its refusal a `conflict`.
    fn finish(
        &self,
        app: &str,
        task: u64,
        fence: u64,
        outcome: std::result::Result<&str, &str>,
    ) -> Result<()> {
        match self
            .finish_many(app, &[(task, fence, outcome)])?
            .pop()
            .flatten()
        {
            None => Ok(()),
            Some(message) => Err(Error::Conflict {
                op: "tasks.finish",
                message,
            }),
        }
    }

    /// Returns expired leases' tasks to their retry (or buries them), and
    /// makes waiting tasks whose backoff is over ready; at most `limit` of
    /// each. Safe on every app server at once (rows are taken with SKIP
    /// LOCKED).
    pub fn reap(&self, limit: u32) -> Result<Reaped> {
        const OP: &str = "tasks.reap";
        let q = sql(OP);
        let expired = self.db.with_tx(OP, |c| {
            let ids: Vec<u64> = c
                .exec(
                    "SELECT task_id FROM claimed_tasks WHERE lease_until < NOW(3) \
                     ORDER BY lease_until LIMIT ? FOR UPDATE SKIP LOCKED",
                    (limit,),
                )
                .map_err(&q)?;
            for &task in &ids {
                retry_or_bury(c, task, "lease expired before the task was completed")
                    .map_err(&q)?;
            }
            Ok(ids.len() as u64)
        })?;
        let promoted = self.db.with_tx(OP, |c| {
            let ids: Vec<u64> = c
                .exec(
                    "SELECT task_id FROM scheduled_tasks WHERE available_at <= NOW(3) \
                     ORDER BY available_at LIMIT ? FOR UPDATE SKIP LOCKED",
                    (limit,),
                )
                .map_err(&q)?;
            if ids.is_empty() {
                return Ok(0);
            }
            let list = placeholders(ids.len());
            c.exec_drop(
                format!(
                    "INSERT INTO ready_tasks (task_id, app, job_id, neg_priority) \
                     SELECT task_id, app, job_id, neg_priority FROM scheduled_tasks WHERE task_id IN ({list})"
                ),
                &ids,
            )
            .map_err(&q)?;
            c.exec_drop(format!("DELETE FROM scheduled_tasks WHERE task_id IN ({list})"), &ids)
                .map_err(&q)?;
            c.exec_drop(format!("UPDATE tasks SET state = 'ready' WHERE id IN ({list})"), &ids)
                .map_err(&q)?;
            Ok(ids.len() as u64)
        })?;
        Ok(Reaped { expired, promoted })
    }

    /// Job `job`'s counts, if the owner may see it.
    ///
    /// Finished counts come from the 16 shards, running from the claimed
    /// table (at most the workers' claims); ready (waiting retries
    /// included) follows, since every task is done, dead, running, ready or
    /// waiting. No count walks the job's ready tasks, so watching a job of
    /// a million tasks costs what watching one of ten does.
    pub fn status(&self, owner: &Owner<'_>, job: u64) -> Result<JobStatus> {
        const OP: &str = "tasks.status";
        type Found = ((String, Option<u64>, bool, u64), (u64, u64, u64, u64));
        let found: Option<Found> = self.db.with_conn(OP, |c| {
            let row: Option<(String, Option<u64>, bool, u64)> = c.exec_first(
                "SELECT app, user_id, cancelled, total FROM jobs WHERE id = ?",
                (job,),
            )?;
            let counts: Option<(u64, u64, u64, u64)> = c.exec_first(
                "SELECT \
                   (SELECT COALESCE(SUM(done), 0) FROM job_counts WHERE job_id = ?), \
                   (SELECT COALESCE(SUM(failed), 0) FROM job_counts WHERE job_id = ?), \
                   (SELECT COALESCE(SUM(dead), 0) FROM job_counts WHERE job_id = ?), \
                   (SELECT COUNT(*) FROM claimed_tasks WHERE job_id = ?)",
                (job, job, job, job),
            )?;
            Ok(row.map(|r| (r, counts.unwrap_or_default())))
        })?;
        let Some(((app, user, cancelled, total), (done, failed, dead, running))) = found else {
            return Err(no_job(job));
        };
        if !owner.may_see(&app, user) {
            return Err(no_job(job));
        }
        Ok(job_status(
            job,
            cancelled,
            total,
            [done, failed, dead, running],
        ))
    }

    /// The newest `limit` jobs of every app, newest first, with their
    /// counts: the operators' dashboard, which no app key reaches. Three
    /// statements, whatever the number of jobs.
    pub fn recent(&self, limit: u32) -> Result<Vec<JobSummary>> {
        const OP: &str = "tasks.recent";
        self.db.with_conn(OP, |c| {
            let jobs: Vec<(u64, String, Option<String>, bool, u64, i64)> = c.exec(
                "SELECT id, app, name, cancelled, total, \
                        CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED) \
                 FROM jobs ORDER BY id DESC LIMIT ?",
                (limit,),
            )?;
            let (Some(newest), Some(oldest)) = (jobs.first(), jobs.last()) else {
                return Ok(Vec::new());
            };
            let range = (oldest.0, newest.0);
            let finished: Vec<(u64, u64, u64, u64)> = c.exec(
                "SELECT job_id, SUM(done), SUM(failed), SUM(dead) FROM job_counts \
                 WHERE job_id BETWEEN ? AND ? GROUP BY job_id",
                range,
            )?;
            let running: Vec<(u64, u64)> = c.exec(
                "SELECT job_id, COUNT(*) FROM claimed_tasks \
                 WHERE job_id BETWEEN ? AND ? GROUP BY job_id",
                range,
            )?;
            let finished: std::collections::HashMap<u64, (u64, u64, u64)> = finished
                .into_iter()
                .map(|(j, d, f, x)| (j, (d, f, x)))
                .collect();
            let running: std::collections::HashMap<u64, u64> = running.into_iter().collect();
            Ok(jobs
                .into_iter()
                .map(|(id, app, name, cancelled, total, created_at_ms)| {
                    let (done, failed, dead) = finished.get(&id).copied().unwrap_or_default();
                    let run = running.get(&id).copied().unwrap_or(0);
                    JobSummary {
                        app,
                        name,
                        created_at_ms,
                        status: job_status(id, cancelled, total, [done, failed, dead, run]),
                    }
                })
                .collect())
        })
    }

    /// A page of job `job`'s tasks in submit order, after seq `after`.
    pub fn results(
        &self,
        owner: &Owner<'_>,
        job: u64,
        after: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<TaskResult>, Option<u64>)> {
        const OP: &str = "tasks.results";
        self.check_owner(owner, job)?;
        let rows: Vec<ResultRow> = self.db.with_conn(OP, |c| {
            // A task holding a lease is running its lease's attempt (its
            // row has the attempts finished).
            c.exec(
                "SELECT t.id, t.seq, IF(c.task_id IS NULL, t.state, 'running'), \
                        COALESCE(c.fence, t.attempts), t.result, t.error \
                 FROM tasks t LEFT JOIN claimed_tasks c ON c.task_id = t.id \
                 WHERE t.job_id = ? AND t.seq > ? ORDER BY t.seq LIMIT ?",
                (job, after.map_or(-1i64, |a| a as i64), limit),
            )
        })?;
        let next = (rows.len() == limit as usize)
            .then(|| rows.last().map(|r| r.1))
            .flatten();
        let results = rows
            .into_iter()
            .map(|(task, seq, state, attempts, result, error)| {
                Ok(TaskResult {
                    task,
                    seq,
                    state,
                    attempts,
                    result: result.map(|r| raw(&r, OP)).transpose()?,
                    error,
                })
            })
            .collect::<Result<_>>()?;
        Ok((results, next))
    }

    /// Cancels job `job`: its ready and waiting tasks are dropped and its
    /// leases revoked (a completion under them is refused).
    pub fn cancel(&self, owner: &Owner<'_>, job: u64) -> Result<()> {
        const OP: &str = "tasks.cancel";
        let q = sql(OP);
        self.db.with_tx(OP, |c| {
            let row: Option<(String, Option<u64>)> = c
                .exec_first(
                    "SELECT app, user_id FROM jobs WHERE id = ? FOR UPDATE",
                    (job,),
                )
                .map_err(&q)?;
            match row {
                Some((app, user)) if owner.may_see(&app, user) => {}
                _ => return Err(no_job(job)),
            }
            // A task whose lease is revoked keeps that attempt (the
            // lease's fence), as a finished attempt would.
            c.exec_drop(
                "UPDATE tasks t LEFT JOIN claimed_tasks c ON c.task_id = t.id \
                 SET t.state = 'cancelled', t.finished_at = NOW(3), \
                     t.attempts = COALESCE(c.fence, t.attempts), \
                     t.started_at = COALESCE(c.claimed_at, t.started_at) \
                 WHERE t.job_id = ? AND t.state IN ('ready', 'running', 'waiting')",
                (job,),
            )
            .map_err(&q)?;
            for table in ["ready_tasks", "scheduled_tasks", "claimed_tasks"] {
                c.exec_drop(format!("DELETE FROM {table} WHERE job_id = ?"), (job,))
                    .map_err(&q)?;
            }
            c.exec_drop("UPDATE jobs SET cancelled = TRUE WHERE id = ?", (job,))
                .map_err(&q)?;
            Ok(())
        })
    }

    fn check_owner(&self, owner: &Owner<'_>, job: u64) -> Result<()> {
        let row: Option<(String, Option<u64>)> = self.db.with_conn("tasks.job", |c| {
            c.exec_first("SELECT app, user_id FROM jobs WHERE id = ?", (job,))
        })?;
        match row {
            Some((app, user)) if owner.may_see(&app, user) => Ok(()),
            _ => Err(no_job(job)),
        }
    }
}

impl Owner<'_> {
    /// Jobs are the submitting app's (and user's, when one was given);
    /// operators see every job.
    fn may_see(&self, app: &str, user: Option<u64>) -> bool {
        self.operator || (app == self.app && (user.is_none() || user == self.user))
    }
}

/// `id, seq, state, attempts, result, error`.
type ResultRow = (u64, u64, String, u32, Option<String>, Option<String>);

/// A job's status from its counts, `[done, failed, dead, running]`: every
/// task is done, dead, running, or ready (waiting retries included).
fn job_status(job: u64, cancelled: bool, total: u64, counts: [u64; 4]) -> JobStatus {
    let [done, failed, dead, running] = counts;
    let ready = if cancelled {
        0
    } else {
        total.saturating_sub(done + dead + running)
    };
    let state = if cancelled {
        "cancelled"
    } else if running + ready == 0 {
        "done"
    } else {
        "running"
    };
    JobStatus {
        job,
        state: state.into(),
        total,
        done,
        failed,
        dead,
        running,
        ready,
    }
}

fn no_job(id: u64) -> Error {
    // Another app's job reads as missing: its id says nothing.
    Error::NotFound(format!("no job {id} (or not yours)"))
}

fn check_lease(lease_ms: u64) -> Result<()> {
    if !(dsf_proto::task::LEASE_MIN_MS..=dsf_proto::task::LEASE_MAX_MS).contains(&lease_ms) {
        return Err(Error::Invalid {
            field: "lease_ms",
            rule: "1000 to 3600000 (1 s to 1 h)",
        });
    }
    Ok(())
}

fn placeholders(n: usize) -> String {
    let mut s = "?,".repeat(n);
    s.pop();
    s
}

fn raw(json: &str, op: &'static str) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::RawValue::from_string(json.to_string()).map_err(|e| Error::Internal {
        op,
        message: format!("a stored payload or result is not JSON: {e}"),
    })
}

/// Adds `jobs` (job id → how many) to their `column` count (`done`,
/// `failed`, `dead`), in one shard row per job: the shard of `task`, one
/// of the tasks counted. Which shard a count lands in does not matter (a
/// job's count is the sum of its shards); one row, not one per task, keeps
/// a batch from holding most of a job's shard rows until it commits,
/// queueing every other batch of the job behind it.
fn add_counts(
    c: &mut PooledConn,
    task: u64,
    jobs: &std::collections::BTreeMap<u64, u64>,
    column: &str,
) -> mysql::Result<()> {
    let (sql, params) = counts(task, jobs, column);
    c.exec_drop(sql, params)
}

/// [`add_counts`]'s statement and its parameters.
fn counts(
    task: u64,
    jobs: &std::collections::BTreeMap<u64, u64>,
    column: &str,
) -> (String, Vec<mysql::Value>) {
    let shard = task % SHARDS;
    let mut params: Vec<mysql::Value> = Vec::with_capacity(jobs.len() * 3);
    for (&job, &n) in jobs {
        params.extend([job.into(), shard.into(), n.into()]);
    }
    let sql = format!(
        "INSERT INTO job_counts (job_id, shard, {column}) VALUES {} \
         ON DUPLICATE KEY UPDATE {column} = {column} + VALUES({column})",
        vec!["(?, ?, ?)"; jobs.len()].join(", ")
    );
    (sql, params)
}

/// `sql` with `params` as one statement of text, to go out with others.
fn text(c: &PooledConn, op: &'static str, sql: &str, params: Vec<mysql::Value>) -> Result<String> {
    let params = mysql::Params::Positional(params);
    crate::forms::as_text(sql, &params, c.no_backslash_escape()).ok_or_else(|| Error::Internal {
        op,
        message: "a statement's placeholders and values do not match".into(),
    })
}

/// Sends `statements` (text) in one round trip, every result read.
fn together(c: &mut PooledConn, op: &'static str, statements: &[String]) -> Result<()> {
    crate::writes::run_all(c, &statements.join(";")).map_err(|(_, e)| Error::from_mysql(op, e))
}

/// A failed attempt of a claimed task: wait for a retry, or dead after the
/// last attempt. The caller holds the claimed row's lock.
fn retry_or_bury(c: &mut PooledConn, task: u64, error: &str) -> mysql::Result<()> {
    // The attempt that failed is the lease's fence.
    let row: Option<(u32, mysql::Value, u32, i32, u64, String)> = c.exec_first(
        "SELECT c.fence, c.claimed_at, t.max_attempts, t.priority, t.job_id, c.app \
         FROM tasks t JOIN claimed_tasks c ON c.task_id = t.id WHERE t.id = ?",
        (task,),
    )?;
    let Some((attempts, started, max, priority, job, app)) = row else {
        return Ok(());
    };
    c.exec_drop("DELETE FROM claimed_tasks WHERE task_id = ?", (task,))?;
    let one = std::collections::BTreeMap::from([(job, 1)]);
    add_counts(c, task, &one, "failed")?;
    if attempts >= max {
        c.exec_drop(
            "UPDATE tasks SET state = 'dead', error = ?, attempts = ?, started_at = ?, \
             finished_at = NOW(3) WHERE id = ?",
            (error, attempts, &started, task),
        )?;
        return add_counts(c, task, &one, "dead");
    }
    c.exec_drop(
        "UPDATE tasks SET state = 'waiting', error = ?, attempts = ?, started_at = ? WHERE id = ?",
        (error, attempts, started, task),
    )?;
    c.exec_drop(
        "INSERT INTO scheduled_tasks (task_id, app, job_id, neg_priority, available_at) \
         VALUES (?, ?, ?, ?, NOW(3) + INTERVAL ? MICROSECOND)",
        (task, app, job, -priority, backoff_ms(attempts) * 1000),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_five_minutes() {
        assert_eq!(backoff_ms(1), 500);
        assert_eq!(backoff_ms(2), 1_000);
        assert_eq!(backoff_ms(4), 4_000);
        assert_eq!(backoff_ms(30), 300_000);
        assert_eq!(backoff_ms(0), 500);
    }
}
