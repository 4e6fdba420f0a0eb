//! The task service's unary handlers: `task.submit`, `task.claim` (run
//! once its wait is over, see `claim_wait`), `task.heartbeat`,
//! `task.complete`, `task.fail`, `job.status`, `job.results` and
//! `job.cancel`, over [`dsf_sql::tasks`]. Bodies and replies are the
//! catalogue's (`dsf_proto::task`). A job belongs to the app that
//! submitted it, and to its user when a session token came with the
//! submit; another's job reads as missing, except to an operator.

use dsf_common::{Error, Result};
use dsf_proto::task::{
    ClaimBody, ClaimReply, CompleteBody, Extended, FailBody, FinishBody, Finished, HeartbeatBody,
    JobRef, JobStatus, Outcome, Refused, Results, ResultsBody, SubmitBody, Submitted, CLAIM_MAX,
    DEFAULT_MAX_ATTEMPTS, ERROR_MAX, PAYLOAD_MAX, RESULT_MAX, WAIT_MAX_MS,
};
use dsf_proto::{Empty, LIMIT_MAX};
use dsf_sql::tasks::{NewTask, Owner};
use dsf_sql::Role;

use crate::node::{Call, CallExt};

/// The caller: its app, and its user when a session was sent (a job
/// submitted with one is that user's; an operator sees every app's jobs).
pub fn owner(call: &Call) -> Owner<'_> {
    Owner {
        app: call.app(),
        user: call.session().map(|s| s.user.id),
        operator: call
            .session()
            .is_some_and(|s| s.user.role >= Role::Operator),
    }
}

/// `task.submit`: a batch of up to 1,000 tasks; runs once (a resend of
/// the same request adds nothing), and a key per task makes submitting
/// the same batch again as a new request harmless too.
pub fn submit(call: &Call, b: SubmitBody) -> Result<Submitted> {
    for (i, t) in b.tasks.iter().enumerate() {
        if t.payload.get().len() > PAYLOAD_MAX {
            return Err(Error::bad_request(format!(
                "tasks[{i}].payload: at most {PAYLOAD_MAX} bytes of JSON, got {}",
                t.payload.get().len()
            )));
        }
    }
    let tasks: Vec<NewTask<'_>> = b
        .tasks
        .iter()
        .map(|t| NewTask {
            payload: t.payload.get(),
            key: t.key.as_deref(),
            priority: t.priority.unwrap_or(0),
        })
        .collect();
    let (job, accepted) = call.db().tasks().submit(
        &owner(call),
        b.job,
        b.name.as_deref(),
        &tasks,
        b.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
    )?;
    // Committed: as many claims waiting for this app's tasks as there are
    // new tasks look at once, on every node (the rest wait on; a claim
    // woken for a task another node's claim took finds nothing and parks
    // again).
    call.wake_some(super::topic(call.app()), accepted as usize);
    Ok(Submitted { job, accepted })
}

/// `task.claim`: up to `n` of the app's ready tasks, leased; first, in the
/// same transaction, the outcomes of the previous batch it carries.
pub fn claim(call: &Call, b: ClaimBody) -> Result<ClaimReply> {
    // A claim that may wait and found nothing was parked before it got
    // here (super::claim_wait); this runs it.
    if b.wait_ms.is_some_and(|w| w > WAIT_MAX_MS) {
        return Err(Error::bad_request(format!(
            "wait_ms: at most {WAIT_MAX_MS}, got {}",
            b.wait_ms.unwrap_or_default()
        )));
    }
    let outcomes = match b.finish.is_empty() {
        true => None,
        false => {
            // Finishing in a claim is finishing: a key scoped without
            // task.finish may not do it this way either.
            if let Err(allowed) = call.pipeline().keys().scope(call.app(), "task.finish") {
                return Err(Error::Forbidden(format!(
                    "app {:?}'s key may send only {allowed}; outcomes in a claim's finish need task.finish among them (its entry in --app-keys scopes it)",
                    call.app()
                )));
            }
            Some(checked(&b.finish, "finish")?)
        }
    };
    let worker = format!("{}@{}", call.app(), call.node_id());
    let tasks = call
        .db()
        .tasks()
        .claim(call.app(), &worker, b.n, b.lease_ms)?;
    // The outcomes last: what they lock (the job's count) is held only
    // from here to the commit. Kept before the claim, they held it through
    // the claim's statements too, and the workers queued on it (8 times
    // the lock waits, in a run of 20,000 tasks at claims of 10).
    let finished = match outcomes {
        Some(batch) => Some(keep(call, &batch)?),
        None => None,
    };
    Ok(ClaimReply { tasks, finished })
}

