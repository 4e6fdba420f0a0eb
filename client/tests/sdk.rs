//! The SDK against real reactors on 127.0.0.1: a balancer stand-in that
//! answers `lb.resolve` as the design says, and app-server stand-ins that
//! answer, refuse, forge, close mid-request or answer out of order.

mod support;

use std::time::{Duration, Instant};

use dsf_client::{Client, ClientConfig, Connection, Error, Signer};
use dsf_common::wire::Key;
use dsf_common::ErrorCode;
use serde_json::json;
use support::{dead_addr, fake_lb, wait_until, Action, TestServer, APP, SECRET, WAIT};

fn client(lbs: Vec<String>) -> Client {
    let mut cfg = ClientConfig::new(lbs, APP, SECRET);
    cfg.deadline = Duration::from_secs(5);
    Client::new(cfg).unwrap()
}

#[test]
fn a_call_is_signed_and_its_signed_reply_verified() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);

    // The stand-in's admission checks our signature; its reply is verified.
    let v = c.call("sys.ping", &json!({})).unwrap();
    assert_eq!(v, json!({"node": "a"}));
    assert_eq!(c.node_id(), Some("a"));
    assert_eq!(a.seen("sys.ping"), 1);
    assert_eq!(lb.seen("lb.resolve"), 1);

    // The connection is reused, and a session token rides along.
    assert_eq!(
        c.call("user.me", &json!({})).unwrap_err().code(),
        Some(ErrorCode::Unauthorized)
    );
    c.set_token(Some("tok-ann".into()));
    assert_eq!(c.call("user.me", &json!({})).unwrap()["name"], "ann");
    assert_eq!(lb.seen("lb.resolve"), 1, "one resolve for the connection");
}

#[test]
fn a_typed_call_sends_the_catalogues_body_and_reads_its_reply() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    let pong = c
        .send::<dsf_proto::sys::Ping>(&dsf_proto::Empty {})
        .unwrap();
    assert_eq!(pong.node, "a");

    // A reply of another shape than the catalogue's is a bad reply.
    let odd = TestServer::start(|_| Action::Ok("{\"nope\":1}".into()));
    let (lb, _) = fake_lb(vec![("o", odd.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    let e = c
        .send::<dsf_proto::sys::Ping>(&dsf_proto::Empty {})
        .unwrap_err();
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert!(e.to_string().contains("not what the catalogue says"), "{e}");
}

#[test]
fn a_wrong_secret_shows_the_servers_unverified_refusal() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let mut cfg = ClientConfig::new(vec![lb.addr_string()], APP, b"wrong".to_vec());
    cfg.node = Some(a.addr_string());
    let mut c = Client::new(cfg).unwrap();
    let e = c.call("sys.ping", &json!({})).unwrap_err();
    // The refusal is signed with the real secret, so it cannot be verified
    // either: it is a bad reply that shows what the server claims.
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("unverified: bad_signature"), "{msg}");
    assert!(msg.contains("DSF_APP_SECRET"), "{msg}");
}

#[test]
fn a_wrong_secret_at_the_balancer_is_a_bad_reply_not_an_unreachable_cluster() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let cfg = ClientConfig::new(vec![lb.addr_string()], APP, b"wrong".to_vec());
    let mut c = Client::new(cfg).unwrap();
    let e = c.call("sys.ping", &json!({})).unwrap_err();
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert!(e.to_string().contains("DSF_APP_SECRET"), "{e}");
}

#[test]
fn a_forged_reply_signature_is_refused() {
    let a = TestServer::start(|_| Action::Forge("{\"node\":\"evil\"}".into()));
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    let e = c.call("sys.ping", &json!({})).unwrap_err();
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert!(e.to_string().contains("signature"), "{e}");
}

#[test]
fn a_stopped_node_is_replaced_by_another_on_the_next_call() {
    let mut a = TestServer::app("a");
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    assert_eq!(c.call("sys.ping", &json!({})).unwrap()["node"], "a");

    a.stop();

    // An idempotent call fails over...
    assert_eq!(c.call("sys.ping", &json!({})).unwrap()["node"], "b");
    // ...and so does a write on a fresh client whose resolve still says `a`:
    // the refused connection proves the write never left.
    let mut c2 = client(vec![lb.addr_string()]);
    let v = c2
        .call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap();
    assert_eq!(v["node"], "b");
    assert_eq!(b.seen("blacklist.add"), 1);
}

#[test]
fn a_write_on_an_idle_connection_the_node_closed_is_not_an_unknown_outcome() {
    let mut a = TestServer::app("a");
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    c.call("sys.ping", &json!({})).unwrap();
    a.stop();
    // The SDK sees the close before writing, so it reconnects instead.
    let v = c
        .call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap();
    assert_eq!(v["node"], "b");
}

#[test]
fn a_write_cut_mid_flight_is_resent_with_the_same_nonce() {
    let a = TestServer::start(|r| match r.kind.as_str() {
        "blacklist.add" => Action::Close,
        _ => support::app_handler("a", r),
    });
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);

    let v = c
        .call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap();

    assert_eq!(v["node"], "b");
    assert_eq!((a.seen("blacklist.add"), b.seen("blacklist.add")), (1, 1));
    // The same signed request both times: the servers run it once.
    assert_eq!(a.nonces(), b.nonces());
}

