//! The SDK worker's fallbacks for the outcomes it carries on its next
//! claim, against an app-server stand-in on 127.0.0.1 that answers
//! `task.claim` and `task.finish` as a server older than the SDK would:
//! one that ignores the outcomes a claim carries (its reply says nothing
//! of them), and one that refuses a claim carrying them. Either way every
//! outcome reaches a `task.finish` of its own, once, and the worker stops
//! carrying.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dsf_client::tasks::{work, WorkerOptions};
use dsf_client::ClientConfig;
use dsf_common::Error;
use dsf_proto::task::{ClaimBody, ClaimReply, Claimed, FinishBody, Finished};
use serde_json::value::RawValue;
use support::{app_handler, fake_lb, Action, TestServer, APP, SECRET};

/// What the stand-in saw.
#[derive(Default)]
struct Seen {
    /// Claims that carried outcomes.
    carrying: AtomicUsize,
    /// The tasks of each `task.finish`, in order.
    finishes: Mutex<Vec<Vec<u64>>>,
}

/// A stand-in that hands out tasks 1, 2, … (as many as a claim asks for),
/// takes every `task.finish`, and answers a claim that carries outcomes
/// with `carried` (`None`: as if there were none).
fn stand_in(seen: Arc<Seen>, carried: Option<Error>) -> TestServer {
    let next = AtomicU64::new(1);
    TestServer::start(move |r| match r.kind.as_str() {
        "task.claim" => {
            let body: ClaimBody = serde_json::from_str(r.body.get()).unwrap();
            if !body.finish.is_empty() {
                seen.carrying.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = &carried {
                    return Action::Err(e.clone());
                }
            }
            let tasks = (0..body.n)
                .map(|_| Claimed {
                    task: next.fetch_add(1, Ordering::Relaxed),
                    job: 1,
                    payload: RawValue::from_string("{}".into()).unwrap(),
                    attempt: 1,
                    fence: 1,
                    lease_until: i64::MAX / 2,
                })
                .collect();
            let reply = ClaimReply {
                tasks,
                finished: None,
            };
            Action::Ok(serde_json::to_string(&reply).unwrap())
        }
        "task.finish" => {
            let body: FinishBody = serde_json::from_str(r.body.get()).unwrap();
            let tasks: Vec<u64> = body.outcomes.iter().map(|o| o.task).collect();
            let kept = tasks.len() as u32;
            seen.finishes.lock().unwrap().push(tasks);
            let reply = Finished {
                kept,
                refused: Vec::new(),
            };
            Action::Ok(serde_json::to_string(&reply).unwrap())
        }
        _ => app_handler("a", r),
    })
}

/// Works four tasks in claims of two through `server`.
fn work_four(server: &TestServer, seen: &Seen) -> dsf_client::tasks::WorkReport {
    let (lb, _) = fake_lb(vec![("a", server.addr_string())]);
    let cfg = ClientConfig::new(vec![lb.addr_string()], APP, SECRET);
    let mut opts = WorkerOptions::new("w");
    opts.batch = 2;
    opts.max_tasks = Some(4);
    let stop = AtomicBool::new(false);
    let report = work(&cfg, &opts, &stop, |_| Ok("1".into())).unwrap();
    assert_eq!(
        *seen.finishes.lock().unwrap(),
        vec![vec![1, 2], vec![3, 4]],
        "each batch's outcomes in a finish of their own, once"
    );
    assert_eq!(
        seen.carrying.load(Ordering::Relaxed),
        1,
        "the worker stopped carrying after the first claim that did"
    );
    report
}

#[test]
fn outcomes_a_server_ignores_on_a_claim_are_sent_in_a_finish_of_their_own() {
    let seen = Arc::new(Seen::default());
    let server = stand_in(seen.clone(), None);
    let report = work_four(&server, &seen);
    assert_eq!((report.done, report.refused), (4, 0));
    // Two claims: the second carried the first batch's outcomes.
    assert_eq!(server.seen("task.claim"), 2);
}

#[test]
fn outcomes_a_server_refuses_on_a_claim_are_sent_in_a_finish_of_their_own() {
    let seen = Arc::new(Seen::default());
    let refusal = Error::bad_request("unknown field `finish`");
    let server = stand_in(seen.clone(), Some(refusal));
    let report = work_four(&server, &seen);
    assert_eq!((report.done, report.refused), (4, 0));
    // The refused claim took nothing: a third claim took the last two.
    assert_eq!(server.seen("task.claim"), 3);
}
