//! Abuse at the app level: forged, stale, replayed and malformed requests,
//! bad tokens. After each non-fatal error the connection stays open and the
//! next good request on it succeeds. Also pipelining and racing writers.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dsf_common::wire::envelope::encode_request_at;
use dsf_common::wire::{frame, now_ms, Key, OutgoingRequest, Reply};
use dsf_common::ErrorCode;
use dsf_sql::testing;
use serde_json::json;
use support::{Conn, Server, APP, SECRET, WAIT};

/// A signed `sys.ping` frame with the given key, timestamp and nonce.
fn ping_frame(id: u64, key: &[u8], ts: u64, nonce: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let req = OutgoingRequest {
        id,
        kind: "sys.ping",
        app: APP,
        token: None,
        body: "{}",
    };
    encode_request_at(&Key::new(key), &req, ts, nonce, &mut out);
    out
}

/// The connection still works: a good request right after.
fn still_open(c: &mut Conn) {
    c.ok("sys.ping", json!({}), None);
}

fn expect_refused(c: &mut Conn, id: u64, code: ErrorCode) -> String {
    let (got, r) = c.recv();
    assert_eq!(got, id);
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e}");
    e.to_string()
}

#[test]
fn bad_signature_is_refused_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let id = c.next_id();
    c.send_bytes(&ping_frame(
        id,
        b"not the secret",
        now_ms(),
        "00112233445566aa",
    ));
    expect_refused(&mut c, id, ErrorCode::BadSignature);
    still_open(&mut c);
}

#[test]
fn stale_timestamp_is_refused_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let id = c.next_id();
    c.send_bytes(&ping_frame(
        id,
        SECRET,
        now_ms() - 120_000,
        "00112233445566bb",
    ));
    expect_refused(&mut c, id, ErrorCode::StaleTimestamp);
    still_open(&mut c);
}

#[test]
fn replayed_nonce_is_refused_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let frame = ping_frame(7, SECRET, now_ms(), "00112233445566cc");
    c.send_bytes(&frame);
    let (id, r) = c.recv();
    assert_eq!(id, 7);
    r.unwrap();
    c.send_bytes(&frame);
    expect_refused(&mut c, 7, ErrorCode::ReplayedNonce);
    still_open(&mut c);
}

#[test]
fn unknown_type_is_refused_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let e = c.err(
        "blacklist.drop_all",
        json!({}),
        None,
        ErrorCode::UnknownType,
    );
    assert!(e.contains("blacklist.drop_all"), "{e}");
    // Types of other parts are not served here either.
    c.err("lb.resolve", json!({}), None, ErrorCode::UnknownType);
    still_open(&mut c);
}

#[test]
fn missing_token_is_unauthorized_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    c.err("user.me", json!({}), None, ErrorCode::Unauthorized);
    c.err("user.me", json!({}), Some(""), ErrorCode::Unauthorized);
    c.err(
        "user.me",
        json!({}),
        Some("forged-token"),
        ErrorCode::Unauthorized,
    );
    still_open(&mut c);
}

#[test]
fn expired_token_is_unauthorized_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    c.user("eve");
    let user = db.users().get("eve").unwrap().unwrap();
    // A session that expires the moment it is made.
    let expired = db
        .sessions()
        .create(user.id, support::APP, Duration::ZERO)
        .unwrap();
    let e = c.err(
        "user.me",
        json!({}),
        Some(&expired.token),
        ErrorCode::Unauthorized,
    );
    assert!(e.contains("expired"), "{e}");
    still_open(&mut c);
}

#[test]
fn a_token_after_logout_is_unauthorized_at_once() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let token = c.user("fay");
    // Cached by this check...
    c.ok("user.me", json!({}), Some(&token));
    c.ok("user.logout", json!({}), Some(&token));
    // ...and evicted by the logout on this server, with no wait.
    c.err("user.me", json!({}), Some(&token), ErrorCode::Unauthorized);
    still_open(&mut c);
}

