//! The task service: producers submit to any app server, workers claim from
//! any app server, each task is held by one worker at a time, and the
//! submitter watches progress live.
//!
//! | type | auth | where |
//! |---|---|---|
//! | `task.submit`, `.claim`, `.heartbeat`, `.complete`, `.fail`, `.finish` | app (user optional) | [`handlers`] |
//! | `job.status`, `.results`, `.cancel` | app (user optional) | [`handlers`] |
//! | `job.watch` | app (user optional) | [`watch`] |
//!
//! `task.claim` with `wait_ms` is a long poll: when nothing of its app is
//! ready it parks off the workers on the topic `tasks:<app>`, which every
//! submit wakes on every node once it commits. A look every `--claim-poll`
//! ([`CLAIM_POLL`]) at the apps with parked claims is the fallback (a
//! wake-up lost with a peer link). The `reaper` returns expired leases to their retry.

pub mod handlers;
pub mod watch;

use std::time::{Duration, Instant};

use dsf_common::pipeline::Wait;
use dsf_proto::task::{self as msg, ClaimBody, WAIT_MAX_MS};

use crate::node::{Call, CallExt, Node};
use crate::service::Service;

/// How often the apps with parked claims are looked at for ready tasks by
/// default (`--claim-poll`): the bound on a claim's wait when a wake-up
/// was lost.
pub const CLAIM_POLL: Duration = Duration::from_millis(25);

/// What claims of app `app`'s tasks wait on.
pub fn topic(app: &str) -> String {
    format!("tasks:{app}")
}

/// The task service (namespace `tasks`).
pub fn service() -> Service {
    let mut failing = false;
    Service::new("tasks")
        .migrations(dsf_sql::migrate::TASKS)
        .unary::<msg::Submit>(handlers::submit)
        .long_poll::<msg::Claim>(claim_wait, handlers::claim)
        .unary::<msg::Heartbeat>(handlers::heartbeat)
        .unary::<msg::Complete>(handlers::complete)
        .unary::<msg::Fail>(handlers::fail)
        .unary::<msg::Finish>(handlers::finish)
        .unary::<msg::Status>(handlers::status)
        .unary::<msg::GetResults>(handlers::results)
        .unary::<msg::Cancel>(handlers::cancel)
        .stream::<msg::Watch>(watch::watch)
        .job_every("claim-waits", |s| s.claim_poll, look_for_ready)
        .job_every(
            "reaper",
            |s| s.reap_every,
            move |node| reap(node, &mut failing),
        )
}

/// How long a `task.claim` may wait, when it asks to and nothing of its
/// app is ready now; `None` to run it at once (no wait asked, outcomes
/// carried, something ready, or no answer from the database).
fn claim_wait(call: &Call, b: &ClaimBody) -> Option<Wait> {
    // Outcomes carried are kept now, not after a wait.
    if !b.finish.is_empty() {
        return None;
    }
    let wait = b.wait_ms.filter(|w| *w > 0 && *w <= WAIT_MAX_MS)?;
    match call.db().tasks().has_ready(call.app()) {
        Ok(false) => Some(Wait {
            topic: topic(call.app()),
            until: Instant::now() + Duration::from_millis(wait),
        }),
        _ => None,
    }
}

/// The fallback: the apps whose claims are parked here, their ready tasks
/// counted (an indexed look, up to [`LOOK_CAP`]) and as many claims woken.
/// Waking them all would set every idle worker on the one task a submit
/// made ready a moment before its own wake-up arrives.
fn look_for_ready(node: &Node) {
    for topic in node.parked_topics("tasks:") {
        let app = &topic["tasks:".len()..];
        match node.db().tasks().ready_count(app, LOOK_CAP) {
            Ok(n) => node.wake_some_here(&topic, n as usize),
            // A database that does not answer: let the claims run and
            // report it, rather than wait on in silence.
            Err(_) => node.wake_here(&topic),
        }
    }
}

/// Most ready tasks the fallback look counts for one app: enough to wake
/// every claim a node holds in practice.
const LOOK_CAP: u32 = 1000;

/// Returns tasks whose lease expired to their retry (or buries them after
/// their last attempt) and makes due retries ready. Every app server runs
/// it; they take rows with SKIP LOCKED, so they share the work rather than
/// repeat it.
fn reap(node: &Node, failing: &mut bool) {
    match node.db().tasks().reap(500) {
        Ok(r) => {
            if *failing {
                log::info!("reaper: the database answers again");
                *failing = false;
            }
            if r.expired > 0 {
                log::info!(
                    "reaper: {} leases expired; their tasks retry or are dead",
                    r.expired
                );
            }
            if r.promoted > 0 {
                log::debug!("reaper: {} retries ready", r.promoted);
            }
        }
        Err(e) if !*failing => {
            log::warn!("reaper: {e}; retrying (logged again when it answers)");
            *failing = true;
        }
        Err(e) => log::debug!("reaper: {e}"),
    }
}