#[test]
fn a_resent_write_answered_by_what_cannot_be_its_stored_reply_is_an_unknown_outcome() {
    let a = TestServer::start(|r| match r.kind.as_str() {
        "blacklist.add" => Action::Close,
        _ => support::app_handler("a", r),
    });
    let b = TestServer::start(|_| Action::Err(dsf_common::Error::Internal("boom".into())));
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    let e = c
        .call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap_err();
    // The first attempt may have run on a; b's internal error says nothing
    // of that.
    assert!(matches!(e, Error::OutcomeUnknown { .. }), "{e}");
    assert_eq!(b.nonces(), a.nonces());
}

#[test]
fn a_write_no_node_answers_is_an_unknown_outcome_once_the_window_cannot_be_used() {
    let a = TestServer::start(|r| match r.kind.as_str() {
        "blacklist.add" => Action::Close,
        _ => support::app_handler("a", r),
    });
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let mut cfg = ClientConfig::new(vec![lb.addr_string()], APP, SECRET);
    cfg.deadline = Duration::from_millis(500);
    let mut c = Client::new(cfg).unwrap();
    let e = c
        .call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap_err();
    assert!(matches!(e, Error::OutcomeUnknown { .. }), "{e}");
    assert!(e.to_string().contains("resent with the same nonce"), "{e}");
    // The resend carried the first nonce: the stand-in (which stores no
    // replies) refused it as a replay, which the SDK takes as "still
    // running" and asks again until its deadline.
    assert!(
        e.to_string().contains("first attempt is still running"),
        "{e}"
    );
    assert_eq!(a.nonces().len(), 1);
}

#[test]
fn a_read_cut_mid_flight_is_retried_on_another_node() {
    let a = TestServer::start(|r| match r.kind.as_str() {
        "blacklist.get" => Action::Close,
        _ => support::app_handler("a", r),
    });
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);

    // b answers not_found: the caller sees b's answer, not a's close.
    let e = c
        .call("blacklist.get", &json!({"id_card": "42"}))
        .unwrap_err();

    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("no entry for id card 42"), "{e}");
    assert_eq!(a.seen("blacklist.get"), 1);
    assert_eq!(b.seen("blacklist.get"), 1);
    assert_eq!(c.node_id(), Some("b"));
}

#[test]
fn an_unavailable_node_is_skipped_for_reads_and_writes_with_the_same_nonce() {
    let a = TestServer::start(|_| Action::Err(dsf_common::Error::Unavailable("db down".into())));
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);

    let mut c = client(vec![lb.addr_string()]);
    assert_eq!(c.call("sys.ping", &json!({})).unwrap()["node"], "b");

    // `unavailable` may follow a commit whose acknowledgement was lost; the
    // write goes to b with its first nonce, so it cannot run twice.
    let mut c = client(vec![lb.addr_string()]);
    let v = c
        .call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap();
    assert_eq!(v["node"], "b");
    let (on_a, on_b) = (a.nonces(), b.nonces());
    assert_eq!(on_a.last(), on_b.last());
}

#[test]
fn a_write_refused_as_overloaded_goes_to_another_node() {
    // `overloaded` is answered before any work (e.g. a node draining for
    // shutdown), so even a write may be sent elsewhere.
    let a = TestServer::start(|_| Action::Err(dsf_common::Error::Overloaded("draining".into())));
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);

    let mut c = client(vec![lb.addr_string()]);
    c.call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap();
    assert_eq!(c.node_id(), Some("b"));
    assert_eq!((a.seen("blacklist.add"), b.seen("blacklist.add")), (1, 1));
}

#[test]
fn an_unsigned_overloaded_never_sends_a_write_elsewhere() {
    // A signed `overloaded` moves a write (above); an unsigned one, which
    // anyone on the path could inject, only drops the connection.
    let a =
        TestServer::start(|_| Action::Unsigned(dsf_common::Error::Overloaded("draining".into())));
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    let e = c
        .call("blacklist.add", &json!({"id_card": "1", "name": "x"}))
        .unwrap_err();
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert!(e.to_string().contains("unsigned reply"), "{e}");
    assert_eq!((a.seen("blacklist.add"), b.seen("blacklist.add")), (1, 0));
}

