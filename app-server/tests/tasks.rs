//! The task service over real sockets on two app servers sharing one real
//! MariaDB: submit on one, claim and complete on the other, a stalled
//! worker's completion refused, the reaper returning an expired lease, and
//! each bad input with its error.

mod support;

use std::time::{Duration, Instant};

use dsf_common::ErrorCode;
use dsf_sql::testing;
use serde_json::{json, Value};
use support::{wait_until, Server};

fn tasks(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"payload": {"n": i}})).collect())
}

#[test]
fn a_job_submitted_on_one_node_is_worked_on_another_and_seen_from_both() {
    let db = testing::fresh();
    let (a, b) = (Server::start(&db), Server::start(&db));
    let (mut ca, mut cb) = (a.connect(), b.connect());
    let sub = ca.ok(
        "task.submit",
        json!({"name": "squares", "tasks": tasks(20)}),
        None,
    );
    assert_eq!(sub["accepted"], 20);
    let job = sub["job"].as_u64().unwrap();
    let mut done = 0;
    while done < 20 {
        let got = cb.ok("task.claim", json!({"n": 8, "lease_ms": 30_000}), None);
        for t in got["tasks"].as_array().unwrap() {
            let n = t["payload"]["n"].as_u64().unwrap();
            let body = json!({"task": t["task"], "fence": t["fence"], "result": {"square": n * n}});
            cb.ok("task.complete", body, None);
            done += 1;
        }
    }
    let st = ca.ok("job.status", json!({"job": job}), None);
    assert_eq!(
        (st["state"].as_str(), st["done"].as_u64()),
        (Some("done"), Some(20))
    );
    let page = ca.ok("job.results", json!({"job": job, "limit": 5}), None);
    let first = &page["results"][0];
    assert_eq!(
        (first["seq"].as_u64(), first["state"].as_str()),
        (Some(0), Some("done"))
    );
    assert_eq!(first["result"], json!({"square": 0}));
    let next = page["next"].as_u64().unwrap();
    let rest = ca.ok(
        "job.results",
        json!({"job": job, "after": next, "limit": 500}),
        None,
    );
    assert_eq!(rest["results"].as_array().unwrap().len(), 15);
    assert!(rest.get("next").is_none());
}