#[test]
fn wrong_json_types_in_the_body_name_the_field_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    for (kind, body, field) in [
        (
            "user.register",
            r#"{"name":{"a":1},"password":"password-1"}"#,
            "name",
        ),
        (
            "user.login",
            r#"{"name":"a","password":12345678}"#,
            "password",
        ),
        (
            "gate.check",
            r#"{"id_card":"1","name":"x","gate":[]}"#,
            "gate",
        ),
        ("gate.check", r#"{"id_card":null,"name":"x"}"#, "id_card"),
    ] {
        let id = c.send_raw_body(kind, body, None);
        let msg = expect_refused(&mut c, id, ErrorCode::BadRequest);
        assert!(
            msg.starts_with(&format!("{field}: ")),
            "{kind} {body}: {msg}"
        );
    }
    // A body that is not an object is refused by the envelope check.
    let id = c.send_raw_body("sys.ping", "[1]", None);
    expect_refused(&mut c, id, ErrorCode::BadRequest);
    still_open(&mut c);
}

#[test]
fn broken_json_closes_the_connection_after_its_error() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let mut raw = Vec::new();
    frame::encode(b"{\"v\":1,", &mut raw);
    c.send_bytes(&raw);
    let payload = c.stream.recv(Instant::now() + WAIT).unwrap().unwrap();
    let r = Reply::parse(&payload).unwrap();
    assert!(r.sig.is_none());
    assert_eq!(r.into_result().unwrap_err().code(), ErrorCode::BadJson);
    assert!(c
        .stream
        .read_to_end_until(Instant::now() + WAIT)
        .unwrap()
        .is_empty());
    // The server itself is fine.
    still_open(&mut server.connect());
}

#[test]
fn pipelined_requests_are_each_answered_under_their_id() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let mut expected = std::collections::HashMap::new();
    for i in 0..200u64 {
        let (kind, body) = if i % 2 == 0 {
            ("sys.ping", json!({}))
        } else {
            (
                "gate.check",
                json!({"id_card": format!("P-{i}"), "name": "p"}),
            )
        };
        expected.insert(c.send(kind, &body, None), kind);
    }
    for _ in 0..200 {
        let (id, r) = c.recv();
        let kind = expected
            .remove(&id)
            .expect("an id that was sent, answered once");
        let v = r.unwrap();
        match kind {
            "sys.ping" => assert!(v["node"].is_string()),
            _ => assert_eq!(v["hit"], false),
        }
    }
    assert!(expected.is_empty());
}

#[test]
fn fifty_threads_registering_the_same_name_exactly_one_wins() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let barrier = Arc::new(Barrier::new(50));
    let password = |i: usize| format!("password-{i:03}");
    let outcomes: Vec<Result<(), ErrorCode>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let barrier = barrier.clone();
                let addr = server.addr;
                s.spawn(move || {
                    let mut c = Conn::connect(addr);
                    barrier.wait();
                    c.call(
                        "user.register",
                        json!({"name": "same", "password": password(i)}),
                        None,
                    )
                    .map(|_| ())
                    .map_err(|e| e.code())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every one is answered alike (a taken name is not told apart)...
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    // ...and exactly one password is the account's.
    let mut c = server.connect();
    let wins = (0..50)
        .filter(|&i| {
            c.call(
                "user.login",
                json!({"name": "same", "password": password(i)}),
                None,
            )
            .is_ok()
        })
        .count();
    assert_eq!(wins, 1);
}

#[test]
fn a_request_of_wire_version_1_is_refused_naming_version_2_and_the_connection_stays_open() {
    let db = testing::fresh();
    let server = Server::start(&db);
    let mut c = server.connect();
    let id = c.next_id();
    let v1 = format!(
        r#"{{"v":1,"id":{id},"type":"sys.ping","ts":{},"nonce":"00112233445566dd","app":"{APP}","body":{{}},"sig":"{}"}}"#,
        now_ms(),
        "0".repeat(32)
    );
    let mut frame = Vec::new();
    dsf_common::wire::frame::encode(v1.as_bytes(), &mut frame);
    c.send_bytes(&frame);
    let e = expect_refused(&mut c, id, ErrorCode::BadRequest);
    assert!(e.contains("wire version 2, got 1"), "{e}");
    still_open(&mut c);
}