#[test]
fn a_recorded_reply_does_not_answer_a_later_request_with_the_same_id() {
    // Record a genuine signed reply to request 1 on one connection...
    let recorder = TestServer::start(|_| Action::Ok("{\"hit\":false}".into()));
    let mut conn = Connection::connect(
        &recorder.addr_string(),
        "recorder",
        Signer {
            app: APP.into(),
            key: Key::new(SECRET),
        },
        WAIT,
        1 << 20,
    )
    .unwrap();
    let id = conn.send("gate.check", "{}", None).unwrap();
    assert_eq!(id, 1);
    let recorded = recorded_reply(&recorder, &mut conn);
    // ...then replay it to the next connection's request 1.
    let replayer = TestServer::start(move |_| Action::Raw(recorded.clone()));
    let (lb, _) = fake_lb(vec![("r", replayer.addr_string())]);
    let mut cfg = ClientConfig::new(vec![lb.addr_string()], APP, SECRET);
    cfg.node = Some(replayer.addr_string());
    cfg.deadline = Duration::from_secs(5);
    let mut c = Client::new(cfg).unwrap();
    let e = c
        .call("gate.check", &json!({"id_card": "1101", "name": "Li"}))
        .unwrap_err();
    assert!(matches!(e, Error::BadReply { .. }), "{e}");
    assert!(e.to_string().contains("signature"), "{e}");
}

/// The frame `server` sent for request 1 on `conn`, as bytes on the wire.
fn recorded_reply(server: &TestServer, conn: &mut Connection) -> Vec<u8> {
    let body = conn.recv(1, Instant::now() + WAIT).unwrap();
    assert_eq!(body.get(), "{\"hit\":false}");
    server.last_reply().expect("the server kept what it sent")
}

#[test]
fn the_second_balancer_is_used_when_the_first_is_down() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let mut c = client(vec![dead_addr(), lb.addr_string()]);
    assert_eq!(c.call("sys.ping", &json!({})).unwrap()["node"], "a");
    let r = c.resolve(Some("ann"), &[]).unwrap();
    assert_eq!((r.node.as_str(), r.view), ("a", 7));
}

#[test]
fn no_balancer_up_is_an_error_naming_every_address_tried() {
    let (d1, d2) = (dead_addr(), dead_addr());
    let mut c = client(vec![d1.clone(), d2.clone()]);
    let e = c.call("sys.ping", &json!({})).unwrap_err();
    assert!(matches!(e, Error::NoBalancer { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&d1) && msg.contains(&d2) && msg.contains("--lb"),
        "{msg}"
    );
}

#[test]
fn no_node_up_is_an_error_once_the_deadline_passes() {
    let (lb, _) = fake_lb(vec![("a", dead_addr())]);
    let mut cfg = ClientConfig::new(vec![lb.addr_string()], APP, SECRET);
    cfg.deadline = Duration::from_millis(300);
    let mut c = Client::new(cfg).unwrap();
    let started = Instant::now();
    let e = c.call("sys.ping", &json!({})).unwrap_err();
    assert!(matches!(e, Error::NoNode { .. }), "{e}");
    assert!(started.elapsed() < WAIT);
    // It asked again, excluding the node it could not reach.
    assert!(lb.seen("lb.resolve") >= 2);
}

#[test]
fn pipelined_replies_out_of_order_are_matched_by_id() {
    let a = TestServer::start(|_| Action::Hold);
    let signer = Signer {
        app: APP.into(),
        key: Key::new(SECRET),
    };
    let mut conn = Connection::connect(&a.addr_string(), "a", signer, WAIT, 1 << 20).unwrap();
    let ids: Vec<u64> = (0..5)
        .map(|n| conn.send("echo", &format!("{{\"n\":{n}}}"), None).unwrap())
        .collect();
    assert_eq!(conn.in_flight(), 5);
    wait_until("all five requests to be held", || a.held() == 5);

    a.release_reversed();

    for (n, id) in ids.iter().enumerate() {
        let body = conn.recv(*id, Instant::now() + WAIT).unwrap();
        assert_eq!(body.get(), format!("{{\"n\":{n}}}"));
    }
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn call_many_pipelines_and_returns_results_in_input_order() {
    let a = TestServer::app("a");
    let (lb, _) = fake_lb(vec![("a", a.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    let bodies = (0..500).map(|i| json!({"id_card": format!("{i}"), "name": "n"}).to_string());
    let mut got = Vec::new();
    c.call_many("gate.check", bodies, 32, |i, r| {
        let v: serde_json::Value = serde_json::from_str(r.unwrap().get()).unwrap();
        got.push((i, v["hit"].as_bool().unwrap()));
    })
    .unwrap();
    assert_eq!(got.len(), 500);
    for (n, (i, hit)) in got.into_iter().enumerate() {
        assert_eq!(i, n);
        assert_eq!(hit, n % 10 == 7);
    }
}

#[test]
fn call_many_moves_idempotent_requests_in_flight_to_another_node() {
    // a answers the first 10 checks, then drops the connection.
    let count = std::sync::atomic::AtomicUsize::new(0);
    let a = TestServer::start(move |r| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 10 {
            Action::Close
        } else {
            support::app_handler("a", r)
        }
    });
    let b = TestServer::app("b");
    let (lb, _) = fake_lb(vec![("a", a.addr_string()), ("b", b.addr_string())]);
    let mut c = client(vec![lb.addr_string()]);
    let bodies = (0..100).map(|i| json!({"id_card": format!("{i}"), "name": "n"}).to_string());
    let mut got = Vec::new();
    c.call_many("gate.check", bodies, 16, |i, r| {
        r.unwrap();
        got.push(i);
    })
    .unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert!(b.seen("gate.check") >= 90);
}
