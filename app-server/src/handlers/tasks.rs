//! The task service: `task.submit`, `task.claim`, `task.heartbeat`,
//! `task.complete`, `task.fail`, `job.status`, `job.results` and
//! `job.cancel` (app auth), over [`dsf_sql::tasks`]. Bodies and replies are
//! the catalogue's (`dsf_proto::task`). A job belongs to the app that
//! submitted it, and to its user when a session token came with the
//! submit; another's job reads as missing, except to an operator.

use dsf_common::{Error, Result};
use dsf_proto::task::{
    self as msg, ClaimBody, ClaimReply, CompleteBody, Extended, FailBody, HeartbeatBody, JobRef,
    Results, ResultsBody, SubmitBody, Submitted, DEFAULT_MAX_ATTEMPTS, PAYLOAD_MAX, RESULT_MAX,
    WAIT_MAX_MS,
};
use dsf_proto::{Empty, LIMIT_MAX};
use dsf_sql::tasks::{NewTask, Owner};

use dsf_sql::Role;

use crate::controller::{json, route_maybe_user as route, Call, Exec, Route};

/// This group's routes.
pub const ROUTES: &[Route] = &[
    route::<msg::Submit>(Exec::Pool, submit),
    route::<msg::Claim>(Exec::Pool, claim),
    route::<msg::Heartbeat>(Exec::Pool, heartbeat),
    route::<msg::Complete>(Exec::Pool, complete),
    route::<msg::Fail>(Exec::Pool, fail),
    route::<msg::Status>(Exec::Pool, status),
    route::<msg::GetResults>(Exec::Pool, results),
    route::<msg::Cancel>(Exec::Pool, cancel),
];

/// The caller: its app, and its user when a session was sent (a job
/// submitted with one is that user's; an operator sees every app's jobs).
fn owner<'a>(call: &'a Call<'_>) -> Owner<'a> {
    Owner {
        app: &call.request.app,
        user: call.session.map(|s| s.user.id),
        operator: call.session.is_some_and(|s| s.user.role >= Role::Operator),
    }
}

/// `task.submit`: a batch of up to 1,000 tasks; runs once (a resend of
/// the same request adds nothing), and a key per task makes submitting
/// the same batch again as a new request harmless too.
pub fn submit(call: &Call<'_>) -> Result<String> {
    let b: SubmitBody = call.body()?;
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
    let (job, accepted) = call.app.db.tasks().submit(
        &owner(call),
        b.job,
        b.name.as_deref(),
        &tasks,
        b.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
    )?;
    json(&Submitted { job, accepted })
}

/// `task.claim`: up to `n` of the app's ready tasks, leased.
pub fn claim(call: &Call<'_>) -> Result<String> {
    let b: ClaimBody = call.body()?;
    // A claim that may wait and found nothing was parked before it got
    // here (crate::waiters); this runs it.
    if b.wait_ms.is_some_and(|w| w > WAIT_MAX_MS) {
        return Err(Error::bad_request(format!(
            "wait_ms: at most {WAIT_MAX_MS}, got {}",
            b.wait_ms.unwrap_or_default()
        )));
    }
    let worker = format!("{}@{}", call.request.app, call.app.node());
    let tasks = call
        .app
        .db
        .tasks()
        .claim(&call.request.app, &worker, b.n, b.lease_ms)?;
    json(&ClaimReply { tasks })
}

/// `task.heartbeat`: extends the leases still held.
pub fn heartbeat(call: &Call<'_>) -> Result<String> {
    let b: HeartbeatBody = call.body()?;
    let leases: Vec<(u64, u64)> = b.leases.iter().map(|l| (l.task, l.fence)).collect();
    let (extended, lost) = call
        .app
        .db
        .tasks()
        .heartbeat(&call.request.app, &leases, b.lease_ms)?;
    json(&Extended { extended, lost })
}

/// `task.complete`: the result, under the current lease's fence.
pub fn complete(call: &Call<'_>) -> Result<String> {
    let b: CompleteBody = call.body()?;
    if b.result.get().len() > RESULT_MAX {
        return Err(Error::bad_request(format!(
            "result: at most {RESULT_MAX} bytes of JSON, got {}",
            b.result.get().len()
        )));
    }
    call.app
        .db
        .tasks()
        .complete(&call.request.app, b.task, b.fence, b.result.get())?;
    json(&Empty {})
}

/// `task.fail`: a failed attempt; retried with backoff until the last.
pub fn fail(call: &Call<'_>) -> Result<String> {
    let b: FailBody = call.body()?;
    if b.error.len() > RESULT_MAX {
        return Err(Error::bad_request(format!(
            "error: at most {RESULT_MAX} bytes, got {}",
            b.error.len()
        )));
    }
    call.app
        .db
        .tasks()
        .fail(&call.request.app, b.task, b.fence, &b.error)?;
    json(&Empty {})
}

/// `job.status`: the job's counts.
pub fn status(call: &Call<'_>) -> Result<String> {
    let b: JobRef = call.body()?;
    json(&call.app.db.tasks().status(&owner(call), b.job)?)
}

/// `job.results`: a page of outcomes in submit order.
pub fn results(call: &Call<'_>) -> Result<String> {
    let b: ResultsBody = call.body()?;
    let limit = b.limit.unwrap_or(100);
    if limit == 0 || limit > LIMIT_MAX {
        return Err(Error::bad_request(format!(
            "limit: 1 to {LIMIT_MAX}, got {limit}"
        )));
    }
    let (results, next) = call
        .app
        .db
        .tasks()
        .results(&owner(call), b.job, b.after, limit)?;
    json(&Results { results, next })
}

/// `job.cancel`: ready and waiting tasks dropped, leases revoked.
pub fn cancel(call: &Call<'_>) -> Result<String> {
    let b: JobRef = call.body()?;
    call.app.db.tasks().cancel(&owner(call), b.job)?;
    json(&Empty {})
}