#[test]
fn an_expired_lease_is_reaped_and_the_stalled_workers_completion_is_refused() {
    let db = testing::fresh();
    let (a, b) = (Server::start(&db), Server::start(&db));
    let (mut ca, mut cb) = (a.connect(), b.connect());
    let job = ca.ok("task.submit", json!({"tasks": tasks(1)}), None)["job"].clone();
    let stalled = ca.ok("task.claim", json!({"n": 1, "lease_ms": 1_000}), None)["tasks"][0].clone();
    let expired_at = Instant::now() + Duration::from_secs(1);
    // The reapers (one per node) return it after the lease and the first
    // half-second backoff; the other node's worker takes it.
    let mut taken = Value::Null;
    wait_until("the task to be claimable again", || {
        let got = cb.ok("task.claim", json!({"n": 1, "lease_ms": 30_000}), None);
        taken = got["tasks"][0].clone();
        !taken.is_null()
    });
    assert!(Instant::now() >= expired_at, "not before the lease ran out");
    assert_eq!(taken["attempt"], 2);
    cb.ok(
        "task.complete",
        json!({"task": taken["task"], "fence": taken["fence"], "result": "second"}),
        None,
    );
    let e = ca.err(
        "task.complete",
        json!({"task": stalled["task"], "fence": stalled["fence"], "result": "first"}),
        None,
        ErrorCode::Conflict,
    );
    assert!(e.contains("fence"), "{e}");
    let page = ca.ok("job.results", json!({"job": job}), None);
    assert_eq!(page["results"][0]["result"], "second");
    let st = ca.ok("job.status", json!({"job": job}), None);
    assert_eq!(
        (st["done"].as_u64(), st["failed"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn submitting_the_same_keys_again_adds_nothing() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let keyed = json!({"tasks": [
        {"payload": 1, "key": "a"}, {"payload": 2, "key": "b"}
    ]});
    let sub = c.ok("task.submit", keyed.clone(), None);
    let job = sub["job"].as_u64().unwrap();
    let mut again = keyed;
    again["job"] = job.into();
    assert_eq!(c.ok("task.submit", again, None)["accepted"], 0);
    assert_eq!(c.ok("job.status", json!({"job": job}), None)["total"], 2);
}

#[test]
fn bad_task_input_gets_clear_errors_while_the_connection_serves_on() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let big = "x".repeat(70 * 1024);
    let e = c.err(
        "task.submit",
        json!({"tasks": [{"payload": big}]}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("at most 65536 bytes"), "{e}");
    let e = c.err(
        "task.submit",
        json!({"tasks": []}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("1 to 1000"), "{e}");
    let e = c.err(
        "task.claim",
        json!({"n": 0, "lease_ms": 30_000}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("1 to 100"), "{e}");
    let e = c.err(
        "task.claim",
        json!({"n": 500, "lease_ms": 30_000}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("1 to 100"), "{e}");
    let e = c.err(
        "task.claim",
        json!({"n": 1, "lease_ms": 5}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("lease_ms"), "{e}");
    let e = c.err(
        "job.status",
        json!({"job": 424242}),
        None,
        ErrorCode::NotFound,
    );
    assert!(e.contains("no job 424242"), "{e}");
    let e = c.err(
        "job.results",
        json!({"job": 1, "limit": 0}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("limit"), "{e}");
    let e = c.err(
        "task.complete",
        json!({"task": 1, "fence": 1, "result": 1}),
        None,
        ErrorCode::Conflict,
    );
    assert!(e.contains("holds no lease"), "{e}");
    // An error longer than its column holds is refused, not cut.
    let e = c.err(
        "task.fail",
        json!({"task": 1, "fence": 1, "error": "e".repeat(70 * 1024)}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("at most 65535 bytes"), "{e}");
    for (outcomes, says) in [
        (json!([]), "1 to 100"),
        (
            json!([{"task": 1, "fence": 1, "error": "e".repeat(70 * 1024)}]),
            "an error of at most 65535",
        ),
        (
            json!([{"task": 1, "fence": 1, "result": 1, "error": "x"}]),
            "either result (done) or error",
        ),
        (
            json!([{"task": 1, "fence": 1}]),
            "either result (done) or error",
        ),
        (
            json!([{"task": 1, "fence": 1, "result": 1}, {"task": 1, "fence": 2, "error": "x"}]),
            "task 1 appears twice",
        ),
    ] {
        let e = c.err(
            "task.finish",
            json!({ "outcomes": outcomes }),
            None,
            ErrorCode::BadRequest,
        );
        assert!(e.contains(says), "{e}");
    }
    // Still served.
    assert_eq!(
        c.ok("task.submit", json!({"tasks": tasks(1)}), None)["accepted"],
        1
    );
}

/// `task.finish` over the wire: a worker's batch of three, one of them
/// under a fence that is not its lease's; that one alone is refused, and
/// its own fence finishes it after.
/// Submits `submit` tasks and claims `claim` of them: the job and the
/// claimed tasks.
fn submit_and_claim(c: &mut support::Conn, submit: usize, claim: u32) -> (u64, Vec<Value>) {
    let job = c.ok("task.submit", json!({"tasks": tasks(submit)}), None)["job"]
        .as_u64()
        .unwrap();
    let claimed = c.ok("task.claim", json!({"n": claim, "lease_ms": 30_000}), None)["tasks"]
        .as_array()
        .unwrap()
        .clone();
    (job, claimed)
}

#[test]
fn a_batched_finish_refuses_only_the_stale_task() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let (job, claimed) = submit_and_claim(&mut c, 3, 3);
    assert_eq!(claimed.len(), 3);
    let outcomes: Vec<Value> = claimed
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let fence = t["fence"].as_u64().unwrap() + u64::from(i == 1);
            // A null result is a result: the field's presence says done.
            let result = if i == 2 {
                Value::Null
            } else {
                json!({ "i": i })
            };
            json!({"task": t["task"], "fence": fence, "result": result})
        })
        .collect();
    let body = json!({ "outcomes": outcomes });
    let reply = c.ok("task.finish", body.clone(), None);
    assert_eq!(reply["kept"], 2, "{reply}");
    assert_eq!(reply["refused"][0]["task"], claimed[1]["task"], "{reply}");
    let status = c.ok("job.status", json!({"job": job}), None);
    assert_eq!(
        (status["done"].as_u64(), status["running"].as_u64()),
        (Some(2), Some(1))
    );
    // Its own fence still finishes the refused one.
    let last = json!({"outcomes": [{"task": claimed[1]["task"], "fence": claimed[1]["fence"], "result": 1}]});
    assert_eq!(c.ok("task.finish", last, None)["kept"], 1);
    assert_eq!(
        c.ok("job.status", json!({"job": job}), None)["state"],
        "done"
    );
}

#[test]
fn a_claim_carries_the_last_batchs_outcomes_refuses_only_the_stale_one_and_does_not_wait() {
    let db = testing::fresh();
    let mut s = support::settings(db.config(), None);
    s.claim_poll = Duration::from_secs(3600);
    let server = Server::with(s);
    let mut c = server.connect();
    let (job, claimed) = submit_and_claim(&mut c, 5, 3);
    // The second carries a fence that is not its lease's.
    let outcomes: Vec<Value> = claimed
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let fence = t["fence"].as_u64().unwrap() + u64::from(i == 1);
            json!({"task": t["task"], "fence": fence, "result": {"i": i}})
        })
        .collect();
    let reply = c.ok(
        "task.claim",
        json!({"n": 3, "lease_ms": 30_000, "finish": outcomes}),
        None,
    );
    assert_eq!(reply["finished"]["kept"], 2, "{reply}");
    assert_eq!(reply["finished"]["refused"].as_array().unwrap().len(), 1);
    assert_eq!(reply["finished"]["refused"][0]["task"], claimed[1]["task"]);
    assert_eq!(reply["tasks"].as_array().unwrap().len(), 2, "the other two");
    let status = c.ok("job.status", json!({"job": job}), None);
    assert_eq!(
        (status["done"].as_u64(), status["running"].as_u64()),
        (Some(2), Some(3)),
        "{status}"
    );
    // With nothing left to claim, a claim that carries outcomes and asks
    // to wait answers at once: its outcomes are kept now.
    let rest: Vec<Value> = reply["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!({"task": t["task"], "fence": t["fence"], "error": "boom"}))
        .collect();
    let t0 = Instant::now();
    let reply = c.ok(
        "task.claim",
        json!({"n": 3, "lease_ms": 30_000, "wait_ms": 20_000, "finish": rest}),
        None,
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_eq!(reply["finished"]["kept"], 2, "{reply}");
    // The failed attempts wait out their backoff (0.5 s, then the reaper
    // makes them ready): nothing was ready for the claim.
    assert_eq!(reply["tasks"].as_array().unwrap().len(), 0, "{reply}");
    // A claim without outcomes has no `finished`.
    let plain = c.ok("task.claim", json!({"n": 1, "lease_ms": 30_000}), None);
    assert!(plain.get("finished").is_none(), "{plain}");
    // Bad outcomes are refused whole, and nothing is claimed.
    let twice = json!([{"task": 1, "fence": 1, "result": 1}, {"task": 1, "fence": 1, "result": 2}]);
    let e = c.err(
        "task.claim",
        json!({"n": 1, "lease_ms": 30_000, "finish": twice}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("finish[1]: task 1 appears twice"), "{e}");
    // Another client is served as ever.
    server.connect().ok("sys.ping", json!({}), None);
}

#[test]
fn cancel_stops_claims_and_the_job_reads_cancelled() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let job = c.ok("task.submit", json!({"tasks": tasks(3)}), None)["job"].clone();
    c.ok("job.cancel", json!({"job": job}), None);
    assert!(
        c.ok("task.claim", json!({"n": 3, "lease_ms": 30_000}), None)["tasks"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        c.ok("job.status", json!({"job": job}), None)["state"],
        "cancelled"
    );
}

#[test]
fn a_waiting_claim_holds_no_worker_and_gets_a_task_submitted_on_another_node() {
    let db = testing::fresh();
    // One worker: three parked claims must leave it free.
    let mut s = support::settings(db.config(), None);
    s.workers = 1;
    let a = Server::with(s);
    let b = Server::start(&db);
    // Workers of one task each: a claim that finds nothing claims again,
    // as the SDK's worker does.
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..3 {
        let (mut c, tx) = (a.connect(), tx.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            loop {
                let got = c.ok(
                    "task.claim",
                    json!({"n": 1, "lease_ms": 30_000, "wait_ms": 15_000}),
                    None,
                );
                if !got["tasks"].as_array().unwrap().is_empty() {
                    break tx.send(t0.elapsed()).unwrap();
                }
            }
        });
    }
    wait_until("three claims parked", || a.running().node().parked() == 3);
    // The one worker still serves others.
    let mut other = a.connect();
    let e = other.err("job.status", json!({"job": 1}), None, ErrorCode::NotFound);
    assert!(e.contains("no job 1"), "{e}");
    // The nodes do not know each other here, so no wake-up crosses: the
    // fallback look (`--claim-poll`) counts the tasks submitted on the
    // other node and wakes as many claims.
    let mut cb = b.connect();
    cb.ok("task.submit", json!({"tasks": tasks(1)}), None);
    let first = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("one worker got the task");
    assert!(first < Duration::from_secs(15), "{first:?}");
    cb.ok("task.submit", json!({"tasks": tasks(2)}), None);
    for _ in 0..2 {
        let waited = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("a worker got a task");
        // Within the first wait: a claim left parked until its wait ran out
        // would have taken 15 s at least.
        assert!(waited < Duration::from_secs(15), "{waited:?}");
    }
    // The waiters let go of the pool at shutdown: every worker finishes.
    drop(other);
    let mut a = a;
    assert!(a.stop().workers_finished);
}

#[test]
fn a_submit_on_one_node_wakes_as_many_claims_parked_on_another_as_it_added_tasks() {
    let db = testing::fresh();
    // The fallback look is an hour away: only the wake-up over the peer
    // link can answer these claims before their wait is over.
    let mut s = support::settings(db.config(), None);
    s.claim_poll = Duration::from_secs(3600);
    let a = Server::with(s);
    let b = Server::start(&db);
    support::introduce(&[&a, &b]);
    let wait = Duration::from_secs(20);
    let claim = move |c: &mut support::Conn| {
        let t0 = Instant::now();
        let got = c.ok(
            "task.claim",
            json!({"n": 1, "lease_ms": 30_000, "wait_ms": wait.as_millis() as u64}),
            None,
        );
        (got["tasks"].as_array().unwrap().len(), t0.elapsed())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..3 {
        let (mut c, tx) = (a.connect(), tx.clone());
        std::thread::spawn(move || tx.send(claim(&mut c)).unwrap());
    }
    wait_until("three claims parked on a", || {
        a.running().node().parked() == 3
    });
    let mut cb = b.connect();
    // One task wakes one claim; the other two wait on, parked.
    cb.ok("task.submit", json!({"tasks": tasks(1)}), None);
    let (got, waited) = rx.recv_timeout(wait).expect("a claim answered");
    assert_eq!(got, 1, "the woken claim took the task");
    assert!(waited < wait, "woken, not timed out: {waited:?}");
    // A woken claim leaves the parked ones before it runs, so by its
    // answer the count says how many were woken.
    assert_eq!(a.running().node().parked(), 2, "only one claim was woken");
    // Two more wake the other two, each with a task.
    cb.ok("task.submit", json!({"tasks": tasks(2)}), None);
    for _ in 0..2 {
        let (got, waited) = rx.recv_timeout(wait).expect("a claim answered");
        assert_eq!(got, 1, "each woken claim took a task");
        assert!(waited < wait, "woken, not timed out: {waited:?}");
    }
    assert_eq!(a.running().node().parked(), 0);
}

#[test]
fn a_task_goes_to_a_parked_claim_whose_client_is_still_there() {
    let db = testing::fresh();
    let mut s = support::settings(db.config(), None);
    s.claim_poll = Duration::from_secs(3600);
    let a = Server::with(s);
    let claim = json!({"n": 1, "lease_ms": 30_000, "wait_ms": 20_000});
    // The oldest parked claim: its client goes away while it waits (the
    // server sees EOF, and keeps the connection for the reply it owes: a
    // half-closed client may still read it).
    let mut gone = a.connect();
    gone.send("task.claim", &claim, None);
    wait_until("the first claim parked", || {
        a.running().node().parked() == 1
    });
    drop(gone);
    // A live claim, parked after it (the one reactor of the test server
    // saw the EOF first), then one task: the live claim gets it.
    let mut live = a.connect();
    let waiter = std::thread::spawn(move || live.ok("task.claim", claim, None));
    wait_until("the live claim parked", || a.running().node().parked() == 2);
    a.connect()
        .ok("task.submit", json!({"tasks": tasks(1)}), None);
    let got = waiter.join().unwrap();
    assert_eq!(got["tasks"].as_array().unwrap().len(), 1, "{got}");
}

#[test]
fn a_waiting_claim_with_nothing_to_do_answers_empty_when_its_wait_is_over() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let t0 = Instant::now();
    let got = c.ok(
        "task.claim",
        json!({"n": 1, "lease_ms": 30_000, "wait_ms": 400}),
        None,
    );
    assert!(got["tasks"].as_array().unwrap().is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );
    let e = c.err(
        "task.claim",
        json!({"n": 1, "lease_ms": 30_000, "wait_ms": 60_000}),
        None,
        ErrorCode::BadRequest,
    );
    assert!(e.contains("wait_ms: at most 20000"), "{e}");
}

#[test]
fn a_parked_claim_is_answered_when_its_node_shuts_down() {
    let db = testing::fresh();
    let mut server = Server::start(&db);
    let mut c = server.connect();
    let waiting = std::thread::spawn(move || {
        let t0 = Instant::now();
        let got = c.call(
            "task.claim",
            json!({"n": 1, "lease_ms": 30_000, "wait_ms": 15_000}),
            None,
        );
        (got, t0.elapsed())
    });
    wait_until("the claim parked", || server.running().node().parked() == 1);
    let report = server.stop();
    assert!(report.workers_finished);
    let (got, waited) = waiting.join().unwrap();
    assert!(got.unwrap()["tasks"].as_array().unwrap().is_empty());
    assert!(
        waited < Duration::from_secs(15),
        "answered at shutdown, not at the end of its wait: {waited:?}"
    );
}

/// A `job.watch` on `server`, read to its end: the progress events' done
/// counts in order, and the final status.
fn watch_to_end(server: &Server, job: u64) -> (Vec<u64>, Value) {
    use dsf_common::call::{Connection, Signer, Streamed};
    use dsf_common::wire::Key;
    let signer = Signer {
        app: support::APP.into(),
        key: Key::new(support::SECRET),
    };
    let addr = server.addr.to_string();
    let mut c = Connection::connect(&addr, &addr, signer, support::WAIT, 1 << 20).unwrap();
    let id = c
        .send("job.watch", &json!({"job": job}).to_string(), None)
        .unwrap();
    let deadline = Instant::now() + support::WAIT;
    let mut done = Vec::new();
    loop {
        match c.recv_stream(id, deadline).unwrap() {
            Streamed::Event { event, body, .. } => {
                assert_eq!(event, "progress");
                let v: Value = serde_json::from_str(body.get()).unwrap();
                done.push(v["done"].as_u64().unwrap());
            }
            Streamed::Final(body) => return (done, serde_json::from_str(body.get()).unwrap()),
        }
    }
}

#[test]
fn a_watch_on_one_node_follows_completions_on_another_to_the_end() {
    let db = testing::fresh();
    let (a, b) = (Server::start(&db), Server::start(&db));
    let mut cb = b.connect();
    let job = cb.ok("task.submit", json!({"tasks": tasks(5)}), None)["job"]
        .as_u64()
        .unwrap();
    let watcher = {
        let addr_server = &a;
        std::thread::scope(|s| {
            let w = s.spawn(|| watch_to_end(addr_server, job));
            // Completions on b, paced so the watch on a sees several steps.
            for _ in 0..5 {
                let t = cb.ok("task.claim", json!({"n": 1, "lease_ms": 30_000}), None)["tasks"][0]
                    .clone();
                std::thread::sleep(Duration::from_millis(250));
                cb.ok(
                    "task.complete",
                    json!({"task": t["task"], "fence": t["fence"], "result": 1}),
                    None,
                );
            }
            w.join().unwrap()
        })
    };
    let (done, last) = watcher;
    assert_eq!(last["state"], "done");
    assert_eq!(last["done"], 5);
    // An event for each change of the counts (a claim moves `running`, a
    // completion `done`): done never goes back, and most steps are seen.
    assert!(
        done.windows(2).all(|w| w[0] <= w[1]),
        "progress only moves forward: {done:?}"
    );
    assert!(
        done.iter().filter(|d| **d > 0).count() >= 3,
        "several completions seen: {done:?}"
    );
    assert_eq!(done.last(), Some(&5));
}

#[test]
fn a_watch_of_a_job_that_is_not_yours_ends_with_not_found() {
    let db = testing::fresh();
    let server = Server::start(&db);
    use dsf_common::call::{Connection, Failure, Signer};
    let signer = Signer {
        app: support::APP.into(),
        key: dsf_common::wire::Key::new(support::SECRET),
    };
    let addr = server.addr.to_string();
    let mut c = Connection::connect(&addr, &addr, signer, support::WAIT, 1 << 20).unwrap();
    let id = c.send("job.watch", r#"{"job":777}"#, None).unwrap();
    match c.recv_stream(id, Instant::now() + support::WAIT) {
        Err(Failure::Server(e)) => {
            assert_eq!(e.code(), ErrorCode::NotFound);
            assert!(e.to_string().contains("no job 777"), "{e}");
        }
        other => panic!("expected not_found, got {other:?}"),
    }
}

#[test]
fn a_job_submitted_with_a_session_is_its_users_and_an_operators() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let ann = c.user("ann");
    let bob = c.user("bob");
    let op = c.user_with_role(&db, "olga", dsf_sql::Role::Operator);
    let job = c.ok("task.submit", json!({"tasks": tasks(1)}), Some(&ann))["job"].clone();
    assert_eq!(
        c.ok("job.status", json!({"job": job}), Some(&ann))["total"],
        1
    );
    for (who, token) in [("bob", Some(bob.as_str())), ("the bare app", None)] {
        let e = c.err(
            "job.status",
            json!({"job": job}),
            token,
            ErrorCode::NotFound,
        );
        assert!(e.contains("not yours"), "{who}: {e}");
    }
    assert_eq!(
        c.ok("job.status", json!({"job": job}), Some(&op))["total"],
        1
    );
    // A bad token is refused, not ignored.
    let e = c.err(
        "job.status",
        json!({"job": job}),
        Some("nope"),
        ErrorCode::Unauthorized,
    );
    assert!(e.contains("log in again"), "{e}");
    // Bob cannot cancel it; ann can.
    c.err(
        "job.cancel",
        json!({"job": job}),
        Some(&bob),
        ErrorCode::NotFound,
    );
    c.ok("job.cancel", json!({"job": job}), Some(&ann));
    assert_eq!(
        c.ok("job.status", json!({"job": job}), Some(&ann))["state"],
        "cancelled"
    );
}
