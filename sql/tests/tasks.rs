//! The task tables against a real MariaDB (run through `scripts/test`):
//! claims exclusive under concurrent claimers, fences, retries with
//! backoff, dead after the last attempt, cancel, submit keys, owners.

use std::collections::HashSet;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use dsf_common::ErrorCode;
use dsf_sql::tasks::{NewTask, Owner};
use dsf_sql::testing;
use mysql::prelude::Queryable;

const APP: Owner<'static> = Owner {
    app: "cli",
    user: None,
    operator: false,
};

fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"n\":{i}}}")).collect()
}

fn new_tasks(p: &[String]) -> Vec<NewTask<'_>> {
    p.iter()
        .map(|payload| NewTask {
            payload,
            key: None,
            priority: 0,
        })
        .collect()
}

/// Moves every lease's expiry into the past (a stalled worker, without
/// waiting out a real lease).
fn expire_leases(db: &testing::TestDb) {
    db.pool()
        .get_conn()
        .unwrap()
        .query_drop("UPDATE claimed_tasks SET lease_until = NOW(3) - INTERVAL 1 SECOND")
        .unwrap();
}

/// Makes every waiting retry due now.
fn end_backoffs(db: &testing::TestDb) {
    db.pool()
        .get_conn()
        .unwrap()
        .query_drop("UPDATE scheduled_tasks SET available_at = NOW(3) - INTERVAL 1 SECOND")
        .unwrap();
}

