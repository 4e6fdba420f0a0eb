//! The framework from a user's side: a test service of its own composed
//! with dsf's accounts on the public API, served over real sockets, and
//! each layer of the request pipeline seen from the wire: auth, rate
//! limits, drain, run-once, long polls, streams and per-type metrics; and
//! the compositions a server refuses to start with.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use app_server::prelude::*;
use app_server::{Running, Server};
use dsf_common::call::{Connection, Failure, Signer, Streamed};
use dsf_common::wire::envelope::encode_request_at;
use dsf_common::wire::{new_nonce, now_ms, AppKeys, Key, OutgoingRequest};
use dsf_proto::message;
use dsf_sql::{testing, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::{settings, wait_until, Conn, APP, SECRET};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Text {
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Who {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Count {
    pub runs: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Found {
    pub value: Option<String>,
    pub woken: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticks {
    pub n: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Tick {
    pub i: u64,
}

message!(pub Echo = "test.echo", App, read: Text => Text);
message!(pub Me = "test.me", Viewer, read: Empty => Who);
message!(pub AdminOnly = "test.admin", Admin, read: Empty => Empty);
message!(pub Bump = "test.bump", App, write: Empty => Count);
message!(pub Limited = "test.limited", App, read: Empty => Empty);
message!(pub Await = "test.await", App, read: KeyBody => Found);
message!(pub Put = "test.put", App, write: KeyBody => Empty);
message!(pub Slow = "test.slow", App, read: Empty => Empty);
message!(pub Count3 = "test.ticks", App, stream: Ticks => Count, event "tick": Tick);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nth {
    pub n: u64,
}

message!(pub Ordered = "test.ordered", App, write: Nth => Empty);
message!(pub Claim = "test.claim", App, write: KeyBody => Empty);

/// The `test.ordered` that fails as if its database went away.
const FAILS: u64 = 3;
/// The `test.ordered` that waits for `Kept::release` before it runs.
const HOLD: u64 = 1000;

/// What the test service keeps.
#[derive(Default)]
struct Kept {
    runs: AtomicU64,
    values: Mutex<HashMap<String, String>>,
    started: AtomicBool,
    release: AtomicBool,
    /// The `n` of each `test.ordered` as it ran.
    order: Mutex<Vec<u64>>,
}

const LIMIT: Limit = Limit::new(
    "test-limited",
    Per::App,
    Rate::Every {
        burst: NonZeroU32::new(3).unwrap(),
        period: Duration::from_secs(3600),
    },
);

const MIGRATIONS: &[app_server::Migration] = &[
    app_server::Migration {
        version: 1,
        name: "bumps",
        sql: "CREATE TABLE test_bumps (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY) ENGINE = InnoDB;",
    },
    app_server::Migration {
        version: 2,
        name: "ordered",
        sql: "CREATE TABLE test_ordered (n BIGINT UNSIGNED NOT NULL PRIMARY KEY) ENGINE = InnoDB;",
    },
    app_server::Migration {
        version: 3,
        name: "claims",
        sql: "CREATE TABLE test_claims (k VARCHAR(64) NOT NULL PRIMARY KEY) ENGINE = InnoDB;",
    },
];

fn test_service() -> Service {
    Service::new("test")
        .requires("accounts")
        .migrations(MIGRATIONS)
        .state(|_| Ok(Kept::default()))
        .unary::<Echo>(|_, b| Ok(b))
        .unary::<Me>(|call, _| {
            Ok(Who {
                name: call.user()?.name.clone(),
            })
        })
        .unary::<AdminOnly>(|_, _| Ok(Empty {}))
        .unary::<Bump>(|call, _| {
            call.state::<Kept>().runs.fetch_add(1, Ordering::SeqCst);
            // Joins the run-once transaction: committed with its record,
            // or not at all.
            let runs = call.tx(|tx| {
                tx.query_drop("INSERT INTO test_bumps () VALUES ()")?;
                Ok(tx.query_first::<u64, _>("SELECT COUNT(*) FROM test_bumps")?)
            })?;
            Ok(Count {
                runs: runs.unwrap_or(0),
            })
        })
        .route(Route::unary::<Limited>(|_, _| Ok(Empty {})).limit(LIMIT))
        .long_poll::<Await>(
            |call, b| {
                let kept = call.state::<Kept>();
                let have = kept.values.lock().unwrap().contains_key(&b.key);
                (!have).then(|| Wait {
                    topic: format!("key:{}", b.key),
                    until: Instant::now() + Duration::from_secs(60),
                })
            },
            |call, b| {
                let value = call
                    .state::<Kept>()
                    .values
                    .lock()
                    .unwrap()
                    .get(&b.key)
                    .cloned();
                Ok(Found {
                    value,
                    woken: call.is_woken(),
                })
            },
        )
        .unary::<Put>(|call, b| {
            let value = b.value.unwrap_or_default();
            let kept = call.state::<Kept>();
            kept.values.lock().unwrap().insert(b.key.clone(), value);
            call.wake(format!("key:{}", b.key));
            Ok(Empty {})
        })
        .unary::<Slow>(|call, _| {
            let kept = call.state::<Kept>();
            kept.started.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + support::WAIT;
            while !kept.release.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(Empty {})
        })
        // Batched: one connection's run in order, committed together.
        .route(
            Route::unary::<Ordered>(|call, b| {
                let kept = call.state::<Kept>();
                if b.n == HOLD {
                    kept.started.store(true, Ordering::SeqCst);
                    let deadline = Instant::now() + support::WAIT;
                    while !kept.release.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                kept.order.lock().unwrap().push(b.n);
                if b.n == FAILS {
                    return Err(Error::Unavailable("test: the database went away".into()));
                }
                call.tx(|tx| Ok(tx.exec_drop("INSERT INTO test_ordered (n) VALUES (?)", (b.n,))?))?;
                Ok(Empty {})
            })
            .batched(),
        )
        // Staged: sent with the run-once record and COMMIT in one trip.
        .unary::<Claim>(|call, b| {
            call.state::<Kept>().runs.fetch_add(1, Ordering::SeqCst);
            call.write("INSERT INTO test_claims (k) VALUES (?)", (&b.key,))?;
            Ok(Empty {})
        })
        .stream::<Count3>(|_, b, mut stream| {
            for i in 0..b.n {
                stream.event(&Tick { i }).ok();
            }
            stream.finish(&Count { runs: b.n }).ok();
            Ok(())
        })
}

fn start(db: &testing::TestDb, tweak: impl FnOnce(&mut app_server::Settings)) -> Running {
    dsf_sql::migrate::apply(db, "test", MIGRATIONS).unwrap();
    let mut s = settings(db.config(), None);
    tweak(&mut s);
    Server::new()
        .service(app_server::accounts())
        .service(test_service())
        .start(s)
        .expect("the test server starts")
}

/// A request of the test app with the given nonce.
fn signed(kind: &str, body: &str, nonce: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let req = OutgoingRequest {
        id: 9,
        kind,
        app: APP,
        token: None,
        body,
    };
    encode_request_at(&Key::new(SECRET), &req, now_ms(), nonce, &mut out);
    out
}

fn answer(c: &mut Conn, frame: &[u8]) -> Result<serde_json::Value, dsf_common::Error> {
    c.send_bytes(frame);
    let (id, r) = c.recv();
    assert_eq!(id, 9);
    r
}

#[test]
fn auth_layer_sessions_roles_and_signers() {
    let db = testing::fresh();
    let running = start(&db, |_| {});
    let mut c = Conn::connect(running.addr());
    let viewer = c.user_with_role(&db, "vera", Role::Viewer);

    // An app key alone is enough for an App type; a Viewer type needs a
    // session, and the handler knows its user.
    c.ok("test.echo", json!({"text": "hi"}), None);
    let e = c.err("test.me", json!({}), None, ErrorCode::Unauthorized);
    assert!(e.contains("session"), "{e}");
    c.err(
        "test.me",
        json!({}),
        Some("not-a-token"),
        ErrorCode::Unauthorized,
    );
    assert_eq!(c.ok("test.me", json!({}), Some(&viewer))["name"], "vera");
    // A role below the type's: forbidden.
    c.err("test.admin", json!({}), Some(&viewer), ErrorCode::Forbidden);
    let admin = c.user_with_role(&db, "ada", Role::Admin);
    c.ok("test.admin", json!({}), Some(&admin));
    // A peer's type signed with an app key: refused, and the connection
    // serves on.
    let e = c.err(
        "peer.wake",
        json!({"topics": ["key:x"]}),
        None,
        ErrorCode::Forbidden,
    );
    assert!(e.contains("peer"), "{e}");
    c.ok("test.echo", json!({"text": "still here"}), None);
}

#[test]
fn a_scoped_key_signs_only_its_types_and_must_name_served_ones() {
    let db = testing::fresh();
    let running = start(&db, |s| {
        s.app_keys
            .insert_scoped("gate", b"gate-secret", &["test.echo"]);
    });
    let signer = Signer {
        app: "gate".into(),
        key: Key::new(b"gate-secret"),
    };
    let addr = running.addr().to_string();
    let mut gate = Connection::connect(&addr, &addr, signer, support::WAIT, 1 << 20).unwrap();
    let deadline = Instant::now() + support::WAIT;
    let echo = gate
        .round_trip("test.echo", r#"{"text":"a"}"#, None, deadline)
        .unwrap();
    assert_eq!(echo.get(), r#"{"text":"a"}"#);
    match gate.round_trip("test.bump", "{}", None, deadline) {
        Err(Failure::Server(e)) => assert_eq!(e.code(), ErrorCode::Forbidden, "{e}"),
        other => panic!("a type outside the key's scope: {other:?}"),
    }
    drop(running);

    // A scope naming a type no composed service serves: refused at start.
    let mut keys = AppKeys::new();
    keys.insert_scoped("gate", b"gate-secret", &["test.echoo"]);
    let server = Server::new()
        .service(app_server::accounts())
        .service(test_service());
    let e = server.check_keys(&keys).unwrap_err().to_string();
    assert!(e.contains("test.echoo"), "{e}");
    let mut s = settings(db.config(), None);
    s.app_keys = keys;
    let e = Server::new()
        .service(app_server::accounts())
        .service(test_service())
        .start(s)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("test.echoo"), "{e}");
}

#[test]
fn two_services_declaring_one_type_refuse_to_start_naming_both() {
    let db = testing::fresh();
    let copy = Service::new("copycat").unary::<Echo>(|_, b| Ok(b));
    let e = Server::new()
        .service(app_server::accounts())
        .service(test_service())
        .service(copy)
        .start(settings(db.config(), None))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("test.echo") && e.contains("test") && e.contains("copycat"),
        "{e}"
    );
    // One of dsf's own types declared again by a user's service.
    let login = Service::new("mine")
        .unary::<dsf_proto::user::Login>(|_, _| Err(Error::Internal("never".into())));
    let e = Server::new()
        .service(app_server::accounts())
        .service(login)
        .start(settings(db.config(), None))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("user.login") && e.contains("accounts") && e.contains("mine"),
        "{e}"
    );
    // A service whose migrations were not applied: refused, saying which
    // and what to run.
    let bare = testing::fresh();
    let e = Server::new()
        .service(app_server::accounts())
        .service(test_service())
        .start(settings(bare.config(), None))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("test 1 (bumps)") && e.contains("migrate"), "{e}");
    // A service that needs another the server does not run.
    let e = Server::new()
        .service(test_service())
        .start(settings(db.config(), None))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("accounts") && e.contains("test"), "{e}");
}

#[test]
fn rate_layer_refuses_past_the_routes_limit_and_serves_the_rest() {
    let db = testing::fresh();
    let running = start(&db, |_| {});
    let mut c = Conn::connect(running.addr());
    for _ in 0..3 {
        c.ok("test.limited", json!({}), None);
    }
    let e = c.err("test.limited", json!({}), None, ErrorCode::Overloaded);
    assert!(e.contains("too many"), "{e}");
    // Other types are not counted against it.
    c.ok("test.echo", json!({"text": "a"}), None);
}

#[test]
fn run_once_layer_runs_a_write_once_and_answers_a_resend_with_its_reply() {
    let db = testing::fresh();
    let (a, b) = (start(&db, |_| {}), start(&db, |_| {}));
    let nonce = new_nonce();
    let write = signed("test.bump", "{}", &nonce);
    let first = answer(&mut Conn::connect(a.addr()), &write).unwrap();
    assert_eq!(first["runs"], 1);
    // Again, on the same server and on another over the same database.
    assert_eq!(answer(&mut Conn::connect(a.addr()), &write).unwrap(), first);
    assert_eq!(answer(&mut Conn::connect(b.addr()), &write).unwrap(), first);
    // Its effect committed once; a run on the other node, if it came
    // first to the record's unique key, was rolled back.
    let rows: Option<u64> = db
        .with_conn_result("test", |c| {
            Ok(c.query_first("SELECT COUNT(*) FROM test_bumps")?)
        })
        .unwrap();
    assert_eq!(rows, Some(1));
    let runs = |r: &Running| r.node().state::<Kept>().runs.load(Ordering::SeqCst);
    assert!(runs(&a) + runs(&b) >= 1);
    // A read sent again is a replay, refused: reads do not run once.
    let read = signed("test.echo", r#"{"text":"a"}"#, &new_nonce());
    let mut c = Conn::connect(a.addr());
    answer(&mut c, &read).unwrap();
    let e = answer(&mut c, &read).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ReplayedNonce, "{e}");
    // A fresh write runs.
    assert_eq!(
        Conn::connect(a.addr()).ok("test.bump", json!({}), None)["runs"],
        2
    );
}

#[test]
fn a_staged_write_commits_with_its_record_and_its_failure_reaches_the_handler_as_a_refusal() {
    let db = testing::fresh();
    let a = start(&db, |_| {});
    let runs = || a.node().state::<Kept>().runs.load(Ordering::SeqCst);
    let claim = |key: &str, nonce: &str| {
        let body = json!({ "key": key }).to_string();
        answer(
            &mut Conn::connect(a.addr()),
            &signed("test.claim", &body, nonce),
        )
    };
    let first = new_nonce();
    assert_eq!(claim("k1", &first).unwrap(), json!({}));
    assert_eq!(runs(), 1);
    // The same key again: the staged insert fails at the commit, the
    // handler runs again and meets the duplicate at its call.write.
    let second = new_nonce();
    let e = claim("k1", &second).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict, "{e}");
    assert_eq!(runs(), 3);
    // Both are answered from their records when sent again.
    assert_eq!(claim("k1", &first).unwrap(), json!({}));
    assert_eq!(
        claim("k1", &second).unwrap_err().code(),
        ErrorCode::Conflict
    );
    // Another client is served meanwhile, and one row stays.
    let mut c = Conn::connect(a.addr());
    assert_eq!(c.ok("test.echo", json!({"text": "b"}), None)["text"], "b");
    let rows: Option<u64> = db
        .with_conn_result("test", |c| {
            Ok(c.query_first("SELECT COUNT(*) FROM test_claims")?)
        })
        .unwrap();
    assert_eq!(rows, Some(1));
}

#[test]
fn long_poll_layer_parks_off_the_workers_and_wakes_on_a_commit() {
    let db = testing::fresh();
    // One worker: a parked poll must not hold it.
    let running = start(&db, |s| s.workers = 1);
    let mut waiter = Conn::connect(running.addr());
    let id = waiter.send("test.await", &json!({"key": "k"}), None);
    wait_until("the poll to park", || running.node().parked() == 1);
    let mut other = Conn::connect(running.addr());
    for _ in 0..5 {
        other.ok("test.echo", json!({"text": "served meanwhile"}), None);
    }
    other.ok("test.put", json!({"key": "k", "value": "v"}), None);
    let (got, reply) = waiter.recv();
    assert_eq!(got, id);
    let reply = reply.unwrap();
    assert_eq!(reply["value"], "v");
    assert_eq!(reply["woken"], true);
    assert_eq!(running.node().parked(), 0);
    // Present already: answered at once.
    let now = waiter.ok("test.await", json!({"key": "k"}), None);
    assert_eq!(
        (now["value"].as_str(), now["woken"].as_bool()),
        (Some("v"), Some(false))
    );
}

#[test]
fn a_commit_on_one_node_wakes_a_long_poll_on_another() {
    let db = testing::fresh();
    let (a, b) = (start(&db, |_| {}), start(&db, |_| {}));
    let nodes: Vec<dsf_common::view::NodeView> = [&a, &b]
        .iter()
        .map(|r| dsf_common::view::NodeView {
            id: r.node_id().to_string(),
            addr: r.addr().to_string(),
            proxy_addr: None,
            weight: 1,
            state: Default::default(),
            load: Default::default(),
        })
        .collect();
    for r in [&a, &b] {
        r.node().peers().set_view(1, &nodes);
    }
    let mut waiter = Conn::connect(a.addr());
    let id = waiter.send("test.await", &json!({"key": "far"}), None);
    wait_until("the poll to park on a", || a.node().parked() == 1);
    // The value lands in b's memory; the wake-up crosses to a, whose poll
    // (due in 60 s) runs now and finds nothing of its own.
    Conn::connect(b.addr()).ok("test.put", json!({"key": "far", "value": "v"}), None);
    let (got, reply) = waiter.recv();
    assert_eq!(got, id);
    let reply = reply.unwrap();
    assert_eq!(reply["woken"], true, "{reply}");
    assert_eq!(reply["value"], serde_json::Value::Null, "{reply}");
}

#[test]
fn a_stream_route_sends_its_events_then_its_reply() {
    let db = testing::fresh();
    let running = start(&db, |_| {});
    let signer = Signer {
        app: APP.into(),
        key: Key::new(SECRET),
    };
    let addr = running.addr().to_string();
    let mut conn = Connection::connect(&addr, &addr, signer, support::WAIT, 1 << 20).unwrap();
    let id = conn.send("test.ticks", r#"{"n":3}"#, None).unwrap();
    let deadline = Instant::now() + support::WAIT;
    for i in 0..3 {
        match conn.recv_stream(id, deadline).unwrap() {
            Streamed::Event { event, body, .. } => {
                assert_eq!(event, "tick");
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(body.get()).unwrap(),
                    json!({"i": i})
                );
            }
            Streamed::Final(b) => panic!("ended early: {}", b.get()),
        }
    }
    match conn.recv_stream(id, deadline).unwrap() {
        Streamed::Final(b) => assert_eq!(b.get(), r#"{"runs":3}"#),
        Streamed::Event { event, .. } => panic!("an event {event} after the last"),
    }
    let mut c = Conn::connect(running.addr());
    c.err(
        "test.ticks",
        json!({"n": "three"}),
        None,
        ErrorCode::BadRequest,
    );
}

#[test]
fn drain_layer_refuses_new_requests_and_finishes_those_in_flight() {
    let db = testing::fresh();
    let running = start(&db, |_| {});
    let pipeline = running.pipeline().clone();
    let node = pipeline.server();
    let mut busy = Conn::connect(running.addr());
    let mut late = Conn::connect(running.addr());
    late.ok("test.echo", json!({"text": "before"}), None);
    let slow = busy.send("test.slow", &json!({}), None);
    let kept = node.state::<Kept>();
    wait_until("the slow call to run", || {
        kept.started.load(Ordering::SeqCst)
    });
    // SIGTERM's path: drain, wait for what is in flight, stop.
    let stopping = std::thread::spawn(move || running.stop().unwrap());
    wait_until("the server to drain", || node.is_draining());
    let e = late.err(
        "test.echo",
        json!({"text": "after"}),
        None,
        ErrorCode::Overloaded,
    );
    assert!(e.contains("draining"), "{e}");
    kept.release.store(true, Ordering::SeqCst);
    let (got, r) = busy.recv();
    assert_eq!(got, slow);
    r.unwrap();
    let report = stopping.join().unwrap();
    assert!(report.workers_finished, "{report:?}");
}

#[test]
fn metrics_layer_counts_each_type_its_errors_and_latency_on_metrics() {
    let db = testing::fresh();
    let running = start(&db, |s| {
        s.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    });
    let mut c = Conn::connect(running.addr());
    for _ in 0..3 {
        c.ok("test.echo", json!({"text": "a"}), None);
    }
    c.err("test.me", json!({}), None, ErrorCode::Unauthorized);
    c.err("test.echo", json!({"text": 1}), None, ErrorCode::BadRequest);
    let page = http_get(running.metrics_addr().unwrap(), "/metrics");
    assert!(
        page.contains("dsf_requests_total{type=\"test.echo\"} 4\n"),
        "{page}"
    );
    assert!(
        page.contains("dsf_request_errors_total{type=\"test.echo\",code=\"bad_request\"} 1\n"),
        "{page}"
    );
    assert!(
        page.contains("dsf_request_errors_total{type=\"test.me\",code=\"unauthorized\"} 1\n"),
        "{page}"
    );
    assert!(
        page.contains("dsf_request_duration_seconds_count{type=\"test.echo\"} 4\n"),
        "{page}"
    );
    // No write ran: no commit was shared (sql/tests/writes.rs counts them).
    for family in [
        "dsf_shared_commits_total{outcome=\"committed\"} 0\n",
        "dsf_shared_commits_total{outcome=\"failed\"} 0\n",
        "dsf_shared_commit_writes_total 0\n",
    ] {
        assert!(page.contains(family), "{family} in {page}");
    }
    dsf_common::testing::assert_promtool_accepts(&page);
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(support::WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    body.to_string()
}

#[test]
fn a_busy_batched_connection_leaves_the_worker_to_others_between_batches() {
    let db = testing::fresh();
    let running = start(&db, |s| s.workers = 1);
    let kept = running.pipeline().server().state::<Kept>();
    let mut busy = Conn::connect(running.addr());
    let mut other = Conn::connect(running.addr());
    let held = busy.send("test.ordered", &json!({ "n": HOLD }), None);
    wait_until("the held request to run on the one worker", || {
        kept.started.load(Ordering::SeqCst)
    });
    // Its connection's next request waits behind it; then another
    // connection's. A `sys.ping` (answered on the reactor) after each says
    // the server has read it.
    let next = busy.send("test.ordered", &json!({ "n": HOLD + 1 }), None);
    let ping = busy.send("sys.ping", &json!({}), None);
    assert_eq!(busy.recv().0, ping);
    let theirs = other.send("test.ordered", &json!({ "n": HOLD + 2 }), None);
    let ping = other.send("sys.ping", &json!({}), None);
    assert_eq!(other.recv().0, ping);
    kept.release.store(true, Ordering::SeqCst);
    for id in [held, next] {
        let (got, r) = busy.recv();
        assert_eq!(got, id, "replies in the order sent");
        r.unwrap();
    }
    let (got, r) = other.recv();
    assert_eq!(got, theirs);
    r.unwrap();
    // The other connection's request ran between the busy one's batches,
    // not after all of them.
    assert_eq!(
        *kept.order.lock().unwrap(),
        [HOLD, HOLD + 2, HOLD + 1],
        "the order the requests ran in"
    );
}

#[test]
fn a_batched_route_runs_nothing_after_a_request_that_must_be_sent_again() {
    let db = testing::fresh();
    let running = start(&db, |_| {});
    let mut c = Conn::connect(running.addr());
    // Ten in flight on one connection; the fourth fails with "try again".
    let ids: Vec<u64> = (0..10)
        .map(|n| c.send("test.ordered", &json!({ "n": n }), None))
        .collect();
    for (n, id) in (0..10u64).zip(&ids) {
        let (got, reply) = c.recv();
        assert_eq!(got, *id, "replies in the order sent");
        match (n, reply) {
            (0..FAILS, Ok(_)) => {}
            (FAILS, Err(e)) => assert!(e.to_string().contains("went away"), "{e}"),
            (_, Err(e)) => {
                assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
                assert!(e.to_string().contains("was not run"), "{e}");
            }
            (n, Ok(v)) => panic!("test.ordered {n} ran after the one that failed: {v}"),
        }
    }
    let stored = || -> Vec<u64> {
        db.with_conn("test", |c| c.query("SELECT n FROM test_ordered ORDER BY n"))
            .unwrap()
    };
    assert_eq!(stored(), [0, 1, 2], "nothing after the failed one stayed");
    // Sent again, in order, they run.
    for n in 4..7 {
        c.ok("test.ordered", json!({ "n": n }), None);
    }
    assert_eq!(stored(), [0, 1, 2, 4, 5, 6]);
}