/// `task.heartbeat`: extends the leases still held.
pub fn heartbeat(call: &Call, b: HeartbeatBody) -> Result<Extended> {
    let leases: Vec<(u64, u64)> = b.leases.iter().map(|l| (l.task, l.fence)).collect();
    let (extended, lost) = call
        .db()
        .tasks()
        .heartbeat(call.app(), &leases, b.lease_ms)?;
    Ok(Extended { extended, lost })
}

/// `task.complete`: the result, under the current lease's fence.
pub fn complete(call: &Call, b: CompleteBody) -> Result<Empty> {
    if b.result.get().len() > RESULT_MAX {
        return Err(Error::bad_request(format!(
            "result: at most {RESULT_MAX} bytes of JSON, got {}",
            b.result.get().len()
        )));
    }
    call.db()
        .tasks()
        .complete(call.app(), b.task, b.fence, b.result.get())?;
    Ok(Empty {})
}

/// `task.fail`: a failed attempt; retried with backoff until the last.
pub fn fail(call: &Call, b: FailBody) -> Result<Empty> {
    if b.error.len() > ERROR_MAX {
        return Err(Error::bad_request(format!(
            "error: at most {ERROR_MAX} bytes, got {}",
            b.error.len()
        )));
    }
    call.db()
        .tasks()
        .fail(call.app(), b.task, b.fence, &b.error)?;
    Ok(Empty {})
}

/// `task.finish`: many outcomes in one transaction, each under its own
/// fence; a task whose lease was lost is refused alone.
pub fn finish(call: &Call, b: FinishBody) -> Result<Finished> {
    let batch = checked(&b.outcomes, "outcomes")?;
    keep(call, &batch)
}

/// One outcome as the database keeps it: task, fence, result or error.
type Checked<'a> = (u64, u64, std::result::Result<&'a str, &'a str>);

/// `outcomes` (of `task.finish`, or carried by a `task.claim` in `field`)
/// checked: 1 to [`CLAIM_MAX`] of them, each task once, each a result or an
/// error within its size.
fn checked<'a>(outcomes: &'a [Outcome], field: &str) -> Result<Vec<Checked<'a>>> {
    let n = outcomes.len();
    if n == 0 || n > CLAIM_MAX as usize {
        return Err(Error::bad_request(format!(
            "{field}: 1 to {CLAIM_MAX}, got {n}"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut batch = Vec::with_capacity(n);
    for (i, o) in outcomes.iter().enumerate() {
        if !seen.insert(o.task) {
            return Err(Error::bad_request(format!(
                "{field}[{i}]: task {} appears twice",
                o.task
            )));
        }
        let outcome = match (&o.result, &o.error) {
            (Some(r), None) if r.get().len() <= RESULT_MAX => Ok(r.get()),
            (None, Some(e)) if e.len() <= ERROR_MAX => Err(e.as_str()),
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::bad_request(format!(
                    "{field}[{i}]: a result of at most {RESULT_MAX} bytes, or an error of at most {ERROR_MAX}"
                )))
            }
            _ => {
                return Err(Error::bad_request(format!(
                    "{field}[{i}]: give either result (done) or error (a failed attempt), not both or neither"
                )))
            }
        };
        batch.push((o.task, o.fence, outcome));
    }
    Ok(batch)
}

/// Keeps `batch`, each under its fence, in the call's transaction.
fn keep(call: &Call, batch: &[Checked<'_>]) -> Result<Finished> {
    let refusals = call.db().tasks().finish_many(call.app(), batch)?;
    let refused: Vec<Refused> = batch
        .iter()
        .zip(refusals)
        .filter_map(|(b, r)| r.map(|message| Refused { task: b.0, message }))
        .collect();
    Ok(Finished {
        kept: (batch.len() - refused.len()) as u32,
        refused,
    })
}

/// `job.status`: the job's counts.
pub fn status(call: &Call, b: JobRef) -> Result<JobStatus> {
    Ok(call.db().tasks().status(&owner(call), b.job)?)
}

/// `job.results`: a page of outcomes in submit order.
pub fn results(call: &Call, b: ResultsBody) -> Result<Results> {
    let limit = b.limit.unwrap_or(100);
    if limit == 0 || limit > LIMIT_MAX {
        return Err(Error::bad_request(format!(
            "limit: 1 to {LIMIT_MAX}, got {limit}"
        )));
    }
    let (results, next) = call
        .db()
        .tasks()
        .results(&owner(call), b.job, b.after, limit)?;
    Ok(Results { results, next })
}

/// `job.cancel`: ready and waiting tasks dropped, leases revoked.
pub fn cancel(call: &Call, b: JobRef) -> Result<Empty> {
    call.db().tasks().cancel(&owner(call), b.job)?;
    Ok(Empty {})
}