#[test]
fn concurrent_claimers_on_many_connections_take_each_task_exactly_once() {
    let db = Arc::new(testing::fresh());
    let p = payloads(1000);
    let (job, accepted) = db
        .tasks()
        .submit(&APP, None, Some("once"), &new_tasks(&p), 3)
        .unwrap();
    assert_eq!(accepted, 1000);
    // The fallback look counts what is ready, up to its cap.
    assert_eq!(db.tasks().ready_count("cli", 100).unwrap(), 100);
    assert_eq!(db.tasks().ready_count("cli", 5000).unwrap(), 1000);
    assert_eq!(db.tasks().ready_count("no-such-app", 100).unwrap(), 0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let start = Arc::new(Barrier::new(8));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (db, seen, start) = (db.clone(), seen.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                loop {
                    let got = db
                        .tasks()
                        .claim("cli", &format!("w{w}"), 7, 30_000)
                        .unwrap();
                    if got.is_empty() {
                        return;
                    }
                    for t in got {
                        assert_eq!(t.attempt, 1);
                        db.tasks()
                            .complete("cli", t.task, t.fence, &format!("{{\"by\":{w}}}"))
                            .unwrap();
                        seen.lock().unwrap().push(t.task);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 1000, "claimed and completed");
    assert_eq!(unique.len(), 1000, "no task twice");
    let st = db.tasks().status(&APP, job).unwrap();
    assert_eq!(
        (st.state.as_str(), st.total, st.done, st.running, st.ready),
        ("done", 1000, 1000, 0, 0)
    );
}

#[test]
fn a_stale_fence_is_refused_and_the_new_workers_result_is_kept() {
    let db = testing::fresh();
    let p = payloads(1);
    let (job, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 3)
        .unwrap();
    let first = db
        .tasks()
        .claim("cli", "slow", 1, 30_000)
        .unwrap()
        .remove(0);
    // The slow worker stalls past its lease; the reaper returns the task
    // and, after the backoff, another worker takes it.
    expire_leases(&db);
    assert_eq!(db.tasks().reap(100).unwrap().expired, 1);
    assert!(
        db.tasks()
            .claim("cli", "fast", 1, 30_000)
            .unwrap()
            .is_empty(),
        "still backing off"
    );
    end_backoffs(&db);
    assert_eq!(db.tasks().reap(100).unwrap().promoted, 1);
    let second = db
        .tasks()
        .claim("cli", "fast", 1, 30_000)
        .unwrap()
        .remove(0);
    assert_eq!((second.task, second.attempt), (first.task, 2));
    assert_ne!(second.fence, first.fence);
    db.tasks()
        .complete("cli", second.task, second.fence, "\"fast\"")
        .unwrap();
    // The slow one wakes up: refused, and the result stays the fast one's.
    let e = db
        .tasks()
        .complete("cli", first.task, first.fence, "\"slow\"")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    let (results, _) = db.tasks().results(&APP, job, None, 10).unwrap();
    assert_eq!(results[0].result.as_ref().unwrap().get(), "\"fast\"");
    assert_eq!(results[0].attempts, 2);
    // A fence from the future is refused too.
    let e = db.tasks().fail("cli", second.task, 99, "x").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
}

/// Five tasks finished in one call: three results, one failed attempt and
/// one under a fence that is no longer its lease's. Only that one is
/// refused; the job's counts and each task's state say the rest was kept.
#[test]
fn a_batched_finish_with_one_stale_fence_refuses_only_that_task() {
    let db = testing::fresh();
    let p = payloads(5);
    let (job, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 3)
        .unwrap();
    let mut claimed = db.tasks().claim("cli", "w", 5, 30_000).unwrap();
    claimed.sort_by_key(|c| c.task);
    assert_eq!(claimed.len(), 5);
    let results: Vec<String> = claimed
        .iter()
        .map(|c| format!("{{\"r\":{}}}", c.task))
        .collect();
    let batch: Vec<(u64, u64, Result<&str, &str>)> = vec![
        (claimed[0].task, claimed[0].fence, Ok(&results[0])),
        (claimed[1].task, claimed[1].fence + 1, Ok(&results[1])),
        (claimed[2].task, claimed[2].fence, Err("boom")),
        (claimed[3].task, claimed[3].fence, Ok(&results[3])),
        (claimed[4].task, claimed[4].fence, Ok(&results[4])),
    ];
    let refused = db.tasks().finish_many("cli", &batch).unwrap();
    assert_eq!(refused.iter().filter(|r| r.is_some()).count(), 1);
    let why = refused[1].as_deref().unwrap();
    assert!(why.contains("is not the current lease's"), "{why}");
    let status = db.tasks().status(&APP, job).unwrap();
    assert_eq!((status.done, status.failed, status.running), (3, 1, 1));
    let (rows, _) = db.tasks().results(&APP, job, None, 10).unwrap();
    for (i, c) in claimed.iter().enumerate() {
        let row = rows.iter().find(|r| r.task == c.task).unwrap();
        match i {
            0 | 3 | 4 => assert_eq!(row.result.as_ref().unwrap().get(), results[i]),
            _ => assert!(row.result.is_none(), "task {} has no result", c.task),
        }
    }
    // The refused task's lease still holds: its own fence completes it.
    db.tasks()
        .complete("cli", claimed[1].task, claimed[1].fence, "1")
        .unwrap();
    // Finished tasks hold no lease: finishing them again is refused.
    let again = db.tasks().finish_many("cli", &batch[..1]).unwrap();
    assert!(again[0].as_deref().unwrap().contains("holds no lease"));
}

/// One finish over the tasks of two jobs counts each job's own (the
/// counts come from the leases given up), and a failed attempt under a
/// stale fence is refused like a result is, its task still running.
#[test]
fn a_finish_across_two_jobs_counts_each_and_refuses_a_stale_failure() {
    let db = testing::fresh();
    let (p, q) = (payloads(2), payloads(3));
    let (first, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 3)
        .unwrap();
    let (second, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&q), 3)
        .unwrap();
    let mut claimed = db.tasks().claim("cli", "w", 5, 30_000).unwrap();
    claimed.sort_by_key(|c| c.task);
    assert_eq!(claimed.len(), 5);
    let batch: Vec<(u64, u64, Result<&str, &str>)> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| match i {
            // The second job's last task: a failure under a stale fence.
            4 => (c.task, c.fence + 1, Err("boom")),
            _ => (c.task, c.fence, Ok("1")),
        })
        .collect();
    let refused = db.tasks().finish_many("cli", &batch).unwrap();
    assert_eq!(
        refused.iter().filter(|r| r.is_some()).count(),
        1,
        "{refused:?}"
    );
    let why = refused[4].as_deref().unwrap();
    assert!(why.contains("is not the current lease's"), "{why}");
    let a = db.tasks().status(&APP, first).unwrap();
    let b = db.tasks().status(&APP, second).unwrap();
    assert_eq!((a.done, a.failed, a.running), (2, 0, 0));
    assert_eq!((b.done, b.failed, b.running), (2, 0, 1));
}

#[test]
fn a_failed_task_waits_out_its_backoff_and_is_dead_after_its_last_attempt() {
    let db = testing::fresh();
    let p = payloads(1);
    let (job, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 2)
        .unwrap();
    let t = db.tasks().claim("cli", "w", 1, 30_000).unwrap().remove(0);
    db.tasks().fail("cli", t.task, t.fence, "boom 1").unwrap();
    let st = db.tasks().status(&APP, job).unwrap();
    assert_eq!(
        (st.state.as_str(), st.failed, st.ready, st.dead),
        ("running", 1, 1, 0)
    );
    // The first backoff is half a second: not claimable before it is over.
    assert!(db.tasks().claim("cli", "w", 1, 30_000).unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        db.tasks().reap(100).unwrap();
        if let Some(t) = db.tasks().claim("cli", "w", 1, 30_000).unwrap().pop() {
            break t;
        }
        assert!(Instant::now() < deadline, "the retry never became ready");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(again.attempt, 2);
    db.tasks()
        .fail("cli", again.task, again.fence, "boom 2")
        .unwrap();
    let st = db.tasks().status(&APP, job).unwrap();
    assert_eq!(
        (st.state.as_str(), st.failed, st.dead, st.ready),
        ("done", 2, 1, 0)
    );
    let (results, _) = db.tasks().results(&APP, job, None, 10).unwrap();
    assert_eq!(results[0].state, "dead");
    assert_eq!(
        results[0].error.as_deref(),
        Some("boom 2"),
        "keeps its last error"
    );
}

/// A claim writes only its lease, not the task's row: the row takes the
/// attempt when it ends. What a reader sees through each attempt must not
/// tell the difference.
#[test]
fn a_tasks_results_show_each_attempt_while_it_runs_and_after_it_ends() {
    let db = testing::fresh();
    let p = payloads(3);
    let (job, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 3)
        .unwrap();
    let rows = |db: &testing::TestDb| -> Vec<(String, u32)> {
        let (rows, _) = db.tasks().results(&APP, job, None, 10).unwrap();
        rows.into_iter().map(|r| (r.state, r.attempts)).collect()
    };
    let at = |s: &str, n: u32| (s.to_string(), n);
    assert_eq!(rows(&db), [at("ready", 0), at("ready", 0), at("ready", 0)]);
    let first = db.tasks().claim("cli", "w", 3, 30_000).unwrap();
    assert_eq!(
        rows(&db),
        [at("running", 1), at("running", 1), at("running", 1)]
    );
    // Task 0 is done, task 1 fails, task 2's lease runs out.
    db.tasks()
        .finish_many(
            "cli",
            &[
                (first[0].task, first[0].fence, Ok("0")),
                (first[1].task, first[1].fence, Err("boom")),
            ],
        )
        .unwrap();
    expire_leases(&db);
    assert_eq!(db.tasks().reap(100).unwrap().expired, 1);
    assert_eq!(
        rows(&db),
        [at("done", 1), at("waiting", 1), at("waiting", 1)]
    );
    end_backoffs(&db);
    assert_eq!(db.tasks().reap(100).unwrap().promoted, 2);
    assert_eq!(rows(&db), [at("done", 1), at("ready", 1), at("ready", 1)]);
    let second = db.tasks().claim("cli", "w", 2, 30_000).unwrap();
    assert_eq!(
        second
            .iter()
            .map(|t| (t.attempt, t.fence))
            .collect::<Vec<_>>(),
        [(2, 2), (2, 2)]
    );
    assert_eq!(
        rows(&db),
        [at("done", 1), at("running", 2), at("running", 2)]
    );
    // A fence of the first attempts is stale now.
    let e = db
        .tasks()
        .complete("cli", first[1].task, first[1].fence, "1")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    db.tasks()
        .complete("cli", second[0].task, second[0].fence, "1")
        .unwrap();
    // A lease revoked by a cancel keeps its attempt.
    db.tasks().cancel(&APP, job).unwrap();
    assert_eq!(
        rows(&db),
        [at("done", 1), at("done", 2), at("cancelled", 2)]
    );
    let started: Vec<bool> = db
        .pool()
        .get_conn()
        .unwrap()
        .exec(
            "SELECT started_at IS NOT NULL FROM tasks WHERE job_id = ? ORDER BY seq",
            (job,),
        )
        .unwrap();
    assert_eq!(started, [true, true, true], "each row has its last start");
}

#[test]
fn keys_make_a_resubmit_harmless_and_priorities_go_first() {
    let db = testing::fresh();
    let p = payloads(3);
    let keyed: Vec<NewTask<'_>> = p
        .iter()
        .enumerate()
        .map(|(i, payload)| NewTask {
            payload,
            key: Some(["a", "b", "c"][i]),
            priority: i as i32,
        })
        .collect();
    let (job, n) = db.tasks().submit(&APP, None, None, &keyed, 3).unwrap();
    assert_eq!(n, 3);
    let (same, n) = db.tasks().submit(&APP, Some(job), None, &keyed, 3).unwrap();
    assert_eq!((same, n), (job, 0), "every key is held already");
    // The same submit run again as a new job: the job that holds the keys.
    let (same, n) = db.tasks().submit(&APP, None, None, &keyed, 3).unwrap();
    assert_eq!((same, n), (job, 0), "the script ran twice: one job");
    // Another app's keys are its own.
    let other = Owner {
        app: "other",
        user: None,
        operator: false,
    };
    assert_eq!(
        db.tasks().submit(&other, None, None, &keyed, 3).unwrap().1,
        3
    );
    assert_eq!(db.tasks().status(&APP, job).unwrap().total, 3);
    let claimed = db.tasks().claim("cli", "w", 3, 30_000).unwrap();
    let order: Vec<&str> = claimed.iter().map(|t| t.payload.get()).collect();
    assert_eq!(
        order,
        ["{\"n\":2}", "{\"n\":1}", "{\"n\":0}"],
        "highest priority first"
    );
}

#[test]
fn cancel_drops_ready_tasks_and_revokes_leases() {
    let db = testing::fresh();
    let p = payloads(5);
    let (job, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 3)
        .unwrap();
    let held = db.tasks().claim("cli", "w", 2, 30_000).unwrap();
    db.tasks().cancel(&APP, job).unwrap();
    assert!(db.tasks().claim("cli", "w", 5, 30_000).unwrap().is_empty());
    let e = db
        .tasks()
        .complete("cli", held[0].task, held[0].fence, "1")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    let st = db.tasks().status(&APP, job).unwrap();
    assert_eq!(
        (st.state.as_str(), st.running, st.ready),
        ("cancelled", 0, 0)
    );
    let e = db
        .tasks()
        .submit(&APP, Some(job), None, &new_tasks(&p), 3)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
}

#[test]
fn another_apps_job_reads_as_missing_and_its_tasks_are_not_claimed() {
    let db = testing::fresh();
    let p = payloads(2);
    let (job, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 3)
        .unwrap();
    let other = Owner {
        app: "gate-north",
        user: None,
        operator: false,
    };
    assert_eq!(
        db.tasks().status(&other, job).unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        db.tasks().cancel(&other, job).unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert!(db
        .tasks()
        .claim("gate-north", "w", 2, 30_000)
        .unwrap()
        .is_empty());
    let operator = Owner {
        operator: true,
        ..other
    };
    assert_eq!(db.tasks().status(&operator, job).unwrap().total, 2);
    assert_eq!(
        db.tasks().status(&APP, 999_999).unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[test]
fn bad_sizes_are_refused_with_what_is_allowed() {
    let db = testing::fresh();
    let p = payloads(1);
    for (n, lease) in [(0, 30_000), (101, 30_000), (1, 10), (1, 7_200_000)] {
        let e = db.tasks().claim("cli", "w", n, lease).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest, "{n} {lease}");
    }
    let e = db.tasks().submit(&APP, None, None, &[], 3).unwrap_err();
    assert!(e.to_string().contains("1 to 1000"), "{e}");
    let e = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p), 0)
        .unwrap_err();
    assert!(e.to_string().contains("max_attempts"), "{e}");
}

#[test]
fn heartbeats_extend_held_leases_and_report_lost_ones() {
    let db = testing::fresh();
    let p = payloads(2);
    db.tasks()
        .submit(&APP, None, None, &new_tasks(&p), 3)
        .unwrap();
    let held = db.tasks().claim("cli", "w", 2, 30_000).unwrap();
    db.tasks()
        .complete("cli", held[1].task, held[1].fence, "1")
        .unwrap();
    let (extended, lost) = db
        .tasks()
        .heartbeat(
            "cli",
            &[(held[0].task, held[0].fence), (held[1].task, held[1].fence)],
            60_000,
        )
        .unwrap();
    assert_eq!((extended, lost), (vec![held[0].task], vec![held[1].task]));
}

#[test]
fn recent_lists_every_apps_newest_jobs_with_the_counts_status_gives() {
    let db = testing::fresh();
    assert!(db.tasks().recent(10).unwrap().is_empty());
    let other = Owner {
        app: "gate-north",
        user: None,
        operator: false,
    };
    let p = payloads(4);
    let (first, _) = db
        .tasks()
        .submit(&APP, None, Some("nightly"), &new_tasks(&p), 1)
        .unwrap();
    let (second, _) = db
        .tasks()
        .submit(&other, None, None, &new_tasks(&p[..2]), 1)
        .unwrap();
    let (third, _) = db
        .tasks()
        .submit(&APP, None, None, &new_tasks(&p[..1]), 1)
        .unwrap();
    // Of the first job: one done, one dead, one running, one ready.
    let held = db.tasks().claim("cli", "w", 3, 30_000).unwrap();
    assert!(held.iter().all(|c| c.job == first || c.job == third));
    let of_first: Vec<_> = held.iter().filter(|c| c.job == first).collect();
    db.tasks()
        .complete("cli", of_first[0].task, of_first[0].fence, "1")
        .unwrap();
    db.tasks()
        .fail("cli", of_first[1].task, of_first[1].fence, "no")
        .unwrap();
    let recent = db.tasks().recent(10).unwrap();
    let ids: Vec<u64> = recent.iter().map(|j| j.status.job).collect();
    assert_eq!(ids, vec![third, second, first], "newest first, every app");
    for j in &recent {
        let owner = Owner {
            app: &j.app,
            user: None,
            operator: false,
        };
        assert_eq!(j.status, db.tasks().status(&owner, j.status.job).unwrap());
    }
    let f = &recent[2];
    assert_eq!(
        (f.app.as_str(), f.name.as_deref()),
        ("cli", Some("nightly"))
    );
    assert_eq!(
        (f.status.done, f.status.dead, f.status.total),
        (1, 1, 4),
        "{f:?}"
    );
    assert!(f.created_at_ms > 1_700_000_000_000);
    assert_eq!(db.tasks().recent(1).unwrap()[0].status.job, third);
}
